"""AnimateDiff: an SD 1.5 UNet plus a MotionAdapter (UNetMotionModel); frames fold into the batch, text does not."""

from __future__ import annotations

from typing import Any

import torch

from vgen.errors import ConfigError
from vgen.models.animatediff_schedule import animatediff_default
from vgen.models.hub import read_json
from vgen.models.unet import UNetFamily


class MotionFamily(UNetFamily):
    name = "motion"
    summary = "AnimateDiff (SD 1.5 UNet + MotionAdapter)"
    pipelines = ("AnimateDiffPipeline", "AnimateDiffVideoToVideoPipeline")
    unet_class = "UNetMotionModel"
    pipeline_class = "AnimateDiffPipeline"
    lora_loader = "AnimateDiffPipeline"

    def load_unet(self, source: str, cfg: Any, weights: dict, dtype: torch.dtype, diffusers: Any) -> torch.nn.Module:
        unet_cfg = read_json(source, "unet/config.json", cfg.revision) or {}
        if unet_cfg.get("_class_name") == "UNetMotionModel":
            return diffusers.UNetMotionModel.from_pretrained(source, subfolder="unet", **weights)
        if not cfg.motion_adapter:
            raise ConfigError("model.kind=motion on an image model needs model.motion_adapter (a MotionAdapter id or folder)")
        base = diffusers.UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights)
        adapter = diffusers.MotionAdapter.from_pretrained(cfg.motion_adapter, torch_dtype=dtype)
        return diffusers.UNetMotionModel.from_unet2d(base, adapter).to(dtype)

    def default_schedule(self, scheduler: Any) -> tuple[Any, str]:
        return animatediff_default(scheduler)

    def index_extras(self) -> dict:
        return {"motion_adapter": [None, None]}

    def predict(self, components: Any, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
                mask: Any = None, **model_kwargs: Any) -> torch.Tensor:
        f = latents.shape[2]
        return components.unet(latents, t, encoder_hidden_states=embeds.repeat_interleave(f, dim=0), **model_kwargs).sample


FAMILY = MotionFamily()
