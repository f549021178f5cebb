"""Triton kernels of the recorded attention: softmax(q k^T * scale) v plus the head mean of the
probabilities of the first ``columns`` keys, without a [batch, heads, queries, keys] tensor.

Forward: flash-style online softmax over key tiles gives the output and the row logsumexp (float32);
a second kernel recomputes the probabilities of the recorded columns head by head from that logsumexp
and averages them (no atomics). Backward (FlashAttention-2's scheme, extended by the mean's gradient):
with dP = dO v^T + dM/heads on the recorded columns, rowsum(dP * P) = rowsum(dO * O) + sum_c dM P / heads
is computed first (``_delta``); then dK, dV per key tile and dQ per query tile recompute their
probability tiles. Matches ``vgen.core.attention._RecordedAttention``, which stays the reference; masks
are not handled here (the dispatch keeps the torch path for them).

Products take the inputs' dtype (float16/bfloat16 on the tensor cores, float32 as IEEE float32) and
accumulate in float32; the probabilities go to v's dtype for P v as the reference does.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _mm(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in float32; UPCAST runs it in float32 (the interpreter's bfloat16 tl.dot is wrong
    in triton 3.9.0, so interpreted bfloat16 runs round to bfloat16 and multiply in float32)."""
    if UPCAST:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=PREC)
    return c


@triton.jit
def _scores(q, kt, scale, PREC: tl.constexpr, UPCAST: tl.constexpr):
    return _mm(q, tl.trans(kt), PREC, UPCAST) * scale


@triton.jit
def _fwd(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
         sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
         H, N, K, D, DV, scale,
         PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pm = tl.program_id(0)
    pbh = tl.program_id(1)
    b = pbh // H
    h = pbh % H
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None] * sqn + rd[None, :] * sqd,
                mask=(rm[:, None] < N) & (rd[None, :] < D), other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for n0 in range(0, K, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        kt = tl.load(k_ptr + b * skb + h * skh + rn[:, None] * skn + rd[None, :] * skd,
                     mask=(rn[:, None] < K) & (rd[None, :] < D), other=0.0)
        s = _scores(q, kt, scale, PREC, UPCAST)
        s = tl.where(rn[None, :] < K, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vt = tl.load(v_ptr + b * svb + h * svh + rn[:, None] * svn + rdv[None, :] * svd,
                     mask=(rn[:, None] < K) & (rdv[None, :] < DV), other=0.0)
        acc = acc * alpha[:, None] + _mm(p.to(vt.dtype), vt, PREC, UPCAST)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + b * sob + h * soh + rm[:, None] * son + rdv[None, :] * sod, out.to(o_ptr.dtype.element_ty),
             mask=(rm[:, None] < N) & (rdv[None, :] < DV))
    tl.store(lse_ptr + pbh * N + rm, m_i + tl.log(l_i), mask=rm < N)


@triton.jit
def _mean(q_ptr, k_ptr, lse_ptr, mean_ptr,
          sqb, sqh, sqn, sqd, skb, skh, skn, skd,
          H, N, C, D, scale,
          PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    pm = tl.program_id(0)
    pc = tl.program_id(1)
    b = tl.program_id(2)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    rd = tl.arange(0, BLOCK_D)
    keep = (rm[:, None] < N) & (rc[None, :] < C)
    acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for h in range(0, H):
        q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None] * sqn + rd[None, :] * sqd,
                    mask=(rm[:, None] < N) & (rd[None, :] < D), other=0.0)
        kt = tl.load(k_ptr + b * skb + h * skh + rc[:, None] * skn + rd[None, :] * skd,
                     mask=(rc[:, None] < C) & (rd[None, :] < D), other=0.0)
        lse = tl.load(lse_ptr + (b * H + h) * N + rm, mask=rm < N, other=0.0)
        p = tl.exp(_scores(q, kt, scale, PREC, UPCAST) - lse[:, None])
        acc += tl.where(keep, p, 0.0)
    tl.store(mean_ptr + b * N * C + rm[:, None] * C + rc[None, :], acc / H, mask=keep)


