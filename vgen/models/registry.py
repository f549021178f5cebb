"""The model families by name, and the built-in models (shipped folders and in-memory random models)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from vgen.errors import ConfigError
from vgen.model_settings import ASSETS, BUILTIN_FOLDERS  # noqa: F401 (ASSETS re-exported)

FAMILY_MODULES = {
    "unet3d": "vgen.models.unet3d",
    "motion": "vgen.models.motion",
    "unet2d": "vgen.models.unet2d",
    "wan": "vgen.models.wan",
    "ltx": "vgen.models.ltx",
}


def get_family(name: str):
    """The family object of that name (its module is imported on first use)."""
    if name not in FAMILY_MODULES:
        raise ConfigError(f"unknown model family '{name}'; choose one of: {', '.join(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY


def families() -> list:
    return [get_family(name) for name in FAMILY_MODULES]


def builtin_folders() -> dict[str, Path]:
    return dict(BUILTIN_FOLDERS)


def builders() -> dict[str, tuple[str, Callable[[], dict]]]:
    """Built-in in-memory models: name -> (family, builder returning the parts)."""
    from vgen import tiny

    out = {name: (tiny.KINDS[name], build) for name, build in tiny.BUILDERS.items()}
    for family, module in FAMILY_MODULES.items():  # a family module may bring its own (Wan, LTX)
        out.update({name: (family, build) for name, build in getattr(importlib.import_module(module), "BUILDERS", {}).items()})
    return out


def builtin_names() -> list[str]:
    return list(builtin_folders()) + list(builders())
