"""I4VGen's config section (the `i4vgen:` keys) and its checks; torch-free, below vgen.config (which imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vgen.config_io import at_least as _at_least, choice as _choice
from vgen.errors import ConfigError

REGEN_HOLDS = ("none", "first", "middle")
CANDIDATE_LAYOUTS = ("frames", "batch")


@dataclass
class I4VGenConfig:
    """I4VGen (method i4vgen): best-of-N anchor image -> NI-VSDS animation -> regeneration.

    Defaults follow the public code (xiefan-guo/i4vgen, AnimateDiff); our variants are named options.
    """

    candidate_model: str = "auto"  # video: the video model on 1-frame videos (official) | image: image_model | auto
    image_model: Optional[str] = None  # unet2d model in the video model's latent space; None = the known companion
    candidates: int = 0  # N anchor images sampled; 0 = one per latent frame: the video length on UNets (official)
    candidate_batch: int = 0  # images per UNet call while sampling candidates (0 = all N at once)
    # the candidates' initial noise: frames = one [1, C, N, h, w] draw, candidate i its frame i (official: the same
    # seed gives the official code's candidates) | batch = one [N, C, 1, h, w] draw (vgen before; other candidates)
    candidate_layout: str = "frames"
    reward: str = "toy"  # toy (graded toy-world detector) | clip (CLIPModel) | imagereward
    reward_model: Optional[str] = None  # clip / imagereward weights: hub id or local folder (None = the usual id)
    image_steps: Optional[int] = None  # anchor sampling steps (None = sampler.steps)
    image_guidance: Optional[float] = None  # anchor guidance (None = sampler.guidance)
    vsds_schedule: str = "sampler"  # sampler: the first int(vsds_fraction*steps)+1 sampler timesteps (official) | linspace
    vsds_fraction: float = 0.6  # p_ni_vsds of the public code (sampler schedule)
    t_start: float = 0.96  # linspace schedule: NI-VSDS runs from t_start*T ...
    t_end: float = 0.4  # ... down to t_end*T (τ)
    iterations: int = 16  # linspace schedule: NI-VSDS updates, evenly spaced from t_start*T to t_end*T
    vsds_guidance: Optional[float] = None  # CFG scale inside NI-VSDS (None = sampler.guidance, official)
    step_size: float = 1.0  # α after the warm-up
    warm_step_size: float = 10.0  # α of the first warm_iterations updates (public AnimateDiff code)
    warm_iterations: int = 3
    t_regen: float = 1.0  # p_re: the regeneration runs the last int(t_regen*steps) sampler steps (1.0: all, official)
    regen_rule: str = "steps"  # steps: as above (official) | T: the sampler timesteps <= t_regen*T (ours)
    regen_hold: str = "none"  # none (official) | first | middle: that frame is held to the anchor image during the
    #                           regeneration (temporal inpainting; ours, the toy carries middle)
    regen_hold_until: float = 0.6  # ... while the next timestep is >= this fraction of T (0: to the last step)
    regen_noise: str = "fresh"  # fresh: new noise for the re-noising (official) | vsds: NI-VSDS's fixed ε (ours)
    save_candidates: bool = True  # write <stem>_anchor.png and <stem>_candidates.png (scores in the grid)

    def check(self) -> None:
        """The section checks itself as the others do (vgen.config.validate calls `check`)."""
        check(self)


def check(section: I4VGenConfig) -> None:
    """Every i4vgen key in range: one ConfigError line naming the key."""
    _choice("i4vgen.candidate_model", section.candidate_model, ("auto", "video", "image"))
    _at_least("i4vgen.candidates", section.candidates, 0)
    _at_least("i4vgen.candidate_batch", section.candidate_batch, 0)
    _choice("i4vgen.candidate_layout", section.candidate_layout, CANDIDATE_LAYOUTS)
    _choice("i4vgen.reward", section.reward, ("toy", "clip", "imagereward"))
    _choice("i4vgen.vsds_schedule", section.vsds_schedule, ("sampler", "linspace"))
    _choice("i4vgen.regen_rule", section.regen_rule, ("T", "steps"))
    _choice("i4vgen.regen_hold", section.regen_hold, REGEN_HOLDS)
    _choice("i4vgen.regen_noise", section.regen_noise, ("fresh", "vsds"))
    if section.image_steps is not None:
        _at_least("i4vgen.image_steps", section.image_steps, 1)
    if section.image_guidance is not None:
        _at_least("i4vgen.image_guidance", section.image_guidance, 0)
    if section.vsds_guidance is not None:
        _at_least("i4vgen.vsds_guidance", section.vsds_guidance, 0)
    if not 0.0 <= section.vsds_fraction <= 1.0:
        raise ConfigError(f"config key 'i4vgen.vsds_fraction' must be in [0, 1], got {section.vsds_fraction}")
    if not 0.0 <= section.t_end <= section.t_start <= 1.0:
        raise ConfigError(
            f"config keys i4vgen.t_end and i4vgen.t_start must satisfy 0 <= t_end <= t_start <= 1, got {section.t_end}, {section.t_start}"
        )
    _at_least("i4vgen.iterations", section.iterations, 0)
    _at_least("i4vgen.step_size", section.step_size, 0)
    _at_least("i4vgen.warm_step_size", section.warm_step_size, 0)
    _at_least("i4vgen.warm_iterations", section.warm_iterations, 0)
    if not 0.0 < section.t_regen <= 1.0:
        raise ConfigError(f"config key 'i4vgen.t_regen' must be in (0, 1], got {section.t_regen}")
    if not 0.0 <= section.regen_hold_until < 1.0:
        raise ConfigError(f"config key 'i4vgen.regen_hold_until' must be in [0, 1), got {section.regen_hold_until}")

