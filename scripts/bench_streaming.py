"""StreamingT2V's cost as videos get longer: seconds per generated frame and peak memory should stay flat.

    .venv/bin/python scripts/bench_streaming.py [--frames 64 256 1024 | --quick] [--model toy] [--mode auto]
        [--steps 4] [--guidance 5] [--modes-at 64] [--threads 1] [--device cpu] [--json out.json]

Only one chunk is ever in memory and decoded frames go straight into the mp4 (written to a temporary
folder), so the cost per chunk and the peak memory should not depend on the length. Each length runs in a
fresh subprocess, so its peak is its own: the child loads the model (and the CAM/APM weights when the mode
uses them), reads ru_maxrss (the baseline: Python, torch and the weights), makes a two-chunk warm-up video
(first-call costs out of the timing, and one chunk's full working set touched), reads ru_maxrss again, then
makes the timed video and reads the peak. Growth = peak - baseline (never the weights); ">warm" = peak -
RSS after the warm-up, which stays near 0 when memory does not grow with length. RSS includes what glibc
keeps of freed tensors, so the same work can read ~10 MiB apart in two processes (the table shows how much
the identical warm-up varied); on CUDA torch.cuda.max_memory_allocated is added.

Time: wall seconds and this process's CPU seconds (user + system; ffmpeg encodes in its own process) of the
timed video. On a shared machine wall time swings with the load; CPU time much less. The first chunk makes
F = 16 frames, every other one F - F_cond = 8, so even at a perfectly flat cost per chunk, 64 frames
(7 chunks) cost 12% less per frame than 1024 (127 chunks): the expected spread is printed beside the
measured one, with a fit seconds = fixed + per_chunk · chunks that separates per-video costs (prompt,
ffmpeg) from the chunks. Targets: s/frame within 10% across lengths; peak memory flat.

--quick runs 64/128/256 frames (what `make bench` runs: about 2 minutes on a busy 2-core CPU with the toy
model; the default 64/256/1024 about 5). After the first length the others' times are estimated and
printed before they run. Then --modes-at frames are timed in the training-free and independent modes
(and trained, when the model ships CAM/APM weights).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = "a red circle moving left and a blue square moving up"
FULL, QUICK = [64, 256, 1024], [64, 128, 256]
MIB = 1 << 20


def rss_bytes() -> int:
    """Peak resident set of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process: less disturbed than wall time by other jobs on the machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(args) -> None:
    """One length in this fresh process: load, baseline, warm-up, timed run; prints one JSON line."""
    import torch

    from vgen.config import build_job
    from vgen.core.sampler import resolve_size
    from vgen.jobs import ModelCache, RunContext
    from vgen.methods import load_runner
    from vgen.methods.streaming.runner import check_settings, chunk_count, resolve_mode, streaming_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    flags = {"prompt": args.prompt, "method": "streaming", "model.id": args.model, "sampler.steps": args.steps,
             "sampler.guidance": args.guidance, "streaming.mode": args.mode, "runtime.device": args.device,
             "streaming.chunk": args.chunk, "streaming.cond_frames": args.cond_frames, "video.height": args.height,
             "video.width": args.width}
    job = build_job(flags={**flags, "video.frames": args.frames[0]})
    t0 = time.perf_counter()
    components = ModelCache().get(job)
    mode = resolve_mode(args.mode, components, check_settings(job, components.family))  # loads CAM/APM weights now, so they count in the baseline
    load_s = time.perf_counter() - t0
    h, w = resolve_size(components, args.height, args.width)
    cuda = components.device.type == "cuda"
    runner = load_runner("streaming")
    cfg = job.streaming

    def run(frames: int, folder: str, name: str):
        j = build_job(flags={**flags, "video.frames": frames})
        ctx = RunContext(torch.Generator("cpu").manual_seed(0), h, w, Path(folder) / name, progress=False)
        return runner(j, components, ctx)

    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as folder:
        baseline = rss_bytes()
        run(warmup_frames(components, job), folder, "warmup")
        warm = rss_bytes()
        cpu0 = cpu_seconds()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated() if cuda else 0
        t0 = time.perf_counter()
        video = run(args.frames[0], folder, "video")
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        cpu_s = cpu_seconds() - cpu0
        mp4_bytes = video.path.stat().st_size
    peak = rss_bytes()
    chunks = video.metadata.get("chunks") or chunk_count(args.frames[0], cfg.chunk, cfg.cond_frames)
    chunk = video.metadata.get("chunk", cfg.chunk)
    print(json.dumps({
        "frames": args.frames[0], "mode": mode, "chunks": chunks, "chunk": chunk, "cond_frames": cfg.cond_frames,
        "latent_time": bool(video.metadata.get("latent_time")),
        "new_frames": (video.metadata.get("layout") or {}).get("stride", cfg.chunk - cfg.cond_frames),
        "seconds": seconds, "s_per_frame": seconds / args.frames[0], "s_per_chunk": seconds / chunks,
        "load_s": load_s, "rss_baseline": baseline, "rss_peak": peak, "rss_growth": peak - baseline,
        "rss_warm": warm, "cpu_s": cpu_s, "cpu_s_per_chunk": cpu_s / chunks,
        "gpu_peak": (torch.cuda.max_memory_allocated() - gpu_base) if cuda else None,
        "size": [h, w], "mp4_bytes": mp4_bytes, "device": str(components.device), "threads": torch.get_num_threads(),
        "has_weights": streaming_weights(components) is not None,
    }))


