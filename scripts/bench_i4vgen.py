"""Time one I4VGen video against one vanilla video on the same video model, steps and frames.

    .venv/bin/python scripts/bench_i4vgen.py [--model toy|tiny-random-unet3d|wan-quarter] [--frames 8] [--steps 20]
        [--height H --width W] [--candidates 0] [--repeats 3] [--device cpu] [--json out.json] [key=value ...]

I4VGen's extra work is N anchor images (one batch of N single-frame samples from the video model, or from the
image model with i4vgen.candidate_model=image; then N VAE decodes), the reward over them, NI-VSDS (int(0.6*steps)+1
CFG calls of the video UNet on the sampler's timesteps by default) and a regeneration from t_regen*T. The paper reports 21.7 s -> 53.8 s (2.5x) for
AnimateDiff; the target here is <= 2.5x. Times are the best of --repeats runs of each whole runner (prompt
encoding, sampling, decoding; models already loaded), interleaved, after a warm-up round. The breakdown is of
the fastest I4VGen run, measured by wrapping the runner's own functions (sample_candidates, the reward,
ni_vsds, regenerate, decode_latents) and the family's still_video (on Wan: the anchor decoded, repeated in pixels
and encoded by the causal VAE) with timers for the duration of this script; "other" is the rest (prompt encoding,
noise, model lookups). On Wan: `--model wan-quarter` (the 1.3B layout at a quarter width), at a size a CPU can
time with --height/--width (default: the model's native size). key=value overrides go to the I4VGen job (e.g. i4vgen.iterations=8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import vgen.methods.i4vgen.runner as i4vgen  # noqa: E402
import vgen.methods.i4vgen.rewards as rewards  # noqa: E402
from vgen.config import build_job  # noqa: E402
from vgen.core.sampler import resolve_size  # noqa: E402
from vgen.errors import VgenError  # noqa: E402
from vgen.jobs import ModelCache, RunContext  # noqa: E402
from vgen.methods import load_runner  # noqa: E402

PARTS = ("candidates", "candidate decode", "reward", "still video", "NI-VSDS", "regeneration", "video decode")


class Stopwatch:
    """Seconds per part of the current run; `inside` tells a decode within sample_candidates from the video's."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.parts: dict[str, float] = {}
        self.inside: list[str] = []

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def part(self, name: str):
        self.sync()
        self.inside.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - start
            self.inside.pop()


def timed(watch: Stopwatch, fn, name):
    """fn wrapped so its calls add to `name` (a callable name picks the label from the call context)."""

    def wrapper(*args, **kwargs):
        with watch.part(name() if callable(name) else name):
            return fn(*args, **kwargs)

    return wrapper


def install_timers(watch: Stopwatch, family) -> None:
    """Wrap the runner's module-level functions (and the family's still_video); run() looks them up at call time,
    so it times itself."""
    load_reward = rewards.load_reward
    family.still_video = timed(watch, family.still_video, "still video")
    i4vgen.sample_candidates = timed(watch, i4vgen.sample_candidates, "candidates")
    i4vgen.ni_vsds = timed(watch, i4vgen.ni_vsds, "NI-VSDS")
    i4vgen.regenerate = timed(watch, i4vgen.regenerate, "regeneration")
    i4vgen.decode_latents = timed(watch, i4vgen.decode_latents,
                                  lambda: "candidate decode" if "candidates" in watch.inside else "video decode")
    rewards.load_reward = lambda *a, **k: timed(watch, load_reward(*a, **k), "reward")


def exclusive(parts: dict[str, float]) -> dict[str, float]:
    """Candidate decoding happens inside sample_candidates: count it once, as its own part."""
    out = dict(parts)
    out["candidates"] = out.get("candidates", 0.0) - out.get("candidate decode", 0.0)
    return out


def time_once(job, components, models: ModelCache, watch: Stopwatch) -> tuple[float, dict[str, float]]:
    h, w = resolve_size(components, job.video.height, job.video.width)
    ctx = RunContext(torch.Generator("cpu").manual_seed(job.seed), h, w, Path("unused"), progress=False,
                     load_model=lambda cfg: models.get(job, cfg))
    watch.parts = {}
    watch.sync()
    start = time.perf_counter()
    load_runner(job.method)(job, components, ctx)
    watch.sync()
    return time.perf_counter() - start, exclusive(watch.parts)


