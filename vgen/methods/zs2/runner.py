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

Frame chunks (`frame_chunk`): the UNet sees at most that many frames of each video per call; the chunks of
one step run in order and each layer carries its running K̃/Ṽ of the previous chunk's last frame into the
next chunk, so chunked and unchunked sampling give the same video (up to float rounding).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from vgen.config import JobConfig
from vgen.core.attention import attention_processors
from vgen.core.noise import ar1_noise, rho_from_lambda
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
from vgen.methods.zs2.attention import FrameState, momentum_factory
from vgen.models import Components
from vgen.video import Video, read_video


class FrameChunkedUNet(torch.nn.Module):
    """An image UNet called on at most `chunk` frames of each video at a time (frame-major batches).

    Sets `state.frames`/`state.continues` before each call so the momentum processors mix within the chunk
    and continue from the previous one.
    """

    def __init__(self, unet: torch.nn.Module, state: FrameState, frames: int, chunk: int):
        super().__init__()
        self.unet, self.state, self.frames, self.chunk = unet, state, frames, chunk

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        f = self.frames
        x = sample.reshape(-1, f, *sample.shape[1:])
        e = encoder_hidden_states.reshape(-1, f, *encoder_hidden_states.shape[1:])
        outs = []
        for start in range(0, f, self.chunk):
            stop = min(start + self.chunk, f)
            self.state.frames, self.state.continues = stop - start, start > 0
            out = self.unet(
                x[:, start:stop].flatten(0, 1), timestep, encoder_hidden_states=e[:, start:stop].flatten(0, 1), **kwargs
            ).sample
            outs.append(out.reshape(x.shape[0], stop - start, *out.shape[1:]))
        self.state.frames, self.state.continues = f, False
        return UNet2DConditionOutput(sample=torch.cat(outs, dim=1).flatten(0, 1))


def _init_latents(job: JobConfig, components: Components, ctx: RunContext, frames: np.ndarray) -> torch.Tensor:
    """Input video frames, resized to the job's size, as latents [1, C, F, h, w]."""
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if images.shape[-2:] != (ctx.height, ctx.width):
        images = torch.nn.functional.interpolate(images, size=(ctx.height, ctx.width), mode="bilinear", antialias=True)
    images = images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return encode_frames(components, images, ctx.generator)


def run(job: JobConfig, components: Components, ctx: RunContext) -> Video:
    z, s = job.zs2, job.sampler
    rho = z.rho if z.rho is not None else rho_from_lambda(z.lam)
    prompt = encode_prompt(components, job.prompt, job.negative, s.guidance)
    scheduler = prepare_scheduler(s.scheduler, components.scheduler, s.steps, components.device)
    noise_model = ar1_noise(rho)  # (1) dependency noise

    frames = job.video.frames
    timesteps = None
    if z.init_video:  # editing: per-frame SDEdit of the input video
        source = read_video(z.init_video)
        if source.num_frames < frames:
            ctx.log(f"zs2: '{z.init_video}' has {source.num_frames} frames; using all of them")
            frames = source.num_frames
        x0 = _init_latents(job, components, ctx, source.frames[:frames])
        timesteps = strength_timesteps(scheduler, z.strength)
        noise = noise_model(x0.shape, ctx.generator, components.device, components.dtype)
        latents = scheduler.add_noise(x0, noise, timesteps[0].reshape(1))
    else:
        shape = latent_shape(components, frames, ctx.height, ctx.width)
        latents = initial_latents(components, shape, ctx.generator, scheduler, noise_model)

    # (2) temporal momentum attention on the chosen spatial self-attention layers
    state = FrameState(frames=frames)
    n_steps = len(scheduler.timesteps) if timesteps is None else len(timesteps)
    active = [z.step_start <= i / n_steps < z.step_end for i in range(n_steps)]

    def set_step(i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        state.active = active[i]
        return x

    sampler_components = components
    chunk = z.frame_chunk if 0 < z.frame_chunk < frames else 0
    if chunk:
        sampler_components = dataclasses.replace(
            components, unet=FrameChunkedUNet(components.unet, state, frames, chunk)
        )

    # (3) denoise all frames together
    with attention_processors(components.unet, momentum_factory(z.momentum, state, tuple(z.layers))) as installed:
        if not installed:
            raise ConfigError(f"zs2.layers={list(z.layers)} matches no spatial self-attention layer of this model")
        latents = denoise(
            sampler_components, scheduler, latents, prompt, s.guidance,
            timesteps=timesteps, generator=ctx.generator, eta=s.eta, pre_step=set_step, progress=ctx.progress,
        )

    # (4) decode
    video = decode_latents(components, latents, job.memory.decode_chunk)[0]
    metadata = {
        "rho": rho,
        "lam": z.lam if z.rho is None else None,
        "momentum": z.momentum,
        "layers": len(installed),
        "momentum_steps": sum(active),
        "steps_run": n_steps,
        "frame_chunk": chunk or frames,
    }
    if z.init_video:
        metadata.update(init_video=str(z.init_video), strength=z.strength, frames_edited=frames)
    return Video(to_uint8(video), fps=job.video.fps, metadata=metadata)
