"""I4VGen's attention shortcut for its candidate stage: the video model drawing 1-frame videos.

A temporal layer over a 1-frame video attends over one key, so its output is to_out(to_v(x)) exactly; this
skips the work (speed, not semantics). A DiT has no temporal layer: a 1-frame video's full 3-D self-attention
already runs over that one frame's tokens, so there is nothing to replace (`one_frame_temporal_attention`
installs nothing there).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from vgen.core.attention import attention_layers, attention_processors


class OneKeyAttention:
    """Attention with a single key: the softmax of one score is 1, so every query gets that key's value and the
    layer's output is to_out(to_v(x)). Exact; skips the query and key projections and the attention kernel, whose
    per-sequence cost dominates a temporal layer over one-frame videos (I4VGen's candidates: b·h·w sequences of
    length 1). Anything else (more keys, a mask, an image-shaped input, group or spatial norms) goes to `fallback`."""

    def __init__(self, fallback: Any):
        self.fallback = fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if (attention_mask is not None or hidden_states.ndim != 3 or source.shape[1] != 1
                or attn.spatial_norm is not None or attn.group_norm is not None):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is not None and attn.norm_cross:
            source = attn.norm_encoder_hidden_states(source)
        out = attn.to_v(source).expand(-1, hidden_states.shape[1], -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextmanager
def one_frame_temporal_attention(unet: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """While sampling one-frame videos: OneKeyAttention on the temporal layers (a 2D UNet has none: no change)."""
    if not any(layer.role == "temporal" for layer in attention_layers(unet)):  # a DiT, a 2D UNet: nothing to replace
        yield {}
        return
    factory = lambda layer: OneKeyAttention(layer.module.processor) if layer.role == "temporal" else None  # noqa: E731
    with attention_processors(unet, factory) as installed:
        yield installed
