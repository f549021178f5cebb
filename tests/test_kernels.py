"""Triton kernels (vgen/core/kernels) against the torch references of flow.py, attention.py,
attention_slices.py and scan.py.

Without CUDA the kernels run in Triton's interpreter: this module sets TRITON_INTERPRET=1 before triton
is first imported (triton.language decorates its own helpers at import time, so it must be set then) and
restores the variable once its tests are done; with ``runtime.kernels`` at "auto" nothing else in the
suite reads it. On a CUDA machine (``make device-check``) the same tests run compiled. Sizes are small and odd (never tile multiples), with
some over one tile so the grids and the atomics of the backward span several programs.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
_SAVED_ENV = {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "VGEN_KERNELS")}
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="triton is not installed (make test installs it)")

from vgen.core import attention, flow  # noqa: E402
from vgen.core.kernels import dispatch, use_kernels  # noqa: E402
from vgen.errors import ConfigError  # noqa: E402

DEV = torch.device("cuda" if CUDA else "cpu")
HALF = (torch.float16, torch.bfloat16)


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    """TRITON_INTERPRET=1 (no CUDA) and no VGEN_KERNELS while this module runs; restored after it."""
    os.environ.pop(dispatch.ENV, None)
    if not CUDA:
        os.environ["TRITON_INTERPRET"] = "1"
    yield
    for k, v in _SAVED_ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def rand(*shape, dtype=torch.float32, gen):
    return torch.rand(*shape, generator=gen).to(DEV, dtype)


def tol(dtype, scale=1.0):
    """Absolute tolerance: a few roundings of the output dtype at magnitude ``scale`` (float32: accumulation)."""
    eps = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    return 4 * eps * max(1.0, scale)


def grads(fn, inputs, weights):
    """Values and gradients of sum(fn(*inputs) * weights)."""
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*xs)
    (out.float() * weights).sum().backward()
    return out.detach(), [x.grad for x in xs]


# ----------------------------------------------------------------------------------------------------------
# bottleneck (max-min) product


SHAPES = [  # (A shape, B shape): batched, broadcast, several m/n tiles (m > 32, n > 64)
    ((3, 13, 19), (3, 19, 11)),
    ((2, 1, 7, 5), (4, 5, 9)),
    ((37, 6), (6, 70)),
]


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("shapes", SHAPES, ids=["batched", "broadcast", "tiles"])
def test_soft_bottleneck_matches_reference(shapes, dtype):
    from vgen.core.kernels.triton_bottleneck import soft_bottleneck

    gen = torch.Generator().manual_seed(0)
    A, B = rand(*shapes[0], dtype=dtype, gen=gen), rand(*shapes[1], dtype=dtype, gen=gen)
    tau = 0.01 if dtype == torch.float32 else 0.05  # 0.01: exponents up to 100 hit the clamp
    out_shape = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2]) + (A.shape[-2], B.shape[-1])
    W = torch.randn(out_shape, generator=gen).to(DEV)
    out, (gA, gB) = grads(lambda a, b: soft_bottleneck(a, b, tau), (A, B), W)
    # reference: the plain broadcast with autograd, in float32 on the same (rounded) inputs
    ref, (rA, rB) = grads(lambda a, b: flow.soft_bottleneck_matmul(a, b, tau), (A.float(), B.float()), W)
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref, atol=tol(dtype), rtol=0)
    assert gA.dtype == dtype and gB.dtype == dtype
    torch.testing.assert_close(gA.float(), rA, atol=tol(dtype, rA.abs().max().item()), rtol=0)
    torch.testing.assert_close(gB.float(), rB, atol=tol(dtype, rB.abs().max().item()), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("shapes", SHAPES, ids=["batched", "broadcast", "tiles"])
def test_hard_bottleneck_matches_reference(shapes, dtype):
    from vgen.core.kernels.triton_bottleneck import hard_bottleneck

    gen = torch.Generator().manual_seed(1)
    A, B = rand(*shapes[0], dtype=dtype, gen=gen), rand(*shapes[1], dtype=dtype, gen=gen)
    out_shape = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2]) + (A.shape[-2], B.shape[-1])
    W = torch.randn(out_shape, generator=gen).to(DEV)
    out, (gA, gB) = grads(hard_bottleneck, (A, B), W)
    # values: max and min are exact in every dtype, so the plain reference matches bit for bit
    assert torch.equal(out, flow.bottleneck_matmul(A, B))
    # gradients: the argmax edge, ties to the first maximum (as the torch tiled kernel); with float32 the
    # random values have no ties and autograd through the plain reference's amax is the independent check
    ref_fn = flow.bottleneck_matmul if dtype == torch.float32 else flow.bottleneck_matmul_tiled
    _, (rA, rB) = grads(ref_fn, (A, B), W)
    torch.testing.assert_close(gA.float(), rA.float(), atol=tol(dtype, W.abs().max().item()), rtol=0)
    torch.testing.assert_close(gB.float(), rB.float(), atol=tol(dtype, W.abs().max().item()), rtol=0)


def test_hard_bottleneck_hand_case():
    """[[1, .2], [.3, .9]] ⊗ [[.5, .1], [.4, .8]]: out[0,0] = max(min(1,.5), min(.2,.4)) = .5 via r=0, where
    B's edge .5 is the weaker, so A[0,0] gets no gradient and B[0,0] gets 1."""
    from vgen.core.kernels.triton_bottleneck import hard_bottleneck

    A = torch.tensor([[1.0, 0.2], [0.3, 0.9]], device=DEV, requires_grad=True)
    B = torch.tensor([[0.5, 0.1], [0.4, 0.8]], device=DEV, requires_grad=True)
    out = hard_bottleneck(A, B)
    torch.testing.assert_close(out.cpu(), torch.tensor([[0.5, 0.2], [0.4, 0.8]]))
    out[0, 0].backward()
    assert A.grad.cpu().tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert B.grad.cpu().tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_flow_graphs_dispatch_to_triton():
    """st_flow_blocks and full_graph_flow (public flow.py functions) give the torch results on Triton."""
    gen = torch.Generator().manual_seed(2)
    F, P, J = 5, 6, 7

    def att(*shape):
        return torch.softmax(3 * torch.randn(*shape, generator=gen), -1).to(DEV)

    blocks = [(att(F, P, J), att(F, P, P), [att(P, F, F), att(P, F, F)]) for _ in range(2)]
    for mode in ("soft", "hard"):
        for fn in (flow.st_flow_blocks, flow.full_graph_flow):
            with use_kernels("torch"):
                ref = fn(blocks, mode=mode, tau=0.02)
            with use_kernels("triton"):
                got = fn(blocks, mode=mode, tau=0.02)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    with use_kernels("triton"):
        A, B = att(3, 4, 5), att(3, 5, 6)
        assert type(flow.bottleneck(A.requires_grad_(), B, "soft", 0.1).grad_fn).__name__ == "SoftBottleneckTritonBackward"
        assert type(flow.bottleneck(A, B, "hard").grad_fn).__name__ == "HardBottleneckTritonBackward"
        assert "Triton" not in type(flow.bottleneck(A, B, "soft", 0.1, tiled=False).grad_fn).__name__


