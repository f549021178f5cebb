"""`toy` against `toy-wan`: the time `vgen generate` spends per video (model load, then text + denoising with CFG +
decode through the vanilla runner), the same prompt, steps and guidance; frames 8 on toy and 9 / 17 on toy-wan
(the frame counts each model is evaluated at). Median of --repeats, wall and CPU time of this process.

    python scripts/bench_toy_wan.py [--wan vgen/assets/toy-wan] [--steps 20] [--repeats 3] [--threads 1]

On a shared machine, wall time depends on the load: read the CPU column beside it.
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


def bench(model: str, frames: int, args) -> dict:
    import torch

    from vgen.config import ModelConfig, build_job
    from vgen.core.sampler import resolve_size
    from vgen.jobs import RunContext
    from vgen.methods.vanilla.runner import run
    from vgen.models import load_components

    t0, c0 = time.perf_counter(), time.process_time()
    c = load_components(ModelConfig(id=model), "cpu", torch.float32)
    load = (time.perf_counter() - t0, time.process_time() - c0)
    h, w = resolve_size(c, None, None)
    job = build_job(flags={"prompt": PROMPT, "model.id": model, "sampler.steps": args.steps, "video.frames": frames,
                           "sampler.guidance": 5.0, "seed": 0,
                           "sampler.scheduler": "auto"}, presets=False)
    walls, cpus = [], []
    for _ in range(args.repeats):
        ctx = RunContext(generator=torch.Generator("cpu").manual_seed(0), height=h, width=w,
                         output_stem=Path("unused"), progress=False)
        t0, c0 = time.perf_counter(), time.process_time()
        video = run(job, c, ctx).frames
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    params = sum(p.numel() for p in c.unet.parameters())
    return {"model": model, "kind": c.kind, "frames": video.shape[0], "size": f"{h}x{w}", "denoiser_params": params,
            "load_s": load[0], "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
            "steps_per_s": args.steps / statistics.median(walls)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", default="toy")
    ap.add_argument("--wan", default="toy-wan")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    rows = [bench(a.toy, 8, a), bench(a.wan, 9, a), bench(a.wan, 17, a)]
    print(f"{a.steps} steps, guidance 5, {a.threads} thread(s), median of {a.repeats}")
    print(f"{'model':<28} {'kind':<7} {'frames':>6} {'size':>6} {'params':>9} {'load s':>7} {'wall s':>7} "
          f"{'cpu s':>7} {'steps/s':>8}")
    for r in rows:
        name = r["model"] if len(r["model"]) <= 28 else "..." + r["model"][-25:]
        print(f"{name:<28} {r['kind']:<7} {r['frames']:>6} {r['size']:>6} {r['denoiser_params']:>9,} "
              f"{r['load_s']:>7.2f} {r['wall_s']:>7.2f} {r['cpu_s']:>7.2f} {r['steps_per_s']:>8.1f}")


if __name__ == "__main__":
    main()
