"""Triton kernels of the bottleneck (max-min) product, hard and soft, forward and backward.

One program per (batch, m-tile, n-tile) output tile; the inner index r runs one step at a time, so a
step holds one [BLOCK_M, BLOCK_N] tile in registers and nothing of size m*k*n exists anywhere. Inputs of
any float dtype are read as they are and accumulated in float32. The soft product keeps a running hard
max h and Z = sum_r exp(s_r - h) with s_r = softmin(a, b)/tau, using exp(s - h) = 1/(e^(h-a) + e^(h-b))
(as ``flow._SoftBottleneckTiled`` does); it stores L = h + log Z for the backward, which recomputes the
same steps and writes each step's row/column sums of the gradient per tile (summed by torch after: no
atomics, so the soft gradient is deterministic). The hard product stores the argmax r* and its backward
sends G[i, j] to the weaker edge of the best path (first maximum on ties, a <= b goes to A), like
``flow._HardBottleneckTiled``; that is a scatter-add, done with atomics (as torch's scatter_add_ on CUDA).

Importing this module imports triton: callers go through ``vgen.core.kernels.dispatch``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_EXP_CLAMP = 80.0


@triton.jit
def _soft_fwd(a_ptr, b_ptr, out_ptr, lse_ptr, M, N, K, inv_tau, tau,
              sab, sam, sak, sbb, sbk, sbn,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pb = tl.program_id(0)
    pm = tl.program_id(1)
    pn = tl.program_id(2)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < M
    mn = rn < N
    a_row = a_ptr + pb * sab + rm * sam
    b_col = b_ptr + pb * sbb + rn * sbn
    h = tl.full((BLOCK_M, BLOCK_N), float("-inf"), tl.float32)
    z = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for r in range(0, K):
        a = tl.load(a_row + r * sak, mask=mm, other=0.0).to(tl.float32) * inv_tau
        b = tl.load(b_col + r * sbk, mask=mn, other=0.0).to(tl.float32) * inv_tau
        a2 = a[:, None]
        b2 = b[None, :]
        h_new = tl.maximum(h, tl.minimum(a2, b2))
        w = tl.exp(tl.minimum(h_new - a2, _EXP_CLAMP)) + tl.exp(tl.minimum(h_new - b2, _EXP_CLAMP))
        z = z * tl.exp(h - h_new) + 1.0 / w
        h = h_new
    lse = h + tl.log(z)
    offs = pb * M * N + rm[:, None] * N + rn[None, :]
    keep = mm[:, None] & mn[None, :]
    tl.store(lse_ptr + offs, lse, mask=keep)
    tl.store(out_ptr + offs, (lse * tau).to(out_ptr.dtype.element_ty), mask=keep)


@triton.jit
def _soft_bwd(a_ptr, b_ptr, lse_ptr, g_ptr, ga_ptr, gb_ptr, M, N, K, inv_tau,
              sab, sam, sak, sbb, sbk, sbn, sgb, sgm, sgn,
              NEED_A: tl.constexpr, NEED_B: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pb = tl.program_id(0)
    pm = tl.program_id(1)
    pn = tl.program_id(2)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < M
    mn = rn < N
    keep = mm[:, None] & mn[None, :]
    lse = tl.load(lse_ptr + pb * M * N + rm[:, None] * N + rn[None, :], mask=keep, other=0.0)
    g = tl.load(g_ptr + pb * sgb + rm[:, None] * sgm + rn[None, :] * sgn, mask=keep, other=0.0).to(tl.float32)
    a_row = a_ptr + pb * sab + rm * sam
    b_col = b_ptr + pb * sbb + rn * sbn
    for r in range(0, K):
        a = tl.load(a_row + r * sak, mask=mm, other=0.0).to(tl.float32) * inv_tau
        b = tl.load(b_col + r * sbk, mask=mn, other=0.0).to(tl.float32) * inv_tau
        ea = tl.exp(tl.minimum(lse - a[:, None], _EXP_CLAMP))
        eb = tl.exp(tl.minimum(lse - b[None, :], _EXP_CLAMP))
        d = 1.0 / (ea + eb)
        w = g * d * d  # zero outside the tile (g loaded as 0 there)
        if NEED_A:  # partial sums per n-tile: [Bt, n_tiles, M, K]
            tl.store(ga_ptr + ((pb * tl.num_programs(2) + pn) * M + rm) * K + r, tl.sum(w * ea, axis=1), mask=mm)
        if NEED_B:  # partial sums per m-tile: [Bt, m_tiles, K, N]
            tl.store(gb_ptr + ((pb * tl.num_programs(1) + pm) * K + r) * N + rn, tl.sum(w * eb, axis=0), mask=mn)


@triton.jit
def _hard_fwd(a_ptr, b_ptr, out_ptr, idx_ptr, M, N, K,
              sab, sam, sak, sbb, sbk, sbn,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pb = tl.program_id(0)
    pm = tl.program_id(1)
    pn = tl.program_id(2)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < M
    mn = rn < N
    a_row = a_ptr + pb * sab + rm * sam
    b_col = b_ptr + pb * sbb + rn * sbn
    best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), tl.float32)
    idx = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
    for r in range(0, K):
        a = tl.load(a_row + r * sak, mask=mm, other=0.0).to(tl.float32)
        b = tl.load(b_col + r * sbk, mask=mn, other=0.0).to(tl.float32)
        v = tl.minimum(a[:, None], b[None, :])
        better = v > best  # strict: the first maximum wins, as in the torch kernels
        best = tl.where(better, v, best)
        idx = tl.where(better, r, idx)
    offs = pb * M * N + rm[:, None] * N + rn[None, :]
    keep = mm[:, None] & mn[None, :]
    tl.store(out_ptr + offs, best.to(out_ptr.dtype.element_ty), mask=keep)
    tl.store(idx_ptr + offs, idx, mask=keep)


@triton.jit
def _hard_bwd(a_ptr, b_ptr, idx_ptr, g_ptr, ga_ptr, gb_ptr, M, N, K,
              sab, sam, sak, sbb, sbk, sbn, sgb, sgm, sgn,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pb = tl.program_id(0)
    pm = tl.program_id(1)
    pn = tl.program_id(2)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < M
    mn = rn < N
    keep = mm[:, None] & mn[None, :]
    r = tl.load(idx_ptr + pb * M * N + rm[:, None] * N + rn[None, :], mask=keep, other=0)
    g = tl.load(g_ptr + pb * sgb + rm[:, None] * sgm + rn[None, :] * sgn, mask=keep, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + pb * sab + rm[:, None] * sam + r * sak, mask=keep, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + pb * sbb + r * sbk + rn[None, :] * sbn, mask=keep, other=0.0).to(tl.float32)
    to_a = a <= b
    tl.atomic_add(ga_ptr + pb * M * K + rm[:, None] * K + r, g, mask=keep & to_a)
    tl.atomic_add(gb_ptr + pb * K * N + r * N + rn[None, :], g, mask=keep & (~to_a))


def _blocks(m: int, n: int) -> tuple[int, int]:
    """Tile sizes: powers of two covering small m/n whole (at most 32 x 64 = 2048 lanes a program)."""
    bm = min(32, max(16, triton.next_power_of_2(m)))
    bn = min(64, max(16, triton.next_power_of_2(n)))
    return bm, bn


def _flatten(A: torch.Tensor, B: torch.Tensor):
    """Broadcast leading dims and flatten them: A [Bt, m, k], B [Bt, k, n] (views where possible)."""
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    m, k = A.shape[-2:]
    n = B.shape[-1]
    a = A.expand(*batch, m, k).reshape(-1, m, k)
    b = B.expand(*batch, k, n).reshape(-1, k, n)
    return a, b, batch


def _grid(bt, m, n, bm, bn):
    return (bt, triton.cdiv(m, bm), triton.cdiv(n, bn))


def _reduce(g: torch.Tensor, batch, like: torch.Tensor) -> torch.Tensor:
    return g.reshape(*batch, *g.shape[-2:]).sum_to_size(like.shape).to(like.dtype)


def _out_dtype(A, B):
    out = torch.promote_types(A.dtype, B.dtype)
    return out if out.is_floating_point else torch.get_default_dtype()


class SoftBottleneckTriton(torch.autograd.Function):
    """Soft max-min product on Triton; saves A, B and the float32 [.., m, n] logsumexp."""

    @staticmethod
    def forward(ctx, A, B, tau):
        a, b, batch = _flatten(A, B)
        bt, m, k = a.shape
        n = b.shape[-1]
        out = torch.empty((bt, m, n), dtype=_out_dtype(A, B), device=a.device)
        lse = torch.empty((bt, m, n), dtype=torch.float32, device=a.device)
        bm, bn = _blocks(m, n)
        _soft_fwd[_grid(bt, m, n, bm, bn)](a, b, out, lse, m, n, k, 1.0 / tau, tau,
                                           *a.stride(), *b.stride(), BLOCK_M=bm, BLOCK_N=bn)
        ctx.save_for_backward(A, B, lse)
        ctx.tau = tau
        return out.reshape(*batch, m, n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        A, B, lse = ctx.saved_tensors
        a, b, batch = _flatten(A, B)
        bt, m, k = a.shape
        n = b.shape[-1]
        g = grad.expand(*batch, m, n).reshape(bt, m, n)
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        bm, bn = _blocks(m, n)
        grid = _grid(bt, m, n, bm, bn)
        ga = torch.empty((bt, grid[2], m, k) if need_a else (1,), dtype=torch.float32, device=a.device)
        gb = torch.empty((bt, grid[1], k, n) if need_b else (1,), dtype=torch.float32, device=a.device)
        _soft_bwd[grid](a, b, lse, g, ga, gb, m, n, k, 1.0 / ctx.tau, *a.stride(), *b.stride(), *g.stride(),
                        NEED_A=need_a, NEED_B=need_b, BLOCK_M=bm, BLOCK_N=bn)
        return (_reduce(ga.sum(1), batch, A) if need_a else None, _reduce(gb.sum(1), batch, B) if need_b else None, None)


class HardBottleneckTriton(torch.autograd.Function):
    """Hard max-min product on Triton; saves A, B and the int32 argmax."""

    @staticmethod
    def forward(ctx, A, B):
        a, b, batch = _flatten(A, B)
        bt, m, k = a.shape
        n = b.shape[-1]
        out = torch.empty((bt, m, n), dtype=_out_dtype(A, B), device=a.device)
        idx = torch.empty((bt, m, n), dtype=torch.int32, device=a.device)
        bm, bn = _blocks(m, n)
        _hard_fwd[_grid(bt, m, n, bm, bn)](a, b, out, idx, m, n, k, *a.stride(), *b.stride(),
                                           BLOCK_M=bm, BLOCK_N=bn)
        ctx.save_for_backward(A, B, idx)
        return out.reshape(*batch, m, n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        A, B, idx = ctx.saved_tensors
        a, b, batch = _flatten(A, B)
        bt, m, k = a.shape
        n = b.shape[-1]
        g = grad.expand(*batch, m, n).reshape(bt, m, n)
        ga = torch.zeros((bt, m, k), dtype=torch.float32, device=a.device)
        gb = torch.zeros((bt, k, n), dtype=torch.float32, device=a.device)
        bm, bn = _blocks(m, n)
        _hard_bwd[_grid(bt, m, n, bm, bn)](a, b, idx, g, ga, gb, m, n, k, *a.stride(), *b.stride(),
                                           *g.stride(), BLOCK_M=bm, BLOCK_N=bn)
        return _reduce(ga, batch, A), _reduce(gb, batch, B)


def soft_bottleneck(A: torch.Tensor, B: torch.Tensor, tau: float) -> torch.Tensor:
    return SoftBottleneckTriton.apply(A, B, float(tau))


def hard_bottleneck(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    return HardBottleneckTriton.apply(A, B)
