"""Compare video sampling from one image model: per-frame, (Text2Video-Zero,) and ZS2, scored in the toy world.

    .venv/bin/python scripts/compare_zs2.py [--model toy-t2i | toy-wan | FOLDER] [--prompts 6] [--offset 0]
        [--seeds 2] [--frames 8] [--steps N] [--guidance G] [--lam L] [--momentum M] [--variant "zs2.k=v ..."]
        [--vanilla] [--no-t2v-zero] [--draws 1000]

Prompts: --prompts toy-world prompts with one object and as many held-out two-object compositions
(vgen.toyworld.eval_prompts), after skipping the first --offset of each sequence: tune on --offset 0, report on
prompts the settings were not chosen on (`make eval-zs2` / `make eval-zs2-wan` use --offset 100). Prompt i, seed s
is sampled by every method with the same settings (the model's settings for zs2, e.g. its vgen.yaml, under the flags
given here):
  per-frame   every frame an independent image: zs2 with zs2.rho=0 and zs2.momentum=0, which is exactly per-frame
              sampling (tests/test_zs2.py: the vanilla runner on an image model; WanPipeline's 1-frame videos on Wan)
  t2v-zero    diffusers TextToVideoZeroPipeline (unet2d models only; DDIM): cross-frame attention to frame 0 +
              latent warping (motion field scaled from its SD default of 12 latent pixels at 64 wide; t0/t1 at 88%/94%)
  zs2         the zs2 runner (--lam, --momentum if given); each --variant "k=v k=v" is one more ZS2 row (zs2+1, ...)
  vanilla     with --vanilla: the vanilla runner, i.e. the video model's own video (Wan: 4k+1 frames)
Columns (means over videos): frame change = mean |frame_{i+1} - frame_i| / 255 (lower is steadier); warp err =
mean squared error (0-255) between frame i+1 and frame i warped onto it by OpenCV DIS optical flow, and MAWE =
mean warp err / (9.5 · flow magnitude) as in StreamingT2V (vgen.eval.warp; lower is more consistent); drift =
the detector's identity drift of prompted objects; present / colour / shape = fraction of prompted objects
found / in the right colour / of the right shape (motion is not judged: an image model has no motion prior).
Then each ZS2 row against per-frame: the ratio of mean frame change and of mean warp error with a 95% interval from
a paired bootstrap over prompts (--draws), and the share of videos whose frame change ZS2 lowered.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
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

PER_FRAME = ["zs2.rho=0", "zs2.momentum=0"]


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


def paired_ratio(ours: np.ndarray, base: np.ndarray, units: np.ndarray, draws: int, seed: int = 0) -> tuple:
    """(mean(ours) / mean(base), 2.5%, 97.5%) with the interval from a bootstrap that resamples whole units (prompts:
    all of a prompt's seeds together) with replacement, keeping each video paired with its baseline."""
    keys = np.unique(units)
    index = [np.flatnonzero(units == k) for k in keys]
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(draws):
        pick = np.concatenate([index[i] for i in rng.integers(0, len(keys), len(keys))])
        ratios.append(ours[pick].mean() / max(base[pick].mean(), 1e-12))
    low, high = np.percentile(ratios, [2.5, 97.5])
    return ours.mean() / max(base.mean(), 1e-12), low, high


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-t2i")
    p.add_argument("--prompts", type=int, default=6, help="toy-world prompts with one object (and as many with two)")
    p.add_argument("--offset", type=int, default=0, help="skip the first K prompts of each sequence (held-out: 100)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="default: the model's settings for zs2")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's settings for zs2")
    p.add_argument("--lam", type=float, default=None, help="zs2.lam (default: the model's settings, else 0.1)")
    p.add_argument("--momentum", type=float, default=None, help="zs2.momentum (default: the model's settings, else 0.98)")
    p.add_argument("--variant", action="append", default=[], help='one more ZS2 row: "zs2.momentum=0.9 zs2.lam=0.2"')
    p.add_argument("--vanilla", action="store_true", help="also the vanilla runner (a video model's own video)")
    p.add_argument("--no-t2v-zero", action="store_true", help="leave out Text2Video-Zero (unet2d models only)")
    p.add_argument("--motion", type=float, default=None, help="t2v-zero motion field strength (default: scaled)")
    p.add_argument("--draws", type=int, default=1000, help="paired bootstrap draws for the 95%% intervals")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    prompts = [text for n in (1, 2) for text in eval_prompts(n, args.offset + args.prompts)[args.offset:]]
    base = {"model.id": args.model, "video.frames": args.frames, "runtime.device": args.device}
    base.update({k: v for k, v in (("sampler.steps", args.steps), ("sampler.guidance", args.guidance)) if v is not None})
    zs2_keys = [f"zs2.{k}={v}" for k, v in (("lam", args.lam), ("momentum", args.momentum)) if v is not None]
    try:
        probe = build_job(flags={"prompt": prompts[0], "method": "zs2", **base})
        components = ModelCache().get(probe)
    except VgenError as err:
        raise SystemExit(f"compare_zs2: cannot use model '{args.model}': {err}")
    t2v_zero = components.kind == "unet2d" and not args.no_t2v_zero
    latent_w = resolve_size(components, None, None)[1] // components.vae_scale_factor
    motion = args.motion if args.motion is not None else 12.0 * latent_w / 64

    methods: dict[str, list[str]] = {"per-frame": PER_FRAME, "zs2": zs2_keys}
    methods.update({f"zs2+{i + 1}": zs2_keys + shlex.split(v) for i, v in enumerate(args.variant)})
    rows: dict[str, list[dict]] = {name: [] for name in ["per-frame"] + ["t2v-zero"] * t2v_zero + list(methods)[1:]}
    if args.vanilla:
        rows["vanilla"] = []
    seconds = {name: 0.0 for name in rows}
    units = []
    for u, prompt in enumerate(prompts):
        for seed in range(args.seeds):
            flags = {"prompt": prompt, "seed": seed, **base}
            units.append(u)
            for name in rows:
                start = time.perf_counter()
                if name == "t2v-zero":
                    frames = run_t2v_zero(build_job(flags={**flags, "method": "zs2"}), components, motion)
                elif name == "vanilla":
                    frames = run_method(build_job(flags={**flags, "method": "vanilla"}), components)
                else:
                    frames = run_method(build_job(flags={**flags, "method": "zs2"}, overrides=methods[name]), components)
                seconds[name] += time.perf_counter() - start
                rows[name].append(scores(frames, prompt))

    z = probe.zs2
    print(f"model {args.model} ({components.kind}) on {components.device}: {len(prompts)} prompts (offset {args.offset}) x "
          f"{args.seeds} seeds, {args.frames} frames, {probe.sampler.steps} {probe.sampler.scheduler} steps, guidance "
          f"{probe.sampler.guidance}; zs2 (model settings{', ' + ' '.join(zs2_keys) if zs2_keys else ''}): "
          f"lam {z.lam} rho {z.rho} momentum {z.momentum} layers {list(z.layers) or 'all'}"
          + (f"; t2v-zero motion {motion:g}" if t2v_zero else ""))
    for name, keys in methods.items():
        if name.startswith("zs2+"):
            print(f"  {name}: {' '.join(keys)}")
    columns = list(rows["per-frame"][0])
    print(f"{'method':<12}" + "".join(f"{c:>14}" for c in columns) + f"{'s / video':>12}")
    for name, values in rows.items():
        print(f"{name:<12}" + "".join(f"{np.mean([v[c] for v in values]):>14.3f}" for c in columns)
              + f"{seconds[name] / len(values):>12.2f}")
    units_arr = np.array(units)
    base_fc = np.array([v["frame change"] for v in rows["per-frame"]])
    base_we = np.array([v["warp err"] for v in rows["per-frame"]])
    print(f"vs per-frame, 95% interval (paired bootstrap over {len(prompts)} prompts, {args.draws} draws)")
    print(f"{'method':<12}{'frame change x':>28}{'warp err x':>28}{'steadier':>10}")
    for name in (n for n in rows if n.startswith("zs2") or n in ("t2v-zero", "vanilla")):
        fc = np.array([v["frame change"] for v in rows[name]])
        we = np.array([v["warp err"] for v in rows[name]])
        r, lo, hi = paired_ratio(fc, base_fc, units_arr, args.draws)
        rw, lw, hw = paired_ratio(we, base_we, units_arr, args.draws)
        print(f"{name:<12}{f'{r:.3f} [{lo:.3f}, {hi:.3f}]':>28}{f'{rw:.3f} [{lw:.3f}, {hw:.3f}]':>28}"
              f"{np.mean(fc < base_fc):>10.2f}")


if __name__ == "__main__":
    main()
