"""Activation checkpointing during Vico's gradient pass: a UNet's layers (diffusers' UNet3D has none) or a
DiT's blocks, each recomputed in backward."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch.utils.checkpoint import checkpoint


# The layer lists of diffusers' video UNet blocks (UNet3D and motion) whose members keep several
# activations for backward. Not the downsamplers: a strided conv keeps only its input, which the
# checkpoint would keep as well (recomputing it would buy nothing).
_LAYER_LISTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "motion_modules", "upsamplers")


def checkpoint_units(unet: torch.nn.Module, levels: Optional[int] = None) -> list[torch.nn.Module]:
    """The modules the gradient pass checkpoints one by one: UNet3D's transformer_in and every resnet,
    temporal conv, transformer, motion module and upsampler of the down, mid and up blocks; with
    ``levels``, only those of the ``levels`` finest resolutions (level 0 = the UNet input's; an upsampler
    counts at its input's level)."""
    n = len(unet.down_blocks)
    placed = [(0, unet.transformer_in)] if getattr(unet, "transformer_in", None) is not None else []
    blocks = [(i, b) for i, b in enumerate(unet.down_blocks)] + [(n - 1, unet.mid_block)]
    blocks += [(n - 1 - i, b) for i, b in enumerate(unet.up_blocks)]
    for level, block in blocks:
        for name in _LAYER_LISTS:
            placed.extend((level, m) for m in getattr(block, name, None) or [])
    return [m for level, m in placed if levels is None or level < levels]


def checkpointed_forward(forward: Callable, context_fn: Callable) -> Callable:
    """``forward`` that keeps only its inputs for backward and recomputes the rest there. Non-reentrant,
    so the forward builds the real graph: tensors taken out of it (recorded maps) stay connected and
    backward through them recomputes the saved tensors they need (early stop: no further)."""

    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, context_fn=context_fn, preserve_rng_state=False,
                          **kwargs)

    return run


@contextmanager
def checkpointed_modules(units: list[torch.nn.Module], context_fn: Callable) -> Iterator[None]:
    """Each of ``units`` checkpointed (``checkpointed_forward``) for the length of the block."""
    previous = [m.__dict__.get("forward") for m in units]
    for m in units:
        m.forward = checkpointed_forward(m.forward, context_fn)
    try:
        yield
    finally:
        for m, forward in zip(units, previous):
            if forward is None:
                del m.forward
            else:
                m.forward = forward


@contextmanager
def checkpointed(unet: torch.nn.Module, contexts: Callable, levels: Optional[int] = None) -> Iterator[None]:
    """Activation checkpointing of ``checkpoint_units`` for the length of the block (diffusers' UNet3D has
    none): a gradient pass stores one input per layer instead of every activation. ``contexts``: the
    recorder's ``checkpoint_contexts`` (what the recompute must see). Models are eval() (no dropout), so no
    RNG state is kept for the recompute."""
    with checkpointed_modules(checkpoint_units(unet, levels), contexts):
        yield
