"""What the three UNet families share: CLIP text, an image VAE with one scaling factor, epsilon/v schedules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from vgen.models.family import AttentionSite, Family, TextEmbeds
from vgen.models.hub import library_version, load_scheduler

# name -> (diffusers class, overrides of the model's scheduler config)
UNET_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    # the Vico script's scheduler: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"); it also
    # passes use_karras=True, which is not a config key of that class and so changes nothing
    "sde-dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}


class UNetFamily(Family):
    unet_class = "UNet2DConditionModel"
    pipeline_class = "StableDiffusionPipeline"  # what save() writes into model_index.json
    schedulers = UNET_SCHEDULERS
    default_scheduler = "ddim"
    lora_loader = "StableDiffusionPipeline"

    def load(self, source: str, cfg: Any, dtype: torch.dtype) -> dict:
        import diffusers
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer

        common = dict(revision=cfg.revision)
        weights = dict(common, torch_dtype=dtype, variant=cfg.variant)
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
            "text_encoder": CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights),
            "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", **weights),
            "scheduler": load_scheduler(source, cfg.revision),
            "unet": self.load_unet(source, cfg, weights, dtype, diffusers),
        }

    def load_unet(self, source: str, cfg: Any, weights: dict, dtype: torch.dtype, diffusers: Any) -> torch.nn.Module:
        return getattr(diffusers, self.unet_class).from_pretrained(source, subfolder="unet", **weights)

    def save(self, components: Any, folder: Path) -> None:
        parts = {name: getattr(components, name) for name in ("tokenizer", "text_encoder", "vae", "unet", "scheduler")}
        for name, part in parts.items():
            part.save_pretrained(folder / name)
        library = {"tokenizer": "transformers", "text_encoder": "transformers"}
        index = {"_class_name": self.pipeline_class, "_diffusers_version": library_version("diffusers")}
        for name, part in parts.items():
            index[name] = [library.get(name, "diffusers"), type(part).__name__]
        index.update(self.index_extras())
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))

    def index_extras(self) -> dict:
        return {}

    def pipeline(self, components: Any):
        """diffusers' pipeline of this family on these very modules (LoRA loading, equivalence tests)."""
        import diffusers

        extras = {"AnimateDiffPipeline": {"motion_adapter": None},
                  "StableDiffusionPipeline": {"safety_checker": None, "feature_extractor": None,
                                              "requires_safety_checker": False}}.get(self.pipeline_class, {})
        pipe = getattr(diffusers, self.pipeline_class)(
            vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
            unet=components.unet, scheduler=components.scheduler, **extras)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # sizes
    def spatial_factor(self, components: Any) -> int:
        return 2 ** (len(components.vae.config.block_out_channels) - 1)

    def native_size(self, components: Any) -> tuple[int, int]:
        size = components.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        factor = self.spatial_factor(components)
        return h * factor, w * factor

    # text
    @torch.no_grad()
    def encode_text(self, components: Any, texts: list[str]) -> TextEmbeds:
        tokenizer = components.tokenizer
        tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
        encoder = components.text_encoder
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = tokens["attention_mask"].to(components.device)
        with components.placed(encoder):
            hidden = encoder(tokens["input_ids"].to(components.device), attention_mask=mask)[0]
        return TextEmbeds(hidden.to(device=components.device, dtype=components.dtype), tokens["attention_mask"])

    # decode / encode: frames are images to the VAE
    @torch.no_grad()
    def iter_decoded(self, components: Any, latents: torch.Tensor, chunk: int = 8,
                     generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
        vae = components.vae
        b, c, f, h, w = latents.shape
        flat = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        with components.placed(vae):
            for start in range(0, b * f, chunk):
                piece = flat[start : start + chunk].to(device=components.device, dtype=vae.dtype)
                images = vae.decode(piece).sample.float()
                yield (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()

    @torch.no_grad()
    def encode_frames(self, components: Any, frames: np.ndarray, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        vae = components.vae
        images = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1).permute(0, 3, 1, 2)
        with components.placed(vae):
            posterior = vae.encode(images.to(device=components.device, dtype=vae.dtype)).latent_dist
            latents = posterior.mean * vae.config.scaling_factor
        return latents.to(components.dtype).permute(1, 0, 2, 3).unsqueeze(0)

    def attention_sites(self, components: Any) -> list[AttentionSite]:
        sites = []
        for key in components.unet.attn_processors:
            module = components.unet.get_submodule(key.removesuffix(".processor"))
            if "temp_attentions" in key or "motion_modules" in key:
                role = "temporal"
            else:
                role = "cross" if getattr(module, "is_cross_attention", False) else "spatial-self"
            sites.append(AttentionSite(key, role))
        return sites
