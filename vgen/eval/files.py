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

    def to_dict(self) -> dict:
        return {
            "file": str(self.path), "prompt": self.prompt, "error": self.error or None, "note": self.note or None,
            "scene_cuts": self.cuts.to_dict() if self.cuts else None,
            "warp": self.warp.to_dict() if self.warp else None,
            "score": self.score.to_dict() if self.score else None,
        }


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
               flow: str = "dis") -> FileScore:
    """Scene cuts, warp metrics and, for a toy-world prompt, the detector score of one file."""
    from vgen.eval.scenecuts import scene_cuts
    from vgen.eval.warp import check_flow_method, warp_metrics
    from vgen.toyworld import score_video
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
    if result.prompt:
        try:
            result.score = score_video(video.frames, result.prompt)
        except ValueError as err:
            result.note = f"not a toy-world prompt ({str(err).split(';')[0]}): video metrics only"
    try:
        result.cuts = scene_cuts(video.frames, video.fps, min_scene_len)
        result.warp = warp_metrics(video.frames, flow) if len(video.frames) > 1 else None
    except VgenError as err:
        result.error = str(err)
    return result


def _objects(score) -> str:
    return "; ".join(
        f"{o.spec.colour} {o.spec.shape}: {'ok' if o.present else 'missing'}"
        + (f" {o.detected_colour or '?'}/{o.detected_shape or '?'}/{o.motion or '-'}" if o.present else "")
        for o in score.objects
    )


def _caption(results: list[FileScore]) -> str:
    """The settings behind the numbers: detector parameters and the flow used."""
    cuts = [r.cuts.params for r in results if r.cuts]
    flows = sorted({r.warp.flow for r in results if r.warp})
    if not cuts:
        return ""
    p = cuts[0]
    lens = ", ".join(str(n) for n in sorted({c["min_scene_len"] for c in cuts}))
    text = (f"cuts: PySceneDetect {p['scenedetect']} {p['detector']}, defaults (adaptive_threshold {p['adaptive_threshold']}, "
            f"window_width {p['window_width']}, min_content_val {p['min_content_val']}) except min_scene_len {lens} frames")
    if flows:
        w = next(r.warp for r in results if r.warp)
        text += (f"\nMAWE = mean W/({w.c:g}·max(M, {w.min_flow:g} px)); warp err = mean W, MSE of frame i+1 vs warped "
                 f"frame i (0-255); flow {', '.join(flows)}")
    return text


def results_table(results: list[FileScore]):
    """A rich Table: video metrics for every file, detector columns where the prompt is a toy-world prompt."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="video metrics and toy-world detector", caption=_caption(results) or None)
    for name in ("file", "prompt", "cuts", "MAWE", "warp err", "all present", "all correct",
                 "objects (colour/shape/motion)", "drift"):
        table.add_column(name, overflow="fold")
    for r in results:
        cuts = str(r.cuts.cuts) if r.cuts else "-"
        mawe, werr = (f"{r.warp.mawe:.2f}", f"{r.warp.warp_error:.2f}") if r.warp else ("-", "-")
        head = [escape(str(r.path)), escape(r.prompt), cuts, mawe, werr]
        if r.error:
            table.add_row(*head, "-", "-", f"[red]{escape(r.error)}[/]", "-")
        elif r.score is None:
            table.add_row(*head, "-", "-", f"[dim]{escape(r.note)}[/]" if r.note else "-", "-")
        else:
            s = r.score
            table.add_row(*head, str(s.all_present), str(s.all_correct), escape(_objects(s)), f"{s.identity_drift:.2f}")
    return table
