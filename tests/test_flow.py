"""Attention-flow kernels against independent references: scalar loops, graph search, max-flow."""

import heapq
import itertools
import math

import networkx as nx
import numpy as np
import pytest
import torch

from vgen.core import flow as fl
from vgen.methods.vico import flow as vf

LOG2 = math.log(2)


def attn(*shape, gen, sharp=3.0, dtype=torch.float64):
    """Row-stochastic (last dim) random attention, peaky enough that paths differ."""
    return torch.softmax(sharp * torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


def random_blocks(gen, F, P, J, n_blocks=2, n_temporal=2, spatial=True, dtype=torch.float64):
    blocks = []
    for b in range(n_blocks):
        keep = spatial is True or (spatial == "alternate" and b % 2 == 0)  # "alternate": None in odd blocks
        S = attn(F, P, P, gen=gen, dtype=dtype) if keep else None
        blocks.append((attn(F, P, J, gen=gen, dtype=dtype), S,
                       [attn(P, F, F, gen=gen, dtype=dtype) for _ in range(n_temporal)]))
    return blocks


def widest_path(edges, src, sink):
    """Modified Dijkstra: maximise the weakest edge of a path (independent of the matrix chain)."""
    adj = {}
    for (u, v), c in edges.items():
        adj.setdefault(u, []).append((v, c))
    best = {src: math.inf}
    heap = [(-math.inf, 0, src)]
    tie = itertools.count(1)
    done = set()
    while heap:
        neg, _, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        if u == sink:
            return -neg
        for v, c in adj.get(u, []):
            w = min(-neg, c)
            if w > best.get(v, 0.0):
                best[v] = w
                heapq.heappush(heap, (-w, next(tie), v))
    return 0.0


def all_paths(edges, src, sink):
    G = nx.DiGraph()
    for (u, v), c in edges.items():
        G.add_edge(u, v, capacity=c)
    if src not in G or sink not in G:
        return []
    return [[edges[(p[i], p[i + 1])] for i in range(len(p) - 1)] for p in nx.all_simple_paths(G, src, sink)]


# ---------------------------------------------------------------------------------------------- products


def test_hard_product_matches_loops():
    gen = torch.Generator().manual_seed(0)
    A = torch.rand(3, 1, 4, 5, generator=gen, dtype=torch.float64)
    B = torch.rand(2, 5, 6, generator=gen, dtype=torch.float64)
    out = fl.bottleneck_matmul(A, B)
    assert out.shape == (3, 2, 4, 6)
    a, b = A.numpy(), B.numpy()
    for x, y, i, j in itertools.product(range(3), range(2), range(4), range(6)):
        ref = max(min(a[x, 0, i, r], b[y, r, j]) for r in range(5))
        assert out[x, y, i, j].item() == ref


def test_soft_product_matches_scalar_formula():
    gen = torch.Generator().manual_seed(1)
    A = torch.rand(4, 7, generator=gen, dtype=torch.float64)
    B = torch.rand(7, 3, generator=gen, dtype=torch.float64)
    for tau in (0.01, 0.2):
        out = fl.soft_bottleneck_matmul(A, B, tau)
        for i, j in itertools.product(range(4), range(3)):
            terms = []
            for r in range(7):
                a, b = A[i, r].item(), B[r, j].item()
                m = min(a, b)  # shifted for stability: -tau*log(e^-a/t + e^-b/t)
                terms.append(m - tau * math.log(math.exp(-(a - m) / tau) + math.exp(-(b - m) / tau)))
            mx = max(terms)
            ref = mx + tau * math.log(sum(math.exp((t - mx) / tau) for t in terms))
            assert out[i, j].item() == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 16, 77])
@pytest.mark.parametrize("tau", [0.01, 0.1])
def test_soft_single_product_bounds(k, tau):
    gen = torch.Generator().manual_seed(k)
    A = attn(6, k, gen=gen)
    B = torch.rand(k, 5, generator=gen, dtype=torch.float64)
    d = fl.soft_bottleneck_matmul(A, B, tau) - fl.bottleneck_matmul(A, B)
    assert (d >= -tau * LOG2 - 1e-12).all() and (d <= tau * math.log(k) + 1e-12).all()


def test_soft_bounds_are_tight():
    """Both ends are reached: equal inputs with k=1 hit -tau*log2, k equal paths with a slack edge hit +tau*log k."""
    tau = 0.05
    x = torch.full((1, 1), 0.4, dtype=torch.float64)
    assert (fl.soft_bottleneck_matmul(x, x, tau) - 0.4).item() == pytest.approx(-tau * LOG2, abs=1e-12)
    k = 9
    A = torch.full((1, k), 0.3, dtype=torch.float64)
    B = torch.full((k, 1), 50.0, dtype=torch.float64)
    assert (fl.soft_bottleneck_matmul(A, B, tau) - 0.3).item() == pytest.approx(tau * math.log(k), abs=1e-12)