def warmup_frames(components, job) -> int:
    """Two chunks' worth of frames: the first chunk and one conditioned chunk (in latent time on Wan: two windows)."""
    cfg = job.streaming
    if not components.family.latent_time:
        return cfg.chunk + (cfg.chunk - cfg.cond_frames)
    from vgen.methods.streaming.latent import chunk_frames, plan
    from vgen.sizes import trained_frames_of

    p = plan(components, 1, chunk_frames(job, trained_frames_of(job.model.id)), cfg.cond_frames)
    return components.family.decoded_frames(components, 2 * p.chunk - p.overlap)


def load_average() -> float:
    return os.getloadavg()[0]


def measure(args, frames: int, mode: str) -> dict:
    """Run one length in a fresh subprocess; its JSON line back."""
    cmd = [sys.executable, __file__, "--child", "--frames", str(frames), "--mode", mode, "--model", args.model,
           "--steps", str(args.steps), "--guidance", str(args.guidance), "--device", args.device,
           "--threads", str(args.threads), "--prompt", args.prompt]
    cmd += [item for key in ("chunk", "cond_frames", "height", "width") if getattr(args, key) is not None
            for item in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VGEN_PROGRESS": "0"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    load = load_average()
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"bench_streaming: {frames} frames ({mode}) failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {**result, "load_avg": load, "child_s": time.perf_counter() - t0}


def estimate_s(first: dict, frames: int) -> tuple[float, float]:
    """(timed video, whole child) seconds for `frames`, from the first child: same s/chunk, load and warm-up."""
    from vgen.methods.streaming.runner import chunk_count

    video = chunk_count(frames, first["chunk"], first["cond_frames"]) * first["s_per_chunk"]
    return video, first["child_s"] - first["seconds"] + video


def row(label: str, r: dict) -> str:
    gpu = f"{r['gpu_peak'] / MIB:>8.1f}" if r.get("gpu_peak") is not None else f"{'-':>8}"
    return (f"{label:<14} {r['frames']:>6} {r['chunks']:>6} {r['seconds']:>8.1f} {r['s_per_frame']:>8.4f} "
            f"{r['s_per_chunk']:>8.3f} {r['cpu_s'] / r['frames']:>9.4f} {r['rss_peak'] / MIB:>9.1f} "
            f"{r['rss_baseline'] / MIB:>9.1f} {r['rss_growth'] / MIB:>8.1f} {(r['rss_peak'] - r['rss_warm']) / MIB:>8.1f} "
            f"{gpu} {r['load_avg']:>5.1f}")


HEADER = (f"{'mode':<14} {'frames':>6} {'chunks':>6} {'seconds':>8} {'s/frame':>8} {'s/chunk':>8} {'cpu s/fr':>9} "
          f"{'peak MiB':>9} {'base MiB':>9} {'grow MiB':>8} {'>warm':>8} {'GPU MiB':>8} {'load':>5}")
LEGEND = ("seconds: wall time of the timed video; cpu s/fr: this process's CPU seconds per frame (ffmpeg aside), "
          "steadier than wall time on a busy machine;\npeak: ru_maxrss; base: after loading the model; grow: peak - base; "
          ">warm: peak - RSS after the two-chunk warm-up; load: 1-minute load average at the start")


def verdict(spread: float) -> str:
    return "ok" if spread <= 0.10 else "MISSED"


def spread(values: list[float]) -> float:
    """max / min - 1: how far apart the flattest-should-be numbers are."""
    return max(values) / min(values) - 1


def fit(results: list[dict], key: str) -> tuple[float, float]:
    """Least-squares results[key] = fixed + per_chunk · chunks over the lengths: what a constant cost per chunk predicts."""
    import numpy as np

    slope, intercept = np.polyfit([r["chunks"] for r in results], [r[key] for r in results], 1)
    return float(slope), float(intercept)


def time_lines(results: list[dict]) -> list[str]:
    """s/frame spread (wall and CPU) against what the chunk plan alone explains, and the per-chunk fit."""
    plan = spread([r["chunks"] / r["frames"] for r in results])
    wall = spread([r["s_per_frame"] for r in results])
    cpu = spread([r["cpu_s"] / r["frames"] for r in results])
    new_frames = results[0].get("new_frames", results[0]["chunk"] - results[0]["cond_frames"])
    wall_chunk = spread([r["s_per_chunk"] for r in results])
    cpu_chunk = spread([r["cpu_s_per_chunk"] for r in results])
    lines = [f"s/frame within 10% across lengths: wall spread {wall:.1%} -> {verdict(wall)}, CPU spread {cpu:.1%} -> "
             f"{verdict(cpu)} (the chunk plan alone explains {plan:.1%}: the first chunk makes "
             f"{results[0]['chunk']} frames, later ones {new_frames})",
             f"  per chunk (what the runner controls): wall spread {wall_chunk:.1%} -> {verdict(wall_chunk)}, "
             f"CPU spread {cpu_chunk:.1%} -> {verdict(cpu_chunk)}"]
    for key, name in (("seconds", "wall"), ("cpu_s", "CPU")):
        per_chunk, fixed = fit(results, key)
        lines.append(f"  {name} fit: {per_chunk:.3f} s per chunk + {fixed:.2f} s per video (prompt, ffmpeg start/finish); "
                     f"long videos tend to {per_chunk / new_frames:.4f} s/frame")
    return lines


def mib_range(values: list[int]) -> str:
    return f"{min(values) / MIB:.1f}-{max(values) / MIB:.1f} MiB"


def memory_lines(results: list[dict]) -> list[str]:
    """Peak RSS flat: nothing grows past the warm-up's peak; the warm-up's own spread is the noise floor."""
    growth = [r["rss_growth"] for r in results]
    beyond = [r["rss_peak"] - r["rss_warm"] for r in results]
    warm = [r["rss_warm"] - r["rss_baseline"] for r in results]
    tolerance = 0.10 * min(growth)
    short, long = min(results, key=lambda r: r["frames"]), max(results, key=lambda r: r["frames"])
    h, w = long["size"]
    extra = (long["frames"] - short["frames"]) * h * w * 3
    flat = "ok" if max(beyond) <= tolerance else "MISSED"
    lines = [f"peak memory flat (no length grows RSS past the warm-up's peak by more than 10% of the growth, "
             f"{tolerance / MIB:.1f} MiB): at most {max(beyond) / MIB:.1f} MiB -> {flat}",
             f"  peak RSS {mib_range([r['rss_peak'] for r in results])}, growth over the loaded model "
             f"{mib_range(growth)}; the same warm-up grew {mib_range(warm)} in these processes (allocator noise)",
             f"  for scale: the extra {long['frames'] - short['frames']} frames of the longest video as uint8 take "
             f"{extra / MIB:.1f} MiB"]
    gpu = [r["gpu_peak"] for r in results if r.get("gpu_peak") is not None]
    if gpu:
        lines.append(f"  GPU peak above the loaded model: {mib_range(gpu)}, spread {spread(gpu):.1%} -> "
                     f"{verdict(spread(gpu))} (flat within 10%)")
    return lines


def targets(results: list[dict]) -> list[str]:
    if len(results) < 2:
        return ["targets need at least two lengths"]
    return time_lines(results) + memory_lines(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=None, help=f"lengths (default {FULL})")
    ap.add_argument("--quick", action="store_true", help=f"lengths {QUICK}: a few minutes on a loaded 2-core CPU")
    ap.add_argument("--model", default="toy")
    ap.add_argument("--mode", default="auto", choices=("auto", "trained", "training-free", "independent"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--modes-at", type=int, default=None, help="length at which every mode is timed (default: shortest)")
    ap.add_argument("--no-modes", action="store_true", help="skip the per-mode comparison")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each run (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk", type=int, default=None, help="streaming.chunk (default: the model's)")
    ap.add_argument("--cond-frames", type=int, default=None, help="streaming.cond_frames (default: the model's)")
    ap.add_argument("--height", type=int, default=None, help="video height (default: the model's native)")
    ap.add_argument("--width", type=int, default=None, help="video width (default: the model's native)")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.model == "toy" and not (ROOT / "vgen" / "assets" / "toy").is_dir():
        sys.exit("bench_streaming: the toy model is missing (vgen/assets/toy); train it (scripts/train_toy.py) or pass --model")
    lengths = sorted(set(args.frames or (QUICK if args.quick else FULL)))
    setting = "--quick" if args.quick and not args.frames else ("--frames" if args.frames else "full")
    print(f"StreamingT2V scaling ({setting}: {' '.join(map(str, lengths))} frames): model={args.model} mode={args.mode} "
          f"steps={args.steps} guidance={args.guidance} device={args.device} threads={args.threads} "
          f"prompt='{args.prompt}'", flush=True)
    print("each length in a fresh process; 'load' is the 1-minute load average when it started\n")
    results = [measure(args, lengths[0], args.mode)]
    first = results[0]
    if len(lengths) > 1:
        print("estimated from the first length (video / with loading and warm-up): " + ", ".join(
            "{} frames ~{:.0f} s / ~{:.0f} s".format(n, *estimate_s(first, n)) for n in lengths[1:]) + "\n", flush=True)
    print(HEADER)
    print(row(first["mode"], first), flush=True)
    for n in lengths[1:]:
        results.append(measure(args, n, args.mode))
        print(row(results[-1]["mode"], results[-1]), flush=True)
    print(LEGEND)
    print("\ntargets:\n  " + "\n  ".join(targets(results)))
    modes = []
    if not args.no_modes:
        at = args.modes_at or lengths[0]
        names = (["trained"] if first["has_weights"] else []) + ["training-free", "independent"]
        print(f"\nmodes at {at} frames" + ("" if first["has_weights"] else
                                            f" (trained skipped: '{args.model}' ships no CAM/APM weights)"))
        print(HEADER)
        for mode in names:
            same = next((r for r in results if r["frames"] == at and r["mode"] == mode), None)
            modes.append(same or measure(args, at, mode))
            print(row(mode, modes[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "lengths": results, "modes": modes}, indent=1))


if __name__ == "__main__":
    main()
