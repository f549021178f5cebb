"""ZS2's dependency-noise knob: the paper's λ as the AR(1) correlation of the core noise model."""

from __future__ import annotations

import math


def rho_from_lambda(lam: float) -> float:
    """ZS2's knob λ as the AR(1) correlation: ρ = 1 - λ·e^(-1/2), clamped to [0, 1].

    The closed form replaces the paper's iterative search, which goes NaN for small λ.
    """
    return float(min(max(1.0 - lam * math.exp(-0.5), 0.0), 1.0))