@triton.jit
def _delta(q_ptr, k_ptr, o_ptr, do_ptr, dm_ptr, lse_ptr, delta_ptr,
           sqb, sqh, sqn, sqd, skb, skh, skn, skd, sob, soh, son, sod, sdb, sdh, sdn, sdd, smb, smn, smc,
           H, N, C, D, DV, scale,
           HAS_DO: tl.constexpr, HAS_DM: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pm = tl.program_id(0)
    pbh = tl.program_id(1)
    b = pbh // H
    h = pbh % H
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    delta = tl.zeros((BLOCK_M,), tl.float32)
    if HAS_DO:
        mo = (rm[:, None] < N) & (rdv[None, :] < DV)
        o = tl.load(o_ptr + b * sob + h * soh + rm[:, None] * son + rdv[None, :] * sod, mask=mo, other=0.0)
        do = tl.load(do_ptr + b * sdb + h * sdh + rm[:, None] * sdn + rdv[None, :] * sdd, mask=mo, other=0.0)
        delta += tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    if HAS_DM:
        q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None] * sqn + rd[None, :] * sqd,
                    mask=(rm[:, None] < N) & (rd[None, :] < D), other=0.0)
        lse = tl.load(lse_ptr + pbh * N + rm, mask=rm < N, other=0.0)
        for c0 in range(0, C, BLOCK_C):
            rc = c0 + tl.arange(0, BLOCK_C)
            keep = (rm[:, None] < N) & (rc[None, :] < C)
            kt = tl.load(k_ptr + b * skb + h * skh + rc[:, None] * skn + rd[None, :] * skd,
                         mask=(rc[:, None] < C) & (rd[None, :] < D), other=0.0)
            p = tl.exp(_scores(q, kt, scale, PREC, UPCAST) - lse[:, None])
            dm = tl.load(dm_ptr + b * smb + rm[:, None] * smn + rc[None, :] * smc, mask=keep, other=0.0)
            delta += tl.sum(tl.where(keep, p * dm, 0.0), axis=1) / H
    tl.store(delta_ptr + pbh * N + rm, delta, mask=rm < N)


