"""StreamingT2V runner (SPEC §4): a long video, chunk by chunk, streamed into the mp4.

    stage 1   chunk 1: F frames from the base model; the anchor is its frame 0
    stage 2   chunk k > 1: F frames conditioned on the last F_cond frames of chunk k-1; its first F_cond
              frames re-cover the conditioning frames and are dropped: total = F + (F - F_cond)·(n - 1)
                trained        CAM (short-term memory) + APM (anchor, long-term memory), guided by
                               ε(∅,∅) + ω_text[ε(τ,∅) - ε(∅,∅)] + ω_anchor[ε(τ,a) - ε(τ,∅)]
                               (ours, off in the paper: trained_inpaint also holds the re-covering frames as
                               training-free does, cam_scale scales what CAM adds, trained_dc_lock the mean)
                training-free  any video model: at every step the first F_cond frames are replaced by the
                               previous chunk's clean latents re-noised to that step (inpainting along
                               time), with the noise they were drawn from shared
                independent    naive chunks (the baseline): same compute, no conditioning
    stage 3   optional: randomized-blending refinement of the whole video (blend.py)

On a model whose VAE is causal in time (Wan) the chunks are cut in latent time and the whole latent is decoded
once (latent.py; training-free and independent only: no CAM/APM weights exist for such models).

Without refinement only one chunk is ever in memory; decoded frames go to the mp4 as they are made.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from vgen.config import JobConfig, ModelConfig
from vgen.core.inpaint import hold_frames, renoised
from vgen.core.noise import iid_noise
from vgen.core.prompts import PromptEmbeds, encode_prompt
from vgen.core.sampler import decode_latents, denoise, latent_shape, to_uint8
from vgen.core.schedulers import prepare_scheduler
from vgen.errors import ConfigError
from vgen.methods.context import RunContext
from vgen.methods.streaming.dc import lock_dc
from vgen.models import Components
from vgen.video import Mp4Writer, WrittenVideo

MODES = ("trained", "training-free", "independent")
SEAM_FLOOR = 2.0  # mode=auto trusts trained memories whose object and background seam ratios are both at most this
MOTION_KEPT_FLOOR = 0.8  # ... and whose later chunks keep this share of the first chunk's motion (seamless by freezing fails)
EVENTS_FLOOR, EVENTS_FACTOR = 0.05, 2.0  # ... and whose seams lose, add or reshape a prompted object at most at
#   max(EVENTS_FLOOR, EVENTS_FACTOR x the rate of such events between frames inside chunks)


def chunk_count(frames: int, chunk: int, cond: int) -> int:
    """Chunks n so that chunk + (chunk - cond)·(n - 1) >= frames."""
    return 1 + max(0, math.ceil((frames - chunk) / (chunk - cond)))


def frames_made(n: int, chunk: int, cond: int) -> int:
    return chunk + (chunk - cond) * (n - 1)


def streaming_weights(components: Components):
    """CAM/APM weights shipped in the model folder (cached on the components), or None."""
    if "streaming" not in components.extras:
        weights = None
        if components.folder is not None and components.kind == "unet3d":
            from vgen.methods.streaming.cam import load_streaming

            weights = load_streaming(components.folder, components.unet, vae=components.vae,
                                     device=components.device, dtype=components.dtype)
        components.extras["streaming"] = weights
    return components.extras["streaming"]


def seam_check(components: Components) -> Optional[dict]:
    """The seam check recorded beside the model's streaming weights, or None."""
    if components.folder is None or streaming_weights(components) is None:
        return None
    from vgen.methods.streaming.cam import load_seam_check

    return load_seam_check(components.folder)


TRAINED_OPTIONS = ("trained_dc_lock", "trained_inpaint", "cam_scale")  # the memory options (also under `settings`)
TRAINED_DEFAULTS = {"trained_dc_lock": False, "trained_inpaint": False, "cam_scale": 1.0}  # the paper's
# Every setting that changes a trained chunk's frames: a seam check vouches for the memories only at its own values
CHECK_SETTINGS = ("sampler.steps", "sampler.guidance", "sampler.eta", "sampler.scheduler", "streaming.chunk",
                  "streaming.cond_frames", "streaming.anchor_guidance", "streaming.trained_dc_lock",
                  "streaming.trained_inpaint", "streaming.cam_scale")


