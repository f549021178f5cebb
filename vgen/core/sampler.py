"""The one denoising loop every method uses: CFG, scheduler steps, hooks, progress, decode.

Latents are always [B, C, F, H, W]. For image models (kind ``unet2d``) the frames become a batch of
images inside `predict_noise`, so methods never special-case the model kind. Methods customise the
loop with per-step latent hooks (`pre_step`, `post_step`), attention processors (core.attention),
an initial-noise model (core.noise), or by calling the pieces (`guided_noise`, `denoise` on a subset
of timesteps) from their own loop.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from vgen.core.noise import NoiseModel, iid_noise
from vgen.core.progress import progress_bar
from vgen.core.prompts import PromptEmbeds
from vgen.core.schedulers import step_kwargs
from vgen.errors import ConfigError
from vgen.models import Components

StepHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]  # (index, t, latents) -> latents


def resolve_size(components: Components, height: Optional[int], width: Optional[int]) -> tuple[int, int]:
    """(height, width) in pixels: the model's native size by default, checked against its VAE factor."""
    native_h, native_w = components.native_size
    height, width = height or native_h, width or native_w
    factor = components.vae_scale_factor
    for key, value in (("height", height), ("width", width)):
        if value % factor:
            low, high = value // factor * factor, (value // factor + 1) * factor
            hint = f"{low} or {high}" if low else f"{high}"
            raise ConfigError(
                f"video.{key}={value} is not a multiple of {factor}, this model's VAE factor; try {hint}"
            )
    return height, width


