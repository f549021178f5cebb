"""Schedulers by name, each built from the model's own scheduler config (betas, prediction type)."""

from __future__ import annotations

import inspect
from typing import Any

from vgen.errors import ConfigError

# name -> (diffusers class, overrides of the model's scheduler config)
SCHEDULER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    # the Vico script's scheduler: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"); it also
    # passes use_karras=True, which is not a config key of that class and so changes nothing
    "sde-dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}


def make_scheduler(name: str, base: Any) -> Any:
    """A fresh scheduler of kind `name` ("model" = the model's own class) from `base`'s config."""
    import diffusers

    if name == "model":
        return type(base).from_config(base.config)
    if name not in SCHEDULER_CLASSES:
        raise ConfigError(f"unknown scheduler '{name}'; choose one of: {', '.join(SCHEDULER_CLASSES)}, model")
    cls_name, overrides = SCHEDULER_CLASSES[name]
    return getattr(diffusers, cls_name).from_config(base.config, **overrides)


def prepare_scheduler(name: str, base: Any, steps: int, device: Any) -> Any:
    """A scheduler of kind `name` with `steps` timesteps set (checked against the training schedule)."""
    scheduler = make_scheduler(name, base)
    limit = scheduler.config.num_train_timesteps - scheduler.config.get("steps_offset", 0)
    if steps > limit:
        raise ConfigError(f"sampler.steps={steps} is more than this model's schedule allows ({limit})")
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def step_kwargs(scheduler: Any, generator, eta: float) -> dict:
    """eta and generator for the schedulers whose step takes them."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs
