"""When Vico updates the latent and with which step size: the public code's absolute schedule (steps < 25,
refinements at 0, 10, 20) or ours scaled to the step count."""

from __future__ import annotations

import torch

from vgen.methods.vico.config import VicoConfig


def lr_schedule(lr: float, steps: int) -> list[float]:
    """lr * sqrt(linspace(1, 0.5, steps)): smaller steps as the latent gets cleaner."""
    return (lr * torch.linspace(1.0, 0.5, steps, dtype=torch.float64).sqrt()).tolist()


def iterative_steps(cfg: VicoConfig, steps: int) -> list[int]:
    """The steps with iterative refinement. schedule absolute (public code): vico.iterative_steps as given
    (0, 10, 20: with 20 steps the refinements are at 0 and 10). schedule fraction (ours): vico.iterative_at
    scaled to the step count (0, 0.2, 0.4 -> 0, 10, 20 of 50; 0, 2, 4 of 10), so none vanishes."""
    if cfg.schedule == "absolute":
        return [int(i) for i in cfg.iterative_steps]
    return [min(int(round(f * steps)), steps - 1) for f in cfg.iterative_at]


def updates_at(cfg: VicoConfig, i: int, steps: int) -> bool:
    """Whether step i may update the latent: i < vico.update_until (absolute, public code: every step of
    a run of 25 steps or fewer) or i < vico.fraction * steps (fraction, ours)."""
    return i < cfg.update_until if cfg.schedule == "absolute" else i < cfg.fraction * steps


def update_plan(cfg: VicoConfig, steps: int) -> dict[int, tuple[int, float]]:
    """step -> (max iterations, loss threshold) for the steps that may update the latent: refinement steps
    (vico.max_iterations, their own threshold), other update steps (one iteration, vico.threshold)."""
    iterative = dict(zip(iterative_steps(cfg, steps), cfg.thresholds))
    plan = {}
    for i in range(steps):
        if updates_at(cfg, i, steps):
            plan[i] = (cfg.max_iterations, float(iterative[i])) if i in iterative else (1, float(cfg.threshold))
    return plan
