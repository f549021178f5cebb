"""Attention-flow kernels for Vico (SPEC.md section 1).

Flow from a text token to a video token is approximated by the *widest path* through the attention
graph: the best single path scored by its weakest edge. Along a chain of layers that is a bottleneck
(max-min) matrix product. This module holds

* the products: hard ``bottleneck_matmul``, soft ``soft_bottleneck_matmul`` (plain references) and
  ``soft_bottleneck_matmul_tiled`` / ``bottleneck_matmul_tiled`` (O(m*n) memory, backward recomputes tiles),
  with the ``bottleneck`` dispatcher (Triton kernels of ``vgen.core.kernels`` where it picks them);
* the graphs: ``st_flow`` / ``st_flow_blocks`` (default graph of the public code), ``full_graph_flow``
  (``vico.graph: full``), ``attention_rollout`` and ``cross_attention_flow`` (baselines);
* the exact reference ``exact_max_flow`` on the very same graph (``build_flow_graph``).

Shape conventions (head-averaged attention probabilities, one prompt, one UNet block):
    cross    C [F, P, J]  C[f, p, j]: video token (f, p) attends to text token j (row-stochastic over j)
    temporal T [P, F, F]  T[p, f, g]: frame f (query) attends to frame g (key) at position p
    spatial  S [F, P, P]  S[f, p, q]: position p (query) attends to position q (key) within frame f
P = h*w flattened row-major. Flows come back as [F, P, J]; ``flow_to_video`` reshapes to [F, h, w, J].

Error bounds of the soft product (tau > 0), with softmin(a,b) = -tau*log(e^-a/tau + e^-b/tau):
    min(a,b) - tau*log2 <= softmin(a,b) <= min(a,b),   max_r x_r <= tau*LSE_r(x_r/tau) <= max_r x_r + tau*log k,
hence for one product with inner size k:   hard - tau*log2  <=  soft  <=  hard + tau*log k.
Both soft and hard products are monotone and 1-Lipschitz (sup-norm) in each argument, so the errors add
along a chain: for L products with inner sizes k_1..k_L and M soft joins (tau*logaddexp of two flows,
which lies in [max, max + tau*log2]),
    hard - L*tau*log2  <=  soft chain  <=  hard + tau*(sum_l log k_l + M*log2).
For ``st_flow`` with n temporal layers: L = n, k_l = F, M = 0 in either order (also after averaging blocks).
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
    "st_flow",
    "st_flow_blocks",
    "full_graph_flow",
    "attention_rollout",
    "cross_attention_flow",
    "flow_to_video",
    "soft_chain_bounds",
    "build_flow_graph",
    "exact_max_flow",
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
# Graphs


def with_residual(M: torch.Tensor) -> torch.Tensor:
    """(M + I)/2 over the last two (square) dims: the residual path keeps every token linked to itself."""
    if M.shape[-1] != M.shape[-2]:
        raise ValueError(f"residual needs square attention maps, got {tuple(M.shape)}")
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return (M + eye) / 2


def _product(R: torch.Tensor, X: torch.Tensor, mode: str, tau: float, tiled: bool | None) -> torch.Tensor:
    """One layer: (+, x) semiring for rollout, (max, min) semiring (hard or soft) for flow."""
    if mode == "rollout":
        return R @ X
    return bottleneck(R, X, mode, tau, tiled)


def _join(C: torch.Tensor, Y: torch.Tensor, mode: str, tau: float) -> torch.Tensor:
    """Two flows reaching the same node: max (hard), tau*logaddexp (soft, in [max, max+tau*log2]), sum (rollout)."""
    if mode == "rollout":
        return C + Y
    if mode == "hard":
        return torch.maximum(C, Y)
    if mode == "soft":
        return tau * torch.logaddexp(C / tau, Y / tau)
    raise ValueError(f"unknown flow mode {mode!r} (expected 'soft', 'hard' or 'rollout')")


def _unpack(block):
    """A block is (cross, temporals) or (cross, spatial_or_None, temporals)."""
    if len(block) == 2:
        return block[0], None, list(block[1])
    if len(block) == 3:
        return block[0], block[1], list(block[2])
    raise ValueError("a block is (cross, temporals) or (cross, spatial, temporals)")


ORDERS = ("official", "sequential")


def st_flow(cross: torch.Tensor, temporals: Sequence[torch.Tensor], mode: str = "soft", tau: float = 0.01,
            residual: bool = True, tiled: bool | None = None, order: str = "official") -> torch.Tensor:
    """ST-Flow of one block (default graph): text -> cross-attention -> temporal 1 -> temporal 2 ...

    Graph: j -> (g, p) with weight C[g, p, j]; then for each temporal layer in order (g, p) -> (f, p) with
    weight R[p, f, g], R = (T + I)/2 (``residual=False`` uses T as given). Positions never mix, so per p
    the flow is the product of R_n, ..., R_1 and C[:, p, :] (batched over p), grouped by ``order``:
      official   (R_n ⊗ ... ⊗ (R_2 ⊗ R_1)) ⊗ C: the temporal maps first, then the cross-attention (the
                 public code's (R2 ⊗ R1) ⊗ C);
      sequential R_n ⊗ (... ⊗ (R_1 ⊗ C)): layer by layer from the text, in the forward pass's order (ours).
    Hard max-min and rollout products are associative, so both orders agree there; the soft product is
    not (the two differ by up to about tau*log F per product). ``mode`` "soft" | "hard" | "rollout"
    (ordinary products: attention rollout on the same graph). Returns [F, P, J].
    """
    if order not in ORDERS:
        raise ValueError(f"unknown flow order {order!r} (expected one of {ORDERS})")
    X = cross.transpose(0, 1)  # [P, F, J]
    Rs = [with_residual(T) if residual else T for T in temporals]
    if order == "official" and len(Rs) > 1:
        effect = Rs[0]
        for R in Rs[1:]:
            effect = _product(R, effect, mode, tau, tiled)  # [P, F, F]
        Rs = [effect]
    for R in Rs:
        X = _product(R, X, mode, tau, tiled)
    return X.transpose(0, 1)


def st_flow_blocks(blocks, mode: str = "soft", tau: float = 0.01, residual: bool = True,
                   tiled: bool | None = None, order: str = "official") -> torch.Tensor:
    """Default graph of the spec: ``st_flow`` of every block (same F, P, J), averaged over blocks -> [F, P, J].

    ``blocks``: list of (cross [F,P,J], [temporal [P,F,F], ...]); a spatial map in a 3-tuple is ignored.
    """
    flows = []
    for block in blocks:
        cross, _, temporals = _unpack(block)
        flows.append(st_flow(cross, temporals, mode, tau, residual, tiled, order))
    return torch.stack(flows).mean(0)


def full_graph_flow(blocks, mode: str = "soft", tau: float = 0.01, residual: bool = True,
                    tiled: bool | None = None, order: str = "official") -> torch.Tensor:
    """Full graph (``vico.graph: full``): spatial and temporal self-attention, blocks chained.

    ``blocks``: list of (cross [F,P,J], spatial [F,P,P] or None, [temporal [P,F,F], ...]) in forward order,
    all at one resolution (resample between resolutions before calling). Layer order inside a block follows
    the UNet3D transformer: spatial self-attn, cross-attn, then the temporal layers. Nodes per block b:
    s_b(f,p) after spatial, c_b(f,p) after cross, t_b^l(f,p) after temporal l; out_b = last of them.
      out_{b-1}(f,q) -> s_b(f,p)  weight (S_b+I)/2 [f,p,q]   (b > 1; identity, weight 1, if S_b is None)
      text j -> c_b(f,p)          weight C_b[f,p,j]          (every block has its own cross-attention)
      s_b(f,p) -> c_b(f,p)        weight 1                   (residual around the cross-attention)
      t^{l-1}_b(g,p) -> t^l_b(f,p) weight (T_b^l+I)/2 [p,f,g] (t^0_b = c_b)
    The text reaches block 1 only through its cross-attention (s_1 carries no flow). Returned: flow into
    out_B (last block) [F, P, J], i.e. per block X_b = T-chain(max(C_b, S_b ⊗ X_{b-1})). In soft mode the
    max of the two incoming flows is tau*logaddexp (adds at most tau*log2 per block b > 1); the temporal chain
    of each block is grouped by ``order`` as in ``st_flow``. Spatial products
    are [F,P,P] ⊗ [F,P,J]; ``tiled=None`` tiles them above TILED_THRESHOLD so memory stays O(F*P*J).
    """
    X = None
    for block in blocks:
        cross, spatial, temporals = _unpack(block)
        if X is None:
            Z = cross
        else:
            Y = X if spatial is None else _product(with_residual(spatial) if residual else spatial, X, mode, tau, tiled)
            Z = _join(cross, Y, mode, tau)
        X = st_flow(Z, temporals, mode, tau, residual, tiled, order)
    return X


def attention_rollout(blocks, graph: str = "default", residual: bool = True) -> torch.Tensor:
    """Attention rollout baseline: products of (A+I)/2 with ordinary (+, x) matmuls on the same graph."""
    if graph == "default":
        return st_flow_blocks(blocks, mode="rollout", residual=residual)
    if graph == "full":
        return full_graph_flow(blocks, mode="rollout", residual=residual)
    raise ValueError(f"unknown graph {graph!r} (expected 'default' or 'full')")


def cross_attention_flow(blocks) -> torch.Tensor:
    """Cross-attention-only baseline: C averaged over blocks -> [F, P, J]."""
    return torch.stack([_unpack(b)[0] for b in blocks]).mean(0)


def flow_to_video(flow: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[F, P, J] -> [F, h, w, J] (P = h*w, row-major)."""
    F, P, J = flow.shape
    if P != h * w:
        raise ValueError(f"P={P} is not h*w={h}*{w}")
    return flow.reshape(F, h, w, J)


def soft_chain_bounds(blocks, graph: str = "default", tau: float = 0.01) -> tuple[float, float]:
    """(lower, upper) offsets with hard + lower <= soft <= hard + upper (module docstring derivation)."""
    lo = hi = 0.0
    if graph == "default":
        # averaging is monotone and 1-Lipschitz: the widest per-block interval covers the mean
        for block in blocks:
            cross, _, temporals = _unpack(block)
            lo = min(lo, -len(temporals) * tau * math.log(2))
            hi = max(hi, len(temporals) * tau * math.log(cross.shape[0]))
        return lo, hi
    for b, block in enumerate(blocks):
        cross, spatial, temporals = _unpack(block)
        F, P, _ = cross.shape
        n_prod = len(temporals) + (1 if b > 0 and spatial is not None else 0)
        lo -= n_prod * tau * math.log(2)
        hi += tau * (len(temporals) * math.log(F) + (math.log(P) if b > 0 and spatial is not None else 0.0)
                     + (math.log(2) if b > 0 else 0.0))
    return lo, hi


# ----------------------------------------------------------------------------------------------------------
# Exact reference: max-flow on the same graph


def build_flow_graph(blocks, token: int, graph: str = "default", residual: bool = True,
                     position: int | None = None):
    """Edge list of the attention graph seen from one text token, exactly as ``st_flow`` / ``full_graph_flow``
    define it (see their docstrings). Returns (edges {(u, v): capacity}, source, sink_of(f, p)).

    For graph="default" give exactly one block (the spec averages blocks after the flow); ``position``
    keeps only that position's nodes (positions never mix there, so flows into it are unchanged).
    Zero-capacity edges are dropped.
    """
    if graph == "default" and len(blocks) != 1:
        raise ValueError("the default graph is per block: pass one block")
    edges: dict = {}

    def add(u, v, c):
        c = float(c)
        if c > 0:
            edges[(u, v)] = edges.get((u, v), 0.0) + c

    src = ("text", token)
    prev_out = None
    for b, block in enumerate(blocks):
        cross, spatial, temporals = _unpack(block)
        F, P, _ = cross.shape
        ps = range(P) if position is None else [position]
        c = cross.detach().double().cpu()
        s_node = None
        if graph == "full" and prev_out is not None:
            if spatial is None:
                s_node = prev_out
            else:
                Rs = spatial.detach().double().cpu()
                Rs = with_residual(Rs) if residual else Rs
                s_node = lambda f, p, b=b: ("s", b, f, p)  # noqa: E731
                for f in range(F):
                    for p in ps:
                        for q in range(P):
                            add(prev_out(f, q), ("s", b, f, p), Rs[f, p, q])
        for f in range(F):
            for p in ps:
                add(src, ("c", b, f, p), c[f, p, token])
                if s_node is not None:
                    add(s_node(f, p), ("c", b, f, p), 1.0)
        layer = lambda f, p, b=b: ("c", b, f, p)  # noqa: E731
        for li, T in enumerate(temporals):
            R = T.detach().double().cpu()
            R = with_residual(R) if residual else R
            nxt = lambda f, p, b=b, li=li: ("t", b, li, f, p)  # noqa: E731
            for p in ps:
                for f in range(F):
                    for g in range(F):
                        add(layer(g, p), nxt(f, p), R[p, f, g])
            layer = nxt
        prev_out = layer
    return edges, src, prev_out


def _max_flow_value(edges: dict, src, sink, backend: str) -> float:
    if backend == "networkx":
        import networkx as nx

        G = nx.DiGraph()
        G.add_node(src)
        G.add_node(sink)
        for (u, v), c in edges.items():
            G.add_edge(u, v, capacity=c)
        return float(nx.maximum_flow_value(G, src, sink))
    if backend == "scipy":
        import numpy as np
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import maximum_flow

        index = {src: 0, sink: 1}
        rows, cols, caps = [], [], []
        for (u, v), c in edges.items():
            rows.append(index.setdefault(u, len(index)))
            cols.append(index.setdefault(v, len(index)))
            caps.append(c)
        scale = 1 << 20  # int32 capacities: resolution 1e-6, room for 2048 unit edges into the sink
        cap = np.rint(np.asarray(caps) * scale).astype(np.int32)
        n = len(index)
        M = csr_matrix((cap, (rows, cols)), shape=(n, n))
        return maximum_flow(M, 0, 1).flow_value / scale
    raise ValueError(f"unknown max-flow backend {backend!r}")


def exact_max_flow(blocks, token: int, frame: int, position: int, graph: str = "default",
                   residual: bool = True, backend: str = "networkx") -> float:
    """Exact max-flow from text ``token`` to video token (frame, position), on the graph of
    ``st_flow_blocks`` (graph="default": per-block max-flow, averaged over blocks like the flow) or of
    ``full_graph_flow`` (graph="full": one chained graph, sink in the last block).

    The widest-path flow is the value of a single path, so it never exceeds this. backend "networkx"
    (float capacities) or "scipy" (capacities scaled to integers, resolution 2**-20).
    """
    if graph == "default":
        vals = []
        for block in blocks:
            edges, src, sink_of = build_flow_graph([block], token, "default", residual, position)
            vals.append(_max_flow_value(edges, src, sink_of(frame, position), backend))
        return sum(vals) / len(vals)
    edges, src, sink_of = build_flow_graph(blocks, token, graph, residual)
    return _max_flow_value(edges, src, sink_of(frame, position), backend)
