"""Triton kernel of ``vgen.core.scan.ar_scan``: y_i = decay·y_{i-1} + gain·x_i along one axis.

x is viewed as [lead, F, trail] (contiguous); one program owns BLOCK consecutive elements of the flattened
[lead, trail] and walks the F frames in order (REVERSE: backwards), accumulating in float32; neighbouring
lanes read neighbouring addresses. The first frame is decay·carry + first·x_0 (no carry: carry 0, first 1).
Backward is the adjoint recursion run by the same kernel in reverse: u_i = dy_i + decay·u_{i+1},
dx_i = gain·u_i (dx_0 = first·u_0), dcarry = decay·u_0.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

BLOCK = 512


@triton.jit
def _scan(x_ptr, c_ptr, y_ptr, F, T, total, decay, gain, first,
          HAS_CARRY: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = idx < total
    base = (idx // T) * F * T + idx % T
    acc = tl.zeros((BLOCK,), tl.float32)
    if HAS_CARRY:
        acc = tl.load(c_ptr + idx, mask=keep, other=0.0).to(tl.float32)
    f0 = (F - 1) if REVERSE else 0
    x = tl.load(x_ptr + base + f0 * T, mask=keep, other=0.0).to(tl.float32)
    acc = decay * acc + first * x
    tl.store(y_ptr + base + f0 * T, acc.to(y_ptr.dtype.element_ty), mask=keep)
    for i in range(1, F):
        f = (F - 1 - i) if REVERSE else i
        x = tl.load(x_ptr + base + f * T, mask=keep, other=0.0).to(tl.float32)
        acc = decay * acc + gain * x
        tl.store(y_ptr + base + f * T, acc.to(y_ptr.dtype.element_ty), mask=keep)


def _run(x: torch.Tensor, decay: float, gain: float, first: float, dim: int, carry: Optional[torch.Tensor],
         reverse: bool, out_dtype: torch.dtype) -> torch.Tensor:
    x = x.contiguous()
    F = x.shape[dim]
    T = math.prod(x.shape[dim + 1:])
    total = math.prod(x.shape) // F
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    c = carry.contiguous() if carry is not None else x  # placeholder, never read without HAS_CARRY
    _scan[(triton.cdiv(total, BLOCK),)](x, c, y, F, T, total, decay, gain, first,
                                        HAS_CARRY=carry is not None, REVERSE=reverse, BLOCK=BLOCK)
    return y


class ArScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, carry, decay: float, gain: float, dim: int):
        first = 1.0 if carry is None else gain
        ctx.decay, ctx.gain, ctx.first, ctx.dim, ctx.has_carry = decay, gain, first, dim, carry is not None
        ctx.carry_dtype = None if carry is None else carry.dtype
        return _run(x, decay, gain, first, dim, carry, False, x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        u = _run(g, ctx.decay, 1.0, 1.0, ctx.dim, None, True, torch.float32)
        dx = u * ctx.gain
        dx.select(ctx.dim, 0).copy_(u.select(ctx.dim, 0) * ctx.first)
        dcarry = (u.select(ctx.dim, 0) * ctx.decay).to(ctx.carry_dtype) if ctx.has_carry else None
        return dx.to(g.dtype), dcarry, None, None, None


def ar_scan(x: torch.Tensor, decay: float, gain: float, dim: int, carry: Optional[torch.Tensor] = None) -> torch.Tensor:
    """See ``vgen.core.scan.ar_scan`` (``dim`` non-negative; ``carry`` of x's shape without ``dim``)."""
    return ArScanTriton.apply(x, carry, decay, gain, dim)
