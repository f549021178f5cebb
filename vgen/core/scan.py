"""The AR(1) / momentum recursion along one axis (frames): dependency noise and momentum attention.

    y_0 = x_0                        (no carry)      y_0 = decay·carry + gain·x_0   (with a carry)
    y_i = decay·y_{i-1} + gain·x_i

The torch reference is one matmul with the lower-triangular [F, F] matrix of ``ar_matrix`` (exact, fast
on a CPU, differentiable by autograd); where ``vgen.core.kernels`` picks Triton (CUDA by default) a
sequential scan over frames runs instead, parallel over every other element, accumulating in float32
(vgen/core/kernels/triton_scan.py). Either way the result has x's dtype; float64 stays float64.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from vgen.core.kernels.dispatch import use_triton


def ar_matrix(frames: int, decay: float, gain: float, dtype: torch.dtype = torch.float64,
              first: Optional[float] = None) -> torch.Tensor:
    """The recursion as one lower-triangular [F, F] matrix: row i is (first·decay^i, gain·decay^(i-1), ...,
    gain), ``first`` = 1 (y_0 = x_0) unless given (a carry makes it ``gain``)."""
    i = torch.arange(frames, dtype=torch.float64)
    lag = i[:, None] - i[None, :]
    m = torch.where(lag >= 0, gain * torch.tensor(decay, dtype=torch.float64).pow(lag.clamp(min=0)), 0.0)
    m[:, 0] = (1.0 if first is None else first) * torch.tensor(decay, dtype=torch.float64).pow(i)
    return m.to(dtype)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def ar_scan_torch(x: torch.Tensor, decay: float, gain: float, dim: int,
                  carry: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The reference: [lead, F, trail] views mixed by ``ar_matrix`` in one batched matmul (``carry``: x's
    shape without ``dim``)."""
    dim = dim % x.dim()
    F = x.shape[dim]
    acc = _acc(x.dtype)
    mix = ar_matrix(F, decay, gain, acc, first=None if carry is None else gain).to(x.device)
    lead = math.prod(x.shape[:dim])
    y = torch.matmul(mix, x.to(acc).reshape(lead, F, -1)).reshape(x.shape)
    if carry is not None:
        powers = torch.tensor(decay, dtype=torch.float64).pow(torch.arange(1, F + 1, dtype=torch.float64))
        shape = [1] * x.dim()
        shape[dim] = F
        y = y + powers.to(acc).to(x.device).view(shape) * carry.to(acc).unsqueeze(dim)
    return y.to(x.dtype)


def ar_scan(x: torch.Tensor, decay: float, gain: float, dim: int, carry: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y_i = decay·y_{i-1} + gain·x_i along ``dim``, y_0 = x_0 (or decay·carry + gain·x_0 with ``carry``,
    a tensor of x's shape without ``dim``, or broadcastable to it). Differentiable in x and carry."""
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim {dim} is out of range for a {x.dim()}-d tensor")
    dim = dim % x.dim()
    if carry is not None:
        rest = x.shape[:dim] + x.shape[dim + 1:]
        try:
            fits = torch.broadcast_shapes(carry.shape, rest) == rest
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"carry of shape {tuple(carry.shape)} does not fit x's other axes {tuple(rest)}")
        carry = carry.expand(rest)
    tensors = (x,) if carry is None else (x, carry)
    if x.shape[dim] > 0 and use_triton(*tensors):
        from vgen.core.kernels import triton_scan

        return triton_scan.ar_scan(x, float(decay), float(gain), dim, carry)
    return ar_scan_torch(x, decay, gain, dim, carry)
