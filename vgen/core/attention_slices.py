"""Same-position temporal slices of a full (spatio-temporal) self-attention, without its N x N matrix.

A DiT block (Wan, LTX) attends over N = F·P tokens in frame-major order (token n = f·P + p). A method that
follows attention through time (the flow of a key token) needs, per latent position p, the F x F block of the FULL softmax's probabilities between the tokens at p:

    A[b, h, p, f, g] = exp(scale·q[f·P+p]·k[g·P+p] - lse[f·P+p]),   lse[n] = logsumexp_m scale·q[n]·k[m]

One pass over key tiles gives each row's logsumexp; the slice is then a batched [F, d] x [d, F] product per
position. Backward: with G = dL/dA and c[f] = sum_g G[f, g]·A[f, g], the slice's own terms are
dq[f] += scale·sum_g (G·A)[f, g]·k[g] (same for dk), and lse's gradient w = -c reaches every key through
dlse[n]/dq[n] = scale·sum_m P[n, m]·k[m] (the softmax-weighted mean of keys) and dlse[n]/dk[m] =
scale·P[n, m]·q[n], a second tiled pass that recomputes P tile by tile. Memory: O(N·d + P·F²) plus one
tile of scores (``TILE_BUDGET``).

Precision: float32 accumulation at least (float64 inputs compute in float64); the slices and the
logsumexp come back in that precision, the gradients in the inputs' dtype. Where ``vgen.core.kernels``
picks Triton (CUDA by default) the forward and the tiled backward pass run as Triton kernels
(vgen/core/kernels/triton_slices.py); the torch code here stays the reference and the fallback.
"""

from __future__ import annotations

from typing import Optional

import torch

from vgen.core.kernels.dispatch import use_triton

