"""Bottleneck (max-min) matrix products: the widest-path algebra of attention-flow graphs.

Flow from a text token to a video token is approximated by the *widest path* through the attention
graph: the best single path scored by its weakest edge. Along a chain of layers that is a bottleneck
(max-min) matrix product. This module holds

* the products: hard ``bottleneck_matmul``, soft ``soft_bottleneck_matmul`` (plain references) and
  ``soft_bottleneck_matmul_tiled`` / ``bottleneck_matmul_tiled`` (O(m*n) memory, backward recomputes tiles),
  with the ``bottleneck`` dispatcher (Triton kernels of ``vgen.core.kernels`` where it picks them);
* ``with_residual``: (M + I)/2, the residual path of an attention map.
The graphs built from these products (and their exact max-flow reference) belong to the method that uses them.

Error bounds of the soft product (tau > 0), with softmin(a,b) = -tau*log(e^-a/tau + e^-b/tau):
    min(a,b) - tau*log2 <= softmin(a,b) <= min(a,b),   max_r x_r <= tau*LSE_r(x_r/tau) <= max_r x_r + tau*log k,
hence for one product with inner size k:   hard - tau*log2  <=  soft  <=  hard + tau*log k.
Both soft and hard products are monotone and 1-Lipschitz (sup-norm) in each argument, so the errors add
along a chain: for L products with inner sizes k_1..k_L and M soft joins (tau*logaddexp of two flows,
which lies in [max, max + tau*log2]),
    hard - L*tau*log2  <=  soft chain  <=  hard + tau*(sum_l log k_l + M*log2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vgen.core.kernels.dispatch import use_triton

__all__ = [
    "bottleneck_matmul",
    "soft_bottleneck_matmul",
    "soft_bottleneck_matmul_tiled",
    "bottleneck_matmul_tiled",
    "bottleneck",
    "with_residual",
    "TILED_THRESHOLD",
    "TILE_BUDGET",
]

# The dispatcher switches to the tiled kernels when the m*k*n intermediate (times batch) exceeds this
# many elements (64 MiB in float32): below it the plain broadcast is faster and memory is no issue.
TILED_THRESHOLD = 1 << 24
# Elements of one tile intermediate [batch_chunk, m_chunk, k_chunk, n] (4 MiB in float32); a tile step
# keeps ~4 such temporaries. Large enough that Python loop overhead is negligible (~1M elements per step).
TILE_BUDGET = 1 << 20
_DEFAULT_K_TILE = 64
_EXP_CLAMP = 80.0  # e^80 < float32 max / 2; terms clamped there weigh < e^-80 of the total


def _compute_dtype(*tensors: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of the result, dtype to accumulate in): half types accumulate in float32."""
    out = tensors[0].dtype
    for t in tensors[1:]:
        out = torch.promote_types(out, t.dtype)
    if not out.is_floating_point:
        out = torch.get_default_dtype()
    acc = out if out in (torch.float32, torch.float64) else torch.float32
    return out, acc


def _check_mm(A: torch.Tensor, B: torch.Tensor) -> None:
    if A.dim() < 2 or B.dim() < 2 or A.shape[-1] != B.shape[-2] or A.shape[-1] == 0:
        raise ValueError(f"bottleneck product needs [..., m, k] x [..., k, n], got {tuple(A.shape)} x {tuple(B.shape)}")


# ----------------------------------------------------------------------------------------------------------
# Plain references (memory O(batch*m*k*n))


