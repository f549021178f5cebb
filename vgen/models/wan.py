"""Wan 2.1 / 2.2 (WanPipeline): a flow-matching DiT on a causal 3-D VAE, UMT5 text, one or two experts.

Facts (diffusers 0.42.1, see docs/models.md): the transformer predicts the flow velocity ε - x0 for latents
[B, 16, F, H, W] with F = (frames - 1) // 4 + 1; the VAE is 8x spatial (16x for TI2V-5B) and decodes one latent
frame at a time with a feature cache (latent 0 -> 1 frame, each later one -> 4); latents are normalised per
channel (mean/std, no scaling factor); UMT5 text of 512 tokens, padding zeroed, no mask to the transformer;
CFG is two calls (cond, then uncond); Wan 2.2 A14B switches to `transformer_2` (guidance_scale_2) below
t = boundary_ratio * 1000. Noise and latents stay float32 while the transformer runs in its own dtype.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from vgen.models.family import AttentionSite, Family, TextEmbeds
from vgen.models.family import frames_as_images as _images
from vgen.models.hub import load_scheduler, read_json

MAX_TEXT_TOKENS = 512  # WanPipeline's max_sequence_length
# model_index.json key of a folder's native (height, width); diffusers drops "_"-keys it does not know silently
NATIVE_SIZE_KEY = "_vgen_native_size"


def _flow_shift(config: Any) -> float:
    return float(config.get("flow_shift", None) or config.get("shift", None) or 1.0)


def _flow(cls: str, **fixed: Any):
    """A scheduler that reads the model's shift whichever key its config uses (flow_shift on UniPC, shift on Euler)."""

    def overrides(config: Any) -> dict:
        shift = _flow_shift(config)
        if cls == "FlowMatchEulerDiscreteScheduler":
            return {"shift": shift, **fixed}
        return {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": shift, **fixed}

    return cls, overrides


def prompt_clean(text: str) -> str:
    """WanPipeline's prompt_clean: ftfy (when installed, as there), HTML entities, whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class WanFamily(Family):
    name = "wan"
    summary = "Wan 2.1 / 2.2 (WanTransformer3DModel, one or two experts, causal 3-D VAE, UMT5)"
    pipelines = ("WanPipeline",)
    prediction = "flow"
    default_scheduler = "model"
    schedulers = {
        "unipc": _flow("UniPCMultistepScheduler"),  # the Wan folders' own
        "euler": _flow("FlowMatchEulerDiscreteScheduler"),
        "dpm++": _flow("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2),
    }
    cfg_batched = False
    one_frame_mode = True  # Wan's text-to-image is a 1-frame video
    leading_tokens = 0
    float32_latents = True
    cuda_dtype = torch.bfloat16
    frame_rule = "4k+1"
    latent_time = True
    lora_loader = "WanPipeline"
    weight_subfolders = ("text_encoder", "vae", "transformer", "transformer_2")
    processor_signature = "(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None)"

    # --- loading --------------------------------------------------------------------------------
    def load(self, source: str, cfg: Any, dtype: torch.dtype) -> dict:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        index = read_json(source, "model_index.json", cfg.revision) or {}
        common = dict(revision=cfg.revision)
        weights = dict(common, torch_dtype=dtype, variant=cfg.variant)
        parts = {
            "tokenizer": AutoTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
            "text_encoder": UMT5EncoderModel.from_pretrained(source, subfolder="text_encoder", **weights),
            # diffusers' Wan examples keep the VAE in float32 whatever the transformer's dtype
            "vae": AutoencoderKLWan.from_pretrained(source, subfolder="vae", **dict(weights, torch_dtype=torch.float32)),
            "scheduler": load_scheduler(source, cfg.revision, fallback="UniPCMultistepScheduler"),
            "config": {k: index.get(k) for k in ("boundary_ratio", "expand_timesteps")},
        }
        if index.get(NATIVE_SIZE_KEY):  # a folder trained at its own size (toy-wan: 64x64)
            parts["config"]["native_size"] = tuple(int(v) for v in index[NATIVE_SIZE_KEY])
        experts = [name for name in ("transformer", "transformer_2") if (index.get(name) or [None])[0]]
        for slot, name in zip(("unet", "unet_2"), experts):
            parts[slot] = WanTransformer3DModel.from_pretrained(source, subfolder=name, **weights)
        if "unet" not in parts:
            from vgen.errors import ModelLoadError

            raise ModelLoadError(f"'{source}' is a Wan folder without a transformer")
        return parts

    def pipeline(self, components: Any):
        """diffusers' WanPipeline on these very modules (for saving, LoRA loading and equivalence tests)."""
        from diffusers import WanPipeline

        pipe = WanPipeline(
            tokenizer=components.tokenizer, text_encoder=components.text_encoder, vae=components.vae,
            scheduler=components.scheduler, transformer=components.unet, transformer_2=components.unet_2,
            boundary_ratio=components.config.get("boundary_ratio"),
            expand_timesteps=bool(components.config.get("expand_timesteps")),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save(self, components: Any, folder: Path) -> None:
        self.pipeline(components).save_pretrained(folder)

    # --- sizes ----------------------------------------------------------------------------------
    def spatial_factor(self, components: Any) -> int:
        return int(components.vae.config.scale_factor_spatial)

    def size_multiple(self, components: Any) -> int:
        return self.spatial_factor(components) * int(components.unet.config.patch_size[1])

    def native_size(self, components: Any) -> tuple[int, int]:
        return tuple(components.config.get("native_size") or (480, 832))

    def video_frames(self, components: Any, frames: int) -> int:
        if _images(components):
            return frames
        k = int(components.vae.config.scale_factor_temporal)
        return frames if frames % k == 1 else frames // k * k + 1  # WanPipeline's rounding

    def latent_frames(self, components: Any, frames: int) -> int:
        if _images(components):
            return frames
        return (frames - 1) // int(components.vae.config.scale_factor_temporal) + 1

    def decoded_frames(self, components: Any, latent_frames: int) -> int:
        if _images(components):
            return latent_frames
        return (latent_frames - 1) * int(components.vae.config.scale_factor_temporal) + 1  # 1, then 4 per latent frame

    # --- text -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, components: Any, texts: list[str]) -> TextEmbeds:
        tokens = components.tokenizer(
            [prompt_clean(t) for t in texts], padding="max_length", max_length=MAX_TEXT_TOKENS, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids, mask = tokens.input_ids, tokens.attention_mask
        lengths = mask.gt(0).sum(dim=1)
        encoder = components.text_encoder
        with components.placed(encoder):
            hidden = encoder(ids.to(components.device), mask.to(components.device)).last_hidden_state
        hidden = hidden.to(device=components.device, dtype=components.dtype)
        keep = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths.to(hidden.device)[:, None])
        return TextEmbeds(hidden * keep[..., None].to(hidden.dtype), mask)  # padding zeroed, as WanPipeline

    # --- the model call -------------------------------------------------------------------------
    def boundary(self, components: Any) -> Optional[float]:
        ratio = components.config.get("boundary_ratio")
        if ratio is None or components.unet_2 is None:
            return None
        return ratio * components.scheduler.config.num_train_timesteps

    def low_noise(self, components: Any, t: Any) -> bool:
        boundary = self.boundary(components)
        return boundary is not None and float(t) < boundary

    def denoiser_at(self, components: Any, t: Any) -> torch.nn.Module:
        return components.unet_2 if self.low_noise(components, t) else components.unet

    def guidance_at(self, components: Any, t: Any, guidance: float, guidance_2: Optional[float]) -> float:
        if guidance_2 is not None and self.low_noise(components, t):
            return guidance_2
        return guidance

    def predict(self, components: Any, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
                mask: Optional[torch.Tensor] = None, **model_kwargs: Any) -> torch.Tensor:
        if _images(components):  # [B, C, F, h, w] -> B·F one-frame videos, frame-major per video, and back
            b, c, f, h, w = latents.shape
            images = latents.transpose(1, 2).reshape(b * f, c, 1, h, w)
            out = self._call(components, images, t, embeds.repeat_interleave(f, dim=0), **model_kwargs)
            return out.reshape(b, f, -1, h, w).transpose(1, 2)
        return self._call(components, latents, t, embeds, **model_kwargs)

    def _call(self, components: Any, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
              **model_kwargs: Any) -> torch.Tensor:
        model = self.denoiser_at(components, t)
        t = torch.as_tensor(t, device=latents.device)
        if components.config.get("expand_timesteps"):  # one timestep per token (TI2V-5B)
            patch = model.config.patch_size
            f, h, w = latents.shape[2], latents.shape[3] // patch[1], latents.shape[4] // patch[2]
            timestep = t.expand(f * h * w)[None].expand(latents.shape[0], -1)
        else:
            timestep = t.expand(latents.shape[0])
        return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds.to(model.dtype),
                     return_dict=False, **model_kwargs)[0]

    # --- latents <-> pixels ---------------------------------------------------------------------
    def denormalise(self, components: Any, latents: torch.Tensor) -> torch.Tensor:
        vae = components.vae
        z = latents.to(device=components.device, dtype=vae.dtype)
        channels = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1).to(z.device, z.dtype)
        return z / inv_std + mean  # WanPipeline's arithmetic, to the bit

    @torch.no_grad()
    def iter_decoded(self, components: Any, latents: torch.Tensor, chunk: int = 8,
                     generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
        """One latent frame at a time through the causal decoder and its feature cache (what vae.decode does
        inside, with the frames handed out as they are made): 1 frame, then 4 per latent frame. With VAE tiling
        on, the tiled decode of the whole video."""
        vae = components.vae
        with components.placed(vae):
            z = self.denormalise(components, latents)
            if _images(components):  # each latent frame decodes as a 1-frame video: 1 frame
                z = z.transpose(1, 2).flatten(0, 1).unsqueeze(2)
            if vae.use_tiling:
                for item in z.split(1):
                    yield _to_frames(vae.decode(item).sample[0])
                return
            for item in z.split(1):
                yield from stream_decode(vae, item)


    @torch.no_grad()
    def encode_frames(self, components: Any, frames: np.ndarray, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        video = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
        return self.encode_pixels(components, video)

    @torch.no_grad()
    def encode_pixels(self, components: Any, video: torch.Tensor) -> torch.Tensor:
        """Pixels [1, 3, F, H, W] in [-1, 1] -> normalised latents [1, C, (F - 1) // 4 + 1, h, w] (posterior mean)."""
        vae = components.vae
        with components.placed(vae):
            if _images(components):  # each frame encodes as a 1-frame video: 1 latent frame
                pieces = [vae.encode(video[:, :, i : i + 1].to(device=components.device, dtype=vae.dtype))
                          .latent_dist.mode() for i in range(video.shape[2])]
                mean_z = torch.cat(pieces, dim=2)
            else:
                mean_z = vae.encode(video.to(device=components.device, dtype=vae.dtype)).latent_dist.mode()
        channels = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1).to(mean_z.device, mean_z.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1).to(mean_z.device, mean_z.dtype)
        return ((mean_z - mean) * inv_std).float()  # pipeline_wan_i2v's normalisation

    @torch.no_grad()
    def still_video(self, components: Any, image: torch.Tensor, frames: int) -> torch.Tensor:
        """The causal VAE codes frames together (latent 0 holds frame 0, each later latent 4 frames that depend on
        the ones before), so a still video is made in pixels: the image decoded, repeated to the video's length
        and encoded; repeating its latent would not be a still video's latents."""
        vae = components.vae
        with components.placed(vae):
            picture = vae.decode(self.denormalise(components, image)).sample.clamp(-1, 1)  # [1, 3, 1, H, W]
        video = picture.float().repeat(1, 1, self.video_frames(components, frames), 1, 1)
        return self.encode_pixels(components, video)

    # --- attention ------------------------------------------------------------------------------
    def attention_sites(self, components: Any) -> list[AttentionSite]:
        """Each block: attn1 self-attention over all F·h·w tokens (RoPE), attn2 cross-attention to the text. In
        image mode attn1 attends within one frame: "spatial-self"."""
        own = "spatial-self" if _images(components) else "self"
        return [AttentionSite(key, "cross" if ".attn2." in key else own, int(key.split(".")[1]))
                for key in components.unet.attn_processors]

    def attention_qkv(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                      rotary_emb: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """WanAttnProcessor's q, k, v (TW:95-118): projections, RMSNorm over all heads, head split, RoPE on q
        and k; returned as [B, heads, N, d]. Text-to-video only (no image keys)."""
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if attn.add_k_proj is not None:
            raise ValueError("Wan image-conditioned attention (I2V) is not supported here")
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)

    def attention_output(self, attn: Any, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        hidden = out.transpose(1, 2).flatten(2, 3).type_as(like)
        return attn.to_out[1](attn.to_out[0](hidden))

    def token_grid(self, components: Any, latent_shape: tuple) -> tuple[int, int, int]:
        pt, ph, pw = components.unet.config.patch_size
        f, h, w = latent_shape[2:]
        return f // pt, h // ph, w // pw

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model.blocks)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """WanAttnProcessor's rotary embedding of [B, N, heads, d] (interleaved pairs), the same arithmetic."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _to_frames(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] float32 in [0, 1] on the CPU."""
    return (video.float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0).cpu()


@torch.no_grad()
def stream_decode(vae: Any, z: torch.Tensor) -> Iterator[torch.Tensor]:
    """AutoencoderKLWan._decode for one video [1, C, F, h, w] of denormalised latents, frames yielded per
    latent frame: the same modules, cache and order, so the frames equal vae.decode's."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae.clear_cache()
    try:
        x = vae.post_quant_conv(z)
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            out = vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0)
            if vae.config.patch_size is not None:
                out = unpatchify(out, patch_size=vae.config.patch_size)
            yield _to_frames(torch.clamp(out, min=-1.0, max=1.0)[0])
    finally:
        vae.clear_cache()


# ----------------------------------------------------------------------------------------------
# built-in random models


def _umt5(tokenizer: Any, d_model: int, layers: int = 2, heads: int = 4, d_ff: int = 37):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
                        num_heads=heads, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return UMT5EncoderModel(config).eval()  # UMT5's default dropout is 0.1 and new modules train


def _scheduler(shift: float = 3.0):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)


def _tiny_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                 out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _tiny_parts() -> dict:
    from diffusers import AutoencoderKLWan

    from vgen.tiny import TINY_WORDS
    from vgen.tokenizer import build_t5_tokenizer

    tokenizer = build_t5_tokenizer(TINY_WORDS, model_max_length=MAX_TEXT_TOKENS)
    return {
        "tokenizer": tokenizer,
        "text_encoder": _umt5(tokenizer, 32),
        "vae": AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True]),
        "scheduler": _scheduler(),
        "unet": _tiny_transformer(),
    }


def _seeded(build):
    def wrapper() -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build()

    wrapper.__doc__ = build.__doc__
    return wrapper


@_seeded
def tiny_wan() -> dict:
    """Wan 2.1-shaped, random: the diffusers test configuration (28 k transformer parameters)."""
    parts = _tiny_parts()
    parts["config"] = {"boundary_ratio": None, "expand_timesteps": False, "native_size": (32, 32)}
    return parts


@_seeded
def tiny_wan22() -> dict:
    """Wan 2.2 A14B-shaped, random: two experts switched at boundary_ratio 0.875."""
    parts = _tiny_parts()
    parts["unet_2"] = _tiny_transformer()
    parts["config"] = {"boundary_ratio": 0.875, "expand_timesteps": False, "native_size": (32, 32)}
    return parts


def wan_quarter_vae():
    """Wan 2.1's VAE layout (4 stages, 2 res blocks, causal time downsampling in two) at 1/4 width (base 24)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=24, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                            temperal_downsample=[False, True, True])


@_seeded
def wan_quarter() -> dict:
    """Wan 2.1 1.3B's layout (30 blocks, 12 heads, the VAE's stages and res blocks) at a quarter of its widths
    (heads of 32 channels, VAE base 24, text 1024 from a 2-layer UMT5), random: for benchmarks at Wan's sizes,
    where per-op overhead no longer dominates as it does on the tiny models."""
    from diffusers import WanTransformer3DModel

    from vgen.tiny import TINY_WORDS
    from vgen.tokenizer import build_t5_tokenizer

    tokenizer = build_t5_tokenizer(TINY_WORDS, model_max_length=MAX_TEXT_TOKENS)
    return {
        "tokenizer": tokenizer,
        "text_encoder": _umt5(tokenizer, 1024, layers=2, heads=16, d_ff=2560),
        "vae": wan_quarter_vae(),
        "scheduler": _scheduler(3.0),
        "unet": WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=32,
                                      in_channels=16, out_channels=16, text_dim=1024, freq_dim=256, ffn_dim=2240,
                                      num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                      eps=1e-6),
        "config": {"boundary_ratio": None, "expand_timesteps": False, "native_size": (480, 832)},
    }


BUILDERS = {"tiny-random-wan": tiny_wan, "tiny-random-wan22": tiny_wan22, "wan-quarter": wan_quarter}
FAMILY = WanFamily()
