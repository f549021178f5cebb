"""ZS2: zero-shot video sampling from an image model (arXiv 2407.21475).

Algorithm (per video of F frames, any scheduler):
  1. ρ from λ (closed form); x_T = AR(1) dependency noise along frames: adjacent frames correlate by ρ.
  2. Every spatial self-attention layer gets temporal momentum attention: frame i attends with keys and
     values K̃_i = μ·K̃_{i-1} + (1-μ)·K_i (same for V), separately for the uncond and cond halves.
  3. Denoise all frames as a batch of images with classifier-free guidance; momentum only on the steps in
     [step_start, step_end) of the run, plain attention elsewhere.
  4. Decode each frame.
Editing: x_T is the input video's latents noised to strength s with the same dependency noise (per-frame
SDEdit), then steps 2-4 on the tail of the schedule.

Models: an image model (unet2d), or a video model's image mode from its family (Wan, LTX: the frames are a batch
of 1-frame videos, one latent frame each, decoded one by one; the momentum mixes the keys after RoPE). The same
model serves: `--model toy-wan --method zs2` samples with toy-wan itself.

Frame chunks (`frame_chunk`): the denoiser sees at most that many frames of each video per call; the chunks of
one step run in order and each layer carries its running K̃/Ṽ of the previous chunk's last frame into the
next chunk, so chunked and unchunked sampling give the same video (up to float rounding).
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack

import numpy as np
import torch

from vgen.config import JobConfig
from vgen.core.attention import attention_processors
from vgen.core.noise import ar1_noise
from vgen.methods.zs2.noise import rho_from_lambda
from vgen.core.prompts import encode_prompt
from vgen.core.sampler import (
    decode_latents,
    denoise,
    encode_frames,
    initial_latents,
    latent_shape,
    strength_timesteps,
    to_uint8,
)
from vgen.core.schedulers import prepare_scheduler
from vgen.errors import ConfigError
from vgen.methods.context import RunContext
from vgen.methods.zs2.attention import FrameState, momentum_factory, momentum_sites, processor_for
from vgen.models import Components
from vgen.video import Video, read_video


class FrameChunked(torch.nn.Module):
    """A denoiser called on at most `chunk` frames of each video at a time (frame-major batches of images: a
    UNet's images, or Wan's 1-frame videos).

    Every tensor argument whose first axis is the B·F images (input, text, per-image timesteps) is cut into the
    same chunks; `state.frames`/`state.continues` are set before each call so the momentum processors mix within
    the chunk and continue from the previous one.
    """

    def __init__(self, model: torch.nn.Module, state: FrameState, frames: int, chunk: int):
        super().__init__()
        self.model, self.state, self.frames, self.chunk = model, state, frames, chunk

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def config(self):
        return self.model.config

    def forward(self, *args, **kwargs):
        first = args[0] if args else kwargs["hidden_states"]
        n, f = first.shape[0], self.frames

        def cut(x, start, stop):
            if not (torch.is_tensor(x) and x.ndim and x.shape[0] == n):
                return x
            return x.reshape(n // f, f, *x.shape[1:])[:, start:stop].flatten(0, 1)

        outs = []
        for start in range(0, f, self.chunk):
            stop = min(start + self.chunk, f)
            self.state.frames, self.state.continues = stop - start, start > 0
            out = self.model(*(cut(a, start, stop) for a in args), **{k: cut(v, start, stop) for k, v in kwargs.items()})
            sample = out[0] if isinstance(out, tuple) else out.sample
            outs.append(sample.reshape(n // f, stop - start, *sample.shape[1:]))
        self.state.frames, self.state.continues = f, False
        merged = torch.cat(outs, dim=1).flatten(0, 1)
        return (merged,) if isinstance(out, tuple) else type(out)(sample=merged)


def _init_latents(job: JobConfig, components: Components, ctx: RunContext, frames: np.ndarray) -> torch.Tensor:
    """Input video frames, resized to the job's size, as latents [1, C, F, h, w]."""
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if images.shape[-2:] != (ctx.height, ctx.width):
        images = torch.nn.functional.interpolate(images, size=(ctx.height, ctx.width), mode="bilinear", antialias=True)
    images = images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return encode_frames(components, images, ctx.generator)


