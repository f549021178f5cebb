"""ZS2's config section (`zs2:`), torch-free: vgen.config imports it for JobConfig and calls its check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from vgen.errors import ConfigError


@dataclass
class ZS2Config:
    """ZS2 (method zs2): video from an image model by dependency noise + temporal momentum attention."""

    lam: float = 0.1  # the paper's λ; rho = 1 - λ·e^(-1/2), clamped to [0, 1] (0.1 -> 0.94)
    rho: Optional[float] = None  # AR(1) correlation of adjacent frames' noise; overrides lam (0 = iid noise)
    momentum: float = 0.98  # μ of the key/value running average over frames (0 = per-frame, 1 = frame 0 only)
    layers: list[str] = field(default_factory=list)  # self-attention layers whose name contains one; [] = all
    step_start: float = 0.0  # momentum on for denoising steps i with step_start <= i/steps < step_end
    step_end: float = 1.0
    frame_chunk: int = 0  # frames per model call (0 = all); chunks carry the running average over
    init_video: Optional[str] = None  # editing: per-frame SDEdit of this video under the same attention
    strength: float = 0.6  # editing: fraction of the schedule re-run (1 = from pure noise)

    def check(self) -> None:
        check(self)


def check(z: ZS2Config) -> None:
    """One ConfigError line naming the first bad key (written so that NaN fails every test)."""
    if z.rho is not None and not 0.0 <= z.rho <= 1.0:
        raise ConfigError(f"config key 'zs2.rho' must be in [0, 1], got {z.rho}")
    if not z.lam >= 0:
        raise ConfigError(f"config key 'zs2.lam' must be >= 0, got {z.lam}")
    if not 0.0 <= z.momentum <= 1.0:
        raise ConfigError(f"config key 'zs2.momentum' must be in [0, 1], got {z.momentum}")
    if not 0.0 <= z.step_start <= z.step_end <= 1.0:
        raise ConfigError(
            f"config keys zs2.step_start and zs2.step_end must satisfy 0 <= start <= end <= 1, got {z.step_start}, {z.step_end}"
        )
    if not z.frame_chunk >= 0:
        raise ConfigError(f"config key 'zs2.frame_chunk' must be >= 0, got {z.frame_chunk}")
    if not 0.0 < z.strength <= 1.0:
        raise ConfigError(f"config key 'zs2.strength' must be in (0, 1], got {z.strength}")
