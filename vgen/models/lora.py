"""LoRA files (`model.lora=PATH[:SCALE]`, repeatable) through diffusers' own loaders (peft).

Every key of a LoRA must name a layer of the model: diffusers only warns about keys it cannot place and
then runs the model unchanged, which is users' most common LoRA complaint. Here the first such key is a
one-line error instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vgen.errors import ConfigError, ModelLoadError

# The parts of a key that follow the layer's own path: peft's lora_A/lora_B (with an adapter name), the
# older lora.up/lora.down and lora_linear_layer.*, alphas, DoRA magnitudes and full diffs.
_LORA_PART = re.compile(r"^(lora(_[AB]|_linear_layer|_magnitude_vector|_down|_up)?|alpha|diff(_b)?)$")
# key prefix in a diffusers-format state dict -> Components attribute
_PREFIXES = {"transformer": "unet", "transformer_2": "unet_2", "unet": "unet", "text_encoder": "text_encoder"}


def parse_lora(spec: str) -> tuple[Path, float]:
    """'PATH' or 'PATH:SCALE' -> (path, scale); the path must exist."""
    from vgen.config import split_lora_spec

    path, scale = split_lora_spec(spec)
    if not Path(path).expanduser().exists():
        raise ModelLoadError(f"model.lora: '{path}' does not exist (give PATH or PATH:SCALE of a LoRA .safetensors)")
    return Path(path).expanduser(), scale


def layer_path(key: str) -> str:
    """'transformer.blocks.0.attn1.to_q.lora_A.weight' -> 'transformer.blocks.0.attn1.to_q'."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if _LORA_PART.match(part):
            return ".".join(parts[:i])
    return key.rsplit(".", 1)[0]


def first_unmatched_key(components: Any, state_dict: dict) -> str | None:
    """The first key whose layer is not a module of the component its prefix names (None: all match)."""
    names: dict[str, set[str]] = {}
    for key in state_dict:
        prefix, _, rest = layer_path(key).partition(".")
        attr = _PREFIXES.get(prefix)
        module = getattr(components, attr, None) if attr else None
        if module is None:
            return key
        if attr not in names:
            names[attr] = {name for name, _ in module.named_modules()}
        if rest not in names[attr]:
            return key
    return None


def apply_loras(components: Any, specs: list[str]) -> None:
    """Load each LoRA as its own adapter and weight them by their scales, as pipe.load_lora_weights +
    pipe.set_adapters do; records (file, scale, sha) on the components for the sidecar."""
    from vgen.fingerprint import file_hash

    family = components.family
    if family.lora_loader is None or not hasattr(family, "pipeline"):
        raise ConfigError(f"model.lora: LoRA is not supported on {family.name} models")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError("model.lora needs the peft package (pip install peft)") from None
    pipe = family.pipeline(components)
    names, scales = [], []
    for i, spec in enumerate(specs):
        path, scale = parse_lora(spec)
        try:
            state = pipe.lora_state_dict(str(path))
        except Exception as err:  # not a LoRA file, unreadable, unknown format
            raise ModelLoadError(f"model.lora: cannot read '{path}': {str(err).splitlines()[0]}") from None
        state = state[0] if isinstance(state, tuple) else state
        bad = first_unmatched_key(components, state)
        if bad is not None:
            raise ConfigError(f"model.lora: '{path.name}' does not fit {components.name}: key '{bad}' names no layer of the model")
        name = f"lora{i}"
        pipe.load_lora_weights(str(path), adapter_name=name)
        names.append(name)
        scales.append(scale)
        weights = path if path.is_file() else next(iter(sorted(path.glob("*.safetensors"))), None)
        components.loras.append({"path": str(path), "scale": scale,
                                 "sha256": file_hash(weights) if weights is not None else None})
    pipe.set_adapters(names, adapter_weights=scales)
