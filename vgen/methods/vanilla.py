"""Vanilla sampling: encode the prompt, draw x_T, run the scheduler with CFG, decode.

On an image model (kind unet2d) every frame is an independent image from its own noise: the
per-frame baseline that ZS2 improves on.
"""

from __future__ import annotations

from vgen.config import JobConfig
from vgen.core.prompts import encode_prompt
from vgen.core.sampler import decode_latents, denoise, initial_latents, latent_shape, to_uint8
from vgen.core.schedulers import prepare_scheduler
from vgen.jobs import RunContext
from vgen.models import Components
from vgen.video import Video


def run(job: JobConfig, components: Components, ctx: RunContext) -> Video:
    s = job.sampler
    prompt = encode_prompt(components, job.prompt, job.negative, s.guidance)
    scheduler = prepare_scheduler(s.scheduler, components.scheduler, s.steps, components.device)
    shape = latent_shape(components, job.video.frames, ctx.height, ctx.width)
    latents = initial_latents(components, shape, ctx.generator, scheduler)
    latents = denoise(
        components, scheduler, latents, prompt, s.guidance, generator=ctx.generator, eta=s.eta, progress=ctx.progress
    )
    frames = decode_latents(components, latents, job.memory.decode_chunk)[0]
    return Video(to_uint8(frames), fps=job.video.fps)
