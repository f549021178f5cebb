"""Vanilla sampling against diffusers' own pipelines, frame for frame, on the tiny models."""

import numpy as np
import pytest
import torch

from conftest import make_job, run_vanilla
from vgen.core.sampler import to_uint8
from vgen.core.schedulers import make_scheduler

PROMPT = "a red circle moving left"


def _assert_same_frames(ours: np.ndarray, theirs_float: np.ndarray) -> None:
    theirs = to_uint8(torch.from_numpy(theirs_float))
    assert ours.shape == theirs.shape
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1, f"max pixel difference {diff.max()}"
    assert diff.mean() < 0.01


def _pipeline_frames(pipe_cls, components, scheduler_name, frames, steps, guidance, negative="", **extra):
    pipe = pipe_cls(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=make_scheduler(scheduler_name, components.scheduler),
        **extra,
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        PROMPT,
        negative_prompt=negative or None,
        num_frames=frames,
        height=32,
        width=32,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
    )
    return np.asarray(out.frames[0])


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "euler", "unipc", "pndm"])
def test_vanilla_matches_text_to_video_pipeline(tiny, scheduler):
    from diffusers import TextToVideoSDPipeline

    c = tiny("tiny-random-unet3d")
    job = make_job(PROMPT, **{"model.id": "tiny-random-unet3d", "sampler.scheduler": scheduler, "sampler.steps": 3, "video.frames": 4, "seed": 7})
    ours = run_vanilla(c, job)
    theirs = _pipeline_frames(TextToVideoSDPipeline, c, scheduler, frames=4, steps=3, guidance=7.5)
    _assert_same_frames(ours, theirs)


def test_vanilla_matches_pipeline_with_negative_prompt_and_no_cfg(tiny):
    from diffusers import TextToVideoSDPipeline

    c = tiny("tiny-random-unet3d")
    job = make_job(PROMPT, **{"negative": "blurry", "sampler.steps": 2, "video.frames": 3, "seed": 7})
    _assert_same_frames(run_vanilla(c, job), _pipeline_frames(TextToVideoSDPipeline, c, "ddim", 3, 2, 7.5, negative="blurry"))
    job = make_job(PROMPT, **{"sampler.guidance": 1.0, "sampler.steps": 2, "video.frames": 3, "seed": 7})
    _assert_same_frames(run_vanilla(c, job), _pipeline_frames(TextToVideoSDPipeline, c, "ddim", 3, 2, 1.0))


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "sde-dpm++"])  # AnimateDiff steps in [B, C, F, H, W], as we do (the SDE noise follows the layout)
def test_vanilla_matches_animatediff_pipeline(tiny, scheduler):
    from diffusers import AnimateDiffPipeline

    c = tiny("tiny-random-motion")
    job = make_job(PROMPT, **{"model.id": "tiny-random-motion", "sampler.scheduler": scheduler, "sampler.steps": 3, "video.frames": 4, "seed": 7, "memory.decode_chunk": 3})
    ours = run_vanilla(c, job)
    theirs = _pipeline_frames(AnimateDiffPipeline, c, scheduler, frames=4, steps=3, guidance=7.5, motion_adapter=None)
    _assert_same_frames(ours, theirs)


def test_vanilla_on_image_model_samples_each_frame_like_stable_diffusion(tiny):
    """Per-frame baseline: frame i equals StableDiffusionPipeline fed frame i's slice of the same noise."""
    from diffusers import StableDiffusionPipeline

    from vgen.core.sampler import latent_shape

    c = tiny("tiny-random-unet2d")
    job = make_job(PROMPT, **{"model.id": "tiny-random-unet2d", "sampler.steps": 3, "video.frames": 3, "seed": 7})
    ours = run_vanilla(c, job)
    noise = torch.randn(latent_shape(c, 3, 32, 32), generator=torch.Generator().manual_seed(7))
    pipe = StableDiffusionPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
        scheduler=make_scheduler("ddim", c.scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        [PROMPT] * 3, height=32, width=32, num_inference_steps=3, guidance_scale=7.5,
        latents=noise[0].permute(1, 0, 2, 3), output_type="np",
    ).images
    _assert_same_frames(ours, np.asarray(images))


@pytest.mark.parametrize("name", ["tiny-random-unet3d", "tiny-random-motion", "tiny-random-unet2d"])
def test_saved_model_loads_by_path_with_same_frames(tiny, tmp_path, name):
    from vgen.config import ModelConfig
    from vgen.models import load_components, save_components

    c = tiny(name)
    save_components(c, tmp_path / "model")
    loaded = load_components(ModelConfig(id=str(tmp_path / "model")), "cpu", "float32")
    assert loaded.kind == c.kind
    job = make_job(PROMPT, **{"model.id": name, "sampler.steps": 2, "video.frames": 3})
    assert np.array_equal(run_vanilla(c, job), run_vanilla(loaded, job))


def test_saved_unet3d_folder_is_a_diffusers_pipeline(tiny, tmp_path):
    """What we save, diffusers loads (so real and toy models share one format)."""
    from diffusers import TextToVideoSDPipeline

    from vgen.models import save_components

    save_components(tiny("tiny-random-unet3d"), tmp_path / "m")
    pipe = TextToVideoSDPipeline.from_pretrained(tmp_path / "m")
    assert type(pipe.unet).__name__ == "UNet3DConditionModel"
