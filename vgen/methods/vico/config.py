"""Vico's config section (``vico.*``): the schema vgen.config merges and validates. Torch-free; imports only
the stdlib, omegaconf, vgen.errors and vgen.config_io (vgen.config imports this module, never the reverse)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from vgen.config_io import above, at_least, choice
from vgen.errors import ConfigError


@dataclass
class VicoConfig:
    """Vico (method vico): raise the weakest key token's attention flow by updating the latent.

    Defaults follow the public code (github Adamdad/vico); our variants are named values of the same keys.
    """

    tokens: list[int] = field(default_factory=list)  # explicit key-token indices in the encoded prompt (CLIP: start token = 0; T5/UMT5: first word = 0)
    words: list[str] = field(default_factory=list)  # key words ("cat,dog" or [cat, dog]); multi-token words count as their span
    select: str = "official"  # automatic key words: official (nouns + verbs + left/right/top/bottom) | nouns (ours)
    stop_words: list[str] = field(default_factory=list)  # words automatic selection never keeps
    graph: str = "default"  # default (cross -> temporal per block, blocks averaged) | full (+ spatial self-attn, blocks chained)
    flow: str = "soft"  # soft (differentiable widest path) | hard | rollout
    tau: float = 0.01  # temperature of the soft max-min product
    residual: bool = True  # self-attention maps become (A + I)/2
    order: str = "official"  # official: (R2 ⊗ R1) ⊗ C (public code) | sequential: R2 ⊗ (R1 ⊗ C) (ours, earlier)
    units: str = "official"  # official: every cross-attention at the recorded resolution, mid block included | outer: no mid block (ours)
    scale: float = 100.0  # flows are multiplied by this before the softmax over tokens
    sigma: float = 0.5  # σ of the 3x3x3 smoothing of each key token's [F, h, w] map (0 = none)
    smoothing: str = "official"  # official: exp(-(d/2σ)²), reflect borders | textbook: exp(-d²/2σ²), replicate (ours)
    objective: str = "hinge"  # hinge: max_i relu(1 - A_i) (public code) | min: -min_i A_i (paper)
    lr: float = 1e-4  # Adam step size at step 0; scaled by sqrt(linspace(1, 0.5, steps))[i]
    adam_eps: float = 1e-7  # Adam's epsilon (public code)
    schedule: str = "absolute"  # absolute: update_until and iterative_steps (public code) | fraction: fraction and iterative_at (ours)
    update_until: int = 25  # absolute schedule: update the latent at steps i < update_until (public code: 25)
    iterative_steps: list[int] = field(default_factory=lambda: [0, 10, 20])  # absolute schedule: refinement steps
    fraction: float = 0.5  # fraction schedule: update the latent at steps i < fraction * steps
    iterative_at: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4])  # fraction schedule: refinement steps as fractions
    thresholds: list[float] = field(default_factory=lambda: [0.95, 0.5, 0.2])  # no (further) update there once loss < this
    threshold: float = 0.2  # other update steps: no update once the loss is below this (public code)
    max_iterations: int = 10  # iterations at most at a refinement step (other update steps: 1)
    latent: str = "float32"  # float32: a float32 master latent across the loop (ours) | model: the model's dtype, Adam in place (public code)
    checkpoint: bool = True  # gradient pass recomputes UNet layers in backward: same gradient, a fraction of the memory
    checkpoint_levels: Optional[int] = None  # checkpoint only the layers of this many finest resolutions (None: all)
    # DiTs (Wan; vico/dit.py): unit b = block b's cross-attention, then the same-position slices of the next blocks'
    # self-attention (ours: no public code runs Vico on a DiT)
    dit_temporal: int = 2  # temporal slices chained after each cross-attention (a UNet unit has two temporal layers)
    dit_blocks: list[int] = field(default_factory=list)  # blocks whose cross-attention counts (empty: every block)
    dit_slice: str = "raw"  # raw: the full softmax's same-position probabilities | normalised: each row rescaled over frames
    dit_pool: int = 2  # graph full on a DiT: tokens pooled in dit_pool x dit_pool cells per frame (1: every token)


def check(section: VicoConfig) -> None:
    """One ConfigError line for the first bad ``vico.*`` value."""
    choice("vico.select", section.select, ("official", "nouns"))
    choice("vico.smoothing", section.smoothing, ("official", "textbook"))
    choice("vico.graph", section.graph, ("default", "full"))
    choice("vico.flow", section.flow, ("soft", "hard", "rollout"))
    choice("vico.objective", section.objective, ("hinge", "min"))
    choice("vico.order", section.order, ("official", "sequential"))
    choice("vico.units", section.units, ("official", "outer"))
    choice("vico.schedule", section.schedule, ("absolute", "fraction"))
    choice("vico.latent", section.latent, ("float32", "model"))
    choice("vico.dit_slice", section.dit_slice, ("raw", "normalised"))
    at_least("vico.dit_temporal", section.dit_temporal, 0)
    at_least("vico.dit_pool", section.dit_pool, 1)
    if any(int(b) != b or b < 0 for b in section.dit_blocks):
        raise ConfigError(f"config key 'vico.dit_blocks' holds block indices >= 0, got {list(section.dit_blocks)}")
    at_least("vico.update_until", section.update_until, 0)
    above("vico.tau", section.tau, 0)
    above("vico.adam_eps", section.adam_eps, 0)
    at_least("vico.sigma", section.sigma, 0)
    at_least("vico.lr", section.lr, 0)
    at_least("vico.max_iterations", section.max_iterations, 1)
    if section.checkpoint_levels is not None:
        at_least("vico.checkpoint_levels", section.checkpoint_levels, 1)
    if not 0.0 <= section.fraction <= 1.0:
        raise ConfigError(f"config key 'vico.fraction' must be in [0, 1], got {section.fraction}")
    if any(not 0.0 <= f < 1.0 for f in section.iterative_at):
        raise ConfigError(f"config key 'vico.iterative_at' holds fractions in [0, 1), got {list(section.iterative_at)}")
    if any(int(i) != i or i < 0 for i in section.iterative_steps):
        raise ConfigError(f"config key 'vico.iterative_steps' holds step indices >= 0, got {list(section.iterative_steps)}")
    steps = section.iterative_steps if section.schedule == "absolute" else section.iterative_at
    key = "vico.iterative_steps" if section.schedule == "absolute" else "vico.iterative_at"
    if len(section.thresholds) != len(steps):
        raise ConfigError(
            f"config keys {key} and vico.thresholds need one threshold per step, "
            f"got {len(steps)} steps and {len(section.thresholds)} thresholds"
        )
