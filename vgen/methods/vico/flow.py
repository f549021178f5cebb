"""Vico's attention-flow graphs (SPEC.md section 1) over the bottleneck products of ``vgen.core.flow``:
``st_flow`` / ``st_flow_blocks`` (the public code's default graph), ``full_graph_flow`` (``vico.graph: full``),
the baselines ``attention_rollout`` and ``cross_attention_flow``, and the exact reference ``exact_max_flow`` on
the very same graph (``build_flow_graph``).

Shape conventions (head-averaged attention probabilities, one prompt, one UNet block):
    cross    C [F, P, J]  C[f, p, j]: video token (f, p) attends to text token j (row-stochastic over j)
    temporal T [P, F, F]  T[p, f, g]: frame f (query) attends to frame g (key) at position p
    spatial  S [F, P, P]  S[f, p, q]: position p (query) attends to position q (key) within frame f
P = h*w flattened row-major. Flows come back as [F, P, J]; ``flow_to_video`` reshapes to [F, h, w, J].

Soft-chain error bounds: see ``vgen.core.flow``. For ``st_flow`` with n temporal layers: L = n, k_l = F, M = 0 in
either order (also after averaging blocks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vgen.core.flow import bottleneck, with_residual


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
