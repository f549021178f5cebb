"""`vgen refine VIDEO`: StreamingT2V's stage 3 on any video file (the method's part of it).

Read the frames, upscale them (bicubic, integer factor), encode them with the model's VAE a few frames at
a time, refine the latents with randomized blending (blend.py), and decode them a few frames at a time
straight into the mp4, so memory holds the latents of the whole video but the pixels of only a few
frames beyond the input. Loading the model and placing the mp4 with its sidecar is vgen.jobs.refine_file's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from vgen.config import JobConfig, build_job
from vgen.errors import ConfigError, VgenError
from vgen.video import Mp4Writer, Video

MIN_FRAMES = 2
VIDEO_KINDS = ("unet3d", "motion")


def default_output(source: Path, out: Optional[Path] = None) -> Path:
    """--out as given (.mp4 file or folder), else <stem>-refined.mp4 beside the input."""
    name = f"{source.stem}-refined.mp4"
    if out is None:
        return source.with_name(name)
    if out.suffix.lower() == ".mp4":
        return out
    if out.suffix:
        raise VgenError(f"--out '{out}' must be a folder or a .mp4 file")
    return out / name


def prompt_for(source: Path, prompt: Optional[str]) -> str:
    """The --prompt, else the prompt in the video's JSON sidecar (as `vgen generate` writes it)."""
    if prompt is not None:
        return prompt
    from vgen.eval.files import prompt_of

    return prompt_of(source)


def refine_job(source: Path, prompt: Optional[str], flags: dict[str, Any], overrides: Iterable[str] = ()) -> JobConfig:
    """A validated streaming job with refinement on; `flags` are dotted config keys (None = default)."""
    if not source.is_file():
        raise VgenError(f"video file '{source}' not found")
    flags = {"method": "streaming", "streaming.refine": True, "prompt": prompt_for(source, prompt), **flags}
    return build_job(None, flags, list(overrides))


def upscale_frames(frames: np.ndarray, factor: int) -> np.ndarray:
    """uint8 frames [F, H, W, 3] resized by an integer factor (bicubic, rounded and clipped to uint8)."""
    if factor == 1:
        return frames
    import torch

    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    images = torch.nn.functional.interpolate(images, scale_factor=factor, mode="bicubic", align_corners=False)
    return images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def check_frames(video: Video, source: Path) -> None:
    """A single image is not a video: refinement blends along time."""
    if video.num_frames < MIN_FRAMES:
        raise VgenError(f"'{source}' has {video.num_frames} frame; refinement needs a video of at least {MIN_FRAMES} frames")


def check_refinable(components: Any, video: Video, upscale: int, source: Path) -> tuple[int, int]:
    """(height, width) after upscaling; one-line errors for what this model cannot refine."""
    if components.kind not in VIDEO_KINDS:
        raise ConfigError(
            f"refinement needs a video model ({' or '.join(VIDEO_KINDS)}); '{components.name}' is a {components.kind} model"
        )
    height, width = video.size[0] * upscale, video.size[1] * upscale
    factor = components.vae_scale_factor
    if height % factor or width % factor:
        after = f" after --upscale {upscale}" if upscale > 1 else ""
        raise VgenError(
            f"'{source}' is {width}x{height}{after}, not a multiple of {factor} (this model's VAE factor); "
            f"resize the video or choose another --upscale"
        )
    return height, width


def encode_video(components: Any, frames: np.ndarray, upscale: int = 1, chunk: int = 8):
    """uint8 frames [F, H, W, 3] -> latents [1, C, F, h, w], upscaled and encoded `chunk` frames at a time."""
    import torch

    from vgen.core.sampler import encode_frames

    pieces = [encode_frames(components, upscale_frames(frames[i : i + chunk], upscale)) for i in range(0, len(frames), chunk)]
    return torch.cat(pieces, dim=2)


def write_decoded(components: Any, latents, path: Path, fps: int, chunk: int = 8) -> int:
    """Decode latents `chunk` frames at a time straight into an mp4 (atomic); returns the frame count."""
    from vgen.core.sampler import iter_decoded, to_uint8

    with Mp4Writer(path, fps) as writer:
        for frames in iter_decoded(components, latents, chunk):
            writer.write(to_uint8(frames))
    return writer.frames_written


def refine_frames(components: Any, video: Video, job: JobConfig, progress: Optional[bool] = None):
    """The input video's frames (upscaled) encoded and refined: (latents, encode_s, refine_s)."""
    import torch

    from vgen.core.prompts import encode_prompt
    from vgen.methods.streaming.blend import RefineSettings, refine_latents

    settings = RefineSettings.from_job(job)
    t0 = time.perf_counter()
    latents = encode_video(components, video.frames, job.streaming.upscale, job.memory.decode_chunk)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prompt = encode_prompt(components, job.prompt, job.negative, settings.guidance)
    generator = torch.Generator("cpu").manual_seed(job.seed)
    latents = refine_latents(components, latents, prompt, settings, generator, progress=progress)
    return latents, encode_s, time.perf_counter() - t0


def refine_info(job: JobConfig, source: Path, video: Video, frames: int) -> dict:
    """The sidecar's method_info of a refined file."""
    from vgen.methods.streaming.blend import RefineSettings, chunk_spans

    settings = RefineSettings.from_job(job)
    return {
        "source": str(source),
        "source_size": {"height": video.size[0], "width": video.size[1]},
        "upscale": job.streaming.upscale,
        "strength": settings.strength,
        "steps": settings.steps,
        "scheduler": settings.scheduler,
        "chunk": settings.chunk,
        "overlap": settings.overlap,
        "chunks": len(chunk_spans(frames, settings.chunk, settings.overlap)),
    }