# ----------------------------------------------------------------------------------------------------------
# recorded attention


ATTN = [  # (B, heads, N, K, head dim, value dim, columns)
    (2, 3, 19, 21, 20, 23, 7),  # cross-attention-like: keep the first 7 keys
    (3, 2, 5, 5, 16, 16, None),  # temporal-like: frames x frames, all columns
    (1, 2, 70, 67, 8, 8, 66),  # several query and key tiles (> 64)
]


def _attn_case(case, dtype, gen):
    B, H, N, K, D, DV, c = case
    q = (torch.randn(B, H, N, D, generator=gen) * 1.5).to(DEV, dtype)
    k = torch.randn(B, H, K, D, generator=gen).to(DEV, dtype)
    v = torch.randn(B, H, K, DV, generator=gen).to(DEV, dtype)
    C = K if c is None else c
    return (q, k, v), D ** -0.5, c, torch.randn(B, H, N, DV, generator=gen).to(DEV), torch.randn(B, N, C, generator=gen).to(DEV)


def _run_attn(fn, inputs, scale, columns, g_out, g_mean, use_out=True, use_mean=True):
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    out, mean = fn(*xs, scale, columns)
    loss = 0
    if use_out:
        loss = loss + (out.float() * g_out).sum()
    if use_mean:
        loss = loss + (mean * g_mean).sum()
    loss.backward()
    return out.detach(), mean.detach(), [x.grad for x in xs]


