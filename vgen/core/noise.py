"""Initial-noise models for the sampler: a function (shape, generator, device, dtype) -> noise.

Noise is drawn on the generator's device (the CPU by default) and then moved, so that one seed gives the
same video on every device, as diffusers' ``randn_tensor`` does. Latents are [B, C, F, H, W].
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

NoiseModel = Callable[[Sequence[int], torch.Generator, torch.device, torch.dtype], torch.Tensor]


def iid_noise(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Independent N(0, I) noise for every frame."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)
