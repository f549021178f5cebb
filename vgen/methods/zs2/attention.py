"""ZS2's temporal momentum attention: frame i attends with keys and values K̃_i = μ·K̃_{i-1} + (1-μ)·K_i (and V),
queries unchanged, separately per group of frames (one group per CFG half and batch element).

Image UNets (`MomentumAttnProcessor`, on diffusers' Attention) fold frames into the batch, frame-major. The
running state that the processors of one model share is a `FrameState`, set by the runner before each call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vgen.core.attention import AttentionLayer, ProcessorFactory, split_heads


@dataclass
class FrameState:
    """What the momentum processors of one UNet share, set by the runner before each UNet call.

    frames: frames per video in the batch (the batch is groups of `frames` consecutive images: one group
    per CFG half and batch element). active: False makes every processor plain attention (steps outside
    the configured range). continues: the call is the next chunk of frames of the same step, so frame 0
    of the chunk continues the running average of the previous chunk's last frame.
    """

    frames: int
    active: bool = True
    continues: bool = False


class MomentumAttnProcessor:
    """Spatial self-attention whose keys and values are running averages over frames (ZS2).

    K̃_0 = K_0, K̃_i = μ·K̃_{i-1} + (1-μ)·K_i (same for V), token by token, queries unchanged, separately per
    group of frames, as one lower-triangular matrix along frames. μ = 0 is plain attention, μ = 1 is
    Text2Video-Zero's cross-frame attention (every frame sees frame 0). The attention itself is computed like
    diffusers' AttnProcessor2_0 (`sdpa=True`, the default processor) or AttnProcessor (`sdpa=False`), so both
    ends match diffusers bit for bit.
    """

    def __init__(self, momentum: float, state: FrameState, sdpa: bool = True):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum, self.state, self.sdpa = momentum, state, sdpa
        self._last: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (K̃, Ṽ) of each group's last frame
        self._mix: dict[tuple, torch.Tensor] = {}

    def mix(self, x: torch.Tensor, carry: Optional[torch.Tensor]) -> torch.Tensor:
        """[G·F, T, D] -> running average along F within each group; `carry` [G, T, D] acts as frame -1."""
        from vgen.core.noise import ar_matrix

        f = self.state.frames
        if x.shape[0] % f:
            raise ValueError(f"batch {x.shape[0]} is not a whole number of {f}-frame videos")
        x = x.reshape(x.shape[0] // f, f, *x.shape[1:])
        if carry is not None:
            x = torch.cat([carry[:, None].to(x.dtype), x], dim=1)
        n = x.shape[1]
        key = (n, x.dtype, x.device)
        if key not in self._mix:
            self._mix[key] = ar_matrix(n, self.momentum, 1.0 - self.momentum, x.dtype).to(x.device)
        out = torch.matmul(self._mix[key], x.flatten(2)).view_as(x)  # over frames; as an einsum 1.7x slower on CPU
        if carry is not None:
            out = out[:, 1:]
        return out

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        self_attention = encoder_hidden_states is None
        batch_size, sequence_length, _ = hidden_states.shape if self_attention else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            if self.sdpa:
                attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if self_attention:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        if self_attention and self.state.active and self.momentum > 0.0:
            carry = self._last if self.state.continues and self._last is not None else (None, None)
            key = self.mix(key, carry[0])
            value = self.mix(value, carry[1])
            self._last = (key[:, -1], value[:, -1])
            key = key.reshape(-1, *key.shape[2:])
            value = value.reshape(-1, *value.shape[2:])

        if self.sdpa:
            query, key, value, head_dim = split_heads(attn, query, key, value, batch_size)
            hidden_states = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
            hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
            hidden_states = hidden_states.to(query.dtype)
        else:
            query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
            probs = attn.get_attention_scores(query, key, attention_mask)
            hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))

        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def momentum_factory(
    momentum: float, state: FrameState, layers: tuple[str, ...] = (), sdpa: bool = True
) -> ProcessorFactory:
    """Momentum processors on the spatial self-attention layers whose name contains one of `layers`
    (all of them when `layers` is empty); other layers keep their processors."""

    def factory(layer: AttentionLayer) -> Optional[MomentumAttnProcessor]:
        if layer.role != "spatial-self" or (layers and not any(part in layer.name for part in layers)):
            return None
        return MomentumAttnProcessor(momentum, state, sdpa)

    return factory