def _torch_recorded(q, k, v, scale, columns):
    return attention._RecordedAttention.apply(q, k, v, None, scale, columns, attention.RECORD_BUDGET)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("case", ATTN, ids=["cross", "temporal", "tiles"])
def test_recorded_attention_matches_reference(case, dtype):
    from vgen.core.kernels.triton_attention import recorded_attention

    gen = torch.Generator().manual_seed(3)
    inputs, scale, c, g_out, g_mean = _attn_case(case, dtype, gen)
    out, mean, gs = _run_attn(recorded_attention, inputs, scale, c, g_out, g_mean)
    rout, rmean, rgs = _run_attn(_torch_recorded, inputs, scale, c, g_out, g_mean)
    assert out.dtype == dtype and mean.dtype == torch.float32 and mean.shape == rmean.shape
    torch.testing.assert_close(out.float(), rout.float(), atol=tol(dtype, 2.0), rtol=0)
    torch.testing.assert_close(mean, rmean, atol=1e-6 if dtype == torch.float32 else 2e-3, rtol=0)
    for g, r in zip(gs, rgs):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), r.float(), atol=tol(dtype, r.abs().max().item()), rtol=0)


def test_recorded_attention_one_output_only():
    """Gradients when only the output or only the probabilities reach the loss (None gradients)."""
    from vgen.core.kernels.triton_attention import recorded_attention

    gen = torch.Generator().manual_seed(4)
    inputs, scale, c, g_out, g_mean = _attn_case(ATTN[0], torch.float32, gen)
    for use_out, use_mean in ((True, False), (False, True)):
        *_, gs = _run_attn(recorded_attention, inputs, scale, c, g_out, g_mean, use_out, use_mean)
        *_, rgs = _run_attn(_torch_recorded, inputs, scale, c, g_out, g_mean, use_out, use_mean)
        for g, r in zip(gs, rgs):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=0)


