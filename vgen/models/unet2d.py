"""Stable Diffusion image models: the frames of a video are a batch of independent images."""

from __future__ import annotations

from typing import Any

import torch

from vgen.models.unet import UNetFamily


class UNet2DFamily(UNetFamily):
    name = "unet2d"
    summary = "Stable Diffusion image models (UNet2DConditionModel); frames are independent images"
    pipelines = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "TextToVideoZeroPipeline")
    unet_class = "UNet2DConditionModel"
    pipeline_class = "StableDiffusionPipeline"

    def index_extras(self) -> dict:
        return {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}

    def predict(self, components: Any, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
                mask: Any = None, **model_kwargs: Any) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        images = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        out = components.unet(images, t, encoder_hidden_states=embeds.repeat_interleave(f, dim=0), **model_kwargs).sample
        return out.reshape(b, f, -1, h, w).permute(0, 2, 1, 3, 4)

    def image_model(self, components: Any) -> Any:
        return components  # already one: frames are images


FAMILY = UNet2DFamily()