# Elements of one tile of float32 scores [B, H, rows, N] (64 MiB): neither pass holds more than one.
TILE_BUDGET = 1 << 24


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _row_chunks(q: torch.Tensor, keys: int, budget: int) -> list[slice]:
    B, H, N, _ = q.shape
    step = max(1, budget // max(1, B * H * keys))
    return [slice(n, min(n + step, N)) for n in range(0, N, step)]


def lse_torch(q: torch.Tensor, k: torch.Tensor, scale: float, budget: Optional[int] = None) -> torch.Tensor:
    """logsumexp over all keys of scale·q k^T, row by row in query chunks: [B, H, N] in ``_acc`` precision."""
    budget = budget or TILE_BUDGET
    acc = _acc(q.dtype)
    kt = k.to(acc).transpose(-1, -2)
    out = torch.empty(q.shape[:-1], dtype=acc, device=q.device)
    for s in _row_chunks(q, k.shape[-2], budget):
        scores = torch.matmul(q[:, :, s].to(acc), kt).mul_(scale)  # in place: one tile at a time
        top = scores.amax(dim=-1, keepdim=True)
        out[:, :, s] = scores.sub_(top).exp_().sum(dim=-1).log_().add_(top[..., 0])
        del scores  # before the next tile is allocated
    return out


def lse_grad_torch(q, k, lse, w, scale: float, budget: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of sum_n w[n]·lse[n] w.r.t. q and k (``_acc`` precision), recomputing P chunk by chunk:
    dq[n] = scale·w[n]·sum_m P[n, m]·k[m],  dk[m] = scale·sum_n w[n]·P[n, m]·q[n]."""
    budget = budget or TILE_BUDGET
    acc = lse.dtype
    kf = k.to(acc)
    dq = torch.empty(q.shape, dtype=acc, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc, device=k.device)
    for s in _row_chunks(q, k.shape[-2], budget):
        qs = q[:, :, s].to(acc)
        p = torch.matmul(qs, kf.transpose(-1, -2)).mul_(scale).sub_(lse[:, :, s, None]).exp_()
        ws = w[:, :, s, None] * scale
        dq[:, :, s] = torch.matmul(p, kf) * ws
        dk += torch.matmul(p.transpose(-1, -2), qs * ws)
        del p  # before the next tile is allocated
    return dq, dk


def by_position(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, H, F·P, d] (frame-major tokens) -> [B, H, P, F, d] (a view)."""
    B, H, N, d = x.shape
    return x.view(B, H, frames, N // frames, d).transpose(2, 3)


def from_position(x: torch.Tensor) -> torch.Tensor:
    """[B, H, P, F, d] -> [B, H, F·P, d] (frame-major tokens)."""
    B, H, P, F, d = x.shape
    return x.transpose(2, 3).reshape(B, H, F * P, d)


def slice_torch(q, k, lse, frames: int, scale: float) -> torch.Tensor:
    """A [B, H, P, F, F] from q, k [B, H, N, d] and their rows' logsumexp [B, H, N]."""
    acc = lse.dtype
    qp, kp = by_position(q, frames).to(acc), by_position(k, frames).to(acc)
    lp = lse.view(*lse.shape[:2], frames, -1).transpose(2, 3)  # [B, H, P, F]
    return torch.exp(torch.matmul(qp, kp.transpose(-1, -2)) * scale - lp[..., None])


def _slice_grads(q, k, a, g, frames: int, scale: float):
    """The slice's own gradient terms (lse held fixed) and lse's weights w = -rowsum(G·A) [B, H, N]."""
    ga = g.to(a.dtype) * a
    qp, kp = by_position(q, frames).to(a.dtype), by_position(k, frames).to(a.dtype)
    dq = from_position(torch.matmul(ga, kp)) * scale
    dk = from_position(torch.matmul(ga.transpose(-1, -2), qp)) * scale
    w = -ga.sum(dim=-1).transpose(2, 3).reshape(q.shape[:-1])
    return dq, dk, w


class _SamePosition(torch.autograd.Function):
    """A = exp(scale·q_f·k_g - lse_f) per position; saves q, k, lse and A (O(N·d + P·F²))."""

    @staticmethod
    def forward(ctx, q, k, frames: int, scale: float, triton: bool):
        if triton:
            from vgen.core.kernels import triton_slices

            lse = triton_slices.row_lse(q, k, scale)
            a = triton_slices.same_position(q, k, lse, frames, scale)
        else:
            lse = lse_torch(q, k, scale)
            a = slice_torch(q, k, lse, frames, scale)
        ctx.save_for_backward(q, k, lse, a)
        ctx.frames, ctx.scale, ctx.triton = frames, scale, triton
        return a

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        q, k, lse, a = ctx.saved_tensors
        dq, dk, w = _slice_grads(q, k, a, g, ctx.frames, ctx.scale)
        dq2, dk2 = _lse_grad(q, k, lse, w, ctx.scale, ctx.triton)
        return (dq + dq2).to(q.dtype), (dk + dk2).to(k.dtype), None, None, None


class _RowLogsumexp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, scale: float, triton: bool):
        if triton:
            from vgen.core.kernels import triton_slices

            lse = triton_slices.row_lse(q, k, scale)
        else:
            lse = lse_torch(q, k, scale)
        ctx.save_for_backward(q, k, lse)
        ctx.scale, ctx.triton = scale, triton
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        q, k, lse = ctx.saved_tensors
        dq, dk = _lse_grad(q, k, lse, g.to(lse.dtype), ctx.scale, ctx.triton)
        return dq.to(q.dtype), dk.to(k.dtype), None, None


def _lse_grad(q, k, lse, w, scale, triton: bool):
    if triton:
        from vgen.core.kernels import triton_slices

        return triton_slices.lse_grad(q, k, lse, w, scale)
    return lse_grad_torch(q, k, lse, w, scale)


def _check(q: torch.Tensor, k: torch.Tensor, frames: int = 1) -> None:
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must both be [B, heads, N, d] of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if frames < 1 or q.shape[2] % frames:
        raise ValueError(f"{q.shape[2]} tokens do not split into {frames} frames of equal size")
    if not q.dtype.is_floating_point or q.dtype != k.dtype:
        raise ValueError(f"q and k must share one float dtype, got {q.dtype} and {k.dtype}")


def row_logsumexp(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """logsumexp_m scale·q[n]·k[m] over all N keys: [B, H, N] (float32 at least), differentiable, tiled."""
    _check(q, k)
    return _RowLogsumexp.apply(q, k, float(scale), use_triton(q, k))


def same_position_attention(q: torch.Tensor, k: torch.Tensor, frames: int, scale: float,
                            mean_heads: bool = False) -> torch.Tensor:
    """The full softmax(scale·q k^T)'s probabilities between the ``frames`` tokens of each position.

    q, k: [B, H, N, d] with N = frames·P in frame-major order. Returns A [B, H, P, F, F] (float32 at
    least), A[b, h, p, f, g] = P[f·P+p, g·P+p] of the softmax over all N keys; with ``mean_heads`` the
    mean over heads [B, P, F, F]. Differentiable in q and k; never holds an N x N tensor."""
    _check(q, k, frames)
    a = _SamePosition.apply(q, k, int(frames), float(scale), use_triton(q, k))
    return a.mean(dim=1) if mean_heads else a
