"""Sizes a run cannot manage, known from the model's config files before any weights load.

Two checks for `vgen generate` (vgen.jobs): a warning when a method that denoises all frames at once is asked
for more frames than the model was made for, and a refusal when the estimated peak memory of the run is far
beyond the memory it would run in. The estimate is a pure function of shapes (`estimate_peak`), tested
against measured peaks (docs/sizes.md, scripts/measure_peak_memory.py). Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from vgen.config import JobConfig

REFUSE_FACTOR = 2.0  # refuse only when the estimate is this many times the memory (it is within ~±35% measured)

# Frames a model was made for (trained on), where its files do not say. A model folder says it in its
# vgen.yaml (`trained_frames: N`); a new family can add its hub ids here or give its folders a vgen.yaml.
KNOWN_TRAINED_FRAMES = {
    "cerspense/zeroscope_v2_576w": 24,
    "cerspense/zeroscope_v2_XL": 24,
    "ali-vilab/text-to-video-ms-1.7b": 16,
    "damo-vilab/text-to-video-ms-1.7b": 16,
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": 81,  # Wan 2.1 / 2.2 T2V: 81-frame clips (WanPipeline's default num_frames)
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": 81,
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": 81,
}
KIND_TRAINED_FRAMES = {"motion": 16}  # every published AnimateDiff motion module was trained on 16-frame clips


@dataclass(frozen=True)
class ModelShape:
    """What the size checks need to know about a model, read from its config files (no weights)."""

    kind: str  # unet3d | motion | unet2d
    latent_channels: int
    vae_factor: int  # pixels per latent pixel
    native: tuple[int, int]  # (height, width) in pixels
    unet_channels: tuple[int, ...]  # the UNet's block_out_channels
    layers_per_block: int
    vae_channels: tuple[int, ...]  # the VAE's block_out_channels (its decoder runs them in reverse)
    weight_bytes: int = 0  # the weight files' size (0: unknown)
    first_temporal: int = 0  # inner width of a temporal transformer on the first level's full latent (UNet3D's
    #                          transformer_in: 8 heads x attention_head_dim); 0: none
    trained_frames: Optional[int] = None  # frames the model was made for
    max_frames: Optional[int] = None  # frames its temporal position embedding holds (AnimateDiff's motion_max_seq_length)


def _tiny(kind: str, params: int, max_frames: Optional[int] = None) -> ModelShape:
    return ModelShape(kind, 4, 2, (32, 32), (32, 64), 1, (16, 32), params * 4, 64 if kind == "unet3d" else 0,
                      KIND_TRAINED_FRAMES.get(kind), max_frames)


# The models vgen.tiny builds in memory (tests check this table against the built models). Random weights:
# "made for" is the layout's, ZeroScope's 24 frames for zeroscope-quarter.
BUILTIN_SHAPES = {
    "tiny-random-unet3d": _tiny("unet3d", 1_533_861),
    "tiny-random-motion": _tiny("motion", 1_433_349, max_frames=32),
    "tiny-random-unet2d": _tiny("unet2d", 997_925),
    "zeroscope-quarter": ModelShape("unet3d", 4, 8, (320, 512), (80, 160, 320, 320), 2, (32, 64, 128, 128),
                                    95_405_467 * 4, first_temporal=128, trained_frames=24),
}


def _shape_from_configs(kind: str, unet: dict, vae: dict, weight_bytes: int = 0,
                        trained_frames: Optional[int] = None, max_frames: Optional[int] = None) -> ModelShape:
    size = unet["sample_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    layers = unet.get("layers_per_block", 2)
    head_dim = unet.get("attention_head_dim") or 64
    head_dim = head_dim if isinstance(head_dim, int) else head_dim[0]
    return ModelShape(
        kind=kind,
        latent_channels=unet.get("in_channels", 4),
        vae_factor=factor,
        native=(h * factor, w * factor),
        unet_channels=tuple(unet["block_out_channels"]),
        layers_per_block=layers if isinstance(layers, int) else max(layers),
        vae_channels=tuple(vae["block_out_channels"]),
        weight_bytes=weight_bytes,
        first_temporal=8 * head_dim if unet.get("_class_name") == "UNet3DConditionModel" else 0,
        trained_frames=trained_frames if trained_frames is not None else KIND_TRAINED_FRAMES.get(kind),
        max_frames=max_frames,
    )


def settings_trained_frames(model_id: str) -> Optional[int]:
    """`trained_frames: N` at the top of a model folder's vgen.yaml (beside its per-method sections)."""
    from vgen.config import load_yaml
    from vgen.errors import ConfigError
    from vgen.model_settings import settings_path

    path = settings_path(model_id)
    if path is None:
        return None
    value = load_yaml(path).get("trained_frames")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"'{path}' sets trained_frames to {value!r}; it must be a whole number >= 1")
    return value


