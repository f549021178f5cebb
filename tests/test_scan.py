"""vgen.core.scan.ar_scan (torch path) against the closed form of the recursion and hand-computed cases, and
ar1_noise routed through it against the matrix path it replaced."""

import math

import pytest
import torch

from vgen.core import noise
from vgen.core.kernels import use_kernels
from vgen.core.scan import ar_scan


@pytest.fixture(autouse=True)
def torch_kernels():
    with use_kernels("torch"):
        yield


def closed_form(x, decay, gain, dim, carry=None):
    """y_i = decay^i·x_0 + gain·sum_{j=1..i} decay^(i-j)·x_j (no carry), or
    decay^(i+1)·carry + gain·sum_{j=0..i} decay^(i-j)·x_j, frame by frame in float64."""
    xs = x.double().movedim(dim, 0)
    ys = []
    for i in range(xs.shape[0]):
        if carry is None:
            y = decay ** i * xs[0] + sum(gain * decay ** (i - j) * xs[j] for j in range(1, i + 1))
        else:
            y = decay ** (i + 1) * carry.double() + sum(gain * decay ** (i - j) * xs[j] for j in range(i + 1))
        ys.append(y)
    return torch.stack(ys).movedim(0, dim)


def test_hand_computed_three_frames():
    x = torch.tensor([1.0, 2.0, 3.0])
    # y0 = 1, y1 = 0.5·1 + 2·2 = 4.5, y2 = 0.5·4.5 + 2·3 = 8.25
    assert ar_scan(x, 0.5, 2.0, dim=0).tolist() == [1.0, 4.5, 8.25]
    # carry 4: y0 = 0.5·4 + 2·1 = 4, y1 = 0.5·4 + 2·2 = 6, y2 = 0.5·6 + 2·3 = 9
    assert ar_scan(x, 0.5, 2.0, dim=0, carry=torch.tensor(4.0)).tolist() == [4.0, 6.0, 9.0]


@pytest.mark.parametrize("shape,dim", [((2, 3, 7, 4, 5), 2), ((6, 9), 0), ((3, 5, 11), -1), ((4, 1, 6), 1)])
@pytest.mark.parametrize("with_carry", [False, True])
def test_closed_form(shape, dim, with_carry):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    rest = list(shape)
    del rest[dim]
    carry = torch.randn(rest, generator=gen, dtype=torch.float64) if with_carry else None
    for decay, gain in ((0.94, math.sqrt(1 - 0.94 ** 2)), (0.98, 0.02), (1.0, 0.0), (0.0, 1.0)):
        got = ar_scan(x, decay, gain, dim, carry)
        torch.testing.assert_close(got, closed_form(x, decay, gain, dim, carry), atol=1e-12, rtol=0)


def test_carry_broadcasts_and_is_differentiable():
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    carry = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)  # broadcast over axis 0
    y = ar_scan(x, 0.5, 3.0, dim=1, carry=carry)
    torch.testing.assert_close(y, closed_form(x, 0.5, 3.0, 1, carry.expand(2, 3)), atol=1e-12, rtol=0)
    y.sum().backward()
    # d(sum y)/d carry = 2 rows x (0.5 + 0.25 + 0.125 + 0.0625); d(sum y)/d x_j = 3·sum_{i>=j} 0.5^(i-j)
    torch.testing.assert_close(carry.grad, torch.full((3,), 2 * 0.9375, dtype=torch.float64))
    per_frame = torch.tensor([3 * (1 + .5 + .25 + .125), 3 * (1 + .5 + .25), 3 * (1 + .5), 3.0], dtype=torch.float64)
    torch.testing.assert_close(x.grad, per_frame[None, :, None].expand(2, 4, 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(dtype):
    """The result keeps x's dtype; half inputs accumulate in float32 (one rounding at the end)."""
    x = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = ar_scan(x, 0.9, 0.1, dim=1)
    assert got.dtype == dtype
    ref = closed_form(x, 0.9, 0.1, 1)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-6, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(got.double(), ref, atol=tol * 2, rtol=0)


def test_bad_arguments_are_one_line_errors():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="dim 3 is out of range"):
        ar_scan(x, 0.5, 0.5, dim=3)
    with pytest.raises(ValueError, match="does not fit"):
        ar_scan(x, 0.5, 0.5, dim=1, carry=torch.zeros(3, 4))


def matrix_path(rho, shape, seed, dtype):
    """ar1_noise as it was before the scan: the same z, then one einsum with the [F, F] matrix."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    if rho == 0.0 or shape[2] == 1:
        return z
    mix = noise.ar_matrix(shape[2], rho, math.sqrt(1.0 - rho * rho), torch.float32)
    return torch.einsum("ij,bcjhw->bcihw", mix, z.float()).to(dtype)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.94, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ar1_noise_frames_unchanged(rho, dtype):
    """The same noise as before up to float32 rounding: a matmul and an einsum may sum in another order (BLAS
    blocking depends on the thread count), so bit equality is not a property of either path."""
    for seed, shape in ((0, (1, 4, 16, 8, 8)), (1, (2, 4, 5, 6, 10)), (2, (1, 4, 1, 8, 8))):
        got = noise.ar1_noise(rho)(shape, torch.Generator().manual_seed(seed), torch.device("cpu"), dtype)
        want = matrix_path(rho, shape, seed, dtype)
        rtol, atol = (0, 1e-6) if dtype == torch.float32 else (2 ** -10, 1e-4)  # float16: at most one ulp apart
        assert got.dtype == want.dtype and torch.allclose(got.float(), want.float(), rtol=rtol, atol=atol)


def test_ar1_noise_three_frames_by_hand():
    rho = 0.6
    s = math.sqrt(1 - rho * rho)  # 0.8
    z = torch.randn(1, 2, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    eps = noise.ar1_noise(rho)((1, 2, 3, 2, 2), torch.Generator().manual_seed(3), torch.device("cpu"), torch.float32)
    torch.testing.assert_close(eps[:, :, 0], z[:, :, 0])
    torch.testing.assert_close(eps[:, :, 1], 0.6 * z[:, :, 0] + 0.8 * z[:, :, 1])
    torch.testing.assert_close(eps[:, :, 2], 0.36 * z[:, :, 0] + 0.48 * z[:, :, 1] + 0.8 * z[:, :, 2])
