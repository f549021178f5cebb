"""StreamingT2V's config section (`streaming.*`), torch-free: vgen.config imports it into JobConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vgen.config_io import at_least, choice
from vgen.errors import ConfigError

STREAMING_MODES = ("auto", "trained", "training-free", "independent")


@dataclass
class StreamingConfig:
    """StreamingT2V (method streaming): long videos chunk by chunk with short- (CAM) and long-term (APM) memory.

    Lengths are in video frames. On a model whose latent frames hold several frames (Wan's causal VAE: the first
    latent 1 frame, each later one 4) the chunks are cut in latent time and every length is converted by the
    model's frame rule (chunk 17 -> 5 latent frames, cond_frames 4 -> 1, refine_chunk 24 -> 6, refine_overlap 8 -> 2).
    """

    mode: str = "auto"  # auto: trained CAM+APM if the model ships them, else training-free | trained | training-free | independent
    chunk: int = 16  # frames denoised per chunk (F); on a latent-time model (Wan) the model's trained_frames unless set
    cond_frames: int = 8  # frames of the previous chunk a new chunk is conditioned on and re-covers (F_cond)
    anchor_guidance: Optional[float] = None  # ω_anchor; None = sampler.guidance (then ordinary two-pass CFG)
    dc_lock: bool = True  # training-free: new frames keep the last known frame's per-channel latent mean every step (false: plain inpainting)
    trained_dc_lock: bool = False  # trained (ours; false = the paper): the chunk's per-channel latent mean follows the previous chunk's overlap
    trained_inpaint: bool = False  # trained (ours; false = the paper): the re-covering frames are also held to the previous chunk (the training-free mode's temporal inpainting) while CAM+APM guide
    cam_scale: float = 1.0  # trained: what CAM adds to the UNet is multiplied by this (1 = the paper; as a ControlNet's conditioning scale)
    refine: bool = False  # stage 3: randomized-blending refinement of the whole video
    refine_model: Optional[str] = None  # video model that refines (None = the generating model)
    refine_chunk: int = 24  # frames per refinement chunk
    refine_overlap: int = 8  # frames shared by consecutive refinement chunks
    refine_strength: float = 0.6  # SDEdit noise level T'/T (600 of 1000)
    refine_steps: Optional[int] = None  # None = sampler.steps
    upscale: int = 1  # integer factor frames are resized by before refinement (1 = none)

    def check(self) -> None:
        choice("streaming.mode", self.mode, STREAMING_MODES)
        at_least("streaming.chunk", self.chunk, 2)
        at_least("streaming.cond_frames", self.cond_frames, 1)
        if not self.cond_frames < self.chunk:
            raise ConfigError(
                f"config key 'streaming.cond_frames' ({self.cond_frames}) must be smaller than streaming.chunk ({self.chunk})"
            )
        if self.anchor_guidance is not None:
            at_least("streaming.anchor_guidance", self.anchor_guidance, 0)
        at_least("streaming.cam_scale", self.cam_scale, 0)
        at_least("streaming.refine_overlap", self.refine_overlap, 0)
        if not self.refine_overlap < self.refine_chunk:
            raise ConfigError(
                f"config key 'streaming.refine_overlap' ({self.refine_overlap}) must be smaller than "
                f"streaming.refine_chunk ({self.refine_chunk})"
            )
        if not 0.0 < self.refine_strength <= 1.0:
            raise ConfigError(f"config key 'streaming.refine_strength' must be in (0, 1], got {self.refine_strength}")
        if self.refine_steps is not None:
            at_least("streaming.refine_steps", self.refine_steps, 1)
        at_least("streaming.upscale", self.upscale, 1)
