"""What the sampler core may ask of a model family: the one interface every family module implements.

A family (unet3d, motion, unet2d, wan, ltx) knows how its folders are recognised and loaded, how it
encodes text, what its denoiser predicts, how latents are laid out and normalised, how they decode, and
where its attention sites are. The core never asks which family a model is; it calls these methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from vgen.errors import ConfigError


@dataclass(frozen=True)
class TextEmbeds:
    """Text encoder output for a batch of texts: hidden states [B, L, D] and the real-token mask [B, L]."""

    hidden: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class AttentionSite:
    """A processor key a method may hook, with what it attends over."""

    key: str  # e.g. "blocks.0.attn2.processor"
    role: str  # "spatial-self" | "cross" | "temporal" | "self" (all video tokens at once)


class Family:
    """Defaults shared by every family; a family module subclasses this and overrides what differs."""

    name: str = ""
    summary: str = ""
    pipelines: tuple[str, ...] = ()  # model_index.json _class_name values that mean this family
    prediction: str = "epsilon"  # "epsilon" | "v_prediction" | "flow" (velocity); a folder's scheduler may say otherwise
    default_scheduler: str = "ddim"  # what sampler.scheduler=auto runs
    schedulers: dict[str, tuple[str, dict[str, Any]]] = {}  # name -> (diffusers class, overrides of the model's config)
    cfg_batched: bool = True  # one model call on [uncond, cond] (False: cond then uncond, as the family's pipeline does)
    guidance_in_float32: bool = False  # combine CFG in float32 (the pipeline casts the prediction first)
    leading_tokens: int = 1  # special tokens before the prompt's first word (CLIP's start token; T5: 0)
    float32_latents: bool = False  # the pipeline keeps noise and latents in float32 whatever the model dtype
    # A latent frame after the first holds several frames and the VAE decodes them causally (Wan): a long video is cut
    # into chunks in latent time and its whole latent decoded once (cut latents decoded piece by piece would seam)
    latent_time: bool = False
    frame_rule: str = "any"  # shown by `vgen models`
    processor_signature: str = "(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None)"
    no_context_parallel: str = ""  # why diffusers' context parallelism cannot split this family's videos (empty: it can)

    # --- loading --------------------------------------------------------------------------------
    def load(self, source: str, cfg: Any, dtype: torch.dtype) -> dict:
        """Parts of a local folder or hub id (tokenizer, text_encoder, vae, unet, scheduler, ...)."""
        raise NotImplementedError

    def save(self, components: "Components", folder) -> None:
        raise ConfigError(f"saving a {self.name} model is not supported")

    def modules(self, components: "Components") -> dict[str, torch.nn.Module]:
        """The torch modules by component name (what device placement and offload move)."""
        out = {"text_encoder": components.text_encoder, "vae": components.vae, "unet": components.unet}
        if components.unet_2 is not None:
            out["unet_2"] = components.unet_2
        return out

    # --- sizes and layout -----------------------------------------------------------------------
    def spatial_factor(self, components: "Components") -> int:
        """Pixels per latent along height and width."""
        raise NotImplementedError

    def size_multiple(self, components: "Components") -> int:
        """Height and width must be multiples of this (the VAE factor times any patch size)."""
        return self.spatial_factor(components)

    def latent_channels(self, components: "Components") -> int:
        return components.unet.config.in_channels

    def native_size(self, components: "Components") -> tuple[int, int]:
        raise NotImplementedError

    def video_frames(self, components: "Components", frames: int) -> int:
        """The frame count the model makes when `frames` are asked for (the pipeline's rounding)."""
        return frames

    def latent_frames(self, components: "Components", frames: int) -> int:
        """Latent frames for a video of `frames` frames (after `video_frames`)."""
        return frames

    def decoded_frames(self, components: "Components", latent_frames: int) -> int:
        """Frames that `latent_frames` latent frames decode to (the inverse of `latent_frames` on `video_frames`;
        one frame per latent frame here, Wan and LTX override it)."""
        return latent_frames

    def latent_shape(self, components: "Components", frames: int, height: int, width: int, batch: int = 1) -> tuple:
        factor = self.spatial_factor(components)
        return (batch, self.latent_channels(components), self.latent_frames(components, self.video_frames(components, frames)),
                height // factor, width // factor)

    # --- text -----------------------------------------------------------------------------------
    def encode_text(self, components: "Components", texts: list[str]) -> TextEmbeds:
        raise NotImplementedError

    # --- the model call -------------------------------------------------------------------------
    def denoiser_at(self, components: "Components", t: Any) -> torch.nn.Module:
        """The module that denoises at timestep t (Wan 2.2: one of two experts)."""
        return components.unet

    def guidance_at(self, components: "Components", t: Any, guidance: float, guidance_2: Optional[float]) -> float:
        return guidance

    def predict(self, components: "Components", latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
                mask: Optional[torch.Tensor] = None, **model_kwargs: Any) -> torch.Tensor:
        """The denoiser's output (of kind `prediction`) for video latents [B, C, F, H, W]."""
        raise NotImplementedError

    def default_schedule(self, scheduler: Any) -> tuple[Any, str]:
        """(the scheduler this family samples with by default, where it came from): the folder's own ("model")
        unless the family's recipe replaces its base model's (AnimateDiff on an SD 1.5 base)."""
        return scheduler, "model"

    def timestep_kwargs(self, scheduler: Any, shape: tuple, steps: int) -> dict:
        """Extra set_timesteps arguments for latents of `shape` (LTX: sigmas and the dynamic shift mu)."""
        return {}

    # --- latents <-> pixels ---------------------------------------------------------------------
    def iter_decoded(self, components: "Components", latents: torch.Tensor, chunk: int = 8,
                     generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
        """Normalised latents [B, C, F, h, w] -> frames [n, H, W, 3] float32 in [0, 1] (CPU), yielded in order."""
        raise NotImplementedError

    def encode_frames(self, components: "Components", frames: Any, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] -> normalised latents [1, C, F', h, w] (the posterior mean)."""
        raise NotImplementedError

    # --- attention ------------------------------------------------------------------------------
    def attention_sites(self, components: "Components") -> list[AttentionSite]:
        raise NotImplementedError

    # --- LoRA -----------------------------------------------------------------------------------
    lora_loader: Optional[str] = None  # the diffusers pipeline class whose load_lora_weights reads this family's files
    weight_subfolders: tuple[str, ...] = ("text_encoder", "vae", "unet")  # what the sidecar fingerprints


def latent_norm(vae_config: Any, channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) of a VAE config, shaped [1, C, 1, 1, 1] like `like`."""
    mean = torch.tensor(vae_config.latents_mean).view(1, channels, 1, 1, 1).to(like.device, like.dtype)
    std = torch.tensor(vae_config.latents_std).view(1, channels, 1, 1, 1).to(like.device, like.dtype)
    return mean, std
