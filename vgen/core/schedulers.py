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


def scheduler_class(name: str, base: Any) -> type:
    """The diffusers class scheduler `name` builds on `base` ("model": the model's own class)."""
    import diffusers

    if name == "model":
        return type(base)
    if name not in SCHEDULER_CLASSES:
        raise ConfigError(f"unknown scheduler '{name}'; choose one of: {', '.join(SCHEDULER_CLASSES)}, model")
    return getattr(diffusers, SCHEDULER_CLASSES[name][0])


def config_keys(cls: type) -> list[str]:
    """The config keys a scheduler class takes (its __init__ arguments)."""
    return sorted(k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "kwargs"))


def check_scheduler_config(name: str, base: Any, overrides: dict) -> None:
    """sampler.scheduler_config against the class sampler.scheduler builds: every key one of its config keys, and
    none that the named scheduler itself fixes to another value (sde-dpm++ is algorithm_type sde-dpmsolver++)."""
    cls = scheduler_class(name, base)
    valid = config_keys(cls)
    for key, value in overrides.items():
        if key not in valid:
            raise ConfigError(f"unknown key 'sampler.scheduler_config.{key}' for {cls.__name__} (sampler.scheduler="
                              f"{name}); valid keys: {', '.join(valid)}")
        fixed = SCHEDULER_CLASSES.get(name, ("", {}))[1]
        if key in fixed and fixed[key] != value:
            raise ConfigError(f"sampler.scheduler_config.{key}={value} contradicts sampler.scheduler={name}, which sets "
                              f"{key}={fixed[key]}; drop the key or choose another sampler.scheduler")


def with_scheduler_config(base: Any, name: str, overrides: dict) -> Any:
    """The model's scheduler with sampler.scheduler_config set over its config, of the model's own class (every
    named scheduler is then built from it). Keys the model's class lacks but the named class has (algorithm_type
    on a DDIM model for dpm++) are kept in its config for make_scheduler."""
    if not overrides:
        return base
    check_scheduler_config(name, base, overrides)
    scheduler = type(base).from_config(base.config, **overrides)
    scheduler.register_to_config(**{k: v for k, v in overrides.items() if k not in scheduler.config})
    return scheduler


def scheduler_record(name: str, base: Any) -> dict:
    """The scheduler a job samples with, for its sidecar: class and full config (plain JSON values)."""
    scheduler = make_scheduler(name, base)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in scheduler.config.items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, "config": config}


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