def test_recorded_attention_probabilities_against_softmax():
    """The head mean is the plain softmax's (independent of both kernels), through the public dispatch."""
    gen = torch.Generator().manual_seed(5)
    (q, k, v), scale, c, _, _ = _attn_case(ATTN[0], torch.float32, gen)
    p = torch.softmax(q @ k.transpose(-1, -2) * scale, -1)
    q.requires_grad_()
    with use_kernels("triton"):
        out, mean = attention.recorded_attention(q, k, v, scale=scale, columns=c)
        masked, _ = attention.recorded_attention(q, k, v, torch.zeros(1, 1, 1, k.shape[-2], device=DEV), scale, c)
    torch.testing.assert_close(mean, p[..., :c].mean(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, p @ v, atol=1e-5, rtol=0)
    assert type(out.grad_fn).__name__ == "RecordedAttentionTritonBackward"
    assert type(masked.grad_fn).__name__ == "_RecordedAttentionBackward"  # a mask keeps the torch path
    torch.testing.assert_close(masked, p @ v, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# dispatch


def test_dispatch_choices(monkeypatch):
    x = torch.zeros(2, 2)
    with use_kernels("auto"):
        assert not dispatch.use_triton(x)  # auto: Triton on CUDA tensors only
    with use_kernels("torch"):
        assert not dispatch.use_triton(x.to(DEV))
    with use_kernels("triton"):
        assert dispatch.use_triton(x.to(DEV))
        assert not dispatch.use_triton(x.double())  # float64 keeps the torch reference
    monkeypatch.setenv(dispatch.ENV, "torch")  # the env beats the configured value
    with use_kernels("triton"):
        assert not dispatch.use_triton(x.to(DEV))
        assert dispatch.configure("triton", "cpu") == "torch"


def test_forcing_triton_without_cuda_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError) as err:
        dispatch.configure("triton", "cpu")
    msg = str(err.value)
    assert "\n" not in msg and "TRITON_INTERPRET=1" in msg and "runtime.kernels=auto" in msg
    monkeypatch.setenv(dispatch.ENV, "triton")
    with pytest.raises(ConfigError, match=f"set {dispatch.ENV}=auto"):
        dispatch.configure("auto", "cpu")
    monkeypatch.setenv(dispatch.ENV, "fast")
    with pytest.raises(ConfigError, match="not one of: auto, torch, triton"):
        dispatch.configure("auto", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(dispatch.ENV)
    assert dispatch.configure("triton", "cpu") == "triton"
    dispatch.configure("auto")


# ----------------------------------------------------------------------------------------------------------
# same-position attention slices (vgen.core.attention_slices)


SLICES = [  # (B, heads, frames, positions, head dim): N = F·P tokens, odd sizes, some over one 64-row tile
    (1, 2, 3, 4, 8),
    (2, 2, 5, 16, 16),  # N = 80: two query and key tiles
    (1, 2, 1, 16, 8),  # one frame: the diagonal
    (1, 1, 5, 17, 20),  # N = 85, head dim 20 (padded to 32)
]


def _qk(case, dtype, gen):
    B, H, F, P, d = case
    q = (torch.randn(B, H, F * P, d, generator=gen) * 1.3).to(DEV, dtype)
    k = torch.randn(B, H, F * P, d, generator=gen).to(DEV, dtype)
    return q, k, F, d ** -0.5, torch.randn(B, H, P, F, F, generator=gen).to(DEV)


def _slice_run(q, k, frames, scale, weights, kernels):
    from vgen.core.attention_slices import same_position_attention

    q, k = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    with use_kernels(kernels):
        a = same_position_attention(q, k, frames, scale)
    (a * weights).sum().backward()
    return a.detach(), q.grad, k.grad


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("case", SLICES, ids=["small", "tiles", "one-frame", "odd"])
def test_same_position_attention_matches_reference(case, dtype):
    """Forward (Triton logsumexp and slice) and backward (Triton tiled logsumexp pass) against the torch
    reference on the same inputs."""
    gen = torch.Generator().manual_seed(10)
    q, k, F, scale, w = _qk(case, dtype, gen)
    a, gq, gk = _slice_run(q, k, F, scale, w, "triton")
    ra, rq, rk = _slice_run(q, k, F, scale, w, "torch")
    assert a.dtype == torch.float32 and a.shape == ra.shape
    torch.testing.assert_close(a, ra, atol=1e-6 if dtype == torch.float32 else 2e-3, rtol=0)
    for g, r in ((gq, rq), (gk, rk)):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), r.float(), atol=tol(dtype, r.abs().max().item()), rtol=0)


def test_same_position_attention_against_naive_softmax():
    """Through the public dispatch: the Triton path equals the slice of the plain N x N softmax (an
    independent reference), gradients by autograd through it."""
    from vgen.core import attention_slices

    gen = torch.Generator().manual_seed(11)
    q, k, F, scale, w = _qk(SLICES[1], torch.float32, gen)
    a, gq, gk = _slice_run(q, k, F, scale, w, "triton")
    B, H, N, _ = q.shape
    P = N // F
    qn, kn = q.clone().requires_grad_(), k.clone().requires_grad_()
    full = torch.softmax(qn @ kn.transpose(-1, -2) * scale, -1).view(B, H, F, P, F, P)
    ref = torch.stack([full[:, :, :, p, :, p] for p in range(P)], dim=2)
    (ref * w).sum().backward()
    torch.testing.assert_close(a, ref.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(gq, qn.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(gk, kn.grad, atol=1e-5, rtol=0)
    with use_kernels("triton"):
        lse = attention_slices.row_logsumexp(q, k, scale)
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * scale, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_logsumexp_matches_reference(dtype):
    from vgen.core.attention_slices import row_logsumexp

    gen = torch.Generator().manual_seed(15)
    q, k, _, scale, _ = _qk(SLICES[3], dtype, gen)
    w = torch.randn(q.shape[:-1], generator=gen).to(DEV)
    outs = {}
    for kernels in ("triton", "torch"):
        qs, ks = q.clone().requires_grad_(), k.clone().requires_grad_()
        with use_kernels(kernels):
            lse = row_logsumexp(qs, ks, scale)
        (lse * w).sum().backward()
        outs[kernels] = (lse.detach(), qs.grad, ks.grad)
    (lse, gq, gk), (rl, rq, rk) = outs["triton"], outs["torch"]
    assert lse.dtype == torch.float32
    torch.testing.assert_close(lse, rl, atol=1e-5, rtol=0)
    for g, r in ((gq, rq), (gk, rk)):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), r.float(), atol=tol(dtype, r.abs().max().item()), rtol=0)


