"""Triton kernels of ``vgen.core.attention_slices``: the rows' logsumexp of a full self-attention, its
same-position F x F slices, and the tiled pass of the logsumexp's gradient.

  _lse     one program per (query tile, batch·head): online max / sum over key tiles (flash-style)
  _slice   one program per (position, batch·head): [F, d] x [d, F] scores, exp(s - lse)
  _lse_dq  one program per (query tile, batch·head): dq[n] = scale·w[n]·sum_m P[n, m]·k[m]
  _lse_dk  one program per (key tile, batch·head):   dk[m] = scale·sum_n w[n]·P[n, m]·q[n]
P is recomputed tile by tile from the saved logsumexp (no atomics: each program owns its output rows).
The slice's own gradient terms (O(P·F²·d)) stay in torch (``attention_slices._slice_grads``).
Products take the inputs' dtype (float32 as IEEE float32) and accumulate in float32; everything returned
is float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vgen.core.kernels.triton_attention import _config, _mm, _pow2


@triton.jit
def _lse(q_ptr, k_ptr, lse_ptr, sqb, sqh, sqn, sqd, skb, skh, skn, skd, H, N, D, scale,
         PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         BLOCK_D: tl.constexpr):
    pm = tl.program_id(0)
    pbh = tl.program_id(1)
    b = pbh // H
    h = pbh % H
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None] * sqn + rd[None, :] * sqd,
                mask=(rm[:, None] < N) & (rd[None, :] < D), other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        kt = tl.load(k_ptr + b * skb + h * skh + rn[:, None] * skn + rd[None, :] * skd,
                     mask=(rn[:, None] < N) & (rd[None, :] < D), other=0.0)
        s = _mm(q, tl.trans(kt), PREC, UPCAST) * scale
        s = tl.where(rn[None, :] < N, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
        m_i = m_new
    tl.store(lse_ptr + pbh * N + rm, m_i + tl.log(l_i), mask=rm < N)


@triton.jit
def _slice(q_ptr, k_ptr, lse_ptr, a_ptr, sqb, sqh, sqn, sqd, skb, skh, skn, skd, H, N, F, P, D, scale,
           PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr):
    p = tl.program_id(0)
    pbh = tl.program_id(1)
    b = pbh // H
    h = pbh % H
    rf = tl.arange(0, BLOCK_F)
    rd = tl.arange(0, BLOCK_D)
    rows = rf * P + p  # the tokens of position p, frame by frame
    keep = (rf[:, None] < F) & (rd[None, :] < D)
    q = tl.load(q_ptr + b * sqb + h * sqh + rows[:, None] * sqn + rd[None, :] * sqd, mask=keep, other=0.0)
    kt = tl.load(k_ptr + b * skb + h * skh + rows[:, None] * skn + rd[None, :] * skd, mask=keep, other=0.0)
    lse = tl.load(lse_ptr + pbh * N + rows, mask=rf < F, other=0.0)
    a = tl.exp(_mm(q, tl.trans(kt), PREC, UPCAST) * scale - lse[:, None])
    out = a_ptr + (pbh * P + p) * F * F + rf[:, None] * F + rf[None, :]
    tl.store(out, a, mask=(rf[:, None] < F) & (rf[None, :] < F))


@triton.jit
def _lse_dq(q_ptr, k_ptr, lse_ptr, w_ptr, dq_ptr, sqb, sqh, sqn, sqd, skb, skh, skn, skd, H, N, D, scale,
            PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_D: tl.constexpr):
    pm = tl.program_id(0)
    pbh = tl.program_id(1)
    b = pbh // H
    h = pbh % H
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None] * sqn + rd[None, :] * sqd,
                mask=(rm[:, None] < N) & (rd[None, :] < D), other=0.0)
    lse = tl.load(lse_ptr + pbh * N + rm, mask=rm < N, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        kt = tl.load(k_ptr + b * skb + h * skh + rn[:, None] * skn + rd[None, :] * skd,
                     mask=(rn[:, None] < N) & (rd[None, :] < D), other=0.0)
        p = tl.exp(_mm(q, tl.trans(kt), PREC, UPCAST) * scale - lse[:, None])
        p = tl.where((rm[:, None] < N) & (rn[None, :] < N), p, 0.0)
        acc += _mm(p.to(kt.dtype), kt, PREC, UPCAST)
    w = tl.load(w_ptr + pbh * N + rm, mask=rm < N, other=0.0)
    tl.store(dq_ptr + pbh * N * D + rm[:, None] * D + rd[None, :], acc * (w * scale)[:, None],
             mask=(rm[:, None] < N) & (rd[None, :] < D))


@triton.jit
def _lse_dk(q_ptr, k_ptr, lse_ptr, w_ptr, dk_ptr, sqb, sqh, sqn, sqd, skb, skh, skn, skd, H, N, D, scale,
            PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_D: tl.constexpr):
    pn = tl.program_id(0)
    pbh = tl.program_id(1)
    b = pbh // H
    h = pbh % H
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    kt = tl.load(k_ptr + b * skb + h * skh + rn[:, None] * skn + rd[None, :] * skd,
                 mask=(rn[:, None] < N) & (rd[None, :] < D), other=0.0)
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for m0 in range(0, N, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None] * sqn + rd[None, :] * sqd,
                    mask=(rm[:, None] < N) & (rd[None, :] < D), other=0.0)
        lse = tl.load(lse_ptr + pbh * N + rm, mask=rm < N, other=0.0)
        w = tl.load(w_ptr + pbh * N + rm, mask=rm < N, other=0.0)
        p = tl.exp(_mm(q, tl.trans(kt), PREC, UPCAST) * scale - lse[:, None])
        pw = tl.where((rm[:, None] < N) & (rn[None, :] < N), p * w[:, None], 0.0)
        acc += _mm(tl.trans(pw.to(q.dtype)), q, PREC, UPCAST)
    tl.store(dk_ptr + pbh * N * D + rn[:, None] * D + rd[None, :], acc * scale,
             mask=(rn[:, None] < N) & (rd[None, :] < D))


def _blocks(q, k):
    prec, upcast, bm, bn, bd, _ = _config(q, k, k)
    return dict(PREC=prec, UPCAST=upcast, BLOCK_D=bd), bm, bn


def row_lse(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """logsumexp over all keys of scale·q k^T: [B, H, N] float32."""
    B, H, N, D = q.shape
    flags, bm, bn = _blocks(q, k)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    _lse[(triton.cdiv(N, bm), B * H)](q, k, lse, *q.stride(), *k.stride(), H, N, D, scale,
                                      BLOCK_M=bm, BLOCK_N=bn, **flags)
    return lse


def same_position(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, frames: int, scale: float) -> torch.Tensor:
    """A [B, H, P, F, F] float32 from q, k [B, H, F·P, d] and the rows' logsumexp."""
    B, H, N, D = q.shape
    P = N // frames
    flags, _, _ = _blocks(q, k)
    a = torch.empty((B, H, P, frames, frames), dtype=torch.float32, device=q.device)
    _slice[(P, B * H)](q, k, lse, a, *q.stride(), *k.stride(), H, N, frames, P, D, scale,
                       BLOCK_F=_pow2(frames), **flags)
    return a


def lse_grad(q, k, lse, w, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of sum_n w[n]·lse[n] w.r.t. q and k: two float32 tensors [B, H, N, d]."""
    B, H, N, D = q.shape
    flags, bm, bn = _blocks(q, k)
    w = w.float().contiguous()
    dq = torch.empty((B, H, N, D), dtype=torch.float32, device=q.device)
    dk = torch.empty((B, H, N, D), dtype=torch.float32, device=q.device)
    args = (*q.stride(), *k.stride(), H, N, D, scale)
    _lse_dq[(triton.cdiv(N, bm), B * H)](q, k, lse, w, dq, *args, BLOCK_M=bm, BLOCK_N=bn, **flags)
    _lse_dk[(triton.cdiv(N, bn), B * H)](q, k, lse, w, dk, *args, BLOCK_M=bm, BLOCK_N=bn, **flags)
    return dq, dk
