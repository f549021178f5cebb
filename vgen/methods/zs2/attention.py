"""ZS2's temporal momentum attention: frame i attends with keys and values K̃_i = μ·K̃_{i-1} + (1-μ)·K_i (and V),
queries unchanged, separately per group of frames (one group per CFG half and batch element).

Image UNets (`MomentumAttnProcessor`, on diffusers' Attention) fold frames into the batch, frame-major; the image
mode of Wan (`WanMomentumAttnProcessor`) and LTX (`LTXMomentumAttnProcessor`) makes them a batch of 1-frame videos,
frame-major, and mixes the keys after RoPE (every frame sits at frame index 0, so each is rotated alike and the
mix commutes with the rotation). The running state that the processors of one model share is a `FrameState`, set
by the runner before each call. Which processor a model gets follows its family's processor signature
(`processor_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Optional

import torch

from vgen.core.attention import AttentionLayer, ProcessorFactory, split_heads
from vgen.core.scan import ar_scan
from vgen.errors import ConfigError
from vgen.models.family import Family
from vgen.models.ltx import LTXFamily
from vgen.models.wan import WanFamily


@dataclass
class FrameState:
    """What the momentum processors of one model share, set by the runner before each model call.

    frames: frames per video in the batch (the batch is groups of `frames` consecutive images: one group
    per CFG half and batch element). active: False makes every processor plain attention (steps outside
    the configured range). continues: the call is the next chunk of frames of the same step, so frame 0
    of the chunk continues the running average of the previous chunk's last frame.
    """

    frames: int
    active: bool = True
    continues: bool = False


class RunningKV:
    """The running average of keys and values over the frames of each group, shared by the processors below.

    K̃_0 = K_0, K̃_i = μ·K̃_{i-1} + (1-μ)·K_i (same for V), token by token, by `vgen.core.scan.ar_scan` along the
    frames (a Triton scan where the kernels say so, else one lower-triangular matmul); with `state.continues`, the
    previous call's last K̃/Ṽ of each group is the carry: K̃_0 = μ·carry + (1-μ)·K_0.
    """

    def __init__(self, momentum: float, state: FrameState):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum, self.state = momentum, state
        self._last: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (K̃, Ṽ) of each group's last frame

    @property
    def mixing(self) -> bool:
        return self.state.active and self.momentum > 0.0

    def mix(self, x: torch.Tensor, carry: Optional[torch.Tensor]) -> torch.Tensor:
        """[G·F, ...] -> [G, F, ...], the running average along F within each group; `carry` [G, ...] is frame -1."""
        f = self.state.frames
        if x.shape[0] % f:
            raise ValueError(f"batch {x.shape[0]} is not a whole number of {f}-frame videos")
        x = x.reshape(x.shape[0] // f, f, *x.shape[1:])
        return ar_scan(x, self.momentum, 1.0 - self.momentum, dim=1, carry=None if carry is None else carry.to(x.dtype))

    def mix_kv(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [G·F, ...] -> their running averages, same shape; remembers each group's last frame."""
        carry = self._last if self.state.continues and self._last is not None else (None, None)
        key, value = self.mix(key, carry[0]), self.mix(value, carry[1])
        self._last = (key[:, -1], value[:, -1])
        return key.flatten(0, 1), value.flatten(0, 1)


class MomentumAttnProcessor(RunningKV):
    """Spatial self-attention whose keys and values are running averages over frames (ZS2).

    K̃_0 = K_0, K̃_i = μ·K̃_{i-1} + (1-μ)·K_i (same for V), token by token, queries unchanged, separately per
    group of frames (`RunningKV`). μ = 0 is plain attention, μ = 1 is
    Text2Video-Zero's cross-frame attention (every frame sees frame 0). The attention itself is computed like
    diffusers' AttnProcessor2_0 (`sdpa=True`, the default processor) or AttnProcessor (`sdpa=False`), so both
    ends match diffusers bit for bit.
    """

    signature = Family.processor_signature

    def __init__(self, momentum: float, state: FrameState, sdpa: bool = True):
        super().__init__(momentum, state)
        self.sdpa = sdpa

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

        if self_attention and self.mixing:
            key, value = self.mix_kv(key, value)

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


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on [B, N, heads, d]: channel pairs (x_2j, x_2j+1) turn by the angle whose cosine sits at 2j of
    `cos` and whose sine at 2j+1 of `sin` (the tables repeat each value twice)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)


class WanMomentumAttnProcessor(RunningKV):
    """Wan's self-attention (attn1) in image mode with ZS2's momentum: diffusers' WanAttnProcessor (0.42.1) step
    for step (q/k/v projections, RMS norms over all heads, heads split, RoPE, dispatch_attention_fn, to_out),
    with the rotated keys and the values replaced by their running averages over the frames of the batch before
    attending. Queries unchanged; μ = 0 (or `state.active` False) is WanAttnProcessor exactly."""

    signature = WanFamily.processor_signature
    _attention_backend = None  # what diffusers' set_attention_backend sets on Wan's processors
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            raise ValueError("ZS2's momentum attention goes on Wan's self-attention (attn1) only")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query, key = rotate(query, *rotary_emb), rotate(key, *rotary_emb)
        if self.mixing:
            key, value = self.mix_kv(key, value)
        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=self._attention_backend, parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden_states))


class LTXMomentumAttnProcessor(RunningKV):
    """LTX's self-attention (attn1) in image mode with ZS2's momentum: diffusers' LTXVideoAttnProcessor (0.42.1) step
    for step (projections, RMS norms, RoPE on the whole width, heads split, dispatch_attention_fn, to_out), with the
    rotated keys and the values replaced by their running averages over the frames of the batch before attending.
    Queries unchanged; μ = 0 (or `state.active` False) is LTXVideoAttnProcessor exactly."""

    signature = LTXFamily.processor_signature
    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        if encoder_hidden_states is not None:
            raise ValueError("ZS2's momentum attention goes on LTX's self-attention (attn1) only")
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query, key = apply_rotary_emb(query, image_rotary_emb), apply_rotary_emb(key, image_rotary_emb)
        if self.mixing:
            key, value = self.mix_kv(key, value)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=self._attention_backend, parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](hidden_states))


PROCESSORS = (MomentumAttnProcessor, WanMomentumAttnProcessor, LTXMomentumAttnProcessor)


def processor_for(family: Family) -> type:
    """The momentum processor written for the family's attention processor signature."""
    for processor in PROCESSORS:
        if processor.signature == family.processor_signature:
            return processor
    raise ConfigError(f"zs2's momentum attention has no processor for {family.name} attention; it runs on unet2d, wan and ltx")


def momentum_sites(components, layers: Collection[str] = ()) -> set[str]:
    """The spatial self-attention sites of the (image-mode) model whose name contains one of `layers` (all of
    them when `layers` is empty), from its family."""
    return {site.key for site in components.family.attention_sites(components)
            if site.role == "spatial-self" and (not layers or any(part in site.key for part in layers))}


def momentum_factory(momentum: float, state: FrameState, sites: Collection[str], processor: type = MomentumAttnProcessor,
                     **options) -> ProcessorFactory:
    """A `processor(momentum, state, **options)` on each of `sites`; other layers keep their processors."""

    def factory(layer: AttentionLayer) -> Optional[RunningKV]:
        return processor(momentum, state, **options) if layer.name in sites else None

    return factory
