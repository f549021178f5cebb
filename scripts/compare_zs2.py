"""Compare video sampling from one image model: per-frame, Text2Video-Zero and ZS2, scored in the toy world.

    .venv/bin/python scripts/compare_zs2.py [--model toy-t2i] [--prompts 6] [--seeds 2] [--frames 8] [--steps 20]

Each prompt x seed is sampled three ways on the same components and DDIM steps:
  per-frame   vanilla runner: every frame an independent image (iid noise)
  t2v-zero    diffusers TextToVideoZeroPipeline: cross-frame attention to frame 0 + latent warping
              (motion field scaled from its SD default of 12 latent pixels at 64 wide; t0/t1 at 88%/94% of steps)
  zs2         the zs2 runner with the given λ and μ
Columns (means over videos): frame change = mean |frame_{i+1} - frame_i| / 255 (lower is steadier); warp err =
mean squared error (0-255) between frame i+1 and frame i warped onto it by OpenCV DIS optical flow, and MAWE =
mean warp err / (9.5 · flow magnitude) as in StreamingT2V (vgen.eval.warp; lower is more consistent); drift =
the detector's identity drift of prompted objects; present / colour / shape = fraction of prompted objects
found / in the right colour / of the right shape (motion is not judged: an image model has no motion prior).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=UserWarning)  # torch warnings from inside the t2v-zero pipeline

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vgen.config import build_job  # noqa: E402
from vgen.core.sampler import resolve_size, to_uint8  # noqa: E402
from vgen.core.schedulers import make_scheduler  # noqa: E402
from vgen.errors import VgenError  # noqa: E402
from vgen.eval import warp_metrics  # noqa: E402
from vgen.jobs import ModelCache, RunContext  # noqa: E402
from vgen.methods import load_runner  # noqa: E402
from vgen.toyworld import eval_prompts, score_video  # noqa: E402


def run_method(job, components) -> np.ndarray:
    h, w = resolve_size(components, job.video.height, job.video.width)
    ctx = RunContext(torch.Generator("cpu").manual_seed(job.seed), h, w, Path("unused"), progress=False)
    return load_runner(job.method)(job, components, ctx).frames


def run_t2v_zero(job, components, motion: float) -> np.ndarray:
    from diffusers import TextToVideoZeroPipeline

    h, w = resolve_size(components, job.video.height, job.video.width)
    steps = job.sampler.steps
    t1 = min(int(0.94 * steps), steps - 1)
    t0 = min(int(0.88 * steps), t1 - 1)
    if t0 < 0:
        raise SystemExit("t2v-zero needs at least 2 steps")
    pipe = TextToVideoZeroPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=make_scheduler("ddim", components.scheduler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    saved = dict(components.unet.attn_processors)  # the pipeline installs cross-frame attention on the shared UNet
    try:
        out = pipe(
            job.prompt, video_length=job.video.frames, height=h, width=w, num_inference_steps=steps,
            guidance_scale=job.sampler.guidance, generator=torch.Generator("cpu").manual_seed(job.seed),
            motion_field_strength_x=motion, motion_field_strength_y=motion, t0=t0, t1=t1, output_type="np",
        )
    finally:
        components.unet.set_attn_processor(saved)
    return to_uint8(torch.from_numpy(np.asarray(out.images)))


def scores(frames: np.ndarray, prompt: str) -> dict:
    w = warp_metrics(frames) if len(frames) > 1 else None
    s = score_video(frames, prompt, judge_motion=False)
    return {
        "frame change": w.frame_change if w else 0.0,
        "warp err": w.warp_error if w else 0.0,
        "MAWE": w.mawe if w else 0.0,
        "drift": s.identity_drift,
        "present": s.fraction_present,
        "colour": float(np.mean([o.colour_ok for o in s.objects])),
        "shape": float(np.mean([o.shape_ok for o in s.objects])),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-t2i")
    p.add_argument("--prompts", type=int, default=6, help="toy-world prompts with one object (and as many with two)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.98)
    p.add_argument("--motion", type=float, default=None, help="t2v-zero motion field strength (default: scaled)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    prompts = eval_prompts(1, args.prompts) + eval_prompts(2, args.prompts)
    base = {
        "model.id": args.model, "video.frames": args.frames, "sampler.steps": args.steps, "sampler.scheduler": "ddim",
        "sampler.guidance": args.guidance, "runtime.device": args.device,
    }
    try:
        components = ModelCache().get(build_job(flags={"prompt": prompts[0], **base}))
    except VgenError as err:
        hint = " (toy-t2i is trained by the toyworld trainer; use --model tiny-random-unet2d to check the script)"
        raise SystemExit(f"compare_zs2: cannot load model '{args.model}': {err}{hint if args.model == 'toy-t2i' else ''}")
    if components.kind != "unet2d":
        raise SystemExit(f"compare_zs2: '{args.model}' is a {components.kind} model; this compares samplers of an image model")
    latent_w = resolve_size(components, None, None)[1] // components.vae_scale_factor
    motion = args.motion if args.motion is not None else 12.0 * latent_w / 64

    rows: dict[str, list[dict]] = {"per-frame": [], "t2v-zero": [], "zs2": []}
    for prompt in prompts:
        for seed in range(args.seeds):
            flags = {"prompt": prompt, "seed": seed, **base}
            rows["per-frame"].append(scores(run_method(build_job(flags={**flags, "method": "vanilla"}), components), prompt))
            rows["t2v-zero"].append(scores(run_t2v_zero(build_job(flags=flags), components, motion), prompt))
            zs2 = build_job(flags={**flags, "method": "zs2"}, overrides=[f"zs2.lam={args.lam}", f"zs2.momentum={args.momentum}"])
            rows["zs2"].append(scores(run_method(zs2, components), prompt))

    print(f"model {args.model} on {components.device}: {len(prompts)} prompts x {args.seeds} seeds, {args.frames} frames, "
          f"{args.steps} DDIM steps, guidance {args.guidance}; zs2 λ={args.lam} μ={args.momentum}; t2v-zero motion {motion:g}")
    columns = list(rows["zs2"][0])
    print(f"{'method':<12}" + "".join(f"{c:>14}" for c in columns))
    for name, values in rows.items():
        print(f"{name:<12}" + "".join(f"{np.mean([v[c] for v in values]):>14.3f}" for c in columns))


if __name__ == "__main__":
    main()
