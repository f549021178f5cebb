"""Schedulers by name, each built from the model's own scheduler config, and the conversions between what a
model predicts (epsilon, v, flow velocity) and x0 / epsilon, in one place.

Which names a model runs is its family's table (UNets: DDIM, DPM-Solver++, Euler, ...; Wan: its UniPC flow,
flow Euler, DPM-Solver++ on flow sigmas; LTX: flow Euler). "auto" is the family's default (DDIM on UNets, the
model's own scheduler on DiTs, as their diffusers pipelines run); "model" is always the model's own.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch

from vgen.errors import ConfigError

PREDICTIONS = ("epsilon", "v_prediction", "flow", "sample")


def _table(family: Any) -> dict:
    """The family's named schedulers (the UNet table when no family is given)."""
    if family is not None:
        return family.schedulers
    from vgen.models.unet import UNET_SCHEDULERS

    return UNET_SCHEDULERS


def make_scheduler(name: str, base: Any, family: Any = None) -> Any:
    """A fresh scheduler of kind `name` ("model" = the model's own class) from `base`'s config, from the
    family's table (the UNet table when no family is given)."""
    import diffusers

    table = _table(family)
    name = resolve_scheduler_name(name, family)
    if name == "model":
        return type(base).from_config(base.config)
    if name not in table:
        on = f" on {family.name} models" if family is not None else ""
        raise ConfigError(f"scheduler '{name}' does not run{on}; choose one of: {', '.join(table)}, model, auto")
    cls_name, overrides = table[name]
    overrides = overrides(base.config) if callable(overrides) else overrides
    return getattr(diffusers, cls_name).from_config(base.config, **overrides)


def resolve_scheduler_name(name: str, family: Any) -> str:
    """"auto" is the family's default scheduler (DDIM when no family is given)."""
    if name == "auto":
        return family.default_scheduler if family is not None else "ddim"
    return name


def scheduler_class(name: str, base: Any, family: Any = None) -> type:
    """The diffusers class scheduler `name` builds on `base` ("model": the model's own class)."""
    import diffusers

    table = _table(family)
    name = resolve_scheduler_name(name, family)
    if name == "model":
        return type(base)
    if name not in table:
        raise ConfigError(f"unknown scheduler '{name}'; choose one of: {', '.join(table)}, model, auto")
    return getattr(diffusers, table[name][0])


def config_keys(cls: type) -> list[str]:
    """The config keys a scheduler class takes (its __init__ arguments)."""
    return sorted(k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "kwargs"))


def check_scheduler_config(name: str, base: Any, overrides: dict, family: Any = None) -> None:
    """sampler.scheduler_config against the class sampler.scheduler builds: every key one of its config keys, and
    none that the named scheduler itself fixes to another value (sde-dpm++ is algorithm_type sde-dpmsolver++)."""
    cls = scheduler_class(name, base, family)
    valid = config_keys(cls)
    table = _table(family)
    fixed = table.get(resolve_scheduler_name(name, family), ("", {}))[1]
    if callable(fixed):
        fixed = fixed(base.config) if base is not None else {}
    for key, value in overrides.items():
        if key not in valid:
            raise ConfigError(f"unknown key 'sampler.scheduler_config.{key}' for {cls.__name__} (sampler.scheduler="
                              f"{name}); valid keys: {', '.join(valid)}")
        if key in fixed and fixed[key] != value:
            raise ConfigError(f"sampler.scheduler_config.{key}={value} contradicts sampler.scheduler={name}, which sets "
                              f"{key}={fixed[key]}; drop the key or choose another sampler.scheduler")


def with_scheduler_config(base: Any, name: str, overrides: dict, family: Any = None) -> Any:
    """The model's scheduler with sampler.scheduler_config set over its config, of the model's own class (every
    named scheduler is then built from it). Keys the model's class lacks but the named class has (algorithm_type
    on a DDIM model for dpm++) are kept in its config for make_scheduler."""
    if not overrides:
        return base
    check_scheduler_config(name, base, overrides, family)
    scheduler = type(base).from_config(base.config, **overrides)
    scheduler.register_to_config(**{k: v for k, v in overrides.items() if k not in scheduler.config})
    return scheduler


def scheduler_record(name: str, base: Any, family: Any = None) -> dict:
    """The scheduler a job samples with, for its sidecar: class and full config (plain JSON values)."""
    scheduler = make_scheduler(name, base, family)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in scheduler.config.items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, "config": config}


