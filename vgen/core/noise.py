"""Initial-noise models for the sampler: a function (shape, generator, device, dtype) -> noise.

Noise is drawn on the generator's device (the CPU by default) and then moved, so that one seed gives the
same video on every device, as diffusers' ``randn_tensor`` does. Latents are [B, C, F, H, W].
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from vgen.core.scan import ar_matrix, ar_scan  # noqa: F401  (ar_matrix: its old home)

NoiseModel = Callable[[Sequence[int], torch.Generator, torch.device, torch.dtype], torch.Tensor]


def iid_noise(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Independent N(0, I) noise for every frame."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


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
        return ar_scan(z.float(), rho, math.sqrt(1.0 - rho * rho), dim=2).to(dtype)

    return noise