def trained_options(cfg: Any) -> dict[str, Any]:
    """The job's trained-mode memory options (streaming.trained_dc_lock, trained_inpaint, cam_scale)."""
    return {key: getattr(cfg, key) for key in TRAINED_OPTIONS}


def check_settings(job: JobConfig, family: Any = None) -> dict[str, Any]:
    """The job's values of CHECK_SETTINGS, as a seam check records them (anchor_guidance resolved: None is the
    text guidance; sampler.scheduler=auto resolved to the scheduler it runs, the family's default)."""
    from vgen.core.schedulers import resolve_scheduler_name

    s, c = job.sampler, job.streaming
    return {"sampler.steps": int(s.steps), "sampler.guidance": float(s.guidance), "sampler.eta": float(s.eta),
            "sampler.scheduler": resolve_scheduler_name(str(s.scheduler), family), "streaming.chunk": int(c.chunk),
            "streaming.cond_frames": int(c.cond_frames),
            "streaming.anchor_guidance": float(s.guidance if c.anchor_guidance is None else c.anchor_guidance),
            "streaming.trained_dc_lock": bool(c.trained_dc_lock), "streaming.trained_inpaint": bool(c.trained_inpaint),
            "streaming.cam_scale": float(c.cam_scale)}


def check_mismatch(check: Optional[dict], settings: dict[str, Any]) -> list[str]:
    """'key=job value (checked at recorded value)' for every CHECK_SETTINGS key where the job differs from the
    check's recorded `settings`; a key the check did not record differs (it vouches for nothing there)."""
    recorded = (check or {}).get("settings") or {}
    out = []
    for key in CHECK_SETTINGS:
        mine, theirs = settings.get(key), recorded.get(key)
        same = theirs is not None and (mine == theirs if isinstance(mine, (str, bool)) or mine is None
                                       else float(mine) == float(theirs))
        if not same:
            shown = "not recorded" if theirs is None else f"checked at {json.dumps(theirs)}"
            out.append(f"{key}={json.dumps(mine)} ({shown})")
    return out


def memories_trusted(check: Optional[dict], settings: dict[str, Any]) -> bool:
    """Whether a recorded seam check vouches for the trained mode as this job would run it: it passed, and it was
    measured at every one of this job's CHECK_SETTINGS values."""
    return check is not None and check.get("passed") is True and not check_mismatch(check, settings)


def resolve_mode(asked: str, components: Components, settings: Optional[dict[str, Any]] = None) -> str:
    """auto: trained only for shipped memories whose recorded seam check passed at this job's settings
    (check_settings), else training-free."""
    has_weights = streaming_weights(components) is not None
    if asked == "auto":
        return "trained" if has_weights and memories_trusted(seam_check(components), settings or {}) else "training-free"
    if asked == "trained" and not has_weights:
        raise ConfigError(
            f"streaming.mode=trained needs CAM/APM weights in '{components.name}' (a streaming/ folder; train them with "
            "scripts/train_streaming.py); use streaming.mode=training-free for any video model"
        )
    return asked


# ----------------------------------------------------------------------------------------------
# one chunk


@dataclass
class Memory:
    """What chunk k carries over from chunk k-1: the anchor and the last F_cond frames."""

    anchor: torch.Tensor  # [1, 3, H, W] in [-1, 1]: frame 0 of chunk 1
    pixels: Optional[torch.Tensor]  # [1, F_cond, 3, H, W] in [-1, 1]: decoded last frames (trained mode only)
    latents: torch.Tensor  # [1, C, F_cond, h, w]: their clean latents
    noise: torch.Tensor  # [1, C, F_cond, h, w]: the initial noise they were denoised from