def test_same_position_attention_strided_inputs():
    """q, k as transposed views of [B, N, heads, d] (how a DiT's attention holds them)."""
    from vgen.core.attention_slices import same_position_attention

    gen = torch.Generator().manual_seed(12)
    q = torch.randn(1, 48, 2, 16, generator=gen).to(DEV).transpose(1, 2)
    k = torch.randn(1, 48, 2, 16, generator=gen).to(DEV).transpose(1, 2)
    with use_kernels("triton"):
        a = same_position_attention(q, k, 3, 0.25, mean_heads=True)
    with use_kernels("torch"):
        ref = same_position_attention(q.contiguous(), k.contiguous(), 3, 0.25, mean_heads=True)
    torch.testing.assert_close(a, ref, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# AR(1) / momentum scan (vgen.core.scan)


SCANS = [  # (shape, dim)
    ((2, 4, 7, 5, 6), 2),  # [B, C, F, H, W] noise
    ((2, 9, 33, 20), 1),  # [groups, F, tokens, d]: several programs
    ((11, 3), 0),
    ((3, 1, 5), 2),  # frames last
]


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("with_carry", [False, True], ids=["no-carry", "carry"])
@pytest.mark.parametrize("shape,dim", SCANS, ids=["noise", "tokens", "2d", "last"])
def test_ar_scan_matches_reference(shape, dim, with_carry, dtype):
    from vgen.core.scan import ar_scan

    gen = torch.Generator().manual_seed(13)
    x = torch.randn(shape, generator=gen).to(DEV, dtype)
    rest = list(shape)
    del rest[dim]
    carry = torch.randn(rest, generator=gen).to(DEV, dtype) if with_carry else None
    w = torch.randn(shape, generator=gen).to(DEV)
    outs = {}
    for kernels in ("triton", "torch"):
        xs = x.clone().requires_grad_()
        cs = carry.clone().requires_grad_() if with_carry else None
        with use_kernels(kernels):
            y = ar_scan(xs, 0.94, 0.34, dim, cs)
        (y.float() * w).sum().backward()
        outs[kernels] = (y.detach(), xs.grad, cs.grad if with_carry else None)
    (y, gx, gc), (ry, rx, rc) = outs["triton"], outs["torch"]
    assert y.dtype == dtype and gx.dtype == dtype
    torch.testing.assert_close(y.float(), ry.float(), atol=tol(dtype, 4.0), rtol=0)
    torch.testing.assert_close(gx.float(), rx.float(), atol=tol(dtype, 4.0), rtol=0)
    if with_carry:
        torch.testing.assert_close(gc.float(), rc.float(), atol=tol(dtype, 4.0), rtol=0)


def test_ar1_noise_on_triton_is_the_closed_form():
    """ar1_noise routed to the Triton scan: eps_i = rho·eps_{i-1} + sqrt(1-rho²)·z_i by hand, frame by frame."""
    from vgen.core import noise

    shape = (1, 2, 4, 3, 5)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(14))
    with use_kernels("triton"):
        eps = noise.ar1_noise(0.6)(shape, torch.Generator().manual_seed(14), DEV, torch.float32)
    ref = [z[:, :, 0]]
    for i in range(1, 4):
        ref.append(0.6 * ref[-1] + 0.8 * z[:, :, i])
    torch.testing.assert_close(eps.cpu(), torch.stack(ref, 2), atol=1e-6, rtol=0)
