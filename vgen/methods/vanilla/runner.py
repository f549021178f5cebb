"""Vanilla sampling: encode the prompt, draw x_T, run the scheduler with CFG, decode.

On an image model (kind unet2d) every frame is an independent image from its own noise: the
per-frame baseline that ZS2 improves on.
"""

from __future__ import annotations

import numpy as np

from vgen.config import JobConfig
from vgen.core.prompts import encode_prompt
from vgen.core.sampler import denoise, initial_latents, iter_decoded, latent_shape, to_uint8
from vgen.core.schedulers import prepare_scheduler
from vgen.methods.context import RunContext
from vgen.models import Components
from vgen.video import Video


def run(job: JobConfig, components: Components, ctx: RunContext) -> Video:
    s = job.sampler
    family = components.family
    frames = family.video_frames(components, job.video.frames)
    if frames != job.video.frames:
        ctx.log(f"{components.name} makes {family.frame_rule} frames: {job.video.frames} -> {frames}")
    prompt = encode_prompt(components, job.prompt, job.negative, s.guidance)
    shape = latent_shape(components, frames, ctx.height, ctx.width)
    scheduler = prepare_scheduler(s.scheduler, components.scheduler, s.steps, components.device, family, shape)
    latents = initial_latents(components, shape, ctx.generator, scheduler)
    latents = denoise(
        components, scheduler, latents, prompt, s.guidance, generator=ctx.generator, eta=s.eta, progress=ctx.progress,
        guidance_2=s.guidance_2,
    )
    # uint8 piece by piece: a long video never sits in memory as float32 (Wan decodes latent frame by frame)
    video = np.concatenate([to_uint8(piece) for piece in iter_decoded(components, latents, job.memory.decode_chunk,
                                                                       ctx.generator)])
    return Video(video, fps=job.video.fps, metadata={"scheduler": type(scheduler).__name__})