# ---------------------------------------------------------------------------------------------- tiled kernels


SHAPES = [((5, 7), (7, 3)), ((2, 1, 5, 9), (3, 9, 4)), ((1, 13), (13, 1)), ((4, 3, 3), (4, 3, 11))]


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("tile,budget", [(2, 10), (4, 1000), (None, fl.TILE_BUDGET)])
def test_soft_tiled_equals_plain_float64(shapes, tile, budget):
    gen = torch.Generator().manual_seed(2)
    A = torch.rand(*shapes[0], generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.rand(*shapes[1], generator=gen, dtype=torch.float64, requires_grad=True)
    for tau in (0.01, 0.3):
        p = fl.soft_bottleneck_matmul(A, B, tau)
        t = fl.soft_bottleneck_matmul_tiled(A, B, tau, tile=tile, budget=budget)
        assert t.shape == p.shape and t.dtype == p.dtype
        torch.testing.assert_close(t, p, rtol=0, atol=1e-12)
        G = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        gp = torch.autograd.grad(p, (A, B), G)
        gt = torch.autograd.grad(t, (A, B), G)
        for x, y, inp in zip(gt, gp, (A, B)):
            assert x.shape == inp.shape
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


def test_soft_tiled_gradcheck():
    gen = torch.Generator().manual_seed(3)
    A = torch.rand(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.rand(1, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    for tau in (0.1, 0.5):
        assert torch.autograd.gradcheck(lambda a, b: fl.soft_bottleneck_matmul_tiled(a, b, tau, tile=2, budget=12),
                                        (A, B))


def test_soft_tiled_float32_tau001():
    gen = torch.Generator().manual_seed(4)
    A = attn(16, 33, gen=gen, dtype=torch.float32).requires_grad_()
    B = attn(3, 33, 77, gen=gen, dtype=torch.float32).requires_grad_()
    p = fl.soft_bottleneck_matmul(A, B, 0.01)
    t = fl.soft_bottleneck_matmul_tiled(A, B, 0.01, tile=8, budget=2000)
    torch.testing.assert_close(t, p, rtol=0, atol=1e-6)
    G = torch.rand(p.shape, generator=gen)
    for x, y in zip(torch.autograd.grad(t, (A, B), G), torch.autograd.grad(p, (A, B), G)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_soft_tiled_wide_range_float32_no_overflow():
    """Inputs spanning [0, 10] at tau=0.01 (exponents up to 1000, past the clamp): finite, equal to float64."""
    gen = torch.Generator().manual_seed(12)
    A = (10 * torch.rand(3, 8, 21, generator=gen) ** 3).requires_grad_()
    B = (10 * torch.rand(3, 21, 5, generator=gen) ** 3).requires_grad_()
    t = fl.soft_bottleneck_matmul_tiled(A, B, 0.01, tile=4, budget=100)
    ref = fl.soft_bottleneck_matmul(A.double(), B.double(), 0.01)
    torch.testing.assert_close(t.double(), ref, rtol=1e-6, atol=1e-5)
    gA, gB = torch.autograd.grad(t.sum(), (A, B))
    rA, rB = torch.autograd.grad(ref.sum(), (A, B))
    torch.testing.assert_close(gA, rA.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gB, rB.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_soft_tiled_half_inputs_accumulate_in_float32(dtype):
    gen = torch.Generator().manual_seed(5)
    A = attn(2, 6, 37, gen=gen, dtype=torch.float32).to(dtype).requires_grad_()
    B = attn(2, 37, 9, gen=gen, dtype=torch.float32).to(dtype).requires_grad_()
    t = fl.soft_bottleneck_matmul_tiled(A, B, 0.01, tile=5)
    ref = fl.soft_bottleneck_matmul(A.double(), B.double(), 0.01)
    assert t.dtype == dtype
    tol = 2 ** -8 if dtype == torch.float16 else 2 ** -5  # output rounding only (values <= ~1)
    torch.testing.assert_close(t.double(), ref, rtol=0, atol=tol)
    gA, gB = torch.autograd.grad(t.sum(), (A, B))
    rA, rB = torch.autograd.grad(fl.soft_bottleneck_matmul(A.float(), B.float(), 0.01).sum(), (A, B))
    assert gA.dtype == dtype and torch.isfinite(gA).all() and torch.isfinite(gB).all()
    torch.testing.assert_close(gA.float(), rA.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gB.float(), rB.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("shapes", SHAPES)
def test_hard_tiled_equals_plain(shapes):
    gen = torch.Generator().manual_seed(6)
    A = torch.rand(*shapes[0], generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.rand(*shapes[1], generator=gen, dtype=torch.float64, requires_grad=True)
    p = fl.bottleneck_matmul(A, B)
    t = fl.bottleneck_matmul_tiled(A, B, tile=2, budget=10)
    assert torch.equal(t, p)
    G = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    for x, y in zip(torch.autograd.grad(t, (A, B), G), torch.autograd.grad(p, (A, B), G)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def test_dispatcher(monkeypatch):
    gen = torch.Generator().manual_seed(7)
    A = torch.rand(4, 5, generator=gen, requires_grad=True)
    B = torch.rand(5, 6, generator=gen)
    assert "Tiled" not in type(fl.bottleneck(A, B).grad_fn).__name__
    monkeypatch.setattr(fl, "TILED_THRESHOLD", 0)
    for mode, ref in (("soft", fl.soft_bottleneck_matmul(A, B, 0.05)), ("hard", fl.bottleneck_matmul(A, B))):
        out = fl.bottleneck(A, B, mode=mode, tau=0.05)
        assert "Tiled" in type(out.grad_fn).__name__
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        fl.bottleneck(A, B, mode="avg")
    with pytest.raises(ValueError):
        fl.bottleneck(A, B.T)


# ---------------------------------------------------------------------------------------------- graphs


def test_st_flow_hand_computed():
    """2 frames, 1 position, 2 tokens, two temporal layers (worked out by hand)."""
    C = torch.tensor([[[0.8, 0.2]], [[0.3, 0.7]]], dtype=torch.float64)  # [F=2, P=1, J=2]
    T1 = torch.tensor([[[0.6, 0.4], [0.1, 0.9]]], dtype=torch.float64)  # R1 = [[.8,.2],[.05,.95]]
    T2 = torch.tensor([[[0.2, 0.8], [0.5, 0.5]]], dtype=torch.float64)  # R2 = [[.6,.4],[.25,.75]]
    one = vf.st_flow(C, [T1], mode="hard")
    torch.testing.assert_close(one[:, 0], torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64))
    two = vf.st_flow(C, [T1, T2], mode="hard")
    torch.testing.assert_close(two[:, 0], torch.tensor([[0.6, 0.4], [0.3, 0.7]], dtype=torch.float64))
    roll = vf.st_flow(C, [T1], mode="rollout")  # R1 @ C
    torch.testing.assert_close(roll[:, 0], torch.tensor([[0.70, 0.30], [0.325, 0.675]], dtype=torch.float64))
    assert torch.equal(vf.st_flow(C, [], mode="hard"), C)
    soft = vf.st_flow(C, [T1, T2], mode="soft", tau=0.01)
    assert (soft - two).abs().max() <= 0.01 * math.log(2) * 2
    # blocks: averaged; cross-only baseline is the mean of C
    blocks = [(C, [T1, T2]), (C, [T1])]
    torch.testing.assert_close(vf.st_flow_blocks(blocks, mode="hard"), (two + one) / 2)
    torch.testing.assert_close(vf.cross_attention_flow(blocks), C)


def _official_soft(A, B, tau):
    """The public code's batch_soft_min_max_matrix_multiplication (op.py), the same formula: [b, m, k] x [b, k, n]."""
    a = A.unsqueeze(2).expand(-1, A.shape[1], B.shape[2], A.shape[2])
    b = B.permute(0, 2, 1).unsqueeze(1).expand(-1, A.shape[1], B.shape[2], A.shape[2])
    soft_min = -torch.logsumexp(torch.stack([-a / tau, -b / tau]), dim=0) * tau
    return torch.logsumexp(soft_min / tau, dim=3) * tau


@pytest.mark.parametrize("tiled", [False, True])
def test_st_flow_orders_against_the_public_formula(tiled):
    """order official is the public store's (R2 ⊗ R1) ⊗ C, sequential is R2 ⊗ (R1 ⊗ C); in soft mode the two
    differ (the soft product is not associative), in hard mode they agree (max-min is)."""
    gen = torch.Generator().manual_seed(31)
    F, P, J, tau = 8, 6, 5, 0.01
    C = torch.rand(F, P, J, generator=gen, dtype=torch.float64).softmax(-1)
    T1, T2 = (torch.rand(P, F, F, generator=gen, dtype=torch.float64).softmax(-1) for _ in range(2))
    eye = torch.eye(F, dtype=torch.float64)
    R1, R2 = (T1 + eye) / 2, (T2 + eye) / 2
    Cp = C.transpose(0, 1)
    official = _official_soft(_official_soft(R2, R1, tau), Cp, tau).transpose(0, 1)
    sequential = _official_soft(R2, _official_soft(R1, Cp, tau), tau).transpose(0, 1)
    torch.testing.assert_close(vf.st_flow(C, [T1, T2], "soft", tau, tiled=tiled), official)
    torch.testing.assert_close(vf.st_flow(C, [T1, T2], "soft", tau, tiled=tiled, order="sequential"), sequential)
    assert (official - sequential).abs().max() > 1e-3
    hard = [vf.st_flow(C, [T1, T2], "hard", order=o) for o in vf.ORDERS]
    torch.testing.assert_close(hard[0], hard[1], rtol=0, atol=0)
    blocks = [(C, [T1, T2]), (C.flip(0), [T2, T1])]
    torch.testing.assert_close(vf.st_flow_blocks(blocks, "soft", tau, tiled=tiled),
                               (official + vf.st_flow(C.flip(0), [T2, T1], "soft", tau)) / 2)
    with pytest.raises(ValueError, match="order"):
        vf.st_flow(C, [T1], order="reverse")


def test_with_residual_and_reshape():
    T = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert torch.equal(fl.with_residual(T), torch.full((2, 2), 0.5))
    x = torch.arange(2 * 6 * 3).reshape(2, 6, 3)
    v = vf.flow_to_video(x, 2, 3)
    assert v.shape == (2, 2, 3, 3) and v[1, 1, 2, 0] == x[1, 5, 0]
    with pytest.raises(ValueError):
        vf.flow_to_video(x, 4, 2)


def test_graph_builder_hand_case():
    """Edge set of a one-block default graph and a two-block full graph, counted and spot-checked."""
    gen = torch.Generator().manual_seed(8)
    F, P, J = 2, 3, 2
    blocks = random_blocks(gen, F, P, J, n_blocks=2, n_temporal=1)
    e, src, sink = vf.build_flow_graph(blocks[:1], 1, "default")
    assert len(e) == F * P + P * F * F
    assert e[(src, ("c", 0, 1, 2))] == blocks[0][0][1, 2, 1].item()
    assert e[(("c", 0, 0, 2), ("t", 0, 0, 1, 2))] == pytest.approx(blocks[0][2][0][2, 1, 0].item() / 2)
    e, src, sink = vf.build_flow_graph(blocks, 0, "full")
    assert len(e) == 2 * (F * P + P * F * F) + F * P * P + F * P
    assert sink(1, 2) == ("t", 1, 0, 1, 2)
    S = blocks[1][1]
    assert e[(("t", 0, 0, 1, 0), ("s", 1, 1, 0))] == pytest.approx((S[1, 0, 0].item() + 1) / 2)
    assert e[(("s", 1, 1, 0), ("c", 1, 1, 0))] == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_default_graph_hard_equals_widest_path_and_bounded_by_max_flow(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    F, P, J = 3 + seed % 2, 2, 3
    blocks = random_blocks(gen, F, P, J, n_blocks=1, n_temporal=1 + seed % 3, spatial=False)
    flow = vf.st_flow_blocks(blocks, mode="hard")
    strict = 0
    for j in range(J):
        edges, src, sink_of = vf.build_flow_graph(blocks, j, "default")
        for f, p in itertools.product(range(F), range(P)):
            wp = widest_path(edges, src, sink_of(f, p))
            assert flow[f, p, j].item() == pytest.approx(wp, abs=1e-12)
            mf = vf.exact_max_flow(blocks, j, f, p)
            assert flow[f, p, j].item() <= mf + 1e-9
            assert vf.exact_max_flow(blocks, j, f, p, backend="scipy") == pytest.approx(mf, abs=1e-4)
            strict += mf > flow[f, p, j].item() + 1e-6
    assert strict > 0  # the bound is not vacuous: several paths carry more than the widest one


@pytest.mark.parametrize("seed", range(4))
def test_full_graph_hard_equals_widest_path_and_bounded_by_max_flow(seed):
    gen = torch.Generator().manual_seed(200 + seed)
    F, P, J = 2, 3, 2
    blocks = random_blocks(gen, F, P, J, n_blocks=2 + seed % 2, n_temporal=seed % 3,
                           spatial=True if seed < 2 else "alternate")
    flow = vf.full_graph_flow(blocks, mode="hard")
    for j in range(J):
        edges, src, sink_of = vf.build_flow_graph(blocks, j, "full")
        for f, p in itertools.product(range(F), range(P)):
            assert flow[f, p, j].item() == pytest.approx(widest_path(edges, src, sink_of(f, p)), abs=1e-12)
            assert flow[f, p, j].item() <= vf.exact_max_flow(blocks, j, f, p, graph="full") + 1e-9


def test_full_graph_exhaustive_paths_and_rollout():
    """Tiny full graph: widest = max over all paths of the min edge; rollout = sum over paths of the product."""
    gen = torch.Generator().manual_seed(9)
    F, P, J = 2, 2, 2
    blocks = random_blocks(gen, F, P, J, n_blocks=2, n_temporal=1)
    hard = vf.full_graph_flow(blocks, mode="hard")
    roll = vf.attention_rollout(blocks, graph="full")
    roll_default = vf.attention_rollout(blocks)
    for j in range(J):
        edges, src, sink_of = vf.build_flow_graph(blocks, j, "full")
        for f, p in itertools.product(range(F), range(P)):
            paths = all_paths(edges, src, sink_of(f, p))
            assert len(paths) > 1
            assert hard[f, p, j].item() == pytest.approx(max(min(c) for c in paths), abs=1e-12)
            assert roll[f, p, j].item() == pytest.approx(sum(math.prod(c) for c in paths), abs=1e-12)
        per_block = []
        for blk in blocks:
            e, s, sk = vf.build_flow_graph([blk], j, "default")
            per_block.append([[sum(math.prod(c) for c in all_paths(e, s, sk(f, p))) for p in range(P)]
                              for f in range(F)])
        torch.testing.assert_close(roll_default[..., j], torch.tensor(per_block, dtype=torch.float64).mean(0))


def test_single_path_graph_flow_equals_max_flow():
    """When only one path links token j to (f, p), widest path = max-flow = its weakest edge."""
    F, P, J = 3, 2, 2
    C = torch.zeros(F, P, J, dtype=torch.float64)
    T1 = torch.zeros(P, F, F, dtype=torch.float64)
    T2 = torch.zeros(P, F, F, dtype=torch.float64)
    C[1, 0, 0], T1[0, 2, 1], T2[0, 0, 2] = 0.7, 0.45, 0.9  # j=0 -> (1,0) -> (2,0) -> (0,0)
    blocks = [(C, [T1, T2])]
    flow = vf.st_flow_blocks(blocks, mode="hard", residual=False)
    assert flow[0, 0, 0].item() == 0.45
    assert vf.exact_max_flow(blocks, 0, 0, 0, residual=False) == pytest.approx(0.45, abs=1e-12)
    assert vf.exact_max_flow(blocks, 0, 0, 0, residual=False, backend="scipy") == pytest.approx(0.45, abs=1e-6)
    assert flow.count_nonzero() == 1


@pytest.mark.parametrize("tau", [0.01, 0.05])
def test_soft_chain_bounds_default_and_full(tau):
    gen = torch.Generator().manual_seed(10)
    F, P, J = 4, 6, 5
    blocks = random_blocks(gen, F, P, J, n_blocks=3, n_temporal=2)
    lo, hi = vf.soft_chain_bounds(blocks, "default", tau)
    assert (lo, hi) == pytest.approx((-2 * tau * LOG2, 2 * tau * math.log(F)))
    d = vf.st_flow_blocks(blocks, "soft", tau) - vf.st_flow_blocks(blocks, "hard")
    assert d.min() >= lo - 1e-12 and d.max() <= hi + 1e-12
    lo, hi = vf.soft_chain_bounds(blocks, "full", tau)
    assert (lo, hi) == pytest.approx((-8 * tau * LOG2, tau * (6 * math.log(F) + 2 * math.log(P) + 2 * LOG2)))
    d = vf.full_graph_flow(blocks, "soft", tau) - vf.full_graph_flow(blocks, "hard")
    assert d.min() >= lo - 1e-12 and d.max() <= hi + 1e-12


def test_full_graph_tiled_equals_plain_with_gradients():
    gen = torch.Generator().manual_seed(11)
    blocks = random_blocks(gen, 3, 10, 4, n_blocks=2, n_temporal=2, dtype=torch.float32)
    leaves = [blocks[1][0], blocks[1][1], blocks[0][2][0]]
    for x in leaves:
        x.requires_grad_()
    plain = vf.full_graph_flow(blocks, "soft", 0.01, tiled=False)
    tiled = vf.full_graph_flow(blocks, "soft", 0.01, tiled=True)
    torch.testing.assert_close(tiled, plain, rtol=0, atol=1e-6)
    for x, y in zip(torch.autograd.grad(tiled.sum(), leaves), torch.autograd.grad(plain.sum(), leaves)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
