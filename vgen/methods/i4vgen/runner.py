"""I4VGen's runner (SPEC §3): text -> anchor image -> a still video animated from it -> the video regenerated.

    1. anchor      N candidate images, drawn by the video model itself as 1-frame videos (the public code; or by
                   an image model in its latent space), scored by a reward; keep the best one, a. Their noise is
                   one [1, C, N, h, w] draw, candidate i its frame i, then NI-VSDS's ε and the regeneration's noise
                   are drawn, each the video's latent shape: the public code's order, so a seed gives its candidates
    2. NI-VSDS     v = the still video of a (the family's `still_video`: a's latent repeated on per-frame VAEs, a
                   repeated in pixels and encoded on a causal VAE); draw ε once and keep it. For t in the sampler's
                   first int(0.6·steps) + 1 timesteps (961 ... 361 with 25 DDIM steps), x_t = α_t·x0 + σ_t·ε:
                   v_t = α_t·v + σ_t·ε
                   v  <- v - α_i·w(t)·(ε̂_CFG(v_t, c, t) - ε),   w(t) = σ_t² / (α_t² + σ_t²)   (no backprop)
                   (DDPM schedules: w = 1 - ᾱ_t; flow matching: ε̂ from the velocity and w at equal SNR, DIT.md §3)
    3. regenerate  add fresh noise to v up to the first of the sampler's last int(t_regen·steps) timesteps (p_re = 1:
                   the schedule's first), then denoise it with the video model
                   (regen_hold, ours: one latent frame, the first or the middle, held to the still video's by
                   temporal inpainting while t >= regen_hold_until·T, so the regenerated video keeps the anchor's
                   objects and the late steps fit the held frame to the others; off in the public code)
Every model call goes through the sampler's guided_noise, so a two-expert model (Wan 2.2) answers each timestep
with the expert its boundary says, at that expert's guidance.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Optional

import numpy as np
import torch

from vgen.config import JobConfig, ModelConfig
from vgen.core.inpaint import hold_frames
from vgen.core.noise import iid_noise
from vgen.core.progress import progress_bar
from vgen.core.prompts import PromptEmbeds, encode_prompt
from vgen.core.sampler import (decode_latents, denoise, guided_noise, latent_dtype, latent_shape, strength_timesteps,
                               to_uint8)
from vgen.core.schedulers import add_noise, noise_level, prediction_type, prepare_scheduler, to_epsilon
from vgen.errors import ConfigError
from vgen.methods.context import RunContext
from vgen.methods.start import model_frames
from vgen.methods.i4vgen.attention import one_frame_temporal_attention
from vgen.models import Components
from vgen.video import Video, write_png

# Video model -> the image model that shares its latent space and text vocabulary.
COMPANIONS = {
    "toy": "toy-t2i",
    "tiny-random-unet3d": "tiny-random-unet2d",
    "tiny-random-motion": "tiny-random-unet2d",
}


# ----------------------------------------------------------------------------------------------
# 1. anchor image


def candidate_source(job: JobConfig) -> str:
    """'video' (the video model draws 1-frame videos, as the public code does) or 'image' (a separate image model).

    auto: the image model when i4vgen.image_model is set, else the video model.
    """
    cfg = job.i4vgen
    if cfg.candidate_model == "auto":
        return "image" if cfg.image_model else "video"
    return cfg.candidate_model


def candidate_count(job: JobConfig, latent_frames: int) -> int:
    """i4vgen.candidates, or when 0 one per latent frame of the video: the public code splits one video's noise
    into its frames, a candidate each (N = the video length on a UNet, whose latent has every frame; on Wan's
    causal VAE, (F - 1) // 4 + 1, so the candidates cost one video's tokens as they do there)."""
    return job.i4vgen.candidates or latent_frames


def image_model_config(job: JobConfig) -> ModelConfig:
    """i4vgen.image_model, else the known companion; AnimateDiff's own SD base is its image model."""
    if job.i4vgen.image_model:
        return ModelConfig(id=job.i4vgen.image_model)
    if job.model.id in COMPANIONS:
        return ModelConfig(id=COMPANIONS[job.model.id])
    if job.model.motion_adapter:  # AnimateDiff = SD 1.5 base + motion adapter: the base draws the anchor
        return ModelConfig(id=job.model.id, kind="unet2d", revision=job.model.revision, variant=job.model.variant)
    raise ConfigError(
        f"i4vgen needs an image model in the latent space of '{job.model.id}'; set i4vgen.image_model "
        "(e.g. a Stable Diffusion 1.x id for ZeroScope/ModelScope)"
    )


def check_latent_space(video: Components, image: Components) -> None:
    if image.kind != "unet2d":
        raise ConfigError(f"i4vgen.image_model '{image.name}' is a {image.kind} model; it must be an image (unet2d) model")
    if (image.latent_channels, image.vae_scale_factor) != (video.latent_channels, video.vae_scale_factor):
        raise ConfigError(
            f"image model '{image.name}' has {image.latent_channels}-channel latents at 1/{image.vae_scale_factor} "
            f"scale, the video model '{video.name}' {video.latent_channels} at 1/{video.vae_scale_factor}: "
            "they do not share a latent space"
        )


def candidate_noise(image: Components, n: int, height: int, width: int, generator: torch.Generator,
                    layout: str = "frames") -> torch.Tensor:
    """The N candidates' initial noise as [N, C, 1, h, w]: N 1-frame videos (one latent frame each, on any family).

    frames (the public code's prepare_latents + rearrange "b c f h w -> (b f) c h w"): one [1, C, N, h, w] draw, and
    candidate i is its frame i, so a seed gives the public code's candidates. batch: one [N, C, 1, h, w] draw
    (vgen's earlier layout: the same numbers, assigned to other candidates)."""
    one = latent_shape(image, 1, height, width)  # [1, C, 1, h, w]
    dtype = latent_dtype(image)
    if layout == "batch":
        return iid_noise((n, *one[1:]), generator, image.device, dtype)
    if layout != "frames":
        raise ConfigError(f"config key 'i4vgen.candidate_layout' is '{layout}'; choose one of: frames, batch")
    draw = iid_noise((1, one[1], n, *one[3:]), generator, image.device, dtype)
    return draw[0].transpose(0, 1).unsqueeze(2).contiguous()  # [C, N, h, w] -> [N, C, 1, h, w]


@torch.no_grad()
def sample_candidates(
    image: Components,
    prompt: str,
    negative: str,
    n: int,
    *,
    steps: int,
    guidance: float,
    scheduler: str,
    generator: torch.Generator,
    height: int,
    width: int,
    batch: int = 0,
    eta: float = 0.0,
    progress: Optional[bool] = None,
    layout: str = "frames",
    guidance_2: Optional[float] = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """N images: latents [N, C, 1, h, w] and uint8 [N, H, W, 3], each a 1-frame video sampled as vanilla samples
    one. All N noises are drawn first, in one call (`candidate_noise`), so candidate i is the same for any batch
    size."""
    noise = candidate_noise(image, n, height, width, generator, layout)
    batch = batch or n
    latents = []
    with one_frame_temporal_attention(image.unet):  # exact: a frame attends only to itself
        for start in range(0, n, batch):
            x = noise[start : start + batch]
            sched = prepare_scheduler(scheduler, image.scheduler, steps, image.device, image.family, tuple(x.shape))
            embeds = encode_prompt(image, prompt, negative, guidance, batch=x.shape[0])
            x = x * getattr(sched, "init_noise_sigma", 1.0)  # flow-matching Euler has none (1)
            x = denoise(image, sched, x, embeds, guidance, generator=generator, eta=eta, progress=progress,
                        description=f"anchor candidates {start + 1}-{start + x.shape[0]}/{n}", guidance_2=guidance_2)
            latents.append(x)
    latents = torch.cat(latents)
    images = to_uint8(decode_latents(image, latents)[:, 0])
    return latents, images


def best_candidate(scores: np.ndarray) -> int:
    """The highest reward; the first of exact equals (a reward should break ties itself: the toy one does)."""
    return int(np.argmax(scores))


TIE_TOLERANCE = 1e-9


def reward_summary(scores: np.ndarray, chosen: int) -> dict:
    """The chosen candidate's reward and rank (1 = best), the spread (max - min) and how many other candidates
    tie with the chosen one (within TIE_TOLERANCE): 0 means the reward really chose."""
    scores = np.asarray(scores, dtype=np.float64)
    mine = scores[chosen]
    return {
        "chosen_reward": round(float(mine), 6),
        "chosen_rank": int(np.sum(scores > mine + TIE_TOLERANCE)) + 1,
        "spread": round(float(scores.max() - scores.min()), 6),
        "ties": int(np.sum(np.abs(scores - mine) <= TIE_TOLERANCE)) - 1,
    }


# ----------------------------------------------------------------------------------------------
# 2. NI-VSDS


def official_vsds_timesteps(scheduler: Any, fraction: float = 0.6) -> list[int]:
    """The public code's NI-VSDS timesteps: the sampler's first int(fraction·steps) + 1 (961 ... 361 for 25 DDIM
    steps on a 1000-step, leading, steps_offset 1 schedule), never more than the schedule has."""
    steps = list(scheduler.timesteps)
    return [int(t) for t in steps[: min(int(len(steps) * fraction) + 1, len(steps))]]


def vsds_timesteps(num_train_timesteps: int, t_start: float, t_end: float, iterations: int) -> list[int]:
    """vgen's earlier rule (vsds_schedule=linspace): `iterations` timesteps evenly spaced from t_start·T down to
    t_end·T (inclusive)."""
    top = num_train_timesteps - 1
    values = np.linspace(t_start * num_train_timesteps, t_end * num_train_timesteps, iterations)
    return [int(min(round(v), top)) for v in values]


def vsds_step_sizes(iterations: int, warm_iterations: int, warm_step_size: float, step_size: float) -> list[float]:
    return [warm_step_size if i < warm_iterations else step_size for i in range(iterations)]


def vsds_weight(alpha: float, sigma: float) -> float:
    """w(t) = 1 - ᾱ at x_t = α·x0 + σ·ε, as the SNR α²/σ² fixes it: σ² / (α² + σ²). DDPM schedules (α² + σ² = 1):
    1 - ᾱ_t, the public code's; flow matching (α = 1 - σ): the ᾱ of equal SNR, σ² / ((1 - σ)² + σ²) (DIT.md §3)."""
    return sigma**2 / (alpha**2 + sigma**2)


@torch.no_grad()
def ni_vsds(
    components: Components,
    video: torch.Tensor,
    noise: torch.Tensor,
    prompt: PromptEmbeds,
    guidance: float,
    timesteps: list,
    step_sizes: list[float],
    progress: Optional[bool] = None,
    scheduler: Any = None,
    guidance_2: Optional[float] = None,
) -> torch.Tensor:
    """Noise-invariant video score distillation: the still video pulled towards the video model's distribution by
    its (CFG) score in ε space, with one fixed ε, no gradient through the denoiser.

    `scheduler` gives each timestep's noise level (α_t, σ_t) and what the model predicts (its ᾱ table on DDPM
    schedules, its σ's on flow matching; default: the model's own). v_t goes to the model as x_t itself, with no
    sampler input scaling; the prediction becomes ε̂ by the core's conversion."""
    levels = components.scheduler if scheduler is None else scheduler
    kind = prediction_type(levels)
    family = components.family
    v = video.float()
    eps = noise.float()
    with ExitStack() as placement, progress_bar(len(timesteps), "NI-VSDS", progress) as advance:
        active = None
        for t, size in zip(timesteps, step_sizes):
            model = family.denoiser_at(components, t)  # a two-expert model: the one for this timestep
            if model is not active:
                placement.close()
                placement.enter_context(components.placed(model))
                active = model
            alpha, sigma = noise_level(levels, t)
            v_t = alpha * v + sigma * eps
            t_model = torch.as_tensor(t, device=components.device)
            pred = guided_noise(components, None, v_t.to(components.dtype), t_model, prompt, guidance, guidance_2)
            pred = pred.float()
            eps_hat = to_epsilon(pred, v_t, alpha, sigma, kind)
            v = v - size * vsds_weight(alpha, sigma) * (eps_hat - eps)
            advance(1)
    return v.to(video.dtype)


# ----------------------------------------------------------------------------------------------
# 3. regeneration


def regen_timesteps(scheduler: Any, t_regen: float, rule: str = "steps") -> list:
    """The tail of the sampler's schedule regeneration runs.

    rule steps (default, the public code's get_timesteps with strength p_re = t_regen): the last int(t_regen·steps)
    sampler steps (1.0: the whole schedule, 961 ... 1 for 25 DDIM steps; LaVie's 0.8 with 20 steps: 751 ... 1).
    rule T (ours): from the first timestep <= t_regen·T, T = num_train_timesteps. The two agree at 1.0 and, on
    1000-step leading DDIM schedules, at 0.8 for 20, 25 and 50 steps; elsewhere T can start a step higher or lower.
    """
    if rule == "steps":
        return strength_timesteps(scheduler, t_regen, floor=True, key="i4vgen.t_regen")
    if not 0.0 < t_regen <= 1.0:
        raise ConfigError(f"i4vgen.t_regen must be in (0, 1], got {t_regen}")
    steps = list(scheduler.timesteps)
    limit = t_regen * scheduler.config.num_train_timesteps
    start = next((i for i, t in enumerate(steps) if float(t) <= limit), len(steps) - 1)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return steps[start:]


def hold_frame(rule: str, frames: int) -> Optional[int]:
    """The frame i4vgen.regen_hold holds to the anchor: none -> None, first -> 0, middle -> frames // 2.

    Why the middle: a candidate is one frame drawn on its own, a typical frame of the clip rather than its
    start, so its objects sit mid-trajectory; held at frame 0 the toy's objects had half the room to move."""
    return {"none": None, "first": 0, "middle": frames // 2}[rule]


@torch.no_grad()
def regenerate(
    components: Components,
    scheduler: Any,
    timesteps: list,
    video: torch.Tensor,
    prompt: PromptEmbeds,
    guidance: float,
    generator: torch.Generator,
    eta: float = 0.0,
    progress: Optional[bool] = None,
    anchor: Optional[torch.Tensor] = None,
    hold: Optional[int] = None,
    release_below: float = 0.0,
    noise: Optional[torch.Tensor] = None,
    guidance_2: Optional[float] = None,
) -> torch.Tensor:
    """SDEdit of the animated anchor: fresh noise to the first of `timesteps`, then the video model.

    With `hold` (a latent frame index) and `anchor` [1, C, 1, h, w] (the still video's latents at that frame),
    that frame starts as and after every step follows the anchor noised with its own share of the fresh noise,
    until the next timestep is below `release_below` (0: to the end, where it is exactly the anchor). `noise`: use
    this instead of fresh noise (i4vgen.regen_noise=vsds: NI-VSDS's fixed ε)."""
    if noise is None:
        noise = iid_noise(video.shape, generator, components.device, latent_dtype(components))
    post_step = None
    if hold is not None:
        known = anchor.to(video.dtype)
        video = video.clone()
        video[:, :, hold : hold + 1] = known
        post_step = hold_frames(scheduler, timesteps, known, noise[:, :, hold : hold + 1], hold, release_below)
    x = add_noise(scheduler, video, noise, timesteps[0])
    return denoise(components, scheduler, x, prompt, guidance, timesteps=timesteps, generator=generator, eta=eta,
                   post_step=post_step, progress=progress, description="regenerating", guidance_2=guidance_2)


# ----------------------------------------------------------------------------------------------
# files


def candidate_grid(images: np.ndarray, scores: np.ndarray, best: int, columns: int = 8) -> np.ndarray:
    """The candidates in rows of `columns`, each labelled with its index and reward; the chosen one framed."""
    from PIL import Image, ImageDraw, ImageFont

    n, h, w, _ = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    label_h, pad = 14, 4
    grid = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, image in enumerate(images):
        x = pad + (i % columns) * (w + pad)
        y = pad + (i // columns) * (h + label_h + pad)
        grid.paste(Image.fromarray(image), (x, y + label_h))
        draw.text((x, y), f"{i}: {scores[i]:.3g}", fill="red" if i == best else "black", font=font)
        if i == best:
            draw.rectangle([x - 2, y + label_h - 2, x + w + 1, y + label_h + h + 1], outline="red", width=2)
    return np.asarray(grid)


# ----------------------------------------------------------------------------------------------
# runner


def run(job: JobConfig, components: Components, ctx: RunContext) -> Video:
    from vgen.methods.i4vgen.rewards import load_reward

    cfg, s = job.i4vgen, job.sampler
    source = candidate_source(job)
    if source == "image":
        image = ctx.model(image_model_config(job))
        check_latent_space(components, image)
    else:
        image = components
    reward = load_reward(cfg.reward, cfg.reward_model, str(components.device))
    family = components.family
    frames = model_frames(job, components, ctx)
    shape = latent_shape(components, frames, ctx.height, ctx.width)
    n = candidate_count(job, shape[2])
    scheduler = prepare_scheduler(s.scheduler, components.scheduler, s.steps, components.device, family, shape)
    if cfg.vsds_schedule == "linspace" and prediction_type(scheduler) == "flow":
        raise ConfigError("i4vgen.vsds_schedule=linspace spaces timesteps over a DDPM ᾱ table; on a flow-matching "
                          "model use i4vgen.vsds_schedule=sampler (the sampler's own σ's)")
    regen = regen_timesteps(scheduler, cfg.t_regen, cfg.regen_rule)  # a t_regen that runs no step fails here, early

    # 1. anchor image: best of N
    latents, images = sample_candidates(
        image, job.prompt, job.negative, n,
        steps=cfg.image_steps or s.steps,
        guidance=s.guidance if cfg.image_guidance is None else cfg.image_guidance,
        scheduler=s.scheduler, generator=ctx.generator, height=ctx.height, width=ctx.width,
        batch=cfg.candidate_batch, eta=s.eta, progress=ctx.progress, layout=cfg.candidate_layout,
        guidance_2=s.guidance_2 if cfg.image_guidance is None else None,
    )
    scores = reward(images, job.prompt)
    best = best_candidate(scores)
    summary = reward_summary(scores, best)
    ctx.log(f"anchor: candidate {best} of {n}, reward {scores[best]:.4g}, spread {summary['spread']:.3g}, "
            f"ties {summary['ties']}")
    anchor = latents[best : best + 1]
    if image is not components:  # an image model's latents, rescaled to the video model's normalisation
        anchor = anchor / image.vae.config.scaling_factor * components.vae.config.scaling_factor

    # 2. NI-VSDS: animate the anchor
    prompt = encode_prompt(components, job.prompt, job.negative, s.guidance)
    if cfg.vsds_schedule == "sampler":
        timesteps = official_vsds_timesteps(scheduler, cfg.vsds_fraction)
    else:
        timesteps = vsds_timesteps(components.scheduler.config.num_train_timesteps, cfg.t_start, cfg.t_end, cfg.iterations)
    step_sizes = vsds_step_sizes(len(timesteps), cfg.warm_iterations, cfg.warm_step_size, cfg.step_size)
    vsds_guidance = s.guidance if cfg.vsds_guidance is None else cfg.vsds_guidance
    vsds_prompt = prompt if vsds_guidance == s.guidance else encode_prompt(components, job.prompt, job.negative, vsds_guidance)
    vsds_guidance_2 = s.guidance_2 if cfg.vsds_guidance is None else None  # a set vsds_guidance holds for both experts
    dtype = latent_dtype(components)
    still = family.still_video(components, anchor.to(components.device, dtype), frames).to(dtype)
    noise = iid_noise(still.shape, ctx.generator, components.device, dtype)
    video = ni_vsds(components, still, noise, vsds_prompt, vsds_guidance, timesteps, step_sizes, ctx.progress,
                    scheduler=scheduler, guidance_2=vsds_guidance_2)

    # 3. regeneration (on `regen`, the tail of the schedule chosen above)
    hold = hold_frame(cfg.regen_hold, still.shape[2])
    video = regenerate(components, scheduler, regen, video, prompt, s.guidance, ctx.generator, s.eta, ctx.progress,
                       anchor=None if hold is None else still[:, :, hold : hold + 1], hold=hold,
                       release_below=cfg.regen_hold_until * scheduler.config.num_train_timesteps,
                       noise=noise if cfg.regen_noise == "vsds" else None, guidance_2=s.guidance_2)
    pixels = decode_latents(components, video, job.memory.decode_chunk)[0]

    files = []
    if cfg.save_candidates:
        stem = ctx.output_stem
        files.append(str(write_png(images[best], stem.with_name(f"{stem.name}_anchor.png"))))
        files.append(str(write_png(candidate_grid(images, scores, best), stem.with_name(f"{stem.name}_candidates.png"))))
    metadata = {
        "anchor": {
            "image_model": image.name,
            "source": source,
            "reward": cfg.reward,
            "layout": cfg.candidate_layout,
            "chosen": best,
            "scores": [round(float(x), 6) for x in scores],
            **summary,
        },
        "ni_vsds": {"timesteps": timesteps, "step_sizes": step_sizes, "schedule": cfg.vsds_schedule,
                    "guidance": vsds_guidance},
        "regeneration": {"steps": len(regen), "from_timestep": int(regen[0]), "timesteps": [int(t) for t in regen],
                         "rule": cfg.regen_rule, "hold": cfg.regen_hold, "hold_frame": hold,
                         "hold_until": cfg.regen_hold_until if hold is not None else None,
                         "noise": cfg.regen_noise},
        "files": files,
    }
    return Video(to_uint8(pixels), fps=job.video.fps, metadata=metadata)