@triton.jit
def _dp_tile(do, vt, dm_ptr, b, rm, rn, smb, smn, smc, N, C, H,
             HAS_DO: tl.constexpr, HAS_DM: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dP of one tile: dO v^T plus dM/heads on the recorded columns."""
    dp = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    if HAS_DO:
        dp += _mm(do, tl.trans(vt), PREC, UPCAST)
    if HAS_DM:
        keep = (rm[:, None] < N) & (rn[None, :] < C)
        dp += tl.load(dm_ptr + b * smb + rm[:, None] * smn + rn[None, :] * smc, mask=keep, other=0.0) / H
    return dp


@triton.jit
def _bwd_kv(q_ptr, k_ptr, v_ptr, do_ptr, dm_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
            sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd, smb, smn, smc,
            H, N, K, C, D, DV, scale,
            HAS_DO: tl.constexpr, HAS_DM: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pn = tl.program_id(0)
    pbh = tl.program_id(1)
    b = pbh // H
    h = pbh % H
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    kt = tl.load(k_ptr + b * skb + h * skh + rn[:, None] * skn + rd[None, :] * skd,
                 mask=(rn[:, None] < K) & (rd[None, :] < D), other=0.0)
    vt = tl.load(v_ptr + b * svb + h * svh + rn[:, None] * svn + rdv[None, :] * svd,
                 mask=(rn[:, None] < K) & (rdv[None, :] < DV), other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)
    for m0 in range(0, N, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None] * sqn + rd[None, :] * sqd,
                    mask=(rm[:, None] < N) & (rd[None, :] < D), other=0.0)
        do = tl.load(do_ptr + b * sdb + h * sdh + rm[:, None] * sdn + rdv[None, :] * sdd,
                     mask=(rm[:, None] < N) & (rdv[None, :] < DV) & HAS_DO, other=0.0)
        lse = tl.load(lse_ptr + pbh * N + rm, mask=rm < N, other=0.0)
        delta = tl.load(delta_ptr + pbh * N + rm, mask=rm < N, other=0.0)
        p = tl.exp(_scores(q, kt, scale, PREC, UPCAST) - lse[:, None])
        p = tl.where((rm[:, None] < N) & (rn[None, :] < K), p, 0.0)
        if HAS_DO:
            dv += _mm(tl.trans(p.to(do.dtype)), do, PREC, UPCAST)
        dp = _dp_tile(do, vt, dm_ptr, b, rm, rn, smb, smn, smc, N, C, H, HAS_DO, HAS_DM, PREC, UPCAST, BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None]) * scale
        dk += _mm(tl.trans(ds.to(q.dtype)), q, PREC, UPCAST)
    tl.store(dk_ptr + pbh * K * D + rn[:, None] * D + rd[None, :], dk.to(dk_ptr.dtype.element_ty),
             mask=(rn[:, None] < K) & (rd[None, :] < D))
    tl.store(dv_ptr + pbh * K * DV + rn[:, None] * DV + rdv[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=(rn[:, None] < K) & (rdv[None, :] < DV))


@triton.jit
def _bwd_q(q_ptr, k_ptr, v_ptr, do_ptr, dm_ptr, lse_ptr, delta_ptr, dq_ptr,
           sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd, smb, smn, smc,
           H, N, K, C, D, DV, scale,
           HAS_DO: tl.constexpr, HAS_DM: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pm = tl.program_id(0)
    pbh = tl.program_id(1)
    b = pbh // H
    h = pbh % H
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None] * sqn + rd[None, :] * sqd,
                mask=(rm[:, None] < N) & (rd[None, :] < D), other=0.0)
    do = tl.load(do_ptr + b * sdb + h * sdh + rm[:, None] * sdn + rdv[None, :] * sdd,
                 mask=(rm[:, None] < N) & (rdv[None, :] < DV) & HAS_DO, other=0.0)
    lse = tl.load(lse_ptr + pbh * N + rm, mask=rm < N, other=0.0)
    delta = tl.load(delta_ptr + pbh * N + rm, mask=rm < N, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for n0 in range(0, K, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        kt = tl.load(k_ptr + b * skb + h * skh + rn[:, None] * skn + rd[None, :] * skd,
                     mask=(rn[:, None] < K) & (rd[None, :] < D), other=0.0)
        vt = tl.load(v_ptr + b * svb + h * svh + rn[:, None] * svn + rdv[None, :] * svd,
                     mask=(rn[:, None] < K) & (rdv[None, :] < DV), other=0.0)
        p = tl.exp(_scores(q, kt, scale, PREC, UPCAST) - lse[:, None])
        p = tl.where((rm[:, None] < N) & (rn[None, :] < K), p, 0.0)
        dp = _dp_tile(do, vt, dm_ptr, b, rm, rn, smb, smn, smc, N, C, H, HAS_DO, HAS_DM, PREC, UPCAST, BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None]) * scale
        dq += _mm(ds.to(kt.dtype), kt, PREC, UPCAST)
    tl.store(dq_ptr + pbh * N * D + rm[:, None] * D + rd[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=(rm[:, None] < N) & (rd[None, :] < D))


def _pow2(x: int, low: int = 16) -> int:
    return max(low, triton.next_power_of_2(x))


def _config(q, k, v):
    """(PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV): tiles cover short key axes whole (temporal:
    K = frames)."""
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    upcast = q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    N, K = q.shape[-2], k.shape[-2]
    return prec, upcast, min(64, _pow2(N)), min(64, _pow2(K)), _pow2(q.shape[-1]), _pow2(v.shape[-1])


class RecordedAttentionTriton(torch.autograd.Function):
    """Triton twin of ``attention._RecordedAttention`` (no mask). Saves q, k, v, the output and the
    float32 logsumexp [B, heads, N]."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float, columns):
        B, H, N, D = q.shape
        K, DV = k.shape[-2], v.shape[-1]
        C = K if columns is None else min(columns, K)
        prec, up, bm, bn, bd, bdv = _config(q, k, v)
        out = torch.empty((B, H, N, DV), dtype=v.dtype, device=v.device)
        lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
        mean = torch.empty((B, N, C), dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
        _fwd[(triton.cdiv(N, bm), B * H)](q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                                          H, N, K, D, DV, scale, PREC=prec, UPCAST=up, BLOCK_M=bm, BLOCK_N=bn,
                                          BLOCK_D=bd, BLOCK_DV=bdv)
        bc = min(64, _pow2(C))
        # the head loop stays in one program (a fixed order of additions: deterministic, no atomics); small
        # query tiles give enough programs when B is small (cross-attention: B = frames)
        _mean[(triton.cdiv(N, 16), triton.cdiv(C, bc), B)](q, k, lse, mean, *q.stride(), *k.stride(),
                                                           H, N, C, D, scale, PREC=prec, UPCAST=up, BLOCK_M=16,
                                                           BLOCK_C=bc, BLOCK_D=bd)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.columns = scale, C
        ctx.set_materialize_grads(False)
        return out, mean

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, g_mean):
        q, k, v, out, lse = ctx.saved_tensors
        B, H, N, D = q.shape
        K, DV, C = k.shape[-2], v.shape[-1], ctx.columns
        prec, up, bm, bn, bd, bdv = _config(q, k, v)
        has_do, has_dm = g_out is not None, g_mean is not None
        do = g_out if has_do else out  # placeholders are never read (HAS_DO / HAS_DM are compile-time)
        dm = g_mean.float() if has_dm else lse.new_zeros((1, 1, 1))
        delta = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
        bc = min(64, _pow2(C))
        _delta[(triton.cdiv(N, bm), B * H)](q, k, out, do, dm, lse, delta, *q.stride(), *k.stride(), *out.stride(),
                                            *do.stride(), *dm.stride(), H, N, C, D, DV, ctx.scale,
                                            HAS_DO=has_do, HAS_DM=has_dm, PREC=prec, UPCAST=up, BLOCK_M=bm, BLOCK_C=bc,
                                            BLOCK_D=bd, BLOCK_DV=bdv)
        dq = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
        dk = torch.empty((B, H, K, D), dtype=k.dtype, device=k.device)
        dv = torch.empty((B, H, K, DV), dtype=v.dtype, device=v.device)
        common = (*q.stride(), *k.stride(), *v.stride(), *do.stride(), *dm.stride(), H, N, K, C, D, DV, ctx.scale)
        flags = dict(HAS_DO=has_do, HAS_DM=has_dm, PREC=prec, UPCAST=up, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DV=bdv)
        _bwd_kv[(triton.cdiv(K, bn), B * H)](q, k, v, do, dm, lse, delta, dk, dv, *common, **flags)
        _bwd_q[(triton.cdiv(N, bm), B * H)](q, k, v, do, dm, lse, delta, dq, *common, **flags)
        if not has_do:
            dv.zero_()
        return dq, dk, dv, None, None


def recorded_attention(q, k, v, scale: float, columns):
    return RecordedAttentionTriton.apply(q, k, v, float(scale), columns)
