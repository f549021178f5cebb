"""StreamingT2V in latent time, training-free, for models whose VAE is causal in time (Wan; DIT.md §3).

    chunks      the video's latent is cut into windows of the model's trained length (in latent frames), each
                starting (chunk - overlap) latent frames after the one before, the last one aligned to the end
    memory      chunk k+1's first latent frames re-cover what is already made: after every sampler step they are
                replaced by those clean latents re-noised to the next level with the very noise they were drawn
                from (temporal inpainting, vgen.core.inpaint), so after the last step they are exactly them;
                the noise is one tensor for the whole latent, so overlapping windows share it
    refinement  optional: the paper's randomized blending (blend.py) over latent windows, SDEdit of the whole latent
    decode      the accumulated latent is decoded once through the family's streamed decoder (Wan: latent frame by
                latent frame with its causal feature cache), frames straight into the mp4: no pixel seam can come
                from the VAE, and neither the decoder nor the transformer (one chunk at a time) grows with length

There are no CAM/APM weights for these models: the paper's trained memories stay UNet-only (runner.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from vgen.config import JobConfig
from vgen.core.inpaint import hold_frames
from vgen.core.noise import iid_noise
from vgen.core.prompts import PromptEmbeds, encode_prompt
from vgen.core.sampler import denoise, iter_decoded, latent_dtype, to_uint8
from vgen.core.schedulers import prepare_scheduler
from vgen.errors import ConfigError
from vgen.methods.context import RunContext
from vgen.methods.start import model_frames
from vgen.methods.streaming.blend import RefineSettings, chunk_spans, refine_latents
from vgen.methods.streaming.dc import lock_dc
from vgen.models import Components
from vgen.video import Mp4Writer, WrittenVideo

LATENT_MODES = ("training-free", "independent")
Observer = Callable[[int, int, torch.Tensor], None]  # (chunk index, step index, the chunk's latents after the step)


def latent_span(components: Components, frames: int) -> int:
    """Whole latent frames that `frames` consecutive frames after a first latent frame fill (Wan: frames // 4)."""
    return components.family.latent_frames(components, frames + 1) - 1


def latent_window(components: Components, frames: int) -> int:
    """Latent frames a window of at most `frames` frames holds, counted from a first latent frame (Wan: 17 -> 5,
    16 -> 4, 81 -> 21)."""
    return components.family.latent_frames(components, frames)


@dataclass(frozen=True)
class LatentPlan:
    """How a video is cut in latent time: windows of `chunk` latent frames, consecutive ones sharing `overlap`."""

    latents: int  # latent frames of the whole video
    chunk: int
    overlap: int

    @property
    def spans(self) -> list[tuple[int, int]]:
        return chunk_spans(self.latents, self.chunk, self.overlap)


def chunk_frames(job: JobConfig, trained_frames: Optional[int]) -> int:
    """streaming.chunk as set by the user or the model's settings; left at its default, the model's trained length."""
    from vgen.config import config_sources

    source = config_sources(job).get("streaming.chunk", "default")
    return trained_frames if trained_frames and source in ("default", "method") else job.streaming.chunk


def plan(components: Components, frames: int, chunk: int, cond_frames: int) -> LatentPlan:
    """The latent plan of a video of `frames` frames (after the family's rounding) in chunks of `chunk` frames
    re-covering `cond_frames` frames; one-line errors for windows that hold no whole latent frame."""
    total = components.family.latent_frames(components, components.family.video_frames(components, frames))
    window, overlap = latent_window(components, chunk), latent_span(components, cond_frames)
    if overlap < 1:
        least = next(f for f in range(1, 10_000) if latent_span(components, f) >= 1)
        raise ConfigError(f"streaming.cond_frames={cond_frames} holds no whole latent frame of '{components.name}' "
                          f"({least} frames per latent frame); use {least} or more")
    if overlap >= window:
        raise ConfigError(f"streaming.cond_frames={cond_frames} fills the whole chunk of streaming.chunk={chunk} "
                          f"frames ({window} latent frames) on '{components.name}'; use fewer conditioning frames")
    return LatentPlan(total, window, overlap)


def stream_latents(components: Components, job: JobConfig, prompt: PromptEmbeds, latent_plan: LatentPlan,
                   generator: torch.Generator, height: int, width: int, mode: str = "training-free",
                   progress: Optional[bool] = None, observe: Optional[Observer] = None) -> torch.Tensor:
    """The whole video's clean latent [1, C, T, h, w] (on the CPU, float32), made one window at a time.

    The noise is drawn once for the whole latent, as vanilla draws it, so a video of one window is vanilla's.
    training-free: each window's re-covered latent frames are held to the clean latents already made (with their
    noise), every step; independent (the baseline): each later window starts from fresh noise and holds nothing,
    its re-covering frames are dropped. `observe` sees each window's latents after every step (tests)."""

    s = job.sampler
    family = components.family
    shape = family.latent_shape(components, family.decoded_frames(components, latent_plan.latents), height, width)
    dtype = latent_dtype(components)
    noise = iid_noise(shape, generator, torch.device("cpu"), dtype)
    made = torch.zeros(shape, dtype=torch.float32)
    spans, covered = latent_plan.spans, 0
    for k, (start, stop) in enumerate(spans):
        window = (*shape[:2], stop - start, *shape[3:])
        scheduler = prepare_scheduler(s.scheduler, components.scheduler, s.steps, components.device, family, window)
        held = covered - start
        x = noise[:, :, start:stop]
        if held and mode == "independent":
            x = iid_noise(window, generator, torch.device("cpu"), dtype)
        hold = None
        if held and mode == "training-free":
            steps = list(scheduler.timesteps)
            keep = hold_frames(scheduler, steps, made[:, :, start:covered].to(components.device, dtype),
                               noise[:, :, start:covered].to(components.device), 0)

            def hold(i, t, latents, keep=keep, held=held):
                latents = keep(i, t, latents)
                return lock_dc(latents, latents[:, :, held - 1 : held], held) if job.streaming.dc_lock else latents

        post_step = hold
        if observe is not None:
            def post_step(i, t, latents, hold=hold, k=k):
                latents = hold(i, t, latents) if hold is not None else latents
                observe(k, i, latents)
                return latents

        out = denoise(components, scheduler, (x * getattr(scheduler, "init_noise_sigma", 1.0)).to(components.device),
                      prompt, s.guidance, generator=generator, eta=s.eta, progress=progress,
                      description=f"chunk {k + 1}/{len(spans)}", post_step=post_step, guidance_2=s.guidance_2)
        made[:, :, covered:stop] = out[:, :, held:].float().cpu()
        covered = stop
    return made


def refine_in_latent_time(components: Components, job: JobConfig, latents: torch.Tensor, generator: torch.Generator,
                          progress: Optional[bool] = None) -> tuple[torch.Tensor, dict]:
    """Stage 3 on the whole latent: randomized-blending SDEdit over latent windows (refine_chunk and refine_overlap
    converted by the family's frame rule), on the same model."""
    cfg = job.streaming
    if cfg.upscale > 1 or cfg.refine_model:
        key = "streaming.upscale" if cfg.upscale > 1 else "streaming.refine_model"
        raise ConfigError(f"{key} refines through pixels, which '{components.name}' cannot: its causal VAE makes latent "
                          f"windows that are not frames; refine on the same model at upscale 1")
    settings = RefineSettings.from_job(job)
    settings.chunk = latent_window(components, cfg.refine_chunk)
    settings.overlap = latent_span(components, cfg.refine_overlap)
    if not 0 <= settings.overlap < settings.chunk:
        raise ConfigError(f"streaming.refine_overlap={cfg.refine_overlap} fills the whole refinement window of "
                          f"streaming.refine_chunk={cfg.refine_chunk} frames ({settings.chunk} latent frames)")
    prompt = encode_prompt(components, job.prompt, job.negative, settings.guidance)
    out = refine_latents(components, latents.to(components.device), prompt, settings, generator, progress=progress)
    info = {"strength": settings.strength, "steps": settings.steps, "chunk_latents": settings.chunk,
            "overlap_latents": settings.overlap, "windows": len(chunk_spans(latents.shape[2], settings.chunk, settings.overlap))}
    return out.float().cpu(), info


def frame_layout(components: Components, latent_plan: LatentPlan) -> dict:
    """Where the chunks' new frames begin, in frames: the first boundary after `chunk` frames, then every `stride`
    (vgen.eval.seams.Layout; the last window, aligned to the end, adds its new frames at the same stride)."""
    decoded = lambda n: components.family.decoded_frames(components, n)  # noqa: E731
    first, step = latent_plan.chunk, latent_plan.chunk - latent_plan.overlap
    return {"chunk": decoded(first), "stride": decoded(first + step) - decoded(first)}


def write_once(components: Components, latents: torch.Tensor, path, fps: int, decode_chunk: int,
               generator: Optional[torch.Generator] = None) -> int:
    """The whole latent decoded once by the family's streamed decoder, frames straight into the mp4."""
    with Mp4Writer(path, fps) as writer:
        for piece in iter_decoded(components, latents, decode_chunk, generator):
            writer.write(to_uint8(piece))
    return writer.frames_written


def run_latent(job: JobConfig, components: Components, ctx: RunContext, mode: str,
               trained_frames: Optional[int]) -> WrittenVideo:
    """The streaming runner on a latent-time family (runner.run dispatches here)."""
    cfg, s = job.streaming, job.sampler
    family = components.family
    frames = model_frames(job, components, ctx)
    chunk = chunk_frames(job, trained_frames)
    latent_plan = plan(components, frames, chunk, cfg.cond_frames)
    spans = latent_plan.spans
    ctx.log(f"streaming: {mode} in latent time, {len(spans)} chunk(s) of {latent_plan.chunk} latent frames "
            f"({family.decoded_frames(components, latent_plan.chunk)} frames), overlap {latent_plan.overlap}")
    prompt = encode_prompt(components, job.prompt, job.negative, s.guidance)
    latents = stream_latents(components, job, prompt, latent_plan, ctx.generator, ctx.height, ctx.width, mode,
                             ctx.progress)
    refine = None
    if cfg.refine:
        latents, refine = refine_in_latent_time(components, job, latents, ctx.generator, ctx.progress)
    written = write_once(components, latents, ctx.mp4_path, job.video.fps, job.memory.decode_chunk, ctx.generator)
    metadata = {
        "mode": mode,
        "mode_asked": cfg.mode,
        "latent_time": True,
        "chunks": len(spans),
        "chunk": chunk,
        "chunk_latents": latent_plan.chunk,
        "cond_frames": cfg.cond_frames,
        "overlap_latents": latent_plan.overlap,
        "spans": [list(span) for span in spans],
        "layout": frame_layout(components, latent_plan),
        "latent_frames": latent_plan.latents,
        "frames_generated": written,
        "guidance": {"text": s.guidance, "anchor": None},
        "eta": s.eta,
        "dc_lock": cfg.dc_lock if mode == "training-free" else None,
        "decode": "once, streamed by the family's decoder",
        "refine": refine,
    }
    return WrittenVideo(ctx.mp4_path, written, (ctx.height, ctx.width), job.video.fps, metadata)
