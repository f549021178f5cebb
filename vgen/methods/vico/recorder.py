"""Vico's attention recorder: which layers its graph needs, processors that keep their head-averaged
probabilities (with autograd) while a forward pass runs, and the recordings turned into flow blocks.

UNets (unet3d, motion): per unit, the cross-attention [F, P, J] and the temporal layers [P, F, F] that
follow it at the recorded resolution (``graph_layers``). DiTs (Wan): see ``vgen.methods.vico.dit``.
"""

from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from vgen.core.attention import AttentionLayer, attention_layers, attention_processors, recorded_attention, split_heads

_UNIT_RE = re.compile(
    r"^(?P<block>down_blocks\.(?P<down>\d+)|up_blocks\.(?P<up>\d+)|mid_block)\."
    r"(?P<kind>attentions|temp_attentions|motion_modules)\.(?P<index>\d+)\.transformer_blocks\.(?P<tb>\d+)\.(?P<attn>attn[12])\."
)


@dataclass(frozen=True)
class RecordSpec:
    """One layer whose probabilities a graph needs: its unit (cross-attn transformer + the temporal
    module that follows it in the same UNet block), role and downsampling factor."""

    name: str
    unit: str  # e.g. "down_blocks.2/1": attentions.1 and temp_attentions.1 / motion_modules.1 of that block
    role: str  # "cross" | "spatial-self" | "temporal"
    factor: int  # latent downsampling of the layer's feature map


def _layer_factor(unet: torch.nn.Module, m: "re.Match") -> int:
    n_down = len(unet.down_blocks)
    if m["down"] is not None:
        return 2 ** int(m["down"])
    if m["up"] is not None:
        return 2 ** (len(unet.up_blocks) - 1 - int(m["up"]))
    return 2 ** (n_down - 1)


UNITS = ("official", "outer")


def graph_layers(unet: torch.nn.Module, graph: str = "default", units: str = "official") -> list[RecordSpec]:
    """The layers Vico's graph records, at the recorded resolution: the coarsest cross-attention resolution of
    the down/up blocks (the mid block's if no down/up block has cross-attention).

    units official: every cross-attention at that resolution, in down, mid and up blocks alike, with its
    temporal layers (the public code's store, which keeps every cross-attention map of ``attn_res``);
    outer: the down/up blocks' only, never the mid block (ours, earlier). The two differ only where the
    mid block sits at the recorded resolution (the toy: yes; ModelScope/ZeroScope: no). graph="full" adds
    the spatial self-attention there. Everything else keeps its fast processor."""
    if units not in UNITS:
        raise ValueError(f"unknown Vico units {units!r} (expected one of {UNITS})")
    specs = []
    for layer in attention_layers(unet):
        m = _UNIT_RE.match(layer.name)
        if m is None:  # e.g. UNet3D's transformer_in (full resolution, before any cross-attention)
            continue
        unit = f"{m['block']}/{m['index']}"
        specs.append(RecordSpec(layer.name, unit, layer.role, _layer_factor(unet, m)))
    cross = [s for s in specs if s.role == "cross"]
    outer = [s for s in cross if not s.unit.startswith("mid_block")] or cross
    if not outer:
        return []
    factor = max(s.factor for s in outer)
    chosen = outer if units == "outer" else cross
    names = {s.unit for s in chosen if s.factor == factor}
    roles = ("cross", "temporal", "spatial-self") if graph == "full" else ("cross", "temporal")
    return [s for s in specs if s.unit in names and s.role in roles]


