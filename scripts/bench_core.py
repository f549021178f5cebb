"""Benchmark the toolkit core: our sampling loop vs diffusers' pipeline, and `vgen --help` start-up.

Prints numbers; targets: loop/pipeline time ratio <= 1.05, `vgen --help` < 1 s without importing torch.
Run: .venv/bin/python scripts/bench_core.py [--repeats N] [--model tiny-random-unet3d]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VGEN_PROGRESS", "0")


def bench_loop(model: str, steps: int, frames: int, repeats: int) -> None:
    import torch

    from vgen.config import ModelConfig, build_job
    from vgen.core.sampler import resolve_size
    from vgen.core.schedulers import make_scheduler
    from vgen.jobs import RunContext
    from vgen.methods.vanilla.runner import run
    from vgen.models import load_components

    c = load_components(ModelConfig(id=model), "cpu", "float32")
    h, w = c.native_size
    job = build_job(flags={"prompt": "a red circle moving left", "model.id": model, "sampler.steps": steps, "video.frames": frames, "memory.decode_chunk": frames})

    if c.kind == "unet3d":
        from diffusers import TextToVideoSDPipeline as Pipe

        extra = {}
    else:
        from diffusers import AnimateDiffPipeline as Pipe

        extra = {"motion_adapter": None}
    pipe = Pipe(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=make_scheduler("ddim", c.scheduler), **extra)
    pipe.set_progress_bar_config(disable=True)

    def ours() -> None:
        hh, ww = resolve_size(c, None, None)
        run(job, c, RunContext(torch.Generator().manual_seed(0), hh, ww, Path("unused"), progress=False))

    def theirs() -> None:
        pipe("a red circle moving left", num_frames=frames, height=h, width=w, num_inference_steps=steps, guidance_scale=7.5, generator=torch.Generator().manual_seed(0), output_type="np")

    ours(), theirs()  # warm-up
    times = {"vgen": [], "diffusers": []}
    for _ in range(repeats):  # interleaved, so load changes on the machine hit both alike
        for name, fn in (("vgen", ours), ("diffusers", theirs)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    a, b = statistics.median(times["vgen"]), statistics.median(times["diffusers"])
    print(f"sampling loop, {model} ({c.kind}), {frames} frames {h}x{w}, {steps} DDIM steps, CFG, median of {repeats}:")
    print(f"  vgen      {a:8.3f} s")
    print(f"  diffusers {b:8.3f} s   ({Pipe.__name__})")
    print(f"  ratio vgen/diffusers = {a / b:.3f}   (target <= 1.05)")


def bench_help(repeats: int) -> None:
    vgen = str(Path(sys.executable).parent / "vgen")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([vgen, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    probe = "import sys; from vgen.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    torch_loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"`vgen --help`: median {statistics.median(times):.3f} s over {repeats} runs (target < 1 s); torch imported: {torch_loaded}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random-unet3d")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bench_help(args.repeats)
    for model in dict.fromkeys([args.model, "tiny-random-motion"]):
        bench_loop(model, args.steps, args.frames, args.repeats)


if __name__ == "__main__":
    main()
