"""Temporal inpainting: frames whose clean latents are known are held to them while the rest is denoised.

After each sampler step the known frames are replaced by their clean latents noised, with the noise they are
paired with, to the level of the next step, and by the clean latents themselves after the last step (RePaint
without resampling). A long video's chunk holds the previous chunk's overlap this way, and
a method that holds a frame to an anchor image (regen_hold) that frame.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from vgen.core.schedulers import add_noise

PostStep = Callable[[int, Any, torch.Tensor], torch.Tensor]


def renoised(scheduler: Any, timesteps: Sequence, clean: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
    """`clean` noised with `noise` to the level after step i (timesteps[i + 1]); exactly `clean` after the last."""
    clean = clean.to(noise.dtype)
    if i + 1 < len(timesteps):
        return add_noise(scheduler, clean, noise, timesteps[i + 1])
    return clean


def hold_frames(scheduler: Any, timesteps: Sequence, clean: torch.Tensor, noise: torch.Tensor, start: int,
                release_below: float = 0.0) -> PostStep:
    """post_step hook for `denoise`: after step i, frames start .. start + clean.shape[2] - 1 become
    renoised(clean, noise, i), so after the last step they are exactly `clean`.

    release_below: a timestep; from the first step whose next timestep is below it the frames are the model's
    (0: held to the end). Late steps only refine, so a release there lets a held frame fit its neighbours."""
    stop = start + clean.shape[2]

    def post_step(i: int, t: Any, latents: torch.Tensor) -> torch.Tensor:
        released = release_below > 0 and (i + 1 == len(timesteps) or float(timesteps[i + 1]) < release_below)
        if released:
            return latents
        latents = latents.clone()
        latents[:, :, start:stop] = renoised(scheduler, timesteps, clean, noise.to(latents.dtype), i).to(latents.dtype)
        return latents

    return post_step