def trained_frames_of(model_id: str) -> Optional[int]:
    """The frames a model was made for: its folder's vgen.yaml fact, else the known hub ids' (None: unknown)."""
    return settings_trained_frames(model_id) or KNOWN_TRAINED_FRAMES.get(model_id)


def _folder_weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for part in ("unet", "vae", "text_encoder") for p in (folder / part).glob("*")
               if p.suffix in (".safetensors", ".bin"))


def folder_shape(folder: Path, kind: str, model_id: str) -> Optional[ModelShape]:
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return _shape_from_configs(kind, unet, vae, _folder_weight_bytes(folder), settings_trained_frames(model_id),
                               unet.get("motion_max_seq_length"))


def model_shape(job: JobConfig) -> Optional[ModelShape]:
    """The job's model's shape from its config files (in-memory built-ins from BUILTIN_SHAPES); None when
    they cannot be read without loading it: then the checks are skipped and the load says what is wrong."""
    from vgen.errors import VgenError
    from vgen.model_settings import folder_info, local_folder

    model_id = job.model.id
    if model_id in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[model_id]
    folder = local_folder(model_id)
    try:
        if folder is not None:
            kind = "motion" if job.model.motion_adapter else folder_info(folder)[0]
            return folder_shape(folder, kind, model_id)
        # a hub id: its config files when cached (or reachable); never the weights
        from vgen.models import detect_kind, read_json

        kind = detect_kind(model_id, job.model)
        unet = read_json(model_id, "unet/config.json", job.model.revision)
        vae = read_json(model_id, "vae/config.json", job.model.revision)
        adapter = read_json(job.model.motion_adapter, "config.json") if job.model.motion_adapter else None
    except (VgenError, OSError, ValueError, KeyError):
        return None
    if unet is None or vae is None:
        return None
    max_frames = (adapter or unet).get("motion_max_seq_length")
    return _shape_from_configs(kind, unet, vae, 0, KNOWN_TRAINED_FRAMES.get(model_id), max_frames)


def frames_at_once(job: JobConfig) -> int:
    """Frames one UNet call denoises together: the whole video, except where a method works in chunks."""
    if job.method == "streaming":
        return max(job.streaming.chunk, job.streaming.refine_chunk if job.streaming.refine else 0)
    if job.method == "zs2" and job.zs2.frame_chunk:
        return min(job.zs2.frame_chunk, job.video.frames)
    return job.video.frames


def frames_warning(job: JobConfig, shape: ModelShape) -> str:
    """A warning line when a method that denoises every frame at once asks for more than the model was made for."""
    if job.method == "streaming" or shape.kind == "unet2d" or shape.trained_frames is None:
        return ""
    frames = job.video.frames
    if frames <= shape.trained_frames:
        return ""
    return (f"warning: {frames} frames denoised at once, but '{job.model.id}' was made for {shape.trained_frames}; "
            f"every frame attends to every other, so quality drops and time and memory grow with the length "
            f"(for long videos use --method streaming)")


def frames_limit_error(job: JobConfig, shape: ModelShape) -> str:
    """The frames a model's temporal position embedding cannot hold (AnimateDiff: motion_max_seq_length)."""
    at_once = frames_at_once(job)
    if shape.max_frames is None or at_once <= shape.max_frames:
        return ""
    limit = f"more than '{job.model.id}' can position at once ({shape.max_frames}, its motion_max_seq_length)"
    if job.method == "streaming":
        return f"streaming.chunk/refine_chunk: {at_once} frames per chunk is {limit}; use smaller chunks"
    return f"video.frames={at_once} is {limit}; use --method streaming for longer videos"


@dataclass(frozen=True)
class PeakEstimate:
    """Bytes at the run's peak, by what holds them."""

    weights: int
    unet: int  # activations of one guided UNet call over the frames denoised at once
    decode: int  # one VAE decode chunk's activations, beside the frames decoded so far
    frames: int  # the decoded video as float32, and its copies while it becomes uint8
    latents: int

    @property
    def total(self) -> int:
        return self.weights + self.latents + max(self.unet, self.decode, self.frames)


FF_WIDTHS = 20  # live tensors, in units of a transformer's width D, while its GEGLU feed-forward runs (below)