def prepare_scheduler(name: str, base: Any, steps: int, device: Any, family: Any = None,
                      shape: Optional[tuple] = None) -> Any:
    """A scheduler of kind `name` with `steps` timesteps set (checked against the training schedule). With a
    family and the latent `shape`, the family's set_timesteps arguments (LTX: its sigmas and dynamic shift)."""
    scheduler = make_scheduler(name, base, family)
    limit = scheduler.config.num_train_timesteps - scheduler.config.get("steps_offset", 0)
    if steps > limit:
        raise ConfigError(f"sampler.steps={steps} is more than this model's schedule allows ({limit})")
    extra = family.timestep_kwargs(scheduler, shape, steps) if family is not None and shape is not None else {}
    scheduler.set_timesteps(steps, device=device, **extra)
    timesteps = scheduler.timesteps
    if len(timesteps) > 1 and timesteps[0] == timesteps[1] and hasattr(scheduler, "set_begin_index"):
        # Flow sigmas rounded to integer timesteps repeat at many steps (UniPC flow from ~400 on); a scheduler
        # that finds its first step by value then takes the second 999 and runs one step past its end.
        scheduler.set_begin_index(0)
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


# ----------------------------------------------------------------------------------------------
# what the model predicts -> x0 / epsilon


def prediction_type(scheduler: Any) -> str:
    """"epsilon", "v_prediction", "flow" (velocity ε - x0, for flow-matching schedulers) or "sample"."""
    config = scheduler.config
    kind = config.get("prediction_type", None)
    if kind == "flow_prediction" or config.get("use_flow_sigmas", False) or type(scheduler).__name__.startswith("FlowMatch"):
        return "flow"
    return kind or "epsilon"


def noise_level(scheduler: Any, t: Any) -> tuple[float, float]:
    """(α_t, σ_t) with x_t = α_t·x0 + σ_t·ε at timestep t: VP schedules from alphas_cumprod, flow schedules
    α = 1 - σ with σ the scheduler's sigma at t."""
    if prediction_type(scheduler) == "flow":
        timesteps = torch.as_tensor(scheduler.timesteps).float()
        index = int((timesteps - float(t)).abs().argmin())
        sigma = float(scheduler.sigmas[index])
        return 1.0 - sigma, sigma
    alpha_bar = float(scheduler.alphas_cumprod[int(t)])
    return alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5


def add_noise(scheduler: Any, sample: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
    """x_t = α_t·x0 + σ_t·ε at timestep t by the scheduler's own arithmetic (SDEdit's start): its add_noise, or
    scale_noise on flow-matching Euler, which has no add_noise."""
    t = torch.as_tensor(t, device=sample.device).reshape(1)
    if hasattr(scheduler, "add_noise"):
        return scheduler.add_noise(sample, noise, t)
    return scheduler.scale_noise(sample, t, noise)


def to_x0(output: torch.Tensor, sample: torch.Tensor, alpha: float, sigma: float, prediction: str) -> torch.Tensor:
    """x0 from a model output of kind `prediction` at x_t = α·x0 + σ·ε."""
    if prediction == "epsilon":
        return (sample - sigma * output) / alpha
    if prediction == "v_prediction":  # v = α·ε - σ·x0 with α² + σ² = 1
        return alpha * sample - sigma * output
    if prediction == "flow":  # v = ε - x0 with α = 1 - σ
        return sample - sigma * output
    if prediction == "sample":
        return output
    raise ConfigError(f"unknown prediction type '{prediction}'; one of {', '.join(PREDICTIONS)}")


def to_epsilon(output: torch.Tensor, sample: torch.Tensor, alpha: float, sigma: float, prediction: str) -> torch.Tensor:
    """ε from a model output of kind `prediction` at x_t = α·x0 + σ·ε."""
    if prediction == "epsilon":
        return output
    if prediction == "v_prediction":
        return sigma * sample + alpha * output
    if prediction == "flow":  # x_t = x0 + σ·v  =>  ε = x0 + v = x_t + (1 - σ)·v
        return sample + (1.0 - sigma) * output
    if prediction == "sample":
        return (sample - alpha * output) / sigma
    raise ConfigError(f"unknown prediction type '{prediction}'; one of {', '.join(PREDICTIONS)}")
