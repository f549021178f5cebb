"""Attention processors: install them on a UNet for the length of a `with` block, then restore.

Methods change attention (record probabilities, cross-frame / momentum keys and values, memory
modules) by giving a factory that picks a processor per layer; every other layer keeps its own.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch

from vgen.core.kernels.dispatch import use_triton


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


def split_heads(attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, batch: int):
    """[B, N, heads*d] projections -> [B, heads, N, d] (with the layer's q/k norms), as diffusers' processors do."""
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value, head_dim


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


# ----------------------------------------------------------------------------------------------------------
# Attention with its head-averaged probabilities, differentiable in O(chunk) memory (for methods that read
# attention maps and backpropagate through them)

# Elements of one chunk of float32 probabilities [batch_chunk, heads, N, K] (1 MiB): the recorded layers
# never hold more than a few of these, whatever the batch (frames or positions folded in).
RECORD_BUDGET = 1 << 18


def _chunks(batch: int, per_item: int, budget: int) -> list[tuple[int, int]]:
    step = max(1, budget // max(1, per_item))
    return [(b, min(b + step, batch)) for b in range(0, batch, step)]


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Probabilities in float32 at least: half-precision ones of ~1e-4 would lose the flow signal."""
    return torch.promote_types(dtype, torch.float32)


def _probabilities(q, k, mask, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) in ``_acc`` precision."""
    acc = _acc(q.dtype)
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.to(acc)
    return scores.softmax(dim=-1)


def _mask_chunk(mask: Optional[torch.Tensor], b0: int, b1: int) -> Optional[torch.Tensor]:
    return None if mask is None else mask[b0:b1] if mask.shape[0] > 1 else mask


class _RecordedAttention(torch.autograd.Function):
    """(softmax(q k^T * scale + mask) v, head mean of the probabilities' first ``columns`` keys), computed
    in batch chunks. Saves q, k, v (and the mask) only: backward recomputes each chunk's probabilities,
    so neither pass holds more than a chunk of the [B, heads, N, K] float32 tensor and its gradient
    (autograd would keep the probabilities and sum two full-size gradients into them). Gradients:
        dP = dO v^T + dM / heads (first columns),  dS = P * (dP - rowsum(dP * P)) * scale,
        dq = dS k,  dk = dS^T q,  dv = P^T dO."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float, columns: Optional[int], budget: int):
        B, H, N, _ = q.shape
        K = k.shape[-2]
        c = K if columns is None else min(columns, K)
        out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=v.dtype, device=v.device)
        mean = torch.empty((B, N, c), dtype=_acc(q.dtype), device=q.device)
        for b0, b1 in _chunks(B, H * N * K, budget):
            p = _probabilities(q[b0:b1], k[b0:b1], _mask_chunk(mask, b0, b1), scale)
            torch.matmul(p.to(v.dtype), v[b0:b1], out=out[b0:b1])
            mean[b0:b1] = p[..., :c].mean(dim=1)
        ctx.save_for_backward(q, k, v, mask)
        ctx.scale, ctx.columns, ctx.budget = scale, c, budget
        ctx.set_materialize_grads(False)
        return out, mean

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, g_mean):
        q, k, v, mask = ctx.saved_tensors
        B, H, N, _ = q.shape
        K, c = k.shape[-2], ctx.columns
        gq, gk, gv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for b0, b1 in _chunks(B, H * N * K, ctx.budget):
            p = _probabilities(q[b0:b1], k[b0:b1], _mask_chunk(mask, b0, b1), ctx.scale)
            if g_out is not None:
                gp = torch.matmul(g_out[b0:b1], v[b0:b1].transpose(-1, -2)).to(p.dtype)
                gv[b0:b1] = torch.matmul(p.to(v.dtype).transpose(-1, -2), g_out[b0:b1])
            else:
                gp = torch.zeros_like(p)
            if g_mean is not None:
                gp[..., :c] += g_mean[b0:b1, None] / H
            gs = gp.sub_((gp * p).sum(dim=-1, keepdim=True)).mul_(p).mul_(ctx.scale)
            gq[b0:b1] = torch.matmul(gs, k[b0:b1].to(gs.dtype))
            gk[b0:b1] = torch.matmul(gs.transpose(-1, -2), q[b0:b1].to(gs.dtype))
        return gq, gk, gv, None, None, None, None


def recorded_attention(q, k, v, mask=None, scale: float = 1.0, columns: Optional[int] = None,
                       budget: int = RECORD_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output [B, heads, N, d] (v's dtype) and head-averaged probabilities [B, N, columns]
    (float32 at least), differentiable in q, k, v with O(chunk) memory (see ``_RecordedAttention``).

    Without a mask, where ``vgen.core.kernels`` picks Triton (CUDA by default), the flash-style Triton
    kernel runs instead (``budget`` does not apply: it never holds a [B, heads, N, K] tensor);
    ``_RecordedAttention`` stays the reference and the fallback."""
    if mask is None and q.dtype == k.dtype == v.dtype and use_triton(q, k, v):
        from vgen.core.kernels import triton_attention

        return triton_attention.recorded_attention(q, k, v, scale, columns)
    return _RecordedAttention.apply(q, k, v, mask, float(scale), columns, int(budget))
