"""Score existing video files: scene cuts and warp error for every file, toy-world detector scores
when the prompt is a toy-world prompt.

The prompt comes from the file's JSON sidecar (what `vgen generate` wrote) unless one is given. A file
without a usable prompt, or with a prompt outside the toy world, still gets its video metrics; only a
file that cannot be read or measured is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vgen.errors import VgenError


@dataclass
class FileScore:
    path: Path
    prompt: str
    score: Optional[object] = None  # vgen.toyworld.VideoScore; None without a toy-world prompt
    cuts: Optional[object] = None  # vgen.eval.scenecuts.SceneCuts
    warp: Optional[object] = None  # vgen.eval.warp.WarpMetrics; None for a single frame
    error: str = ""  # the file could not be read or measured
    note: str = ""  # why there is no detector score
    seams: Optional[object] = None  # vgen.eval.seams.Seams; None without a chunk layout
    seam_note: str = ""  # why there is no seam measure
    clip: Optional[float] = None  # CLIP text-video score (x100), when CLIP weights are local

    @property
    def drift(self) -> Optional[float]:
        """Identity drift over the prompted objects that were found; None when none was (not 1.0)."""
        found = [o.drift for o in self.score.objects if o.present] if self.score else []
        return sum(found) / len(found) if found else None

    def to_dict(self) -> dict:
        return {
            "file": str(self.path), "prompt": self.prompt, "error": self.error or None, "note": self.note or None,
            "scene_cuts": self.cuts.to_dict() if self.cuts else None,
            "warp": self.warp.to_dict() if self.warp else None,
            "score": self.score.to_dict() if self.score else None,
            "drift_found": self.drift,
            "seams": self.seams.to_dict() if self.seams else None,
            "seam_note": self.seam_note or None,
            "clip_score": self.clip,
        }


def read_sidecar(path: Path) -> Optional[dict]:
    """The JSON sidecar beside a video, or None when there is none or it is not JSON."""
    sidecar = path.with_suffix(".json")
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def prompt_of(path: Path) -> str:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise VgenError(f"'{path}' has no sidecar {sidecar.name}; pass --prompt")
    try:
        return json.loads(sidecar.read_text())["prompt"]
    except (ValueError, KeyError, TypeError):
        raise VgenError(f"sidecar '{sidecar}' has no prompt; pass --prompt") from None


def check_metric_packages() -> None:
    """Fail once, in one line, when PySceneDetect or OpenCV is missing (rather than once per file)."""
    from vgen.eval.scenecuts import import_scenedetect
    from vgen.eval.warp import import_cv2

    import_cv2()
    import_scenedetect()


def score_file(path: str | Path, prompt: Optional[str] = None, min_scene_len: Optional[int] = None,
               flow: str = "dis", mawe_size: Optional[int] = None, layout: Optional[object] = None,
               clip: Optional[object] = None) -> FileScore:
    """Scene cuts, warp metrics, seams and, for a toy-world prompt, the detector score of one file.

    layout: a vgen.eval.seams.Layout (None: the sidecar's, if it records one); clip: a loaded CLIP scorer
    (vgen.eval.clipscore) or None."""
    from vgen.eval.scenecuts import scene_cuts
    from vgen.eval.seams import layout_from_sidecar, seams, toy_detections
    from vgen.eval.warp import check_flow_method, warp_pairs
    from vgen.toyworld import detect_video, score_video
    from vgen.video import read_video

    path = Path(path)
    check_metric_packages()
    check_flow_method(flow)
    try:
        video = read_video(path)
    except VgenError as err:
        return FileScore(path, prompt or "", error=str(err))
    result = FileScore(path, prompt or "")
    try:
        result.prompt = prompt or prompt_of(path)
    except VgenError as err:
        result.note = str(err)
    det = None
    prompted_colours = None
    if result.prompt:
        try:
            from vgen.toyworld import parse_prompt

            prompted_colours = {s.colour for s in parse_prompt(result.prompt)}
            det = detect_video(video.frames)
            result.score = score_video(det, result.prompt)
        except ValueError as err:
            result.note = f"not a toy-world prompt ({str(err).split(';')[0]}): video metrics only"
    if layout is None:
        sidecar = read_sidecar(path)
        layout = layout_from_sidecar(sidecar) if sidecar else None
    try:
        result.cuts = scene_cuts(video.frames, video.fps, min_scene_len)
        pair_w = None
        if len(video.frames) > 1:
            result.warp, pair_w, _ = warp_pairs(video.frames, flow, size=mawe_size)
        if layout is None:
            result.seam_note = "no chunk layout (the sidecar records none; pass --chunk/--stride)"
        elif len(video.frames) <= layout.chunk:
            result.seam_note = f"one chunk only ({len(video.frames)} frames, first boundary at {layout.chunk})"
        else:
            objects = toy_detections(det, prompted_colours) if det is not None else None
            native_w = pair_w if mawe_size is None else None  # a resized warp error is not in pixels of this video
            result.seams = seams(video.frames, layout, native_w, objects)
    except VgenError as err:
        result.error = str(err)
    if clip is not None and result.prompt and not result.error:
        result.clip = clip(video.frames, result.prompt)
    return result


def _objects(score) -> str:
    return "; ".join(
        f"{o.spec.colour} {o.spec.shape}: {'ok' if o.present else 'missing'}"
        + (f" {o.detected_colour or '?'}/{o.detected_shape or '?'}/{o.motion or '-'}" if o.present else "")
        for o in score.objects
    )


def fmt(value: Optional[float], spec: str = ".2f") -> str:
    """A number, or '-' where it is undefined (None or NaN)."""
    if value is None or value != value:
        return "-"
    return format(value, spec)


def _cuts(cuts) -> str:
    if cuts is None:
        return "-"
    return str(cuts.cuts) + (f" @ {','.join(map(str, cuts.cut_frames))}" if cuts.cut_frames else "")


def _seam_ratios(s) -> str:
    """pixels / object / background ratios, '-' where undefined."""
    if s is None:
        return "-"
    parts = [fmt(s.pixels.ratio, ".1f"), fmt(s.object.ratio if s.object else None, ".1f"),
             fmt(s.background.ratio if s.background else None, ".1f")]
    return "/".join(parts)


def legend(results: list[FileScore], clip_note: str = "") -> str:
    """Which way is better for each measure, and the protocol behind it."""
    from vgen.eval.seams import FLOORS

    lines = []
    cuts = [r.cuts.params for r in results if r.cuts]
    if cuts:
        p = cuts[0]
        lens = ", ".join(str(n) for n in sorted({c["min_scene_len"] for c in cuts}))
        lines.append(f"cuts (lower is better): count @ first frame of each new scene; PySceneDetect {p['scenedetect']} "
                     f"{p['detector']}, defaults (adaptive_threshold {p['adaptive_threshold']}, window_width "
                     f"{p['window_width']}, min_content_val {p['min_content_val']}) except min_scene_len {lens} frames")
    warps = [r.warp for r in results if r.warp]
    if warps:
        w = warps[0]
        flows = ", ".join(sorted({x.flow for x in warps}))
        sizes = ", ".join(sorted({f"{x.frame_size[1]}x{x.frame_size[0]}" + (" (resized)" if x.size else " (native)")
                                  for x in warps}))
        paper = ("comparable with the paper's protocol only up to the flow (RAFT there)" if all(x.size == 720 for x in warps)
                 else "not comparable with the paper's numbers (720x720, RAFT): use --mawe-size 720")
        lines.append(f"MAWE (lower is better) = mean W/({w.c:g}·max(M, {w.min_flow:g} px)); warp err (lower is better) "
                     f"= mean W, MSE of frame i+1 vs warped frame i (0-255); flow {flows} at {sizes}; {paper}")
    if any(r.seams for r in results):
        lines.append(f"seams px/obj/bg (about 1 is seamless, higher is worse): change across chunk boundaries over change "
                     f"inside chunks, for pixels (mean |diff|), the prompted objects' positions (matched frame to frame) and the "
                     f"background grey; "
                     f"floors {FLOORS['pixels']:g}/{FLOORS['object']:g} px/{FLOORS['background']:g}")
    if any(r.score for r in results):
        lines.append("all present / all correct (higher is better): every prompted object found / also with its colour, "
                     "shape and motion; drift (lower is better): fraction of frames a found object is missing or not its "
                     "majority shape, over the objects found ('-' when none is)")
    lines.append(clip_note or "clip (higher is better): CLIP text-image cosine x100, mean over frames")
    return "\n".join(lines)


def results_table(results: list[FileScore]):
    """A rich Table: video metrics for every file, detector columns where the prompt is a toy-world prompt."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="video metrics and toy-world detector (legend below)")
    for name in ("file", "prompt", "cuts", "MAWE", "warp err", "seams", "all present", "all correct",
                 "objects (colour/shape/motion)", "drift", "clip"):
        table.add_column(name, overflow="fold")
    for r in results:
        mawe, werr = (f"{r.warp.mawe:.2f}", f"{r.warp.warp_error:.2f}") if r.warp else ("-", "-")
        head = [escape(str(r.path)), escape(r.prompt), _cuts(r.cuts), mawe, werr, _seam_ratios(r.seams)]
        tail = [fmt(r.clip, ".2f")]
        if r.error:
            table.add_row(*head, "-", "-", f"[red]{escape(r.error)}[/]", "-", *tail)
        elif r.score is None:
            table.add_row(*head, "-", "-", f"[dim]{escape(r.note)}[/]" if r.note else "-", "-", *tail)
        else:
            s = r.score
            table.add_row(*head, str(s.all_present), str(s.all_correct), escape(_objects(s)), fmt(r.drift), *tail)
    return table


def seams_table(results: list[FileScore]):
    """Per file: the chunk layout and each seam measure's boundary / inside / ratio; None when no file has seams."""
    from rich.markup import escape
    from rich.table import Table

    rows = [r for r in results if r.seams]
    if not rows:
        return None
    table = Table(title="seams: jump/step = mean change at boundary pairs / inside chunks (ratio; about 1 is seamless, "
                        "higher is worse); speed: the prompted objects' px/frame (Theil-Sen fit per window) in the first "
                        "chunk -> later chunks (kept: higher is better); step: the mean object step, which counts wobble "
                        "and flicker as motion")
    for name in ("file", "layout", "pixels jump/step", "warp jump/step", "object jump/step px", "bg jump/step",
                 "speed first -> later", "step first -> later", "objects lost/new/reshaped at seams (rate | inside)",
                 "largest jump / median step px"):
        table.add_column(name, overflow="fold")

    def events(e) -> str:
        if e is None:
            return "-"
        rate = "-" if e.boundary_rate is None else f"{100 * e.boundary_rate:.0f}%"
        inside = "-" if e.inside_rate is None else f"{100 * e.inside_rate:.0f}%"
        return f"{e.lost}/{e.appeared}/{e.changed} ({rate} | {inside})"

    def jump(j) -> str:
        return "-" if j is None else f"{j.largest:.1f}/{j.median:.1f} ({j.ratio:.1f}x, frames {j.at}->{j.at + 1})"

    def cell(m) -> str:
        return "-" if m is None else f"{fmt(m.boundary)}/{fmt(m.inside)} ({fmt(m.ratio, '.1f')})"

    for r in rows:
        s = r.seams
        def kept(value) -> str:
            return f" ({fmt(100 * value, '.0f')}%)" if value is not None else ""

        table.add_row(escape(str(r.path)), f"{s.layout.chunk}+{s.layout.stride}k ({len(s.boundaries)} seams, "
                      f"{s.layout.source})", cell(s.pixels), cell(s.warp), cell(s.object), cell(s.background),
                      f"{fmt(s.speed_first)} -> {fmt(s.speed_later)}{kept(s.speed_kept)}",
                      f"{fmt(s.motion_first)} -> {fmt(s.motion_later)}{kept(s.motion_kept)}", events(s.events),
                      jump(s.jump))
    return table