class AttentionRecorder:
    """Keeps head-averaged attention probabilities [batch, queries, keys] (float32, with autograd) of
    the layers it was built for, while ``active``; the latest call of a layer overwrites the earlier one.

    Under activation checkpointing (``checkpoint_contexts``) the recompute of a layer during backward
    replays the explicit-probability path, so autograd finds the same saved tensors, but keeps nothing
    and never stops the pass: the maps kept in the forward are the graph's own tensors, and backward
    through them recomputes what they need."""

    def __init__(self, specs: list[RecordSpec], stop_when_complete: bool = False, tokens: Optional[int] = None):
        self.specs = {s.name: s for s in specs}
        self.active = False
        self.replaying = False  # recompute of a checkpointed layer: same ops, nothing kept
        self.stop_when_complete = stop_when_complete  # raise RecordingComplete after the last needed layer
        self.tokens = tokens  # cross-attention keeps only the first `tokens` text tokens (None: all)
        self.probs: dict[str, torch.Tensor] = {}

    def columns(self, name: str) -> Optional[int]:
        """How many keys of layer ``name`` to keep: the prompt's tokens for cross-attention, else all."""
        return self.tokens if self.specs[name].role == "cross" else None

    def keep(self, name: str, probs: torch.Tensor) -> None:
        """Store one layer's head-averaged probabilities [B, N, K]; raise RecordingComplete once every
        layer of the graph has run (when asked to)."""
        self.probs[name] = probs
        if self.stop_when_complete and len(self.probs) == len(self.specs):
            raise RecordingComplete

    def checkpoint_contexts(self):
        """(forward, recompute) context managers for ``torch.utils.checkpoint(context_fn=...)``: the
        recompute sees the recorder as the forward did (explicit probabilities where it was active)."""
        return nullcontext(), self._replay(self.active)

    @contextmanager
    def _replay(self, active: bool) -> Iterator[None]:
        saved = self.active, self.replaying
        self.active, self.replaying = active, True
        try:
            yield
        finally:
            self.active, self.replaying = saved

    def clear(self) -> None:
        self.probs = {}

    def grid(self, latent_shape: tuple) -> tuple[int, int, int]:
        """(frames, h, w) of the recorded maps for latents [B, C, F, H, W]: the recorded resolution."""
        factor = max((s.factor for s in self.specs.values()), default=1)
        h, w = latent_shape[3:]
        for _ in range(factor.bit_length() - 1):
            h, w = -(-h // 2), -(-w // 2)
        return latent_shape[2], h, w

    def lean(self, model: torch.nn.Module, levels: Optional[int] = None):
        """Activation checkpointing of the model's layers while a gradient pass records (``checkpointed``)."""
        from vgen.methods.vico.checkpointing import checkpointed

        return checkpointed(model, self.checkpoint_contexts, levels)

    def blocks(self, frames: int, batch_index: int = 0) -> list[tuple]:
        """Recordings as flow.py blocks, one per unit in forward order: (C [F,P,J], S [F,P,P] or None,
        [T [P,F,F], ...]) for batch element ``batch_index``."""
        units: dict[str, dict] = {}
        for name, p in self.probs.items():
            spec = self.specs[name]
            u = units.setdefault(spec.unit, {"cross": None, "spatial-self": None, "temporal": []})
            if spec.role == "temporal":  # [B*P, F, F]: diffusers folds (B, h, w) into the batch, B major
                u["temporal"].append(p)
            else:  # [B*F, P, K]: frames folded into the batch, B major
                u["batch"] = p.shape[0] // frames
                u[spec.role] = p.reshape(u["batch"], frames, *p.shape[1:])[batch_index]
        for u in units.values():
            b = u.get("batch", 1)  # the unit's cross-attention gives B (temporal layers know only B*P)
            u["temporal"] = [t.reshape(b, t.shape[0] // b, frames, frames)[batch_index] for t in u["temporal"]]
        return [(u["cross"], u["spatial-self"], u["temporal"]) for u in units.values() if u["cross"] is not None]

    def factory(self, layer: AttentionLayer):
        return RecordingAttnProcessor(self, layer.name) if layer.name in self.specs else None


class RecordingComplete(Exception):
    """Every layer of the graph ran: a caller that only needs the recordings may stop the forward pass."""


class RecordingAttnProcessor:
    """AttnProcessor2_0 with explicit probabilities softmax(QK^T * scale) while its recorder is active,
    so they can be kept (head-averaged, float32) and backpropagated through (``recorded_attention``);
    SDPA otherwise."""

    def __init__(self, recorder: AttentionRecorder, name: str):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.recorder = recorder
        self.name = name
        self.fast = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if not self.recorder.active:
            return self.fast(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value, head_dim = split_heads(attn, query, key, value, batch)
        hidden_states, probs = recorded_attention(query, key, value, attention_mask, head_dim ** -0.5,
                                                  self.recorder.columns(self.name))
        if not self.recorder.replaying:
            self.recorder.keep(self.name, probs)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def record_attention(unet: torch.nn.Module, graph: str = "default", stop_when_complete: bool = False,
                     tokens: Optional[int] = None, units: str = "official") -> Iterator[AttentionRecorder]:
    """Install recording processors on the layers of Vico's graph (see ``graph_layers``) for the
    length of the block; the recorder starts inactive (``recorder.active = True`` to record)."""
    recorder = AttentionRecorder(graph_layers(unet, graph, units), stop_when_complete, tokens)
    with attention_processors(unet, recorder.factory):
        yield recorder


