"""vgen.core.attention_slices (torch path) against the naive full softmax: torch.softmax over all N keys,
then the same-position F x F slice indexed out of the N x N matrix, gradients by autograd through it."""

import pytest
import torch

from vgen.core import attention_slices as slices
from vgen.core.kernels import use_kernels


def naive_slice(q, k, frames, scale):
    """softmax over all N keys, then P[f·P+p, g·P+p] for every p: [B, H, P, F, F]."""
    B, H, N, _ = q.shape
    P = N // frames
    probs = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)  # [B, H, N, N]
    full = probs.view(B, H, frames, P, frames, P)  # [b, h, f, p, g, p']
    out = torch.empty(B, H, P, frames, frames, dtype=probs.dtype)
    for p in range(P):
        out[:, :, p] = full[:, :, :, p, :, p]
    return out


def qk(B, H, F, P, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, H, F * P, d, generator=gen, dtype=torch.float64) * 1.3).to(dtype)
    k = torch.randn(B, H, F * P, d, generator=gen, dtype=torch.float64).to(dtype)
    return q, k


def value_and_grads(fn, q, k, weights):
    q, k = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    out = fn(q, k)
    (out * weights).sum().backward()
    return out.detach(), q.grad, k.grad


SIZES = [(F, P, d) for F in (1, 3, 5) for P in (1, 4, 16) for d in (8, 16)]


@pytest.fixture(autouse=True)
def torch_kernels():
    with use_kernels("torch"):
        yield


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("F,P,d", SIZES)
def test_slice_matches_naive_softmax(F, P, d, dtype, atol):
    q, k = qk(2, 2, F, P, d, dtype, seed=F * 100 + P * 10 + d)
    scale = d ** -0.5
    w = torch.randn(2, 2, P, F, F, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype)
    got, gq, gk = value_and_grads(lambda a, b: slices.same_position_attention(a, b, F, scale), q, k, w)
    ref, rq, rk = value_and_grads(lambda a, b: naive_slice(a, b, F, scale), q, k, w)
    assert got.shape == (2, 2, P, F, F) and got.dtype == dtype
    torch.testing.assert_close(got, ref, atol=atol, rtol=0)
    assert gq.dtype == dtype and gk.dtype == dtype
    torch.testing.assert_close(gq, rq, atol=atol * max(1.0, rq.abs().max().item()), rtol=0)
    torch.testing.assert_close(gk, rk, atol=atol * max(1.0, rk.abs().max().item()), rtol=0)


def test_one_frame_is_the_diagonal():
    """F = 1: each position's 1x1 slice is the softmax's diagonal entry."""
    q, k = qk(1, 2, 1, 6, 8, torch.float64, seed=1)
    probs = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1)
    got = slices.same_position_attention(q, k, 1, 0.5)
    torch.testing.assert_close(got[..., 0, 0], torch.diagonal(probs, dim1=-2, dim2=-1), atol=1e-14, rtol=0)


def test_tiles_smaller_than_a_row_give_the_same_values(monkeypatch):
    """A budget of a few rows splits both passes into many query chunks (3 rows of 48 keys per chunk)."""
    q, k = qk(1, 2, 3, 16, 8, torch.float64, seed=2)
    w = torch.randn(1, 2, 16, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref, rq, rk = value_and_grads(lambda a, b: naive_slice(a, b, 3, 0.3), q, k, w)
    monkeypatch.setattr(slices, "TILE_BUDGET", 2 * 48 * 3)
    got, gq, gk = value_and_grads(lambda a, b: slices.same_position_attention(a, b, 3, 0.3), q, k, w)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(gq, rq, atol=1e-12, rtol=0)
    torch.testing.assert_close(gk, rk, atol=1e-12, rtol=0)


def test_mean_heads():
    q, k = qk(2, 3, 3, 4, 8, torch.float64, seed=4)
    w = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got, gq, gk = value_and_grads(lambda a, b: slices.same_position_attention(a, b, 3, 0.4, mean_heads=True), q, k, w)
    ref, rq, rk = value_and_grads(lambda a, b: naive_slice(a, b, 3, 0.4).mean(dim=1), q, k, w)
    assert got.shape == (2, 4, 3, 3)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(gq, rq, atol=1e-12, rtol=0)
    torch.testing.assert_close(gk, rk, atol=1e-12, rtol=0)


def test_half_inputs_accumulate_in_float32():
    """bfloat16 q, k: float32 probabilities equal to the naive softmax of the same (rounded) values in
    float32; gradients come back in bfloat16."""
    q, k = qk(1, 2, 3, 4, 16, torch.bfloat16, seed=6)
    got = slices.same_position_attention(q.requires_grad_(), k, 3, 0.25)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, naive_slice(q.detach().float(), k.float(), 3, 0.25), atol=1e-6, rtol=0)
    got.sum().backward()
    assert q.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_row_logsumexp_and_its_gradient(dtype, atol):
    q, k = qk(2, 2, 5, 4, 16, dtype, seed=8)
    w = torch.randn(2, 2, 20, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(dtype)
    got, gq, gk = value_and_grads(lambda a, b: slices.row_logsumexp(a, b, 0.25), q, k, w)
    ref, rq, rk = value_and_grads(lambda a, b: torch.logsumexp(a @ b.transpose(-1, -2) * 0.25, dim=-1), q, k, w)
    torch.testing.assert_close(got, ref, atol=atol, rtol=0)
    torch.testing.assert_close(gq, rq, atol=atol, rtol=0)
    torch.testing.assert_close(gk, rk, atol=atol, rtol=0)


def test_bad_shapes_are_one_line_errors():
    q, k = qk(1, 2, 3, 4, 8, torch.float32, seed=0)
    with pytest.raises(ValueError, match="do not split into 5 frames"):
        slices.same_position_attention(q, k, 5, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        slices.same_position_attention(q, k[:, :, :6], 3, 1.0)
    with pytest.raises(ValueError, match="share one float dtype"):
        slices.same_position_attention(q, k.double(), 3, 1.0)


def test_backward_keeps_no_n_by_n_tensor():
    """What autograd saves for the backward is O(N·d + P·F²): no tensor near N x N (the naive one saves two)."""
    q, k = qk(1, 1, 5, 32, 8, torch.float32, seed=10)  # N = 160: N² = 25600, q = 1280, A = 800 elements
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        slices.same_position_attention(q.requires_grad_(), k, 5, 0.3, mean_heads=True)
        assert sizes and max(sizes) <= 1280
        sizes.clear()
        naive_slice(q, k, 5, 0.3)
        assert max(sizes) == 160 * 160  # the check sees what the naive softmax keeps