def latent_shape(components: Components, frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
    factor = components.vae_scale_factor
    return (batch, components.latent_channels, frames, height // factor, width // factor)


def initial_latents(
    components: Components,
    shape: Sequence[int],
    generator: torch.Generator,
    scheduler: Any,
    noise_model: NoiseModel = iid_noise,
) -> torch.Tensor:
    """x_T: noise from the noise model, scaled to the scheduler's starting sigma."""
    noise = noise_model(shape, generator, components.device, components.dtype)
    return noise * scheduler.init_noise_sigma


def predict_noise(
    components: Components, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, **unet_kwargs: Any
) -> torch.Tensor:
    """The UNet's output for video latents [B, C, F, H, W] with embeddings [B, L, D]."""
    unet = components.unet
    b, c, f, h, w = latents.shape
    if components.kind == "unet3d":
        return unet(latents, t, encoder_hidden_states=embeds, **unet_kwargs).sample
    if components.kind == "motion":  # UNetMotionModel folds frames into the batch but not the text
        return unet(latents, t, encoder_hidden_states=embeds.repeat_interleave(f, dim=0), **unet_kwargs).sample
    images = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    out = unet(images, t, encoder_hidden_states=embeds.repeat_interleave(f, dim=0), **unet_kwargs).sample
    return out.reshape(b, f, -1, h, w).permute(0, 2, 1, 3, 4)


def guided_noise(
    components: Components,
    scheduler: Any,
    latents: torch.Tensor,
    t: torch.Tensor,
    prompt: PromptEmbeds,
    guidance: float,
    **unet_kwargs: Any,
) -> torch.Tensor:
    """Classifier-free guided prediction: uncond + g * (cond - uncond), one batched UNet call."""
    model_in = torch.cat([latents] * 2) if prompt.guided else latents
    model_in = scheduler.scale_model_input(model_in, t).to(components.dtype)  # a float32 master runs the model in its dtype
    out = predict_noise(components, model_in, t, prompt.cfg_batch(), **unet_kwargs)
    if not prompt.guided:
        return out
    uncond, cond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def denoise(
    components: Components,
    scheduler: Any,
    latents: torch.Tensor,
    prompt: PromptEmbeds,
    guidance: float,
    *,
    timesteps: Optional[Sequence] = None,
    generator: Optional[torch.Generator] = None,
    eta: float = 0.0,
    pre_step: Optional[StepHook] = None,
    post_step: Optional[StepHook] = None,
    progress: Optional[bool] = None,
    description: str = "denoising",
    unet_kwargs: Optional[dict] = None,
    guide: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    master_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Run the scheduler from `latents` over `timesteps` (default: all of scheduler.timesteps).

    `master_dtype` (e.g. float32) keeps the latents, the hooks' updates and the scheduler's arithmetic in
    that dtype while the model runs in its own: small latent updates (Vico's 1e-4 Adam steps) are not
    rounded away between steps in half precision. The result is in `master_dtype` then.

    `pre_step` may replace the latents before the model call (e.g. Vico's latent update),
    `post_step` after the scheduler step (e.g. inpainting known frames). `guide(latents, t) -> noise`
    replaces the CFG prediction for methods whose model call differs (e.g. StreamingT2V's CAM/APM).
    """
    steps = list(scheduler.timesteps if timesteps is None else timesteps)
    extra = step_kwargs(scheduler, generator, eta)
    if master_dtype is not None:
        latents = latents.to(master_dtype)
    with components.placed(components.unet), progress_bar(len(steps), description, progress) as advance:
        for i, t in enumerate(steps):
            if pre_step is not None:
                latents = pre_step(i, t, latents)
            if guide is not None:
                noise = guide(latents, t)
            else:
                noise = guided_noise(components, scheduler, latents, t, prompt, guidance, **(unet_kwargs or {}))
            latents = scheduler.step(noise.to(latents.dtype), t, latents, **extra).prev_sample
            if post_step is not None:
                latents = post_step(i, t, latents)
            advance(1)
    return latents


def strength_timesteps(scheduler: Any, strength: float, floor: bool = False, key: str = "strength") -> list:
    """The tail of scheduler.timesteps that SDEdit runs for a strength in (0, 1] (1 = from pure noise): the last
    round(strength·steps) steps, at least one; with `floor`, diffusers' img2img rule (get_timesteps), the last
    int(strength·steps), where none is an error naming `key`. Steps are the scheduler's num_inference_steps, each
    `order` entries of its timesteps (Heun: order 2, 2n - 1 timesteps), as in get_timesteps."""
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"{key} must be in (0, 1], got {strength}")
    order = getattr(scheduler, "order", 1)
    total = getattr(scheduler, "num_inference_steps", None) or len(scheduler.timesteps) // order
    if floor:
        keep = min(int(total * strength), total)
        if keep == 0:
            raise ConfigError(f"{key} {strength} runs int({strength}·{total}) = 0 of the {total} sampler steps; "
                              f"raise it to at least {1 / total:.3g}")
    else:
        keep = min(max(int(round(total * strength)), 1), total)
    start = (total - keep) * order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return list(scheduler.timesteps[start:])


@torch.no_grad()
def decode_latents(components: Components, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Latents [B, C, F, h, w] -> video [B, F, H, W, 3] float32 in [0, 1] on the CPU, `chunk` frames per VAE call."""
    b, _, f, _, _ = latents.shape
    frames = list(iter_decoded(components, latents, chunk))
    video = torch.cat(frames)
    return video.reshape(b, f, *video.shape[1:])


@torch.no_grad()
def iter_decoded(components: Components, latents: torch.Tensor, chunk: int = 8) -> Iterator[torch.Tensor]:
    """Decode frame-major in chunks, yielding [n, H, W, 3] float32 in [0, 1] (CPU) as they are made."""
    vae = components.vae
    b, c, f, h, w = latents.shape
    flat = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    with components.placed(vae):
        for start in range(0, b * f, chunk):
            piece = flat[start : start + chunk].to(device=components.device, dtype=vae.dtype)
            images = vae.decode(piece).sample.float()
            yield (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Float frames in [0, 1] -> uint8 (round to nearest), as numpy."""
    return (frames * 255).round().clamp(0, 255).to(torch.uint8).numpy()


@torch.no_grad()
def encode_frames(components: Components, frames: np.ndarray, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """uint8 frames [F, H, W, 3] -> scaled latents [1, C, F, h, w] (the VAE posterior mean)."""
    vae = components.vae
    images = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    with components.placed(vae):
        posterior = vae.encode(images.to(device=components.device, dtype=vae.dtype)).latent_dist
        latents = posterior.mean * vae.config.scaling_factor
    return latents.to(components.dtype).permute(1, 0, 2, 3).unsqueeze(0)
