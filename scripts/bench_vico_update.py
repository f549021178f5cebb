"""What one Vico latent update costs against one vanilla CFG step, per activation-checkpointing policy.

    .venv/bin/python scripts/bench_vico_update.py [--model zeroscope-quarter] [--frames 16] [--threads 1]
        [--repeats 3] [--no-flops]

Vico's end-to-end time is 1 + U * c / N vanilla runs, with U latent updates in N steps (the spec's schedule:
52 in 50 when the loss never falls below the thresholds) and c = one update's cost in CFG steps. This prints c
for each policy (vico.checkpoint / vico.checkpoint_levels), measured, with the peak memory of one update
against one CFG step's (torch profiler, live tensor bytes), and the time ratio it gives for U=52, N=50.

  measured   the model given (default: ZeroScope's layout at a quarter width, random, at its 320x512
             size), on this machine: median time of --repeats, peak memory by the profiler.
  flops      ZeroScope's own UNet config at full width (1.4 B parameters) on the meta device (nothing is
             allocated or computed): FLOPs of one update over one CFG step. Where the work is
             compute-bound (a GPU at 320x512x16) the time ratio follows the FLOP ratio.
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
POLICIES = (("none", False, None), ("all", True, None), ("levels<3", True, 3), ("levels<2", True, 2),
            ("levels<1", True, 1))
ZEROSCOPE_UNET = dict(  # cerspense/zeroscope_v2_576w unet/config.json
    act_fn="silu", attention_head_dim=64, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=32)


def spec_ratio(cost: float, updates: int = 52, steps: int = 50) -> float:
    return 1 + updates * cost / steps


def passes(components, scheduler, latents, prompt, keys, n_tokens, t):
    """(cfg_step, update(policy)) closures on these components: one batch-2 no-grad UNet pass, and one
    Vico measurement with its backward under a checkpointing policy."""
    import torch

    from vgen.config import VicoConfig
    from vgen.methods.vico.recorder import record_attention
    from vgen.core.sampler import predict_noise
    from vgen.methods.vico.guide import VicoGuide

    cond = prompt.cond[:1]
    embeds = torch.cat([prompt.uncond[:1], cond]) if prompt.uncond is not None else torch.cat([cond, cond])

    def cfg_step():
        with torch.no_grad():
            predict_noise(components, torch.cat([latents, latents]), t, embeds)

    def update(checkpoint: bool, levels):
        cfg = VicoConfig(checkpoint=checkpoint, checkpoint_levels=levels)
        with record_attention(components.unet, cfg.graph, stop_when_complete=True, units=cfg.units) as recorder:
            guide = VicoGuide(cfg, components, scheduler, prompt, keys, n_tokens, recorder, 50)
            x = latents.detach().float().clone().requires_grad_(True)
            with torch.enable_grad():
                guide.measure(x, t)[0].backward()

    return cfg_step, update


def measured(args) -> None:
    import torch

    from vgen.config import build_job
    from vgen.core.prompts import prompt_length
    from vgen.core.sampler import resolve_size
    from vgen.jobs import ModelCache, RunContext
    from vgen.methods.vico.runner import prepare
    from bench_vico import profiler_peak_bytes

    if args.threads:
        torch.set_num_threads(args.threads)
    job = build_job(flags={"prompt": PROMPT, "method": "vico", "model.id": args.model, "video.frames": args.frames,
                           "sampler.steps": 50, "runtime.device": args.device})
    c = ModelCache().get(job)
    h, w = resolve_size(c, None, None)
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(0), height=h, width=w, output_stem=Path("unused"),
                     progress=False)
    prompt, scheduler, latents, keys = prepare(job, c, ctx)
    cfg_step, update = passes(c, scheduler, latents, prompt, keys, prompt_length(c.tokenizer, PROMPT),
                              scheduler.timesteps[5])

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    base_t, base_m = timed(cfg_step), profiler_peak_bytes(cfg_step)
    print(f"measured: {args.model} {args.frames}x{h}x{w}, {torch.get_num_threads()} thread(s), {args.device}")
    print(f"  CFG step: {base_t:.3f} s, peak {base_m / 2**20:.0f} MiB")
    print(f"  {'policy':<9} {'update s':>8} {'c (CFG steps)':>13} {'time x (52/50)':>14} {'peak MiB':>8} {'mem x':>6}")
    for name, checkpoint, levels in POLICIES:
        fn = lambda: update(checkpoint, levels)  # noqa: E731
        t, m = timed(fn), profiler_peak_bytes(fn)
        print(f"  {name:<9} {t:>8.3f} {t / base_t:>13.2f} {spec_ratio(t / base_t):>13.2f}x {m / 2**20:>8.0f} "
              f"{m / base_m:>5.2f}x", flush=True)


def flops(args) -> None:
    import torch
    from diffusers import UNet3DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from torch.utils.flop_counter import FlopCounterMode

    from vgen.core.prompts import PromptEmbeds
    from vgen.methods.vico.keys import KeyToken
    from vgen.models import Components

    diffusers_logging.set_verbosity_error()  # .to(float16) warns that no module is kept in float32
    meta = torch.device("meta")
    with meta:
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET).to(torch.float16).eval().requires_grad_(False)
    c = Components(kind="unet3d", name="zeroscope (meta)", tokenizer=None, text_encoder=None, vae=None, unet=unet,
                   scheduler=None, device=meta, dtype=torch.float16)

    class Identity:  # DDIM/DPM++ scale_model_input is the identity
        def scale_model_input(self, x, t):
            return x

    embeds = torch.zeros(2, 77, 1024, device=meta, dtype=torch.float16)
    prompt = PromptEmbeds(cond=embeds[1:], uncond=embeds[:1])
    latents = torch.zeros(1, 4, args.frames, 40, 64, device=meta, dtype=torch.float16)
    keys = [KeyToken("circle", (3,)), KeyToken("square", (10,))]
    cfg_step, update = passes(c, Identity(), latents, prompt, keys, 14, torch.tensor(500, device=meta))

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    base = count(cfg_step)
    print(f"flops: ZeroScope UNet (full width, meta device), {args.frames}x320x512 (latents 40x64), fp16")
    print(f"  CFG step: {base / 1e12:.1f} TFLOP")
    print(f"  {'policy':<9} {'update TFLOP':>12} {'c (CFG steps)':>13} {'time x (52/50)':>14}")
    for name, checkpoint, levels in POLICIES:
        f = count(lambda: update(checkpoint, levels))
        print(f"  {name:<9} {f / 1e12:>12.1f} {f / base:>13.2f} {spec_ratio(f / base):>13.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zeroscope-quarter")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-flops", action="store_true", help="skip the full-width FLOP count")
    ap.add_argument("--no-measure", action="store_true", help="only the FLOP count")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    if not args.no_flops:
        flops(args)
    if not args.no_measure:
        measured(args)


if __name__ == "__main__":
    main()
