"""What the sampler core may ask of a model family: the one interface every family module implements.

A family (unet3d, motion, unet2d, wan, ltx) knows how its folders are recognised and loaded, how it
encodes text, what its denoiser predicts, how latents are laid out and normalised, how they decode, and
where its attention sites are. The core never asks which family a model is; it calls these methods.
"""

from __future__ import annotations

import dataclasses
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
    block: Optional[int] = None  # the transformer block it belongs to (DiTs), in forward order


IMAGE_FAMILIES = "unet2d, wan, ltx"  # the families whose image_model works
# components.config key image_model sets on a video family: every latent frame of [B, C, F, h, w] is a 1-frame video
# of its own (1 frame <-> 1 latent frame, frame index 0 for RoPE), the B·F of them sampled in one model call
FRAMES_AS_IMAGES = "frames_as_images"


def frames_as_images(components: "Components") -> bool:
    return bool(components.config.get(FRAMES_AS_IMAGES))


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
    one_frame_mode: bool = False  # its 1-frame videos are images: image_model sets FRAMES_AS_IMAGES, the family obeys

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

    def still_video(self, components: "Components", image: torch.Tensor, frames: int) -> torch.Tensor:
        """Latents of a video that shows one image for `frames` frames, from that image's 1-frame latents
        [1, C, 1, h, w] (I4VGen's static video). Here the VAE codes each frame on its own, so the still video's
        latents are the image's repeated. A family whose VAE codes frames together (a causal 3-D VAE) overrides
        this: there the repeated latent is not the still video's."""
        return image.repeat(1, 1, self.latent_frames(components, self.video_frames(components, frames)), 1, 1)

    # --- the model as an image model -------------------------------------------------------------
    def image_model(self, components: "Components") -> "Components":
        """The same model sampling images: latents [B, C, F, h, w] whose F frames are F independent images (one
        model call on the B·F images, each frame decoded and encoded on its own; its self-attention sites are then
        "spatial-self"), for methods that make a video from an image model (ZS2). The scheduler of such a run is set
        for one image: `latent_shape(image, 1, ...)`."""
        if not self.one_frame_mode:
            raise ConfigError(f"a {self.name} model cannot be used as an image model; the families that can: {IMAGE_FAMILIES}")
        return dataclasses.replace(components, config={**components.config, FRAMES_AS_IMAGES: True})

    # --- attention ------------------------------------------------------------------------------
    def attention_sites(self, components: "Components") -> list[AttentionSite]:
        raise NotImplementedError

    # The attention internals below serve methods that read a DiT's attention probabilities (Vico on Wan).
    readable_attention: tuple[str, ...] = ("wan",)  # the families that implement them

    def _no_readable_attention(self) -> ConfigError:
        return ConfigError(f"reading the attention of a {self.name} model is not supported; families that can: "
                           f"{', '.join(self.readable_attention)}")

    def attention_qkv(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                      rotary_emb: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A site's query, key and value [B, heads, N, d] exactly as its own processor makes them (projections,
        q/k norms, rotary embedding), so that a method can compute the site's probabilities itself."""
        raise self._no_readable_attention()

    def attention_output(self, attn: Any, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The site's output from attention values [B, heads, N, d] (head merge and output projection)."""
        raise self._no_readable_attention()

    def token_grid(self, components: "Components", latent_shape: tuple) -> tuple[int, int, int]:
        """(frames, height, width) of the tokens a self-attention site sees for latents of `latent_shape`
        [B, C, F, H, W]; tokens are frame-major (token n = f·h·w + y·w + x)."""
        raise self._no_readable_attention()

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The denoiser's transformer blocks in forward order (what a gradient pass checkpoints one by one)."""
        raise self._no_readable_attention()

    # --- LoRA -----------------------------------------------------------------------------------
    lora_loader: Optional[str] = None  # the diffusers pipeline class whose load_lora_weights reads this family's files
    weight_subfolders: tuple[str, ...] = ("text_encoder", "vae", "unet")  # what the sidecar fingerprints


def latent_norm(vae_config: Any, channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) of a VAE config, shaped [1, C, 1, 1, 1] like `like`."""
    mean = torch.tensor(vae_config.latents_mean).view(1, channels, 1, 1, 1).to(like.device, like.dtype)
    std = torch.tensor(vae_config.latents_std).view(1, channels, 1, 1, 1).to(like.device, like.dtype)
    return mean, std
