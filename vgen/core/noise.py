"""Initial-noise models for the sampler: a function (shape, generator, device, dtype) -> noise.

Noise is drawn on the generator's device (the CPU by default) and then moved, so that one seed gives the
same video on every device, as diffusers' ``randn_tensor`` does. Latents are [B, C, F, H, W].
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

NoiseModel = Callable[[Sequence[int], torch.Generator, torch.device, torch.dtype], torch.Tensor]


def iid_noise(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Independent N(0, I) noise for every frame."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


def ar_matrix(frames: int, decay: float, gain: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The recursion y_0 = x_0, y_i = decay·y_{i-1} + gain·x_i as one lower-triangular [F, F] matrix.

    Row i is (decay^i, gain·decay^(i-1), ..., gain): a whole frame axis is mixed by one matmul, with no
    Python loop over frames. Shared by the AR(1) noise and the temporal momentum attention.
    """
    i = torch.arange(frames, dtype=torch.float64)
    lag = i[:, None] - i[None, :]
    m = torch.where(lag >= 0, gain * torch.tensor(decay, dtype=torch.float64).pow(lag.clamp(min=0)), 0.0)
    m[:, 0] = torch.tensor(decay, dtype=torch.float64).pow(i)
    return m.to(dtype)


def rho_from_lambda(lam: float) -> float:
    """ZS2's knob λ as the AR(1) correlation: ρ = 1 - λ·e^(-1/2), clamped to [0, 1].

    The closed form replaces the paper's iterative search, which goes NaN for small λ.
    """
    return float(min(max(1.0 - lam * math.exp(-0.5), 0.0), 1.0))


def ar1_noise(rho: float) -> NoiseModel:
    """Dependency noise: ε_0 = z_0, ε_i = ρ·ε_{i-1} + sqrt(1-ρ²)·z_i along the frame axis of [B, C, F, H, W].

    Every frame stays N(0, I) and adjacent frames correlate by ρ. z is drawn exactly as `iid_noise` draws
    it, so ρ = 0 gives the iid noise of the same seed.
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")

    def noise(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        z = iid_noise(shape, generator, device, dtype)
        if rho == 0.0 or shape[2] == 1:
            return z
        mix = ar_matrix(shape[2], rho, math.sqrt(1.0 - rho * rho), torch.float32).to(device)
        return torch.einsum("ij,bcjhw->bcihw", mix, z.float()).to(dtype)

    return noise
