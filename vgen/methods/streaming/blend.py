"""StreamingT2V stage 3: randomized-blending refinement of a whole video (SPEC §4).

A long video is too long for one call of a video model, and chunks refined independently disagree where
they meet. At every denoising step the video is cut into chunks of `chunk` frames that overlap by (at
least) `overlap` frames; each chunk gets its own guided noise prediction and scheduler step, and for each
overlap a threshold f_thr is drawn uniformly from {0..L} (L = the overlap's length): the first f_thr
overlap frames keep the previous chunk's result, the rest take the new chunk's. Because the seam moves
at random from step to step, no fixed seam survives the denoising. The noise is one tensor for the whole
video (the SDEdit start noise and every stochastic step's noise), so overlapping frames of two chunks see
the same noise.

Latents are [B, C, N, h, w] throughout.
"""

from __future__ import annotations

import copy
import inspect
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch

from vgen.core.noise import iid_noise
from vgen.core.progress import progress_bar
from vgen.core.prompts import PromptEmbeds
from vgen.core.sampler import guided_noise, strength_timesteps
from vgen.core.schedulers import prepare_scheduler, step_kwargs
from vgen.errors import ConfigError
from vgen.models import Components

Threshold = Union[None, int, Callable[[int], int]]  # None: uniform draw; int: fixed; callable: overlap length -> f_thr