def cam_apm_guide(components: Components, scheduler: Any, prompt: PromptEmbeds, w_text: float, w_anchor: float,
                  weights: Any, memory: Memory, cam_scale: float = 1.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The multi-conditional guided noise of a conditioned chunk: three UNet passes when ω_text != ω_anchor,
    two (ordinary CFG between (∅, ∅) and (τ, a)) when they are equal, one without guidance."""
    from vgen.methods.streaming.unet_forward import streaming_unet_forward

    cam, apm = weights.cam, weights.apm
    h, w = memory.anchor.shape[-2:]
    anchor = apm.anchor_tokens(memory.anchor.to(components.device, components.dtype)) if apm is not None else None
    null = apm.null_tokens(1, h, w) if apm is not None else None
    uncond, cond = prompt.uncond, prompt.cond
    if not prompt.guided:
        texts, anchors = [cond], [anchor]
    elif w_text == w_anchor or apm is None:
        texts, anchors = [uncond, cond], [null, anchor]
    else:
        texts, anchors = [uncond, cond, cond], [null, null, anchor]
    text = torch.cat(texts)
    tokens = torch.cat(anchors) if apm is not None else None
    cond_pixels = memory.pixels.to(components.device, components.dtype)

    def guide(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = scheduler.scale_model_input(torch.cat([latents] * len(texts)), t)
        out = streaming_unet_forward(components.unet, x, t, text, cam=cam, cond_pixels=cond_pixels, apm=apm,
                                     anchor_tokens=tokens, cam_scale=cam_scale)
        if len(texts) == 1:
            return out
        if len(texts) == 2:
            e_uu, e_ta = out.chunk(2)
            return e_uu + w_text * (e_ta - e_uu)
        e_uu, e_tu, e_ta = out.chunk(3)
        return e_uu + w_text * (e_tu - e_uu) + w_anchor * (e_ta - e_tu)

    return guide


def renoised_known(scheduler: Any, timesteps: list, memory: Memory, i: int, dtype: torch.dtype) -> torch.Tensor:
    """The previous chunk's clean overlap latents noised (with the noise they were drawn from) to the level
    after step i, or exactly them after the last step."""
    return renoised(scheduler, timesteps, memory.latents.to(dtype), memory.noise.to(dtype), i)


def inpaint_overlap(scheduler: Any, timesteps: list, memory: Memory, cond: int, dc_lock: bool = False):
    """post_step hook of the training-free mode: after step i the first `cond` frames become the previous
    chunk's clean latents noised to the next timestep (its own noise), and exactly them after the last.

    dc_lock (anchor-aware re-noising): the new frames' per-channel spatial mean (the latent's DC, which carries
    the background level and global colour) is then set to that of the last re-noised known frame, so the
    background cannot drift away from the overlap (the flicker at chunk boundaries); the rest is untouched."""

    hold = hold_frames(scheduler, timesteps, memory.latents[:, :, :cond], memory.noise[:, :, :cond], 0)

    def post_step(i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = hold(i, t, latents)
        return lock_dc(latents, latents[:, :, cond - 1 : cond], cond) if dc_lock else latents

    return post_step


def lock_overlap_dc(scheduler: Any, timesteps: list, memory: Memory, cond: int):
    """post_step hook of the trained mode with streaming.trained_dc_lock (ours, not the paper's): only the DC of
    the chunk follows the previous chunk. The re-covering frames get their known frame's re-noised mean, the
    new frames the last known frame's; everything else stays CAM's and APM's work."""

    def post_step(i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        known = renoised_known(scheduler, timesteps, memory, i, latents.dtype)
        new = latents.shape[2] - cond
        target = torch.cat([known, known[:, :, -1:].expand(-1, -1, new, -1, -1)], dim=2)
        return lock_dc(latents.clone(), target, 0)

    return post_step


def to_model_pixels(frames: torch.Tensor) -> torch.Tensor:
    """Decoded frames [F, H, W, 3] in [0, 1] -> [1, F, 3, H, W] in [-1, 1] (what E_cond and APM read)."""
    return (frames * 2 - 1).permute(0, 3, 1, 2).unsqueeze(0)


def anchor_encoder_info(weights: Any) -> Optional[dict]:
    """What APM embeds the anchor with: the toy's 'vae' encoder is a stand-in for the paper's CLIP vision."""
    if weights is None or weights.apm is None:
        return None
    spec = dict(weights.apm.config["encoder"])
    if spec.get("kind") == "vae":
        spec["note"] = "the model's own VAE latent, pooled (a stand-in for the paper's OpenCLIP ViT-H/14 vision)"
    return spec


def passes_per_step(mode: str, guided: bool, w_text: float, w_anchor: float, weights: Any) -> dict:
    """UNet evaluations per denoising step (entries of the CFG batch), first chunk and later chunks."""
    first = 2 if guided else 1
    later = first
    if mode == "trained" and guided and weights is not None and weights.apm is not None and w_text != w_anchor:
        later = 3
    return {"first_chunk": first, "later_chunks": later, "cam_encoder": mode == "trained"}


# ----------------------------------------------------------------------------------------------
# runner


def run(job: JobConfig, components: Components, ctx: RunContext) -> WrittenVideo:
    cfg, s = job.streaming, job.sampler
    if components.family.latent_time:  # a causal video VAE (Wan): chunks in latent time, decoded once (latent.py)
        from vgen.methods.streaming.latent import LATENT_MODES, run_latent
        from vgen.sizes import trained_frames_of

        mode = "training-free" if cfg.mode == "auto" else cfg.mode
        if mode not in LATENT_MODES:
            raise ConfigError(f"streaming.mode={cfg.mode} needs CAM/APM memories, which exist only for UNet video models; "
                              f"no CAM/APM weights exist for {components.family.name} models: use streaming.mode=training-free")
        return run_latent(job, components, ctx, mode, trained_frames_of(job.model.id))
    F, Fc = cfg.chunk, cfg.cond_frames
    settings = check_settings(job, components.family)
    mode = resolve_mode(cfg.mode, components, settings)
    weights = streaming_weights(components) if mode == "trained" else None
    n = chunk_count(job.video.frames, F, Fc)
    w_text = s.guidance
    w_anchor = s.guidance if cfg.anchor_guidance is None else cfg.anchor_guidance
    if cfg.mode == "auto" and mode != "trained" and streaming_weights(components) is not None:
        check = seam_check(components)
        differ = check_mismatch(check, settings)
        why = ("have not passed the seam check" if check is None or check.get("passed") is not True else
               f"were seam-checked at other settings than this run's: {', '.join(differ[:4])}"
               + (f" (+{len(differ) - 4} more)" if len(differ) > 4 else ""))
        ctx.log(f"streaming: the model's trained memories {why}; auto uses training-free "
                "(streaming.mode=trained forces them)")
    ctx.log(f"streaming: {mode}, {n} chunk(s) of {F} frames ({Fc} conditioning)")
    prompt = encode_prompt(components, job.prompt, job.negative, max(w_text, w_anchor))

    def new_scheduler():
        return prepare_scheduler(s.scheduler, components.scheduler, s.steps, components.device, components.family)

    shape = latent_shape(components, F, ctx.height, ctx.width)
    kept: list[torch.Tensor] = []  # every kept latent frame, only when refining
    remaining = job.video.frames

    def emit(writer: Optional[Mp4Writer], latents: torch.Tensor, frames: torch.Tensor) -> None:
        nonlocal remaining
        take = min(remaining, latents.shape[2])
        remaining -= take
        if cfg.refine:
            kept.append(latents[:, :, :take].cpu())
        elif take:
            writer.write(to_uint8(frames[:take]))

    memory: Optional[Memory] = None
    writer = None if cfg.refine else Mp4Writer(ctx.mp4_path, job.video.fps)
    with writer if writer is not None else nullcontext():
        for k in range(n):
            scheduler = new_scheduler()
            noise = iid_noise(shape, ctx.generator, components.device, components.dtype)
            kwargs: dict[str, Any] = {}
            if k > 0 and mode == "trained":  # fresh noise, as in training: CAM carries the past
                kwargs["guide"] = cam_apm_guide(components, scheduler, prompt, w_text, w_anchor, weights, memory,
                                                cfg.cam_scale)
                if cfg.trained_inpaint:  # ours: the re-covering frames also held to the previous chunk's latents
                    noise[:, :, :Fc] = memory.noise
                    kwargs["post_step"] = inpaint_overlap(scheduler, list(scheduler.timesteps), memory, Fc,
                                                          cfg.trained_dc_lock)
                elif cfg.trained_dc_lock:  # ours: shared noise for the re-covering frames, the chunk's DC follows
                    noise[:, :, :Fc] = memory.noise
                    kwargs["post_step"] = lock_overlap_dc(scheduler, list(scheduler.timesteps), memory, Fc)
            elif k > 0 and mode == "training-free":
                noise[:, :, :Fc] = memory.noise  # shared noise: the re-covered frames start where they started
                kwargs["post_step"] = inpaint_overlap(scheduler, list(scheduler.timesteps), memory, Fc, cfg.dc_lock)
            latents = denoise(components, scheduler, noise * scheduler.init_noise_sigma, prompt, w_text,
                              generator=ctx.generator, eta=s.eta, progress=ctx.progress,
                              description=f"chunk {k + 1}/{n}", **kwargs)
            new = slice(0, F) if k == 0 else slice(Fc, F)
            frames = decode_latents(components, latents[:, :, new], job.memory.decode_chunk)[0]
            emit(writer, latents[:, :, new], frames)
            pixels = None
            if mode == "trained":  # only CAM reads the conditioning frames as pixels
                last = frames[-Fc:] if frames.shape[0] >= Fc else decode_latents(components, latents[:, :, F - Fc :])[0]
                pixels = to_model_pixels(last)
            memory = Memory(
                anchor=to_model_pixels(frames[:1])[0] if memory is None else memory.anchor,
                pixels=pixels,
                latents=latents[:, :, F - Fc :],
                noise=noise[:, :, F - Fc :],
            )

    metadata = {
        "mode": mode,
        "chunks": n,
        "chunk": F,
        "cond_frames": Fc,
        "frames_generated": frames_made(n, F, Fc),
        "guidance": {"text": w_text, "anchor": w_anchor if mode == "trained" else None},
        "mode_asked": cfg.mode,
        "eta": s.eta,
        "anchor_encoder": anchor_encoder_info(weights) if mode == "trained" else None,
        "unet_passes_per_step": passes_per_step(mode, prompt.guided, w_text, w_anchor, weights),
        "dc_lock": cfg.dc_lock if mode == "training-free" else None,
        "trained_dc_lock": cfg.trained_dc_lock if mode == "trained" else None,
        "trained_inpaint": cfg.trained_inpaint if mode == "trained" else None,
        "cam_scale": cfg.cam_scale if mode == "trained" else None,
        "seam_check": seam_check(components),
    }
    if cfg.refine:
        metadata["refine"] = refine_and_write(job, components, ctx, torch.cat(kept, dim=2).to(components.device))
    scale = cfg.upscale if cfg.refine else 1
    return WrittenVideo(ctx.mp4_path, job.video.frames, (ctx.height * scale, ctx.width * scale), job.video.fps, metadata)


def refine_and_write(job: JobConfig, components: Components, ctx: RunContext, latents: torch.Tensor) -> dict:
    """Stage 3: (upscale,) randomized-blending SDEdit of the whole video, decoded straight into the mp4."""
    from vgen.core.sampler import iter_decoded
    from vgen.methods.streaming.blend import RefineSettings, refine_latents
    from vgen.methods.streaming.refine import encode_video, write_decoded

    cfg = job.streaming
    refiner = ctx.model(ModelConfig(id=cfg.refine_model)) if cfg.refine_model else components
    if refiner.kind not in ("unet3d", "motion"):
        raise ConfigError(f"streaming.refine_model '{refiner.name}' is a {refiner.kind} model; refinement needs a video model")
    if cfg.upscale > 1 or refiner is not components:  # through pixels: another size or another latent space
        frames = np.concatenate([to_uint8(f) for f in iter_decoded(components, latents, job.memory.decode_chunk)])
        latents = encode_video(refiner, frames, cfg.upscale, job.memory.decode_chunk)
    settings = RefineSettings.from_job(job)
    prompt = encode_prompt(refiner, job.prompt, job.negative, settings.guidance)
    latents = refine_latents(refiner, latents.to(refiner.device, refiner.dtype), prompt, settings, ctx.generator,
                             progress=ctx.progress)
    write_decoded(refiner, latents, ctx.mp4_path, job.video.fps, job.memory.decode_chunk)
    return {"model": refiner.name, "upscale": cfg.upscale, "strength": settings.strength, "chunk": settings.chunk,
            "overlap": settings.overlap, "steps": settings.steps}
