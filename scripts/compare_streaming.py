"""Long videos on the toy world: seams, motion and identity of StreamingT2V's modes side by side.

    .venv/bin/python scripts/compare_streaming.py [--model toy] [--prompts 24] [--frames 240] [--steps 20]
        [--guidance 5] [--eta 1] [--seed 0] [--window 16] [--min-scene-len N] [--flow dis|farneback]
        [--modes trained training-free [training-free-dc] independent] [--dc-lock] [--record]
        [--out DIR [--resume | --rescore]] [--json records.json] [--shard I/N] [--threads 1]
    .venv/bin/python scripts/compare_streaming.py --report a.json b.json   # the tables of earlier runs, merged

Prompts: half single-object, half two-object held-out captions with their motions (vgen.toyworld.eval_prompts,
seeded by --seed, so the same flags give the same rows; a smaller --prompts is a prefix of a larger one's rows).
Row i uses seed --seed + i in every mode:
    trained           CAM + APM (only when the model ships streaming weights; otherwise skipped, with a note)
    trained-dc        the same with streaming.trained_dc_lock=true (ours: the chunk's latent mean follows the overlap)
    trained-inpaint   trained-dc with streaming.trained_inpaint=true (ours: the re-covering frames are also held to the
                      previous chunk's latents, the training-free mode's temporal inpainting, while CAM+APM guide)
    training-free     temporal inpainting of the overlap with shared noise, plain (streaming.dc_lock=false;
                      true with --dc-lock)
    training-free-dc  the same with streaming.dc_lock=true (anchor-aware re-noising; what `vgen generate` does)
    independent       chunks with no conditioning (the baseline)
    vanilla           one plain clip of --chunk-frames frames (the model alone, no chunks): its glitch reading
Each video is made by run_job (the same path as `vgen generate`, sidecar included) and read back from its mp4.
Metrics per video (vgen.eval): seams (vgen.eval.seams, chunk layout from the sidecar): the prompted objects'
jump across chunk boundaries against their per-frame step inside chunks (detections matched frame to frame), the same for the background grey level,
in-chunk motion of the later chunks and its share of the first chunk's; identity drift over the objects found,
the background's change from frame 0 to the last, colour+shape kept (whole video, and the last --window
frames); scene cuts (PySceneDetect AdaptiveDetector, defaults except min_scene_len, printed) and MAWE
(OpenCV flow at native size: not comparable with the paper's 720x720 RAFT numbers).

--record writes the trained mode's seam check into the model folder's streaming/config.json (passed when
both ratios are <= vgen.methods.streaming.runner.SEAM_FLOOR, the later chunks keep >= MOTION_KEPT_FLOOR of the
first chunk's motion (seamless by freezing does not pass), and the share of seams where a prompted object is lost,
appears or changes shape is <= max(EVENTS_FLOOR, EVENTS_FACTOR x that share inside chunks)), with every setting that
changes the frames (runner.CHECK_SETTINGS: steps, guidance, eta, scheduler, chunk, cond_frames, anchor guidance and
the memory options; `auto` trusts the memories only at exactly those), from the rows run as the model runs them: trained-inpaint
when the model carries streaming.trained_inpaint and trained_dc_lock, trained-dc with trained_dc_lock alone, else
trained (the model's streaming.cam_scale is recorded too). `streaming.mode=auto` trusts the memories only when that
check passed, and only for jobs with the same trained_dc_lock, trained_inpaint and cam_scale.

Caveat: a toy object moving at 2-3.5 px/frame crosses the 64-px frame in ~20-30 frames, so over long videos a
prompted motion and a kept object pull against each other; the per-size table separates the rows.
--out keeps the mp4s and sidecars (otherwise a temporary folder is used); with --resume, videos already
there with the same settings (the sidecar's resolved config) are scored again but not regenerated, so an
interrupted run can be continued; --rescore only measures the videos already there (a changed metric) and
generates nothing. Generation wall time is printed per mode (for resumed videos: as recorded).
--shard I/N runs only rows i with i % N == I (one process per core, each with its own --json; the same --out is
fine, names are per row), and --report merges their --json files into one table without running anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODES = ("trained", "trained-dc", "trained-inpaint", "training-free", "training-free-dc", "independent", "vanilla")
RUNNER_MODE = {"trained": "trained", "trained-dc": "trained", "trained-inpaint": "trained",
               "training-free": "training-free", "training-free-dc": "training-free", "independent": "independent",
               "vanilla": "independent"}
DEFAULT_MODES = ("trained", "training-free", "independent")


def pick_prompts(n: int, seed: int) -> list[str]:
    """n held-out prompts, singles and pairs alternating (so any prefix is balanced); deterministic in seed."""
    from vgen.toyworld import eval_prompts

    singles, pairs = eval_prompts(1, (n + 1) // 2, seed), eval_prompts(2, n // 2, seed)
    out = []
    for i in range(max(len(singles), len(pairs))):
        out += singles[i : i + 1] + pairs[i : i + 1]
    return out


def make_job(args, prompt: str, seed: int, mode: str, name: str, folder: Path):
    from vgen.config import build_job

    if mode == "vanilla":  # the model alone: one chunk's worth of frames, the same sampler
        return build_job(flags={
            "prompt": prompt, "method": "vanilla", "model.id": args.model, "seed": seed,
            "sampler.steps": args.steps, "sampler.guidance": args.guidance, "video.frames": args.chunk_frames,
            "sampler.eta": args.eta, "runtime.device": args.device, "output.dir": str(folder), "output.name": name,
            "output.overwrite": True})
    return build_job(flags={
        "prompt": prompt, "method": "streaming", "model.id": args.model, "seed": seed,
        "sampler.steps": args.steps, "sampler.guidance": args.guidance, "video.frames": args.frames,
        "sampler.eta": args.eta, "streaming.mode": RUNNER_MODE[mode],
        "streaming.chunk": args.chunk, "streaming.cond_frames": args.cond_frames,
        "streaming.dc_lock": mode == "training-free-dc" or (mode == "training-free" and args.dc_lock),
        "streaming.trained_dc_lock": mode in ("trained-dc", "trained-inpaint"),
        "streaming.trained_inpaint": mode == "trained-inpaint",
        "runtime.device": args.device, "output.dir": str(folder), "output.name": name,
        "output.overwrite": True,  # this script owns its folder: a changed job replaces its old video
    })


def finished(job) -> dict | None:
    """The sidecar of an earlier run of exactly this job (same resolved config), or None."""
    from vgen.config import output_path
    from vgen.jobs import previous_output, sidecar_path

    if not previous_output(job)[0]:
        return None
    return json.loads(sidecar_path(output_path(job)).read_text())


def generate(job, cache, resume: bool, rescore: bool = False) -> tuple[dict | None, bool]:
    """(sidecar, resumed): run the job unless --resume finds it done; with rescore, (None, False) for a job not
    done (nothing is generated)."""
    from vgen.config import output_path
    from vgen.jobs import run_job, sidecar_path

    if (resume or rescore) and (done := finished(job)) is not None:
        return done, True
    if rescore:
        return None, False
    run_job(job, cache, progress=False)
    return json.loads(sidecar_path(output_path(job)).read_text()), False


def measure(path: Path, prompt: str, window: int, min_scene_len: int | None, flow: str, sidecar: dict) -> dict:
    """Every metric of one video file, as a flat record."""
    from vgen.eval.longvideo import colour_shape_kept, window_scores
    from vgen.eval.scenecuts import scene_cuts
    from vgen.eval.seams import Layout, background_levels, layout_from_sidecar, seams, toy_detections
    from vgen.eval.warp import warp_pairs
    from vgen.toyworld import detect_video, parse_prompt, score_video
    from vgen.video import read_video

    video = read_video(path)
    cuts = scene_cuts(video.frames, video.fps, min_scene_len)
    warp, pair_w, _ = warp_pairs(video.frames, flow)
    det = detect_video(video.frames)
    score = score_video(det, prompt)
    windows = window_scores(det, prompt, window)
    layout = layout_from_sidecar(sidecar)
    objects = toy_detections(det, {s.colour for s in parse_prompt(prompt)})  # the prompted objects only
    sm = seams(video.frames, layout, pair_w, objects) if layout else None
    whole = sm if sm is not None else seams(video.frames, Layout(len(video.frames), 1), pair_w, objects)
    ev, jump = whole.events, whole.jump
    bounds = set(whole.boundaries)
    glitch_rec = {
        "boundaries": len(whole.boundaries),
        "ev_lost": ev.lost if ev else None, "ev_appeared": ev.appeared if ev else None,
        "ev_changed": ev.changed if ev else None,
        "ev_boundary_rate": ev.boundary_rate if ev else None, "ev_inside_rate": ev.inside_rate if ev else None,
        "jump_largest": jump.largest if jump else None, "jump_median": jump.median if jump else None,
        "jump_ratio": jump.ratio if jump else None, "jump_over": jump.over if jump else None,
        "jump_at": jump.at if jump else None,
        "jump_at_boundary": (jump.at + 1 in bounds) if jump else None,
    }
    bg = background_levels(video.frames)
    first_obj = [o for o in score.objects if o.present]
    seam_rec = {} if sm is None else {
        "obj_jump": sm.object.boundary if sm.object else None, "obj_step": sm.object.inside if sm.object else None,
        "bg_jump": sm.background.boundary if sm.background else None,
        "bg_step": sm.background.inside if sm.background else None,
        "px_jump": sm.pixels.boundary, "px_step": sm.pixels.inside,
        "motion_first": sm.motion_first, "motion_later": sm.motion_later,
        "speed_first": sm.speed_first, "speed_later": sm.speed_later,
    }
    return {
        **seam_rec, **glitch_rec, "bg_start_end": abs(float(bg[-1] - bg[0])) if len(bg) else None,
        "drift_found": (sum(o.drift for o in first_obj) / len(first_obj)) if first_obj else None,
        "drift_inside": drift_inside(det, first_obj),
        "object_drift": [o.drift if o.present else None for o in score.objects],  # per prompted object, None: not found
        "frames_read": len(video.frames), "scene_cuts": cuts.cuts, "cut_frames": list(cuts.cut_frames),
        "scene_params": cuts.params, "mawe": warp.mawe, "warp_error": warp.warp_error, "flow_std": warp.flow_std,
        "flow": warp.flow, "identity_drift": score.identity_drift, "all_present": score.all_present,
        "colour_shape": colour_shape_kept(score), "all_correct": score.all_correct,
        "window_rate": windows.rate, "last_window_kept": windows.last_kept, "first_lost": windows.first_lost,
        "windows": len(windows.kept),
    }


def drift_inside(det, found) -> float | None:
    """Mean Track.drift_inside over the found prompted objects that are ever away from the border; None if none."""
    values = [det.tracks[o.detected_colour].drift_inside(det.width, det.height) for o in found]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def mean(values) -> float:
    values = [float(v) for v in values]
    return statistics.fmean(values) if values else float("nan")


def median(values) -> float:
    values = [float(v) for v in values]
    return statistics.median(values) if values else float("nan")


SUMMARY_HEADER = (f"{'mode':<20} {'n':>3} {'obj jump':>8} {'step':>5} {'ratio':>5} {'bg jump':>7} {'step':>5} "
                  f"{'ratio':>5} {'speed':>5} {'kept':>5} {'step k':>6} {'drift':>6} {'in':>5} {'all':>5} {'bg 0-end':>8} {'col+shp':>7} {'last ok':>7} "
                  f"{'cuts':>5} {'MAWE':>6} {'MAWE md':>7}")


def _vals(recs: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in recs if r.get(key) is not None]


def ratio(jump: float, step: float, floor: float) -> float:
    return jump / max(step, floor) if jump == jump and step == step else float("nan")


def motion_kept(recs: list[dict], measure: str = "speed") -> tuple[float, float]:
    """(later chunks' mean motion, its share of the first chunk's; nan when the first chunk's is 0), over the videos
    where both are defined. measure speed: the objects' Theil-Sen speed per window (what the seam check uses);
    motion: the mean step inside chunks."""
    both = [r for r in recs if r.get(f"{measure}_first") is not None and r.get(f"{measure}_later") is not None]
    first, later = mean(_vals(both, f"{measure}_first")), mean(_vals(both, f"{measure}_later"))
    return later, later / first if first == first and first > 0 else float("nan")


def summary_row(label: str, recs: list[dict]) -> str:
    """Means per mode (median MAWE too); ratios of the means (jump at boundaries / step inside chunks, with the
    seam measure's floors); kept = later windows' object speed / the first chunk's (step k: the same from the mean
    step); rates in %."""
    from vgen.eval.seams import FLOORS

    oj, os_ = mean(_vals(recs, "obj_jump")), mean(_vals(recs, "obj_step"))
    bj, bs = mean(_vals(recs, "bg_jump")), mean(_vals(recs, "bg_step"))
    later, kept = motion_kept(recs)
    step_kept = motion_kept(recs, "motion")[1]
    return (f"{label:<20} {len(recs):>3} {oj:>8.2f} {os_:>5.2f} {ratio(oj, os_, FLOORS['object']):>5.1f} {bj:>7.2f} "
            f"{bs:>5.2f} {ratio(bj, bs, FLOORS['background']):>5.1f} {later:>5.2f} {kept:>5.0%} {step_kept:>6.0%} "
            f"{mean(_vals(recs, 'drift_found')):>6.3f} {mean(_vals(recs, 'drift_inside')):>5.3f} "
            f"{mean(_vals(recs, 'identity_drift')):>5.3f} "
            f"{mean(_vals(recs, 'bg_start_end')):>8.1f} "
            f"{mean(r['colour_shape'] for r in recs):>7.0%} {mean(r['last_window_kept'] for r in recs):>7.0%} "
            f"{mean(r['scene_cuts'] for r in recs):>5.2f} {mean(r['mawe'] for r in recs):>6.2f} "
            f"{median(r['mawe'] for r in recs):>7.2f}")


LEGEND = ("obj jump / step: the prompted objects' move (px, detections matched frame to frame) across chunk "
          "boundaries / per frame inside chunks, ratio (lower is better, about 1 is seamless; floor 0.25 px); bg jump / "
          "step: the same for the background grey (0-255, floor 0.5);\nspeed: object px/frame in the later chunks "
          "(Theil-Sen fit per window of chunk - cond_frames frames), kept: that over the first chunk's windows' (higher is better; the seam "
          "check's); step k: the same share from the mean step (counts wobble and flicker as motion);\ndrift: fraction "
          "of frames a found object is missing or not its majority shape (lower "
          "is better); in: the same over the frames where it is away from the border (not leaving the frame; "
          "toyworld Track.drift_inside); all: over every prompted object, one never found counting 1 (the detector's "
          "identity_drift);\nbg 0-end: |background grey at the last frame - at frame 0| (lower is better); col+shp: every "
          "object present with its colour and shape over the whole video; last ok: ... in the last window (higher is "
          "better);\ncuts: scene cuts per video (lower is better); MAWE mean / median (lower is better; native size, "
          "OpenCV flow: not comparable with the paper's 720x720 RAFT numbers)")


GLITCH_HEADER = (f"{'mode':<20} {'n':>3} {'seams':>5} {'lost':>5} {'new':>5} {'reshp':>5} {'seam ev':>7} {'in ev':>6} "
                 f"{'jump/md':>7} {'max':>5} {'>3x':>5} {'at seam':>7}")


def glitch_row(label: str, recs: list[dict]) -> str:
    """Objects lost / appearing / reshaped per seam (summed over the videos' seams, per seam), the share of seams
    with any such event and of the pairs inside chunks with one (pooled), the largest single jump over the median
    step (median over videos, max), pairs per video over 3x the median step, share of videos whose largest jump
    is at a seam."""
    seams = sum(r.get("boundaries") or 0 for r in recs)
    per = (lambda key: sum(r.get(key) or 0 for r in recs) / seams) if seams else (lambda key: float("nan"))
    at, inside = event_rates(recs)
    ratios = _vals(recs, "jump_ratio")
    at_seam = [bool(r["jump_at_boundary"]) for r in recs if r.get("jump_at_boundary") is not None]
    return (f"{label:<20} {len(recs):>3} {seams:>5} {per('ev_lost'):>5.2f} {per('ev_appeared'):>5.2f} "
            f"{per('ev_changed'):>5.2f} {at:>7.0%} {inside:>6.0%} "
            f"{median(ratios):>7.1f} {max(ratios, default=float('nan')):>5.1f} {mean(_vals(recs, 'jump_over')):>5.2f} "
            f"{(mean(at_seam) if at_seam else float('nan')):>7.0%}")


GLITCH_LEGEND = ("lost / new / reshp: prompted objects lost, appearing, changing shape across a seam, per seam; seam ev / "
                 "in ev: share of seams / of frame pairs inside chunks with any of them; jump/md: one object's largest "
                 "move in any frame pair over the median step (median over videos; max: the worst video); >3x: pairs "
                 "per video whose largest move is over 3x the median step; at seam: share of videos whose largest jump "
                 "is at a seam")


def print_glitches(records: list[dict], modes: list[str]) -> None:
    print("\nobjects across seams and the largest jump")
    print(GLITCH_HEADER)
    for mode in modes:
        recs = [r for r in records if r["mode"] == mode and "error" not in r and "jump_ratio" in r]
        if recs:
            print(glitch_row(mode, recs))
    print(GLITCH_LEGEND)


def print_tables(records: list[dict], modes: list[str], args) -> None:
    ok = [r for r in records if "error" not in r]
    if not ok:
        print("\nno video was scored")
        return
    p = ok[0]["scene_params"]
    lens = sorted({r["scene_params"]["min_scene_len"] for r in ok})
    print(f"\nmodel={args.model} prompts={args.prompts} frames={args.frames} steps={args.steps} guidance={args.guidance} "
          f"eta={args.eta} seed={args.seed} window={args.window} dc_lock(training-free)={args.dc_lock}")
    print(f"scene cuts: PySceneDetect {p['scenedetect']} {p['detector']}, defaults (adaptive_threshold "
          f"{p['adaptive_threshold']}, window_width {p['window_width']}, min_content_val {p['min_content_val']}) "
          f"except min_scene_len {', '.join(map(str, lens))}; warp: {ok[0]['flow']} flow, MAWE c=9.5")
    print(SUMMARY_HEADER)
    for mode in modes:
        recs = [r for r in ok if r["mode"] == mode]
        if recs:
            print(summary_row(mode, recs))
    print_paired_drift(ok, modes)
    print_paired_intervals(ok, modes)
    print(LEGEND)
    print_glitches(ok, modes)
    print("\nby prompt size")
    print(SUMMARY_HEADER)
    for k in sorted({r["objects"] for r in ok}):
        for mode in modes:
            recs = [r for r in ok if r["mode"] == mode and r["objects"] == k]
            if recs:
                print(summary_row(f"{k} obj {mode}", recs))


def paired_drift(records: list[dict], modes: list[str]) -> tuple[int, dict[str, float]]:
    """Identity drift per mode over the prompted objects that every mode found (same row, same object): the
    found-only mean charges a mode for the objects it keeps and the others lose. (objects, {mode: mean drift})."""
    drift = {(r["mode"], r["row"], k): d for r in records for k, d in enumerate(r.get("object_drift") or [])}
    keys = {(row, k) for _, row, k in drift}
    shared = sorted(key for key in keys if all(drift.get((m, *key)) is not None for m in modes))
    return len(shared), {m: mean(drift[(m, *key)] for key in shared) for m in modes}


def print_paired_drift(records: list[dict], modes: list[str]) -> None:
    count, by_mode = paired_drift(records, modes)
    if count and len(modes) > 1:
        print(f"drift over the {count} prompted objects every mode found: "
              + ", ".join(f"{m} {v:.3f}" for m, v in by_mode.items()))


SEAM_KEYS = ("obj_jump", "obj_step", "bg_jump", "bg_step", "speed_first", "speed_later")
# motion kept is read, as motion_kept does, over the videos where both chunk speeds are defined: two more columns


def seam_row(record: dict) -> list[float]:
    """One video's SEAM_KEYS values (nan: undefined), then its first and later chunk speeds where both are defined."""
    values = [float("nan") if record.get(k) is None else float(record[k]) for k in SEAM_KEYS]
    both = record.get("speed_first") is not None and record.get("speed_later") is not None
    return values + (values[4:6] if both else [float("nan")] * 2)


def seam_stats(sums, counts, floors: dict) -> list[float]:
    """[object ratio, background ratio, motion kept (later / first chunk speed), later speed] from per-column sums and
    counts of seam_row (the means over the videos where each is defined), as summary_row computes them."""
    import numpy as np

    with np.errstate(invalid="ignore", divide="ignore"):
        m = sums / counts
    obj, bg = m[0] / max(m[1], floors["object"]), m[2] / max(m[3], floors["background"])
    kept = m[7] / m[6] if m[6] > 0 else float("nan")
    return [obj, bg, kept, m[5]]


def paired_seam_intervals(records: list[dict], mode: str, base: str, draws: int = 1000, seed: int = 0,
                          level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """The mode's object and background seam ratios and motion kept, and its later-chunk speed as a share of the base
    mode's: (value, low, high), the interval from a paired bootstrap over prompts (each draw resamples the rows with
    replacement and takes both modes' videos of those rows)."""
    import numpy as np

    from vgen.eval.seams import FLOORS

    mine = {r["row"]: r for r in records if r["mode"] == mode and "error" not in r}
    ref = {r["row"]: r for r in records if r["mode"] == base and "error" not in r}
    rows = sorted(set(mine) & set(ref))
    if not rows:
        return {}

    def table(by_row):  # [rows, columns] values (nan: undefined) -> sums and counts under a draw
        return np.array([seam_row(by_row[i]) for i in rows])

    a, b = table(mine), table(ref)

    def stats(counts):
        out = []
        for t in (a, b):
            defined = ~np.isnan(t)
            out.append(seam_stats(counts @ np.where(defined, t, 0.0), counts @ defined, FLOORS))
        return out[0][:3] + [out[0][3] / out[1][3] if out[1][3] > 0 else float("nan")]

    point = stats(np.ones(len(rows)))
    rng = np.random.default_rng(seed)
    samples = np.array([stats(np.bincount(rng.integers(0, len(rows), len(rows)), minlength=len(rows)).astype(float))
                        for _ in range(draws)])
    tail = 100 * (1 - level) / 2
    names = ("obj_ratio", "bg_ratio", "motion_kept", "speed_vs_base")
    result = {"rows": (len(rows), len(rows), len(rows))}
    for j, name in enumerate(names):
        values = samples[:, j][~np.isnan(samples[:, j])]
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
        result[name] = (float(point[j]), float(low), float(high))
    return result


def print_paired_intervals(records: list[dict], modes: list[str], base: str = "independent", draws: int = 1000) -> None:
    """Each streaming mode with its 95% interval, paired with the base mode (chunks with no conditioning) on the same
    prompts and seeds. Targets (issue 35): object and background seam ratios <= 2, motion kept >= 80%."""
    others = [m for m in modes if m not in (base, "vanilla")]
    if base not in modes or not others:
        return
    print(f"\nagainst {base} (same prompts and seeds), 95% interval from a paired bootstrap over prompts ({draws} draws)")
    print(f"{'mode':<18} {'n':>3} {'obj ratio':>20} {'bg ratio':>20} {'kept (later/first)':>20} {'speed vs ' + base:>22}")
    for mode in [base] + others:
        found = paired_seam_intervals(records, mode, base, draws)
        if not found:
            continue
        cells = [f"{v:.2f} [{lo:.2f}, {hi:.2f}]" for v, lo, hi in (found[k] for k in ("obj_ratio", "bg_ratio"))]
        cells += [f"{v:.0%} [{lo:.0%}, {hi:.0%}]" for v, lo, hi in (found[k] for k in ("motion_kept", "speed_vs_base"))]
        print(f"{mode:<18} {found['rows'][0]:>3} {cells[0]:>20} {cells[1]:>20} {cells[2]:>20} {cells[3]:>22}")
    print("targets: obj and bg ratio <= 2, motion kept >= 80% (later chunks' object speed over the first chunk's, and "
          f"over {base}'s later chunks)")


def print_times(records: list[dict], modes: list[str], metric_s: dict[str, float]) -> None:
    print("\nwall time per mode")
    for mode in modes:
        recs = [r for r in records if r["mode"] == mode and "error" not in r]
        if not recs:
            continue
        gen = sum(r["generate_s"] for r in recs)
        resumed = sum(r["resumed"] for r in recs)
        print(f"  {mode:<14} generation {gen:8.1f} s ({gen / len(recs):.1f} s/video, {len(recs)} videos"
              f"{f', {resumed} resumed: as recorded' if resumed else ''}), metrics {metric_s.get(mode, 0.0):.1f} s")
    failed = [r for r in records if "error" in r]
    for r in failed:
        print(f"  FAILED {r['mode']} row {r['row']}: {r['error']}")


def available_modes(args, cache) -> list[str]:
    """The asked modes; trained only when the model ships CAM/APM weights (a printed note otherwise)."""
    from vgen.methods.streaming.runner import streaming_weights

    modes = [m for m in MODES if m in args.modes]
    if {"trained", "trained-dc", "trained-inpaint"} & set(modes):
        components = cache.get(make_job(args, "a red circle", args.seed, "training-free", "probe", Path(".")))
        if streaming_weights(components) is None:
            print(f"trained CAM+APM: skipped ('{args.model}' ships no streaming weights; train them with "
                  "scripts/train_streaming.py)")
            modes = [m for m in modes if not m.startswith("trained")]
    return modes


def run_row(args, cache, folder: Path, row: int, prompt: str, modes: list[str], metric_s: dict) -> list[dict]:
    """One prompt in every mode, same seed; one printed line per video."""
    from vgen.errors import VgenError

    out = []
    seed = args.seed + row
    for mode in modes:
        base = {"row": row, "mode": mode, "prompt": prompt, "objects": prompt.count(" and ") + 1, "seed": seed}
        job = make_job(args, prompt, seed, mode, f"{row:03d}-{mode}", folder)
        try:
            sidecar, resumed = generate(job, cache, args.resume, args.rescore)
            if sidecar is None:  # --rescore: this video was never made
                continue
            t0 = time.perf_counter()
            kept = sidecar["output"] if args.out else None  # a temporary folder is gone after the run
            rec = {**base, "path": kept, "generate_s": sidecar["timings"]["generate_s"],
                   "resumed": resumed, "mode_run": sidecar["method_info"].get("mode"),
                   **measure(Path(sidecar["output"]), prompt, args.window, args.min_scene_len, args.flow, sidecar)}
            metric_s[mode] = metric_s.get(mode, 0.0) + time.perf_counter() - t0
        except (VgenError, ValueError) as err:
            rec = {**base, "error": str(err).splitlines()[0]}
        out.append(rec)
        print(progress_line(rec, len(out) == 1), flush=True)
    return out


def progress_line(r: dict, first: bool) -> str:
    head = f"[{r['row'] + 1:>3} {r['mode']:<13}]"
    if "error" in r:
        return f"{head} FAILED: {r['error']}"
    def f(key: str) -> str:
        return "-" if r.get(key) is None else f"{r[key]:.1f}"

    return (f"{head} {r['generate_s']:6.1f} s{'*' if r['resumed'] else ' '} obj {f('obj_jump')}/{f('obj_step')} bg "
            f"{f('bg_jump')}/{f('bg_step')} cuts {r['scene_cuts']} MAWE {r['mawe']:6.2f} "
            f"drift {r['identity_drift']:.2f} present {'y' if r['all_present'] else 'n'} col+shp "
            f"{'y' if r['colour_shape'] else 'n'} windows {r['window_rate']:4.0%}" + (f"  {r['prompt']}" if first else ""))


def event_rates(recs: list[dict]) -> tuple[float, float]:
    """(share of seams with a prompted object lost, appearing or reshaped, the same share of frame pairs inside
    chunks), pooled over the videos."""
    seams = sum(r.get("boundaries") or 0 for r in recs)
    hits = sum((r.get("ev_boundary_rate") or 0) * (r.get("boundaries") or 0) for r in recs)
    inside_n = [(r["ev_inside_rate"], r["frames_read"] - 1 - (r.get("boundaries") or 0)) for r in recs
                if r.get("ev_inside_rate") is not None]
    total = sum(n for _, n in inside_n)
    return (hits / seams if seams else float("nan"),
            sum(a * n for a, n in inside_n) / total if total else float("nan"))


def record_seam_check(records: list[dict], args) -> None:
    """The trained mode's object and background seam ratios (ratio of the means) into streaming/config.json,
    measured as `vgen generate` runs it on that model: the trained-inpaint rows when the model carries
    streaming.trained_inpaint and trained_dc_lock, trained-dc with trained_dc_lock alone, else the trained rows (the
    check records which)."""
    from vgen.config import build_job
    from vgen.eval.seams import FLOORS
    from vgen.methods.streaming.runner import (EVENTS_FACTOR, EVENTS_FLOOR, MOTION_KEPT_FLOOR, SEAM_FLOOR,
                                               check_settings)

    carried = build_job(flags={"prompt": "a red circle", "method": "streaming", "model.id": args.model})
    dc, inpaint = bool(carried.streaming.trained_dc_lock), bool(carried.streaming.trained_inpaint)
    mode = {(False, False): "trained", (True, False): "trained-dc", (True, True): "trained-inpaint"}.get((dc, inpaint))
    if mode is None:
        print("--record: the model carries streaming.trained_inpaint without trained_dc_lock, which no mode here runs; "
              "nothing recorded")
        return
    recs = [r for r in records if r["mode"] == mode and "error" not in r]
    if not recs:
        print(f"--record: no {mode} video was scored (the model runs the trained mode as {mode}); nothing recorded")
        return
    folder = ROOT / "vgen" / "assets" / "toy" if args.model == "toy" else Path(args.model)
    path = folder / "streaming" / "config.json"
    obj = ratio(mean(_vals(recs, "obj_jump")), mean(_vals(recs, "obj_step")), FLOORS["object"])
    bg = ratio(mean(_vals(recs, "bg_jump")), mean(_vals(recs, "bg_step")), FLOORS["background"])
    kept = motion_kept(recs)[1]
    kept = kept if kept == kept else 0.0  # no motion in the first chunk: nothing shows motion is kept
    events, inside = event_rates(recs)
    events_ok = events == events and events <= max(EVENTS_FLOOR, EVENTS_FACTOR * inside)
    ratios = _vals(recs, "jump_ratio")
    settings = check_settings(make_job(args, "a red circle", args.seed, mode, "probe", Path(".")))
    check = {"passed": bool(obj <= SEAM_FLOOR and bg <= SEAM_FLOOR and kept >= MOTION_KEPT_FLOOR and events_ok),
             "object_ratio": round(obj, 3), "background_ratio": round(bg, 3), "floor": SEAM_FLOOR,
             "motion_kept": round(kept, 3), "motion_kept_floor": MOTION_KEPT_FLOOR, "trained_dc_lock": dc,
             "trained_inpaint": inpaint, "cam_scale": float(carried.streaming.cam_scale),
             "seam_event_rate": round(events, 3), "inside_event_rate": round(inside, 3),
             "event_rule": f"seam event rate <= max({EVENTS_FLOOR}, {EVENTS_FACTOR} x inside event rate)",
             "jump_ratio_median": round(median(ratios), 3), "jump_ratio_max": round(max(ratios, default=float("nan")), 3),
             "settings": settings,
             "measure": "objects matched frame to frame, prompted colours; motion kept from the Theil-Sen speed per "
                        "window of chunk - cond_frames frames; events: prompted objects lost, appearing or changing "
                        "shape from one frame to the next; jump: one object's largest move over the median step",
             "measured": f"scripts/compare_streaming.py --prompts {args.prompts} --frames {args.frames} --steps "
                         f"{args.steps} --guidance {args.guidance} --eta {args.eta} --seed {args.seed} ({len(recs)} "
                         f"{mode} videos)"}
    config = json.loads(path.read_text())
    config["seam_check"] = check
    path.write_text(json.dumps(config, indent=2))
    print(f"recorded in {path}: {check}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--prompts", type=int, default=24, help="rows: half single-object, half two-object prompts")
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--steps", type=int, default=None, help="sampler.steps (default: the model's settings; the toy: 20)")
    ap.add_argument("--guidance", type=float, default=None, help="sampler.guidance (default: the model's settings; the toy: 5)")
    ap.add_argument("--seed", type=int, default=0, help="prompt draw and row i's seed (seed + i)")
    ap.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES,
                    help="training-free-dc: training-free with streaming.dc_lock (anchor-aware re-noising)")
    ap.add_argument("--eta", type=float, default=1.0, help="DDIM eta (StreamingT2V's: 1)")
    ap.add_argument("--chunk-frames", type=int, default=16, help="frames of the vanilla mode's clips (one chunk)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="streaming.chunk (default: the model's settings; on a latent-time model its trained_frames)")
    ap.add_argument("--cond-frames", type=int, default=None, help="streaming.cond_frames (default: the model's settings)")
    ap.add_argument("--dc-lock", action="store_true", help="the training-free mode with streaming.dc_lock=true")
    ap.add_argument("--record", action="store_true",
                    help="write the trained mode's seam check (pass: object and background ratios <= the floor) into "
                         "the model folder's streaming/config.json, which mode=auto reads")
    ap.add_argument("--window", type=int, default=16, help="frames per window of the per-window object score")
    ap.add_argument("--min-scene-len", type=int, default=None,
                    help="PySceneDetect min_scene_len (default: auto, 15 = PySceneDetect's default from 60 frames on)")
    ap.add_argument("--flow", default="dis", choices=("dis", "farneback"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="keep the mp4s and sidecars here")
    ap.add_argument("--resume", action="store_true", help="skip videos already in --out with the same settings")
    ap.add_argument("--rescore", action="store_true",
                    help="measure the videos already in --out (same settings) again and generate nothing: rows or "
                         "modes without a video are left out")
    ap.add_argument("--json", default=None, help="write the per-video records here (after every row)")
    ap.add_argument("--shard", default="0/1", metavar="I/N", help="run rows i with i %% N == I only")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads per process (1: two shards on a 2-core machine ran several times "
                         "slower with 2 threads each)")
    ap.add_argument("--report", nargs="+", default=None, metavar="JSON",
                    help="print the tables of these --json files (merged) and run nothing")
    args = ap.parse_args()
    if args.report:
        report(args.report, args.record)
        return
    index, _, count = args.shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        ap.error(f"--shard must be I/N with 0 <= I < N, got '{args.shard}'")
    args.shard_index, args.shard_count = int(index), int(count)
    if args.record and args.shard_count > 1:
        ap.error("--record needs every row: record from the shards' files with --report FILES --record")
    if (args.resume or args.rescore) and not args.out:
        sys.exit(f"compare_streaming: --{'resume' if args.resume else 'rescore'} needs --out (the folder of the earlier run)")
    if args.model == "toy" and not (ROOT / "vgen" / "assets" / "toy").is_dir():
        sys.exit("compare_streaming: the toy model is missing (vgen/assets/toy); train it first (scripts/train_toy.py) "
                 "or pass --model <folder>")

    import torch

    from vgen.eval.files import check_metric_packages
    from vgen.jobs import ModelCache

    torch.set_num_threads(args.threads)
    check_metric_packages()
    cache = ModelCache()
    modes = available_modes(args, cache)
    prompts = pick_prompts(args.prompts, args.seed)
    with tempfile.TemporaryDirectory(prefix="compare_streaming_") as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        print(f"{len(prompts)} prompts x {len(modes)} modes ({', '.join(modes)}), {args.frames} frames, videos in "
              f"{folder if args.out else 'a temporary folder'}; * = resumed", flush=True)
        records, metric_s, started = [], {}, time.perf_counter()
        rows = [(row, prompt) for row, prompt in enumerate(prompts) if row % args.shard_count == args.shard_index]
        for done, (row, prompt) in enumerate(rows):
            records += run_row(args, cache, folder, row, prompt, modes, metric_s)
            if done == 0 and len(rows) > 1:
                per_row = time.perf_counter() - started
                print(f"  (about {per_row * (len(rows) - 1) / 60:.0f} more minutes at this pace)", flush=True)
            if args.json:  # after every row, so an interrupted shard still reports what it did
                write_records(args, modes, records)
        print_tables(records, modes, args)
        print_times(records, modes, metric_s)
    if args.record:
        record_seam_check(records, args)
    if args.json:
        write_records(args, modes, records)


def write_records(args, modes: list[str], records: list[dict]) -> None:
    settings = {k: v for k, v in vars(args).items() if k != "report"}
    Path(args.json).write_text(json.dumps({"settings": settings, "modes": modes, "records": records}, indent=1))


def report(paths: list[str], record: bool = False) -> None:
    """The tables of earlier runs' --json files (e.g. the shards of one run), merged; they must share settings.
    With record, the merged trained rows' seam check goes into the model folder (as --record)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    keep = ("model", "frames", "steps", "guidance", "seed", "eta", "window", "min_scene_len", "flow", "dc_lock")
    first = {k: runs[0]["settings"].get(k) for k in keep}
    for path, run in zip(paths, runs):
        mine = {k: run["settings"].get(k) for k in keep}
        if mine != first:
            differ = ", ".join(f"{k}: {first[k]} vs {mine[k]}" for k in keep if first[k] != mine[k])
            sys.exit(f"compare_streaming --report: {path} was run with other settings ({differ})")
    records = sorted((r for run in runs for r in run["records"]), key=lambda r: (r["row"], r["mode"]))
    modes = [m for m in MODES if any(m in run["modes"] for run in runs)]
    args = argparse.Namespace(**runs[0]["settings"])
    args.prompts = len({r["row"] for r in records})
    print_tables(records, modes, args)
    print_times(records, modes, {})
    if record:
        record_seam_check(records, args)


if __name__ == "__main__":
    main()
