"""Vico's end-to-end cost against vanilla sampling: wall time and peak memory, same model, steps and seed.

    .venv/bin/python scripts/bench_vico.py [--steps 50] [--frames 16] [--device cpu|cuda] [--models ...]

Models: tiny-random-unet3d and tiny-random-motion, plus the toy model when vgen/assets/toy exists.
Each (model, method) runs in a fresh subprocess so peak memory is its own: peak RSS growth over the
loaded model on CPU (Linux VmHWM, reset through /proc/self/clear_refs), torch.cuda.max_memory_allocated
on CUDA. Time is the generation only (model loading excluded), best of --repeats. Targets from the
issue: time <= 1.8x, peak memory <= 1.3x vanilla.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = "a red circle moving left and a blue square moving up"


def _rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _rss_now_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(args) -> None:
    """One (model, method): load, warm up once, then time generation and measure its peak memory."""
    import torch

    from vgen.config import build_job
    from vgen.core.sampler import resolve_size
    from vgen.jobs import ModelCache, RunContext
    from vgen.methods import load_runner

    job = build_job(flags={"prompt": args.prompt, "method": args.method, "model.id": args.model,
                           "sampler.steps": args.steps, "video.frames": args.frames, "runtime.device": args.device,
                           "sampler.scheduler": args.scheduler})
    components = ModelCache().get(job)
    h, w = resolve_size(components, None, None)
    runner = load_runner(args.method)
    cuda = components.device.type == "cuda"

    def once():
        ctx = RunContext(generator=torch.Generator("cpu").manual_seed(0), height=h, width=w,
                         output_stem=Path("unused"), progress=False)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        video = runner(job, components, ctx)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, video

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_now_kib() * 1024
    seconds, video = once()
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_peak_kib() * 1024) - base
    times = [seconds] + [once()[0] for _ in range(args.repeats - 1)]
    info = video.metadata.get("vico", {})
    updates = sum(s.get("updates", 0) for s in info.get("steps", []))
    print(json.dumps({"seconds": min(times), "peak_bytes": peak, "updates": updates,
                      "device": str(components.device), "kind": components.kind}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    models = args.models or ["tiny-random-unet3d", "tiny-random-motion"]
    if args.models is None and (ROOT / "vgen" / "assets" / "toy").is_dir():
        models.append("toy")
    print(f"steps={args.steps} frames={args.frames} scheduler={args.scheduler} device={args.device} prompt='{args.prompt}'")
    print(f"{'model':<20} {'vanilla s':>9} {'vico s':>8} {'time x':>7} {'vanilla MiB':>11} {'vico MiB':>9} {'mem x':>6} {'updates':>7}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VGEN_PROGRESS": "0"}
    for model in models:
        res = {}
        for method in ("vanilla", "vico"):
            cmd = [sys.executable, __file__, "--child", "--model", model, "--method", method, "--steps", str(args.steps),
                   "--frames", str(args.frames), "--scheduler", args.scheduler, "--device", args.device,
                   "--repeats", str(args.repeats), "--prompt", args.prompt]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"{model}/{method} failed:\n{out.stderr[-2000:]}")
            res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        v, c = res["vanilla"], res["vico"]
        mib = 1 << 20
        print(f"{model:<20} {v['seconds']:>9.2f} {c['seconds']:>8.2f} {c['seconds'] / v['seconds']:>6.2f}x "
              f"{v['peak_bytes'] / mib:>11.1f} {c['peak_bytes'] / mib:>9.1f} "
              f"{c['peak_bytes'] / max(v['peak_bytes'], 1):>5.2f}x {c['updates']:>7}")


if __name__ == "__main__":
    main()