def run(job: JobConfig, components: Components, ctx: RunContext) -> Video:
    z, s = job.zs2, job.sampler
    image = components.family.image_model(components)  # frames are images (Wan: a batch of 1-frame videos)
    rho = z.rho if z.rho is not None else rho_from_lambda(z.lam)
    prompt = encode_prompt(image, job.prompt, job.negative, s.guidance)
    noise_model = ar1_noise(rho)  # (1) dependency noise along the frames

    frames = job.video.frames
    x0 = None
    if z.init_video:  # editing: per-frame SDEdit of the input video
        source = read_video(z.init_video)
        if source.num_frames < frames:
            ctx.log(f"zs2: '{z.init_video}' has {source.num_frames} frames; using all of them")
            frames = source.num_frames
        x0 = _init_latents(job, image, ctx, source.frames[:frames])
    shape = tuple(x0.shape) if x0 is not None else latent_shape(image, frames, ctx.height, ctx.width)
    one_image = (*shape[:2], 1, *shape[3:])  # what one model call samples per image (LTX's shift reads its size)
    scheduler = prepare_scheduler(s.scheduler, image.scheduler, s.steps, image.device, image.family, one_image)
    timesteps = None
    if x0 is not None:
        timesteps = strength_timesteps(scheduler, z.strength)
        noise = noise_model(shape, ctx.generator, image.device, x0.dtype)
        latents = scheduler.add_noise(x0, noise, timesteps[0].reshape(1))
    else:
        latents = initial_latents(image, shape, ctx.generator, scheduler, noise_model)

    # (2) temporal momentum attention on the chosen spatial self-attention sites of every denoiser
    state = FrameState(frames=frames)
    n_steps = len(scheduler.timesteps) if timesteps is None else len(timesteps)
    active = [z.step_start <= i / n_steps < z.step_end for i in range(n_steps)]

    def set_step(i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        state.active = active[i]
        return x

    sites = momentum_sites(image, tuple(z.layers))
    if not sites:
        raise ConfigError(f"zs2.layers={list(z.layers)} matches no spatial self-attention layer of this model")
    factory = momentum_factory(z.momentum, state, sites, processor_for(image.family))
    denoisers = {"unet": image.unet, "unet_2": image.unet_2}
    sampler_components = image
    chunk = z.frame_chunk if 0 < z.frame_chunk < frames else 0
    if chunk:
        sampler_components = dataclasses.replace(image, **{
            slot: FrameChunked(model, state, frames, chunk) for slot, model in denoisers.items() if model is not None})

    # (3) denoise all frames together
    with ExitStack() as installed:
        for model in (m for m in denoisers.values() if m is not None):
            installed.enter_context(attention_processors(model, factory))
        latents = denoise(
            sampler_components, scheduler, latents, prompt, s.guidance,
            timesteps=timesteps, generator=ctx.generator, eta=s.eta, pre_step=set_step, progress=ctx.progress,
            guidance_2=s.guidance_2,
        )

    # (4) decode each frame
    video = decode_latents(image, latents, job.memory.decode_chunk, ctx.generator)[0]  # LTX: its decode noise
    metadata = {
        "rho": rho,
        "lam": z.lam if z.rho is None else None,
        "momentum": z.momentum,
        "layers": len(sites),
        "momentum_steps": sum(active),
        "steps_run": n_steps,
        "frame_chunk": chunk or frames,
    }
    if z.init_video:
        metadata.update(init_video=str(z.init_video), strength=z.strength, frames_edited=frames)
    return Video(to_uint8(video), fps=job.video.fps, metadata=metadata)