def estimate_peak(shape: ModelShape, frames: int, height: int, width: int, *, guided: bool = True,
                  dtype_bytes: int = 4, decode_chunk: int = 8, video_frames: Optional[int] = None) -> PeakEstimate:
    """Peak memory of sampling `frames` at once at height x width (pure: shapes in, bytes out).

    Where the peak is was found by polling RSS against the module running (docs/sizes.md); attention adds
    nothing quadratic (torch's scaled_dot_product_attention runs flash / memory-efficient kernels on CPU and CUDA).
    - UNet: a transformer's GEGLU feed-forward on the finest latent. Per token of width D, live at once: the
      block's input and its norm (2D), the attention output added to it (D), the 8D projection, the 4D GELU of its
      gate and the 4D product (20D with the caller's copy), beside the transformer's own residual. On UNet3D the
      widest is transformer_in (D = 8 x attention_head_dim, on conv_in's output C0); elsewhere D = C0, beside
      the down path's skip connections.
    - VAE: the decoder's last up block at full size, one decode chunk: its input (the upsampled v1 channels),
      that input's group norm and its SiLU (3 v1 per pixel), beside the float32 frames decoded so far.
    - Frames: the float32 video held three times while it becomes uint8.
    """
    video_frames = frames if video_frames is None else video_frames
    batch = 2 if guided else 1
    h, w = height // shape.vae_factor, width // shape.vae_factor
    chans = shape.unet_channels
    skips = 0  # per finest-latent token: the down path's outputs, held until the up path takes them
    for level, c in enumerate(chans):
        here = shape.layers_per_block * c + (chans[level - 1] if level else chans[0])  # resnet outputs + input
        skips += here * ((h >> level) * (w >> level)) / (h * w)
    per_token = max(chans[0] + FF_WIDTHS * shape.first_temporal, FF_WIDTHS * chans[0] + skips)
    unet = int(batch * frames * h * w * per_token * dtype_bytes)
    n = min(decode_chunk, video_frames)
    v1 = shape.vae_channels[1] if len(shape.vae_channels) > 1 else shape.vae_channels[0]
    frame_bytes = video_frames * height * width * 3 * 4
    latents = 4 * frames * shape.latent_channels * h * w * 4
    return PeakEstimate(
        weights=shape.weight_bytes,
        unet=unet,
        decode=n * height * width * 3 * v1 * dtype_bytes + frame_bytes,
        frames=3 * frame_bytes,
        latents=latents,
    )


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def memory_refusal(estimate: int, available: int, where: str) -> str:
    """The one-line refusal, or '' when the estimate is within REFUSE_FACTOR of the memory."""
    if available <= 0 or estimate <= REFUSE_FACTOR * available:
        return ""
    return (f"this run needs about {human(estimate)} at its peak (estimated from the model's shapes), "
            f"{estimate / available:.0f}x the {human(available)} of {where}; use fewer frames, a smaller size, "
            f"--method streaming for long videos, or --force to try anyway")


def dtype_bytes(name: str) -> int:
    return {"float16": 2, "bfloat16": 2}.get(name, 4)


def host_memory() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def job_estimate(job: JobConfig, shape: ModelShape, height: int, width: int, dtype: str) -> PeakEstimate:
    guided = job.sampler.guidance > 1.0
    return estimate_peak(shape, frames_at_once(job), height, width, guided=guided, dtype_bytes=dtype_bytes(dtype),
                         decode_chunk=job.memory.decode_chunk,
                         video_frames=None if job.method != "streaming" else frames_at_once(job))


def size_of(job: JobConfig, shape: ModelShape) -> tuple[int, int]:
    return job.video.height or shape.native[0], job.video.width or shape.native[1]


def check_sizes(job: JobConfig, device: Any, dtype: str, log, force: bool = False) -> None:
    """Warn about frames beyond what the model was made for; refuse (ConfigError) a run whose estimated peak is
    far beyond its memory (the device's, or the host's on a CPU), unless `force`."""
    from vgen.errors import ConfigError

    shape = model_shape(job)
    if shape is None or shape.kind not in ("unet3d", "motion", "unet2d"):
        return
    if message := frames_limit_error(job, shape):
        raise ConfigError(message)
    if not force:
        refuse_beyond_memory(job, shape, device, dtype)
    if message := frames_warning(job, shape):
        log(message)


def refuse_beyond_memory(job: JobConfig, shape: ModelShape, device: Any, dtype: str) -> None:
    from vgen.errors import ConfigError

    height, width = size_of(job, shape)
    estimate = job_estimate(job, shape, height, width, dtype)
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        available, where = torch.cuda.get_device_properties(device).total_memory, f"GPU {torch.cuda.get_device_name(device)}"
        needed = estimate.total - (estimate.weights if job.memory.cpu_offload else 0)
    else:
        available, where, needed = host_memory(), "this machine's memory", estimate.total
    if message := memory_refusal(needed, available, where):
        raise ConfigError(message)
