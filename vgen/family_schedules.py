"""The schedule a model family samples with by default, where it is not its base model's own.

AnimateDiff (kind ``motion``) runs on an SD 1.5 base, whose scheduler config (scaled_linear betas, set_alpha_to_one
False, a PNDM class) is the image model's. AnimateDiff's own inference configs (github guoyww/AnimateDiff,
configs/inference/inference-v*.yaml, also used by I4VGen's and Vico's AnimateDiff code) build
``DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False)``,
every other key at DDIMScheduler's default (set_alpha_to_one True, leading timesteps); diffusers' AnimateDiff slow
test uses the same scheduler. That DDIM schedule replaces the base's.

"Says otherwise": a motion model whose scheduler config is not the SD base's (beta_schedule other than
scaled_linear, other beta ends, or trained betas) was given its schedule on purpose by whoever saved the folder
(an AnimateDiffPipeline saved after setting its scheduler): it keeps its own, class and config.
``sampler.scheduler_config`` still applies over either.
"""

from __future__ import annotations

from typing import Any

# DDIMScheduler(**ANIMATEDIFF_SCHEDULE) is AnimateDiff's inference scheduler; the last two keys are DDIMScheduler's
# defaults there, named because the SD base's config says otherwise (set_alpha_to_one False) or may (spacing).
ANIMATEDIFF_SCHEDULE: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": True,
    "timestep_spacing": "leading",
}

# What an SD 1.x base's scheduler config says (and so what a motion model inherits unless someone chose otherwise).
SD_BASE_BETAS: dict[str, Any] = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def has_sd_base_schedule(config: Any) -> bool:
    """True when a scheduler config carries the SD 1.x base's betas (and no trained betas)."""
    if config.get("trained_betas") is not None:
        return False
    return all(
        config.get(key) == value if isinstance(value, str) else abs(float(config.get(key, -1)) - value) < 1e-9
        for key, value in SD_BASE_BETAS.items()
    )


def default_scheduler(kind: str, scheduler: Any) -> tuple[Any, str]:
    """(the scheduler a model of `kind` samples with by default, where it came from: "model" | "animatediff")."""
    if kind != "motion" or not has_sd_base_schedule(scheduler.config):
        return scheduler, "model"
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler.config, **ANIMATEDIFF_SCHEDULE), "animatediff"
