"""Time one video with ZS2 against per-frame sampling on the same image model, steps and frames.

    .venv/bin/python scripts/bench_zs2.py [--model tiny-random-unet2d | wan-quarter] [--frames 8] [--steps 10]
        [--height H --width W] [--device cpu]

per-frame is zs2 with ρ = 0 and μ = 0 (exactly per-frame sampling: an image model's frames, or a Wan model's 1-frame
videos, one latent frame each); vanilla is the vanilla runner (on an image model the same per-frame sampling, on a
video model its own video of the same frame count, 4k+1 on Wan). ZS2's extra work is the AR(1) noise mix (once)
and the K/V mix along frames in every spatial self-attention layer (two small matmuls per layer and step), so the
ratio to per-frame should stay close to 1. Times are the best of --repeats runs of the whole runner (prompt
encoding, denoising, decoding), interleaved, after a warm-up round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vgen.config import build_job  # noqa: E402
from vgen.core.sampler import resolve_size  # noqa: E402
from vgen.jobs import ModelCache, RunContext  # noqa: E402
from vgen.methods import load_runner  # noqa: E402


def time_once(job, components) -> float:
    h, w = resolve_size(components, job.video.height, job.video.width)
    ctx = RunContext(torch.Generator("cpu").manual_seed(job.seed), h, w, Path("unused"), progress=False)
    if components.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    load_runner(job.method)(job, components, ctx)
    if components.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random-unet2d")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--scheduler", default="auto")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--frame-chunk", type=int, default=0, help="also time ZS2 with this many frames per UNet call")
    args = p.parse_args()

    flags = {
        "prompt": "a red circle moving left",
        "model.id": args.model,
        "video.frames": args.frames,
        "sampler.steps": args.steps,
        "sampler.scheduler": args.scheduler,
        "runtime.device": args.device,
        "runtime.dtype": args.dtype,
        **{f"video.{k}": v for k, v in (("height", args.height), ("width", args.width)) if v is not None},
    }
    variants = {"per-frame": {"method": "zs2", "zs2.rho": 0.0, "zs2.momentum": 0.0}, "zs2": {"method": "zs2"},
                "vanilla": {"method": "vanilla"}}
    if args.frame_chunk:
        variants[f"zs2, chunks of {args.frame_chunk}"] = {"method": "zs2", "zs2.frame_chunk": args.frame_chunk}
    models = ModelCache()
    components = models.get(build_job(flags={**flags, "method": "zs2"}))
    h, w = resolve_size(components, args.height, args.width)
    print(f"model {args.model} ({components.kind}) on {components.device} {str(components.dtype).removeprefix('torch.')}, "
          f"{args.frames} frames of {h}x{w}, {args.steps} {args.scheduler} steps, best of {args.repeats}, "
          f"{torch.get_num_threads()} threads")
    jobs = {name: build_job(flags={**flags, **extra}) for name, extra in variants.items()}
    times = {name: float("inf") for name in jobs}
    for i in range(args.repeats + 1):  # round-robin, so load from others hits every variant alike; run 0 warms up
        for name, job in jobs.items():
            seconds = time_once(job, components)
            times[name] = min(times[name], seconds) if i else times[name]
    base = times["per-frame"]
    print(f"{'variant':<24}{'s / video':>12}{'ratio':>8}")
    for name, seconds in times.items():
        print(f"{name:<24}{seconds:>12.3f}{seconds / base:>8.3f}")


if __name__ == "__main__":
    main()
