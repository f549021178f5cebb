"""The start that text-to-video runners share: the frame count the model makes, the prompt, the scheduler, x_T."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vgen.config import JobConfig
from vgen.core.prompts import PromptEmbeds, encode_prompt
from vgen.core.sampler import initial_latents, latent_shape
from vgen.core.schedulers import prepare_scheduler
from vgen.methods.context import RunContext
from vgen.models import Components


def model_frames(job: JobConfig, components: Components, ctx: RunContext) -> int:
    """The frames the model makes for `video.frames` (Wan: 4k+1, as its pipeline rounds), said once if they differ."""
    family = components.family
    frames = family.video_frames(components, job.video.frames)
    if frames != job.video.frames:
        ctx.log(f"{components.name} makes {family.frame_rule} frames: {job.video.frames} -> {frames}")
    return frames


@dataclass
class VideoStart:
    frames: int
    prompt: PromptEmbeds
    scheduler: Any
    latents: torch.Tensor  # x_T, scaled for the scheduler


def start_video(job: JobConfig, components: Components, ctx: RunContext) -> VideoStart:
    s = job.sampler
    frames = model_frames(job, components, ctx)
    prompt = encode_prompt(components, job.prompt, job.negative, s.guidance)
    shape = latent_shape(components, frames, ctx.height, ctx.width)
    scheduler = prepare_scheduler(s.scheduler, components.scheduler, s.steps, components.device, components.family,
                                  shape)
    return VideoStart(frames, prompt, scheduler, initial_latents(components, shape, ctx.generator, scheduler))
