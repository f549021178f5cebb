"""ModelScope / ZeroScope: UNet3DConditionModel, latents [B, C, F, H, W] seen whole, CLIP text, image VAE."""

from __future__ import annotations

from typing import Any

import torch

from vgen.models.unet import UNetFamily


class UNet3DFamily(UNetFamily):
    name = "unet3d"
    summary = "ModelScope / ZeroScope (UNet3DConditionModel)"
    pipelines = ("TextToVideoSDPipeline", "VideoToVideoSDPipeline")
    unet_class = "UNet3DConditionModel"
    pipeline_class = "TextToVideoSDPipeline"
    lora_loader = None  # TextToVideoSDPipeline loads SD LoRAs into the UNet3D only partially; not offered

    def predict(self, components: Any, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
                mask: Any = None, **model_kwargs: Any) -> torch.Tensor:
        return components.unet(latents, t, encoder_hidden_states=embeds, **model_kwargs).sample


FAMILY = UNet3DFamily()
