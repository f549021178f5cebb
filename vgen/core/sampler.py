"""The one denoising loop every method uses: CFG, scheduler steps, hooks, progress, decode.

Latents are always [B, C, F, H, W]. What differs between models (image frames folded into a batch, DiT
experts, text masks, flow velocity, causal decoding) is asked of the model's family (vgen.models), so methods
never special-case the model kind. Methods customise the
loop with per-step latent hooks (`pre_step`, `post_step`), attention processors (core.attention),
an initial-noise model (core.noise), or by calling the pieces (`guided_noise`, `denoise` on a subset
of timesteps) from their own loop.
"""

from __future__ import annotations

from contextlib import ExitStack
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
    """(height, width) in pixels: the model's native size by default, checked against its size multiple
    (the VAE factor, times the patch size on a DiT)."""
    native_h, native_w = components.native_size
    height, width = height or native_h, width or native_w
    factor = components.family.size_multiple(components)
    for key, value in (("height", height), ("width", width)):
        if value % factor:
            low, high = value // factor * factor, (value // factor + 1) * factor
            hint = f"{low} or {high}" if low else f"{high}"
            raise ConfigError(
                f"video.{key}={value} is not a multiple of {factor}, this model's size multiple; try {hint}"
            )
    return height, width


def latent_shape(components: Components, frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
    """[B, C, F_latent, h, w] for a video of `frames` frames (F_latent by the family's frame rule)."""
    return components.family.latent_shape(components, frames, height, width, batch)


def latent_dtype(components: Components) -> torch.dtype:
    """The dtype latents live in between steps: float32 where the family's pipeline keeps them so (Wan, LTX)."""
    return torch.float32 if components.family.float32_latents else components.dtype


def initial_latents(
    components: Components,
    shape: Sequence[int],
    generator: torch.Generator,
    scheduler: Any,
    noise_model: NoiseModel = iid_noise,
) -> torch.Tensor:
    """x_T: noise from the noise model, scaled to the scheduler's starting sigma."""
    noise = noise_model(shape, generator, components.device, latent_dtype(components))
    return noise * getattr(scheduler, "init_noise_sigma", 1.0)


def predict_noise(
    components: Components, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
    mask: Optional[torch.Tensor] = None, **unet_kwargs: Any
) -> torch.Tensor:
    """The denoiser's output for video latents [B, C, F, H, W] with embeddings [B, L, D]: epsilon, v or flow
    velocity, as `components.family.prediction` (and the scheduler's prediction_type) say."""
    return components.family.predict(components, latents, t, embeds, mask, **unet_kwargs)


def scale_input(scheduler: Any, latents: torch.Tensor, t: Any) -> torch.Tensor:
    """The scheduler's input scaling (Euler's 1/sqrt(σ²+1)); flow-matching Euler has none (identity)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return latents if scale is None else scale(latents, t)


def guided_noise(
    components: Components,
    scheduler: Any,
    latents: torch.Tensor,
    t: torch.Tensor,
    prompt: PromptEmbeds,
    guidance: float,
    guidance_2: Optional[float] = None,
    **unet_kwargs: Any,
) -> torch.Tensor:
    """Classifier-free guided prediction: uncond + g * (cond - uncond). One batched call on [uncond, cond], or
    cond then uncond where the family's pipeline makes two calls. `guidance_2` is the scale of a second expert."""
    family = components.family
    guidance = family.guidance_at(components, t, guidance, guidance_2)
    if family.cfg_batched:
        model_in = torch.cat([latents] * 2) if prompt.guided else latents
        model_in = scale_input(scheduler, model_in, t).to(components.dtype)  # a float32 master runs the model in its dtype
        out = predict_noise(components, model_in, t, prompt.cfg_batch(), prompt.cfg_mask(), **unet_kwargs)
        if family.guidance_in_float32:
            out = out.float()
        if not prompt.guided:
            return out
        uncond, cond = out.chunk(2)
    else:
        model_in = scale_input(scheduler, latents, t).to(components.dtype)
        cond = predict_noise(components, model_in, t, prompt.cond, prompt.cond_mask, **unet_kwargs)
        if not prompt.guided:
            return cond
        uncond = predict_noise(components, model_in, t, prompt.uncond, prompt.uncond_mask, **unet_kwargs)
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
    guidance_2: Optional[float] = None,
) -> torch.Tensor:
    """Run the scheduler from `latents` over `timesteps` (default: all of scheduler.timesteps).

    `master_dtype` (e.g. float32) keeps the latents, the hooks' updates and the scheduler's arithmetic in
    that dtype while the model runs in its own: small latent updates (1e-4 Adam steps of a guidance method) are not
    rounded away between steps in half precision. The result is in `master_dtype` then.

    `pre_step` may replace the latents before the model call (e.g. a gradient step on the latent),
    `post_step` after the scheduler step (e.g. inpainting known frames). `guide(latents, t) -> noise`
    replaces the CFG prediction for methods whose model call differs (e.g. extra memory modules).
    A two-expert model (Wan 2.2) switches expert by timestep; with offloading only the active one is on the
    device. `guidance_2` is the second expert's guidance scale (None: `guidance`).
    """
    steps = list(scheduler.timesteps if timesteps is None else timesteps)
    extra = step_kwargs(scheduler, generator, eta)
    if master_dtype is not None:
        latents = latents.to(master_dtype)
    family = components.family
    with ExitStack() as placement, progress_bar(len(steps), description, progress) as advance:
        active = None
        for i, t in enumerate(steps):
            model = family.denoiser_at(components, t)
            if model is not active:  # one placement at a time: an offloaded expert leaves before the next arrives
                placement.close()
                placement.enter_context(components.placed(model))
                active = model
            if pre_step is not None:
                latents = pre_step(i, t, latents)
            if guide is not None:
                noise = guide(latents, t)
            else:
                noise = guided_noise(components, scheduler, latents, t, prompt, guidance, guidance_2,
                                     **(unet_kwargs or {}))
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
def decode_latents(components: Components, latents: torch.Tensor, chunk: int = 8,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Latents [B, C, F, h, w] -> video [B, F', H, W, 3] float32 in [0, 1] on the CPU (F' by the family's frame
    rule: F on image VAEs, 4(F-1)+1 on Wan's causal VAE)."""
    b = latents.shape[0]
    video = torch.cat(list(iter_decoded(components, latents, chunk, generator)))
    return video.reshape(b, -1, *video.shape[1:])


@torch.no_grad()
def iter_decoded(components: Components, latents: torch.Tensor, chunk: int = 8,
                 generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
    """Decode in order, yielding [n, H, W, 3] float32 in [0, 1] (CPU) as they are made: `chunk` frames per VAE
    call on image VAEs, one latent frame at a time on Wan's causal VAE (memory flat with length)."""
    yield from components.family.iter_decoded(components, latents, chunk, generator)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Float frames in [0, 1] -> uint8 (round to nearest), as numpy."""
    return (frames * 255).round().clamp(0, 255).to(torch.uint8).numpy()


@torch.no_grad()
def encode_frames(components: Components, frames: np.ndarray, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """uint8 frames [F, H, W, 3] -> normalised latents [1, C, F', h, w] (the VAE posterior mean)."""
    return components.family.encode_frames(components, frames, generator)