def chunk_spans(frames: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk: stride chunk - overlap from frame 0, the last chunk aligned to the end.

    A video of at most `chunk` frames is one chunk. The last overlap may be longer than `overlap` (the last
    chunk is moved back so that it ends on the last frame and still has `chunk` frames).
    """
    if frames < 1:
        raise ValueError(f"a video needs at least one frame, got {frames}")
    if not 0 <= overlap < chunk:
        raise ValueError(f"need 0 <= overlap < chunk, got overlap={overlap}, chunk={chunk}")
    if frames <= chunk:
        return [(0, frames)]
    starts = list(range(0, frames - chunk, chunk - overlap)) + [frames - chunk]
    return [(start, start + chunk) for start in starts]


def draw_threshold(length: int, f_thr: Threshold, generator: Optional[torch.Generator]) -> int:
    """f_thr for one overlap of `length` frames: uniform in {0..length}, or the fixed/given rule, clamped."""
    if f_thr is None:
        device = generator.device if generator is not None else "cpu"
        value = int(torch.randint(0, length + 1, (1,), generator=generator, device=device))
    else:
        value = int(f_thr(length) if callable(f_thr) else f_thr)
    return min(max(value, 0), length)


class SharedNoise:
    """One N(0, I) tensor per denoising step for the whole video; a chunk's step gets its frames of it.

    It is drawn lazily, by the first chunk step that asks for noise, with exactly the call diffusers makes
    (`randn_tensor` of the video's shape), so a video that is one chunk gets the plain sampler's noise.
    Schedulers that draw through `randn_tensor` ask only when their step is stochastic; those that take
    `variance_noise` are given it at every step, used or not (DDIM with eta = 0 ignores it).
    """

    def __init__(self, frames: int, generator: Optional[torch.Generator]):
        self.frames, self.generator = frames, generator
        self.span = (0, frames)
        self._video: Optional[torch.Tensor] = None

    def next_step(self) -> None:
        self._video = None

    def for_chunk(self, shape: Sequence[int], device: Any, dtype: torch.dtype) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        start, stop = self.span
        if self._video is None:
            full = (*shape[:2], self.frames, *shape[3:])
            self._video = randn_tensor(full, generator=self.generator, device=device, dtype=dtype)
        piece = self._video[:, :, start:stop]
        if tuple(piece.shape) != tuple(shape):
            raise RuntimeError(f"scheduler asked for step noise of shape {tuple(shape)}, chunk is {tuple(piece.shape)}")
        return piece


def _takes_variance_noise(scheduler: Any) -> bool:
    return "variance_noise" in inspect.signature(scheduler.step).parameters


@contextmanager
def serve_shared_noise(scheduler: Any, noise: SharedNoise) -> Iterator[None]:
    """Make a scheduler whose step has no `variance_noise` argument draw its step noise from `noise`.

    DDPMScheduler and EulerAncestralDiscreteScheduler (and EulerDiscreteScheduler with s_churn > 0) draw
    their step noise through their module's `randn_tensor`; for the duration of the loop that name serves
    the chunk's frames of the shared tensor instead. Schedulers that take `variance_noise` are given it
    directly (see `_step_chunk`) and need nothing here.
    """
    module = sys.modules.get(type(scheduler).__module__)
    if _takes_variance_noise(scheduler) or module is None or not hasattr(module, "randn_tensor"):
        yield
        return
    original = module.randn_tensor

    def served(shape, generator=None, device=None, dtype=None, layout=None):
        return noise.for_chunk(shape, device, dtype)

    module.randn_tensor = served
    try:
        yield
    finally:
        module.randn_tensor = original


def _step_chunk(
    components: Components,
    scheduler: Any,
    latents: torch.Tensor,
    t: torch.Tensor,
    prompt: PromptEmbeds,
    guidance: float,
    extra: dict,
    noise: SharedNoise,
) -> torch.Tensor:
    """One guided prediction and one scheduler step of one chunk's latents."""
    eps = guided_noise(components, scheduler, latents, t, prompt, guidance)
    if _takes_variance_noise(scheduler):
        extra = {k: v for k, v in extra.items() if k != "generator"}  # DDIM refuses both at once
        extra["variance_noise"] = noise.for_chunk(eps.shape, eps.device, eps.dtype)
    return scheduler.step(eps, t, latents, **extra).prev_sample


@torch.no_grad()
def blend_denoise(
    components: Components,
    scheduler: Any,
    latents: torch.Tensor,
    prompt: PromptEmbeds,
    guidance: float,
    timesteps: Optional[Sequence] = None,
    *,
    chunk: int = 24,
    overlap: int = 8,
    generator: Optional[torch.Generator] = None,
    eta: float = 0.0,
    f_thr: Threshold = None,
    progress: Optional[bool] = None,
) -> torch.Tensor:
    """Denoise latents [B, C, N, h, w] (already noised to timesteps[0]) chunk by chunk with randomized blending.

    `scheduler` has its timesteps set (and, for SDEdit, its begin index, see `strength_timesteps`); every
    chunk steps its own copy of it, so multistep schedulers (DPM++, UniPC, PNDM) keep one history per
    chunk. Overlapping frames of two chunks get the same step noise, one video-wide tensor per step:
    DDIM (eta > 0) and DPM++ SDE take it as `variance_noise`; DDPM and Euler-ancestral draw it through
    `randn_tensor`, which `serve_shared_noise` redirects; Euler, DPM++ 2M, UniPC and PNDM draw none.
    With one chunk (N <= chunk) this is exactly `core.sampler.denoise`.

    f_thr: None draws each overlap's threshold uniformly from {0..L} with `generator`; an int or a
    callable (L -> int) fixes it (tests: 0 = always the new chunk, L = always the previous one).
    """
    steps = list(scheduler.timesteps if timesteps is None else timesteps)
    frames = latents.shape[2]
    spans = chunk_spans(frames, chunk, overlap)
    schedulers = [copy.deepcopy(scheduler) for _ in spans]
    extra = step_kwargs(scheduler, generator, eta)
    noise = SharedNoise(frames, generator)
    with (
        components.placed(components.unet),
        serve_shared_noise(scheduler, noise),
        progress_bar(len(steps) * len(spans), "refining", progress) as advance,
    ):
        for t in steps:
            noise.next_step()
            blended = latents.clone()
            covered = 0  # frames [0, covered) of `blended` hold this step's result so far
            for span, chunk_scheduler in zip(spans, schedulers):
                start, stop = noise.span = span
                out = _step_chunk(
                    components, chunk_scheduler, latents[:, :, start:stop], t, prompt, guidance, extra, noise
                )
                keep = draw_threshold(covered - start, f_thr, generator) if covered > start else 0
                blended[:, :, start + keep : stop] = out[:, :, keep:]
                covered = stop
                advance(1)
            latents = blended
    return latents


@dataclass
class RefineSettings:
    """The knobs of one refinement (StreamingT2V: SDEdit to T' = 600 of 1000, chunks of 24 overlapping by 8)."""

    strength: float = 0.6
    steps: int = 25
    scheduler: str = "ddim"
    guidance: float = 7.5
    chunk: int = 24
    overlap: int = 8
    eta: float = 0.0

    @classmethod
    def from_job(cls, job: Any) -> "RefineSettings":
        """From a JobConfig: the streaming.refine_* keys, the rest from the sampler section."""
        s, r = job.sampler, job.streaming
        return cls(
            strength=r.refine_strength,
            steps=r.refine_steps or s.steps,
            scheduler=s.scheduler,
            guidance=s.guidance,
            chunk=r.refine_chunk,
            overlap=r.refine_overlap,
            eta=s.eta,
        )


def refine_latents(
    components: Components,
    latents: torch.Tensor,
    prompt: PromptEmbeds,
    settings: RefineSettings,
    generator: torch.Generator,
    *,
    f_thr: Threshold = None,
    progress: Optional[bool] = None,
) -> torch.Tensor:
    """SDEdit of clean latents [B, C, N, h, w]: one video-wide noise to the start timestep, then blend_denoise."""
    if not 0 <= settings.overlap < settings.chunk:
        raise ConfigError(f"refinement overlap ({settings.overlap}) must be >= 0 and smaller than the chunk ({settings.chunk})")
    scheduler = prepare_scheduler(settings.scheduler, components.scheduler, settings.steps, components.device,
                                  components.family)
    timesteps = strength_timesteps(scheduler, settings.strength)
    noise = iid_noise(latents.shape, generator, components.device, latents.dtype)
    noisy = scheduler.add_noise(latents, noise, timesteps[0].reshape(1))
    return blend_denoise(
        components, scheduler, noisy, prompt, settings.guidance, timesteps,
        chunk=settings.chunk, overlap=settings.overlap, generator=generator, eta=settings.eta,
        f_thr=f_thr, progress=progress,
    )
