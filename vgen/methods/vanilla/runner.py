"""Vanilla sampling: encode the prompt, draw x_T, run the scheduler with CFG, decode.

On an image model (kind unet2d) every frame is an independent image from its own noise: the
per-frame baseline that ZS2 improves on.
"""

from __future__ import annotations

import numpy as np

from vgen.config import JobConfig
from vgen.core.sampler import denoise, iter_decoded, to_uint8
from vgen.methods.context import RunContext
from vgen.methods.start import start_video
from vgen.models import Components
from vgen.video import Video


def run(job: JobConfig, components: Components, ctx: RunContext) -> Video:
    s = job.sampler
    start = start_video(job, components, ctx)
    scheduler = start.scheduler
    latents = denoise(
        components, scheduler, start.latents, start.prompt, s.guidance, generator=ctx.generator, eta=s.eta, progress=ctx.progress,
        guidance_2=s.guidance_2,
    )
    # uint8 piece by piece: a long video never sits in memory as float32 (Wan decodes latent frame by frame)
    video = np.concatenate([to_uint8(piece) for piece in iter_decoded(components, latents, job.memory.decode_chunk,
                                                                       ctx.generator)])
    return Video(video, fps=job.video.fps, metadata={"scheduler": type(scheduler).__name__})
