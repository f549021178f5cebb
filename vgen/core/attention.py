"""Attention processors: install them on a UNet for the length of a `with` block, then restore.

Methods change attention (record probabilities, cross-frame / momentum keys and values, memory
modules) by giving a factory that picks a processor per layer; every other layer keeps its own.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch


@dataclass(frozen=True)
class AttentionLayer:
    name: str  # processor key, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"
    module: Any  # diffusers Attention
    role: str  # "spatial-self" | "cross" | "temporal"


def layer_role(name: str, module: Any) -> str:
    if "temp_attentions" in name or "motion_modules" in name:
        return "temporal"
    return "cross" if getattr(module, "is_cross_attention", False) else "spatial-self"


def attention_layers(unet: torch.nn.Module) -> list[AttentionLayer]:
    """Every attention layer of the UNet with its role, in the UNet's processor order."""
    layers = []
    for key in unet.attn_processors:
        module = unet.get_submodule(key.removesuffix(".processor"))
        layers.append(AttentionLayer(key, module, layer_role(key, module)))
    return layers


ProcessorFactory = Callable[[AttentionLayer], Optional[Any]]


@contextmanager
def attention_processors(unet: torch.nn.Module, factory: ProcessorFactory) -> Iterator[dict[str, Any]]:
    """Install `factory(layer)` on every layer where it returns a processor; restore all on exit.

    Yields the mapping of the installed processors (name -> processor).
    """
    saved = dict(unet.attn_processors)
    installed = {}
    for layer in attention_layers(unet):
        proc = factory(layer)
        if proc is not None:
            installed[layer.name] = proc
    unet.set_attn_processor({name: installed.get(name, proc) for name, proc in saved.items()})
    try:
        yield installed
    finally:
        unet.set_attn_processor(saved)