def bottleneck_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Hard max-min product (A ⊗ B)[..., i, j] = max_r min(A[..., i, r], B[..., r, j]).

    Leading dims broadcast like ``torch.matmul``. Plain broadcast: the reference for everything else.
    """
    _check_mm(A, B)
    out_dtype, acc = _compute_dtype(A, B)
    v = torch.minimum(A.to(acc).unsqueeze(-1), B.to(acc).unsqueeze(-3))  # [..., m, k, n]
    return v.amax(dim=-2).to(out_dtype)


def soft_bottleneck_matmul(A: torch.Tensor, B: torch.Tensor, tau: float = 0.01) -> torch.Tensor:
    """Soft max-min product: tau*LSE_r(softmin(A[i,r], B[r,j]) / tau), differentiable by autograd.

    softmin(a, b) = -tau*logaddexp(-a/tau, -b/tau) (stable). Lies in [hard - tau*log2, hard + tau*log k].
    Plain broadcast (memory O(m*k*n)): the reference for the tiled kernel.
    """
    _check_mm(A, B)
    out_dtype, acc = _compute_dtype(A, B)
    a = A.to(acc).unsqueeze(-1) / tau
    b = B.to(acc).unsqueeze(-3) / tau
    s = -torch.logaddexp(-a, -b)  # softmin / tau, [..., m, k, n]
    return (tau * torch.logsumexp(s, dim=-2)).to(out_dtype)


# ----------------------------------------------------------------------------------------------------------
# Tiled kernels (memory O(m*n) + one tile; the backward recomputes tiles instead of storing m*k*n)


def _flatten_pair(A: torch.Tensor, B: torch.Tensor, acc: torch.dtype):
    """Broadcast leading dims and flatten them to one: A [Bt, m, k], B [Bt, k, n]."""
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    m, k = A.shape[-2:]
    n = B.shape[-1]
    a = A.to(acc).expand(*batch, m, k).reshape(-1, m, k)
    b = B.to(acc).expand(*batch, k, n).reshape(-1, k, n)
    return a, b, batch


def _tiles(bt: int, m: int, k: int, n: int, k_tile: int | None, budget: int):
    """Chunk sizes (batch, m, k) so that one tile [bc, mc, kc, n] holds at most ~budget elements."""
    kc = max(1, min(k, k_tile or _DEFAULT_K_TILE, budget // max(1, n)))
    mc = max(1, min(m, budget // max(1, kc * n)))
    bc = max(1, min(bt, budget // max(1, mc * kc * n)))
    return bc, mc, kc


def _reduce_grad(g: torch.Tensor, batch, like: torch.Tensor) -> torch.Tensor:
    """Undo the broadcast of ``like`` to ``batch``: sum the expanded dims, cast back to its dtype."""
    g = g.reshape(*batch, *g.shape[-2:]).sum_to_size(like.shape)
    return g.to(like.dtype)


class _SoftBottleneckTiled(torch.autograd.Function):
    """Online logsumexp over k tiles (as flash attention does over keys); saves A, B and the LSE only.

    With a = A/tau, b = B/tau, s = -logaddexp(-a, -b) and any shift c: exp(s - c) = 1/(e^(c-a) + e^(c-b)),
    so one exp per operand replaces logaddexp + logsumexp (2-3x fewer transcendentals than the reference).
    Forward shift c = running hard max-min h >= min(a, b) (denominator >= 1, rescaled when h grows);
    L = h + log(sum_r exp(s - h)), out = tau*L. Backward shift c = L >= min(a, b) - log2 (denominator >= 1/2):
    with D = e^(L-a) + e^(L-b), the softmax weight is 1/D and
        d out/d A[i,r] = sum_j G[i,j] e^(L-a)/D^2,   d out/d B[r,j] = sum_i G[i,j] e^(L-b)/D^2.
    Exponents are clamped at 80 (a term that far below its shift weighs < e^-80: no overflow, no NaN).
    """

    @staticmethod
    def forward(ctx, A, B, tau, k_tile, budget):
        out_dtype, acc = _compute_dtype(A, B)
        a, b, batch = _flatten_pair(A, B, acc)
        bt, m, k = a.shape
        n = b.shape[-1]
        a = a / tau
        b = b / tau
        L = torch.empty((bt, m, n), dtype=acc, device=a.device)
        bc, mc, kc = _tiles(bt, m, k, n, k_tile, budget)
        for b0 in range(0, bt, bc):
            for m0 in range(0, m, mc):
                h = Z = None
                for k0 in range(0, k, kc):
                    at = a[b0:b0 + bc, m0:m0 + mc, k0:k0 + kc].unsqueeze(-1)  # [bc, mc, kc, 1]
                    btile = b[b0:b0 + bc, k0:k0 + kc].unsqueeze(-3)  # [bc, 1, kc, n]
                    h_new = torch.minimum(at, btile).amax(dim=-2)  # hard max-min of this tile
                    if h is not None:
                        h_new = torch.maximum(h, h_new)
                    hn = h_new.unsqueeze(-2)
                    w = (hn - at).clamp_max_(_EXP_CLAMP).exp_()
                    w += (hn - btile).clamp_max_(_EXP_CLAMP).exp_()
                    z = w.reciprocal_().sum(dim=-2)  # sum_r exp(s - h_new)
                    Z = z if Z is None else Z * torch.exp(h - h_new) + z
                    h = h_new
                L[b0:b0 + bc, m0:m0 + mc] = h + torch.log(Z)
        ctx.save_for_backward(A, B, L)
        ctx.tau, ctx.k_tile, ctx.budget = tau, k_tile, budget
        return (tau * L).reshape(*batch, m, n).to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        A, B, L = ctx.saved_tensors
        tau = ctx.tau
        _, acc = _compute_dtype(A, B)
        a, b, batch = _flatten_pair(A, B, acc)
        bt, m, k = a.shape
        n = b.shape[-1]
        a = a / tau
        b = b / tau
        G = grad_out.to(acc).expand(*batch, m, n).reshape(bt, m, n)
        gA = torch.zeros_like(a) if ctx.needs_input_grad[0] else None
        gB = torch.zeros_like(b) if ctx.needs_input_grad[1] else None
        bc, mc, kc = _tiles(bt, m, k, n, ctx.k_tile, ctx.budget)
        for b0 in range(0, bt, bc):
            for m0 in range(0, m, mc):
                Lt = L[b0:b0 + bc, m0:m0 + mc].unsqueeze(-2)  # [bc, mc, 1, n]
                Gt = G[b0:b0 + bc, m0:m0 + mc].unsqueeze(-2)
                for k0 in range(0, k, kc):
                    at = a[b0:b0 + bc, m0:m0 + mc, k0:k0 + kc].unsqueeze(-1)  # [bc, mc, kc, 1]
                    btile = b[b0:b0 + bc, k0:k0 + kc].unsqueeze(-3)  # [bc, 1, kc, n]
                    ea = (Lt - at).clamp_max_(_EXP_CLAMP).exp_()
                    eb = (Lt - btile).clamp_max_(_EXP_CLAMP).exp_()
                    g = (ea + eb).reciprocal_().square_().mul_(Gt)  # G / D^2
                    if gA is not None:
                        gA[b0:b0 + bc, m0:m0 + mc, k0:k0 + kc] += (g * ea).sum(-1)
                    if gB is not None:
                        gB[b0:b0 + bc, k0:k0 + kc] += (g * eb).sum(-3)
        gA = _reduce_grad(gA, batch, A) if gA is not None else None
        gB = _reduce_grad(gB, batch, B) if gB is not None else None
        return gA, gB, None, None, None


class _HardBottleneckTiled(torch.autograd.Function):
    """Running max (and argmax) over k tiles; the backward routes G[i,j] to the argmax edge only."""

    @staticmethod
    def forward(ctx, A, B, k_tile, budget):
        out_dtype, acc = _compute_dtype(A, B)
        a, b, batch = _flatten_pair(A, B, acc)
        bt, m, k = a.shape
        n = b.shape[-1]
        best = torch.full((bt, m, n), -math.inf, dtype=acc, device=a.device)
        idx = torch.zeros((bt, m, n), dtype=torch.long, device=a.device)
        bc, mc, kc = _tiles(bt, m, k, n, k_tile, budget)
        for b0 in range(0, bt, bc):
            for m0 in range(0, m, mc):
                rb, ri = best[b0:b0 + bc, m0:m0 + mc], idx[b0:b0 + bc, m0:m0 + mc]
                for k0 in range(0, k, kc):
                    v = torch.minimum(a[b0:b0 + bc, m0:m0 + mc, k0:k0 + kc].unsqueeze(-1),
                                      b[b0:b0 + bc, k0:k0 + kc].unsqueeze(-3))
                    tv, ti = v.max(dim=-2)
                    better = tv > rb
                    rb = torch.where(better, tv, rb)
                    ri = torch.where(better, ti + k0, ri)
                best[b0:b0 + bc, m0:m0 + mc], idx[b0:b0 + bc, m0:m0 + mc] = rb, ri
        ctx.save_for_backward(A, B, idx)
        return best.reshape(*batch, m, n).to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        A, B, idx = ctx.saved_tensors
        _, acc = _compute_dtype(A, B)
        a, b, batch = _flatten_pair(A, B, acc)
        bt, m, n = idx.shape
        G = grad_out.to(acc).expand(*batch, m, n).reshape(bt, m, n)
        a_sel = a.gather(-1, idx)  # A[i, r*(i,j)]
        b_sel = b.gather(-2, idx)  # B[r*(i,j), j]
        to_a = a_sel <= b_sel  # the weaker edge of the best path takes the gradient
        gA = torch.zeros_like(a).scatter_add_(-1, idx, G * to_a)
        gB = torch.zeros_like(b).scatter_add_(-2, idx, G * ~to_a)
        return _reduce_grad(gA, batch, A), _reduce_grad(gB, batch, B), None, None


def soft_bottleneck_matmul_tiled(A: torch.Tensor, B: torch.Tensor, tau: float = 0.01,
                                 tile: int | None = None, budget: int = TILE_BUDGET) -> torch.Tensor:
    """Same values as ``soft_bottleneck_matmul`` with memory O(batch*m*n) plus one tile.

    ``tile`` is the k-chunk (default 64); batch and m are chunked so one tile has <= ``budget`` elements.
    The backward recomputes tiles (saved: A, B and the [..., m, n] logsumexp). Half inputs accumulate in
    float32; the result has the promoted input dtype. Not twice differentiable.
    """
    _check_mm(A, B)
    return _SoftBottleneckTiled.apply(A, B, float(tau), tile, int(budget))


def bottleneck_matmul_tiled(A: torch.Tensor, B: torch.Tensor, tile: int | None = None,
                            budget: int = TILE_BUDGET) -> torch.Tensor:
    """Same values as ``bottleneck_matmul`` with memory O(batch*m*n) plus one tile (saves an argmax)."""
    _check_mm(A, B)
    return _HardBottleneckTiled.apply(A, B, tile, int(budget))


def bottleneck(A: torch.Tensor, B: torch.Tensor, mode: str = "soft", tau: float = 0.01,
               tiled: bool | None = None) -> torch.Tensor:
    """Dispatcher: ``mode`` "soft" | "hard"; ``tiled=None`` tiles when batch*m*k*n > TILED_THRESHOLD.

    Where ``vgen.core.kernels`` picks Triton (CUDA by default, see its dispatch), the Triton kernel runs
    instead (it never stores m*k*n, so ``tiled`` does not matter), unless ``tiled=False`` asks for the
    plain broadcast. The named products above are the torch references and fallbacks.
    """
    _check_mm(A, B)
    if mode in ("soft", "hard") and tiled is not False and use_triton(A, B):
        from vgen.core.kernels import triton_bottleneck

        if mode == "soft":
            return triton_bottleneck.soft_bottleneck(A, B, tau)
        return triton_bottleneck.hard_bottleneck(A, B)
    if tiled is None:
        batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        tiled = math.prod(batch) * A.shape[-2] * A.shape[-1] * B.shape[-1] > TILED_THRESHOLD
    if mode == "soft":
        return soft_bottleneck_matmul_tiled(A, B, tau) if tiled else soft_bottleneck_matmul(A, B, tau)
    if mode == "hard":
        return bottleneck_matmul_tiled(A, B) if tiled else bottleneck_matmul(A, B)
    raise ValueError(f"unknown bottleneck mode {mode!r} (expected 'soft' or 'hard')")


# ----------------------------------------------------------------------------------------------------------
# The residual path


def with_residual(M: torch.Tensor) -> torch.Tensor:
    """(M + I)/2 over the last two (square) dims: the residual path keeps every token linked to itself."""
    if M.shape[-1] != M.shape[-2]:
        raise ValueError(f"residual needs square attention maps, got {tuple(M.shape)}")
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return (M + eye) / 2
