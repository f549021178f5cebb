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
