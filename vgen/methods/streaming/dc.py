"""The latent's DC (per-channel spatial mean: background level and global colour), held across a chunk boundary."""

from __future__ import annotations

import torch


def lock_dc(latents: torch.Tensor, target: torch.Tensor, start: int) -> torch.Tensor:
    """Frames from `start` on get `target`'s per-channel spatial mean (the latent's DC: background level and
    global colour), the rest of each frame untouched."""
    new = latents[:, :, start:]
    latents[:, :, start:] = new - new.mean(dim=(-2, -1), keepdim=True) + target.mean(dim=(-2, -1), keepdim=True)
    return latents
