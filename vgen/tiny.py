"""Tiny randomly initialised models, built offline and seeded, for tests and quick checks.

They have the real architectures (UNet3DConditionModel, UNetMotionModel, UNet2DConditionModel,
AutoencoderKL, CLIPTextModel) at toy width, so every code path of a real model runs in seconds.
"""

from __future__ import annotations

from typing import Callable

import torch

from vgen.tokenizer import build_clip_tokenizer

TINY_WORDS = (
    "a an the and of with in on is moving left right up down still "
    "cat dog bird fish car person red green blue yellow purple orange circle square triangle diamond "
    "playing running flying swimming walking beach street forest sky"
).split()

TEXT_DIM = 32
SEED = 0


def _text_parts(hidden_size: int = TEXT_DIM) -> dict:
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer(TINY_WORDS, model_max_length=77)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37 if hidden_size == TEXT_DIM else 4 * hidden_size,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=32,
    )
    return {"tokenizer": tokenizer, "text_encoder": CLIPTextModel(config)}


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _unet2d():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def _seeded(build: Callable[[], dict]) -> Callable[[], dict]:
    """Build under a fixed seed without disturbing the caller's global RNG."""

    def wrapper() -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            return build()

    wrapper.__doc__ = build.__doc__
    return wrapper


@_seeded
def tiny_unet3d() -> dict:
    """ModelScope-shaped text-to-video model."""
    from diffusers import UNet3DConditionModel

    parts = _text_parts()
    parts["vae"] = _vae()
    parts["unet"] = UNet3DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    parts["scheduler"] = _scheduler()
    return parts


@_seeded
def tiny_motion() -> dict:
    """AnimateDiff-shaped model: an image UNet plus a motion adapter."""
    from diffusers import MotionAdapter, UNetMotionModel

    parts = _text_parts()
    parts["vae"] = _vae()
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_norm_num_groups=8,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
    )
    parts["unet"] = UNetMotionModel.from_unet2d(_unet2d(), adapter)
    parts["scheduler"] = _scheduler()
    return parts


@_seeded
def tiny_unet2d() -> dict:
    """Stable-Diffusion-shaped image model."""
    parts = _text_parts()
    parts["vae"] = _vae()
    parts["unet"] = _unet2d()
    parts["scheduler"] = _scheduler()
    return parts


@_seeded
def zeroscope_quarter() -> dict:
    """ZeroScope's layout (UNet3D: 4 levels, 2 layers per block, the same head count and head widths; an
    8x VAE) at a quarter of its channels, random: for benchmarks at ZeroScope's sizes (320x512, 16
    frames: latents 40x64) where per-op overhead no longer dominates as it does on the tiny models."""
    from diffusers import AutoencoderKL, UNet3DConditionModel

    parts = _text_parts(hidden_size=256)
    parts["vae"] = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=512,
    )
    parts["unet"] = UNet3DConditionModel(
        sample_size=(40, 64),  # latents of a 320x512 video
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        block_out_channels=(80, 160, 320, 320),
        layers_per_block=2,
        cross_attention_dim=256,
        attention_head_dim=16,  # UNet3D reads it as the head count: heads of 5/10/20/20 channels, as ZeroScope's
        norm_num_groups=16,
    )
    parts["scheduler"] = _scheduler()
    return parts


BUILDERS: dict[str, Callable[[], dict]] = {
    "tiny-random-unet3d": tiny_unet3d,
    "tiny-random-motion": tiny_motion,
    "tiny-random-unet2d": tiny_unet2d,
    "zeroscope-quarter": zeroscope_quarter,
}
KINDS = {"tiny-random-unet3d": "unet3d", "tiny-random-motion": "motion", "tiny-random-unet2d": "unet2d",
         "zeroscope-quarter": "unet3d"}
