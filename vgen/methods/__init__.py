"""Method registry: name -> runner, imported lazily so that listing methods never imports torch.

A runner is ``run(job: JobConfig, components: Components, ctx: RunContext) -> Video``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from vgen.errors import ConfigError


@dataclass(frozen=True)
class MethodInfo:
    name: str
    module: str
    summary: str
    kinds: tuple[str, ...]  # model kinds the method runs on


METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in [
        MethodInfo(
            "vanilla",
            "vgen.methods.vanilla",
            "plain sampling: one denoising loop with classifier-free guidance "
            "(on an image model, every frame sampled independently)",
            ("unet3d", "motion", "unet2d"),
        ),
        MethodInfo(
            "zs2",
            "vgen.methods.zs2",
            "ZS2: video from an image model with AR(1) dependency noise and temporal momentum attention",
            ("unet2d",),
        ),
        MethodInfo(
            "vico",
            "vgen.methods.vico",
            "Vico: compositional video by equalising attention flow (the weakest key token's flow is raised "
            "by a gradient step on the latent)",
            ("unet3d", "motion"),
        ),
    ]
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> MethodInfo:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown method '{name}'; choose one of: {', '.join(METHODS)}"
        ) from None


def load_runner(name: str) -> Callable:
    """Import the runner module (this is where torch gets imported)."""
    return importlib.import_module(get_method(name).module).run