def build_jobs(args) -> dict:
    flags = {
        "prompt": args.prompt,
        "model.id": args.model,
        "seed": args.seed,
        "video.frames": args.frames,
        "sampler.steps": args.steps,
        "sampler.guidance": args.guidance,
        "sampler.scheduler": args.scheduler,
        "runtime.device": args.device,
        "runtime.dtype": args.dtype,
    }
    flags.update({f"video.{k}": getattr(args, k) for k in ("height", "width") if getattr(args, k)})
    i4 = {"method": "i4vgen", "i4vgen.candidates": args.candidates, "i4vgen.save_candidates": False}
    return {
        "vanilla": build_job(flags={**flags, "method": "vanilla"}),
        "i4vgen": build_job(flags={**flags, **i4}, overrides=args.overrides),
    }


def print_report(times: dict[str, float], breakdown: dict[str, float]) -> None:
    base, total = times["vanilla"], times["i4vgen"]
    print(f"{'method':<10}{'s / video':>12}{'ratio':>8}")
    for name, seconds in times.items():
        print(f"{name:<10}{seconds:>12.3f}{seconds / base:>8.2f}x")
    print(f"ratio {total / base:.2f}x (paper 2.5x; target <= 2.5x: {'met' if total / base <= 2.5 else 'NOT met'})")
    print(f"\ni4vgen breakdown (fastest run)\n{'part':<18}{'s':>9}{'share':>8}{'x vanilla':>11}")
    for name in PARTS + ("other",):
        seconds = breakdown[name]
        print(f"{name:<18}{seconds:>9.3f}{seconds / total:>8.1%}{seconds / base:>10.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy", help="video model: toy, tiny-random-unet3d or a folder")
    p.add_argument("--prompt", default="a red circle moving left and a blue square moving up")
    p.add_argument("--frames", type=int, default=16, help="16 frames and 25 steps: the paper's AnimateDiff setting")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--scheduler", default="auto", help="auto: DDIM on UNets (the paper's), the model's own on Wan")
    p.add_argument("--height", type=int, default=None, help="frame height (default: the model's native)")
    p.add_argument("--width", type=int, default=None, help="frame width (default: the model's native)")
    p.add_argument("--candidates", type=int, default=0, help="i4vgen.candidates (N anchor images; 0 = the video length, official)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="write the times and the breakdown here")
    p.add_argument("overrides", nargs="*", help="key=value overrides for the I4VGen job")
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    try:
        jobs = build_jobs(args)
        models = ModelCache()
        components = models.get(jobs["vanilla"])
    except VgenError as err:
        sys.exit(f"bench_i4vgen: {err}")
    watch = Stopwatch(components.device.type == "cuda")
    install_timers(watch, components.family)
    cfg = jobs["i4vgen"].i4vgen
    vsds = (f"int({cfg.vsds_fraction}*steps)+1 sampler-timestep" if cfg.vsds_schedule == "sampler"
            else f"{cfg.iterations} linspace")
    dtype = str(components.dtype).removeprefix("torch.")
    print(f"model {args.model} ({components.kind}) on {components.device} {dtype}, "
          f"{args.frames} frames, {args.steps} {args.scheduler} steps, {cfg.candidates or 'one per latent frame'} candidates "
          f"({cfg.image_steps or args.steps} steps), "
          f"{vsds} NI-VSDS iterations, t_regen {cfg.t_regen}, best of {args.repeats}", flush=True)
    times = {name: float("inf") for name in jobs}
    breakdown: dict[str, float] = {}
    try:
        for i in range(args.repeats + 1):  # round-robin, so load from other processes hits both alike; run 0 warms up
            for name, job in jobs.items():
                seconds, parts = time_once(job, components, models, watch)
                if i and seconds < times[name]:
                    times[name] = seconds
                    if name == "i4vgen":
                        breakdown = {**{k: parts.get(k, 0.0) for k in PARTS}, "other": seconds - sum(parts.values())}
    except VgenError as err:
        sys.exit(f"bench_i4vgen: {err}")
    print_report(times, breakdown)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "seconds": times, "i4vgen_breakdown_s": breakdown,
                                               "ratio": times["i4vgen"] / times["vanilla"]}, indent=1))


if __name__ == "__main__":
    main()
