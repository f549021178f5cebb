"""Config files and their keys, below vgen.config so that vgen.model_settings (which vgen.config calls) can read
a model's vgen.yaml without importing vgen.config back."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from vgen.errors import ConfigError

# the methods that bring a config section of their own (vanilla has none)
METHOD_SECTIONS: tuple[str, ...] = ("zs2", "vico", "i4vgen", "streaming")


def load_yaml(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file '{path}' must be a mapping of keys to values")
    return loaded


def leaf_keys(update: Any, prefix: str = "") -> list[str]:
    """The dotted keys a partial config sets (a list is one value)."""
    node = OmegaConf.to_container(update) if isinstance(update, (DictConfig, ListConfig)) else update
    if not isinstance(node, dict):
        return []
    keys: list[str] = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            keys += leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


# --- checks of one config value: one ConfigError line naming the key

def choice(key: str, value: str, choices: Iterable[str]) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}' is '{value}'; choose one of: {', '.join(choices)}")


def at_least(key: str, value: float, low: float) -> None:
    if not value >= low:  # NaN fails every comparison: written so that it fails this one
        raise ConfigError(f"config key '{key}' must be >= {low}, got {value}")


def above(key: str, value: float, low: float) -> None:
    if not value > low:
        raise ConfigError(f"config key '{key}' must be > {low}, got {value}")
