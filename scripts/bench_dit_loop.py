"""vgen's vanilla loop against diffusers' WanPipeline / LTXPipeline on the benchmark-size random models (wan-quarter,
ltx-quarter): the same job end to end (text, denoising with CFG, decode), interleaved, median of --repeats.

    python scripts/bench_dit_loop.py [--models wan-quarter ltx-quarter] [--frames 9] [--height 128 --width 224]
        [--steps 4] [--repeats 5] [--device cpu] [--dtype float32]

Target: ours <= 1.02x the pipeline's time. Also prints the largest frame difference (grey levels).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a red circle moving left and a blue square moving up"


def bench(model: str, args) -> dict:
    import numpy as np
    import torch

    from vgen.config import ModelConfig, build_job
    from vgen.core.sampler import to_uint8
    from vgen.jobs import RunContext
    from vgen.methods.vanilla.runner import run
    from vgen.models import load_components

    device = torch.device(args.device)
    c = load_components(ModelConfig(id=model), device, args.dtype)
    job = build_job(flags={"prompt": PROMPT, "model.id": model, "sampler.steps": args.steps, "video.frames": args.frames,
                           "video.height": args.height, "video.width": args.width, "sampler.guidance": 5.0,
                           "seed": 0}, presets=False)
    pipe = c.family.pipeline(c)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ours():
        ctx = RunContext(generator=torch.Generator("cpu").manual_seed(0), height=args.height, width=args.width,
                         output_stem=Path("unused"), progress=False)
        return run(job, c, ctx).frames

    def theirs():
        out = pipe(PROMPT, num_frames=args.frames, height=args.height, width=args.width, num_inference_steps=args.steps,
                   guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(0), output_type="np").frames[0]
        return to_uint8(torch.from_numpy(np.asarray(out)))

    def timed(fn):
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else float("nan")
        # on a CPU shared with other work the process's CPU seconds are the steadier measure
        return (time.perf_counter() - t0) if device.type == "cuda" else (time.process_time() - c0), peak, out

    timed(ours), timed(theirs)  # warm-up
    ts_o, ts_p, peaks_o, peaks_p = [], [], [], []
    for _ in range(args.repeats):
        t, m, a = timed(ours)
        ts_o.append(t), peaks_o.append(m)
        t, m, b = timed(theirs)
        ts_p.append(t), peaks_p.append(m)
    diff = int(np.abs(a.astype(int) - b.astype(int)).max())
    return {"model": model, "family": c.kind, "ours_s": statistics.median(ts_o), "pipe_s": statistics.median(ts_p),
            "ours_mib": max(peaks_o), "pipe_mib": max(peaks_p), "max_diff": diff, "frames": a.shape[0],
            "pipeline": type(pipe).__name__}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["wan-quarter", "ltx-quarter"])
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    what = "wall seconds" if args.device.startswith("cuda") else "CPU seconds of the process (time.process_time)"
    print(f"vanilla vs diffusers pipeline, {args.frames} frames {args.height}x{args.width}, {args.steps} steps, CFG 5, "
          f"{args.device} {args.dtype}, {torch.get_num_threads()} threads, {what}, median of {args.repeats} (interleaved)")
    print(f"{'model':<18} {'pipeline':<13} {'ours s':>8} {'pipe s':>8} {'ratio':>6} {'ours MiB':>9} {'pipe MiB':>9} {'max diff':>8}")
    rows = []
    for model in args.models:
        r = bench(model, args)
        rows.append(r)
        print(f"{r['model']:<18} {r['pipeline']:<13} {r['ours_s']:>8.3f} {r['pipe_s']:>8.3f} "
              f"{r['ours_s'] / r['pipe_s']:>5.3f}x {r['ours_mib']:>9.0f} {r['pipe_mib']:>9.0f} {r['max_diff']:>8}", flush=True)
    return rows


if __name__ == "__main__":
    main()
