"""LTX-Video 0.9.x (LTXPipeline): a flow-matching DiT on packed tokens, T5 text with a mask, dynamic shift.

Facts (diffusers 0.42.1, pipelines/ltx/pipeline_ltx.py): latents [B, 128, F, H/32, W/32] with
F = (frames - 1) // 8 + 1 (the VAE's compression ratios; a smaller VAE has its own) are packed to tokens
[B, F·h·w, C] for the transformer and stay float32 between steps; T5 text of 128 tokens whose mask becomes an
attention bias; CFG is one batched call on [uncond, cond], the prediction cast to float32 before the mix; the
Euler schedule uses σ = linspace(1, 1/N, N) shifted by μ = calculate_shift(F·h·w); latents are normalised
(x - mean)·sf/std; a timestep-conditioned VAE draws decode noise from the same generator after sampling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from vgen.errors import ConfigError
from vgen.models.family import AttentionSite, Family, TextEmbeds
from vgen.models.family import frames_as_images as _images
from vgen.models.hub import load_scheduler

MAX_TEXT_TOKENS = 128  # LTXPipeline's max_sequence_length
FRAME_RATE = 25  # LTXPipeline's default frame_rate: it sets the RoPE's temporal interpolation scale
DECODE_TIMESTEP = 0.0  # LTXPipeline's defaults (decode_noise_scale = decode_timestep)


def calculate_shift(seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """μ of the dynamic shift: linear in the token count between (base_seq_len, base_shift) and (max_seq_len, max_shift)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + base_shift - m * base_seq_len


class LTXFamily(Family):
    name = "ltx"
    # [run] 2 CPU processes, tiny-random-ltx: "size of tensor a (2) must match ... (4)" inside SDPA
    no_context_parallel = ("diffusers 0.42.1's LTX transformer fails under Ulysses with its text attention mask "
                           "(a size mismatch inside attention); ring is unchecked")
    summary = "LTX-Video 0.9.x (LTXVideoTransformer3DModel on packed tokens, T5 with mask)"
    pipelines = ("LTXPipeline",)
    prediction = "flow"
    default_scheduler = "model"
    schedulers = {"euler": ("FlowMatchEulerDiscreteScheduler", {})}  # the LTX folders' own
    cfg_batched = True
    one_frame_mode = True  # a 1-frame video is one latent frame (8k+1 with k = 0): an image
    guidance_in_float32 = True
    uses_text_mask = True
    leading_tokens = 0
    float32_latents = True
    cuda_dtype = torch.bfloat16
    frame_rule = "8k+1"
    lora_loader = "LTXPipeline"
    weight_subfolders = ("text_encoder", "vae", "transformer")
    processor_signature = "(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None)"

    def load(self, source: str, cfg: Any, dtype: torch.dtype) -> dict:
        from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
        from transformers import AutoTokenizer, T5EncoderModel

        common = dict(revision=cfg.revision)
        weights = dict(common, torch_dtype=dtype, variant=cfg.variant)
        return {
            "tokenizer": AutoTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
            "text_encoder": T5EncoderModel.from_pretrained(source, subfolder="text_encoder", **weights),
            "vae": AutoencoderKLLTXVideo.from_pretrained(source, subfolder="vae", **weights),
            "unet": LTXVideoTransformer3DModel.from_pretrained(source, subfolder="transformer", **weights),
            "scheduler": load_scheduler(source, cfg.revision, fallback="FlowMatchEulerDiscreteScheduler"),
        }

    def pipeline(self, components: Any):
        from diffusers import LTXPipeline

        pipe = LTXPipeline(tokenizer=components.tokenizer, text_encoder=components.text_encoder, vae=components.vae,
                           scheduler=components.scheduler, transformer=components.unet)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save(self, components: Any, folder: Path) -> None:
        self.pipeline(components).save_pretrained(folder)

    # sizes
    def spatial_factor(self, components: Any) -> int:
        return int(components.vae.spatial_compression_ratio)

    def size_multiple(self, components: Any) -> int:
        return self.spatial_factor(components) * int(components.unet.config.patch_size)

    def native_size(self, components: Any) -> tuple[int, int]:
        return tuple(components.config.get("native_size") or (512, 704))

    def video_frames(self, components: Any, frames: int) -> int:
        if _images(components):
            return frames
        k = int(components.vae.temporal_compression_ratio)
        return (frames - 1) // k * k + 1  # what LTXPipeline returns for `frames`

    def latent_frames(self, components: Any, frames: int) -> int:
        if _images(components):
            return frames
        return (frames - 1) // int(components.vae.temporal_compression_ratio) + 1

    def decoded_frames(self, components: Any, latent_frames: int) -> int:
        if _images(components):
            return latent_frames
        return (latent_frames - 1) * int(components.vae.temporal_compression_ratio) + 1

    # text
    @torch.no_grad()
    def encode_text(self, components: Any, texts: list[str]) -> TextEmbeds:
        tokens = components.tokenizer([t.strip() for t in texts], padding="max_length", max_length=MAX_TEXT_TOKENS,
                                      truncation=True, add_special_tokens=True, return_tensors="pt")
        encoder = components.text_encoder
        with components.placed(encoder):
            hidden = encoder(tokens.input_ids.to(components.device))[0]  # LTXPipeline passes no mask to T5
        return TextEmbeds(hidden.to(device=components.device, dtype=components.dtype), tokens.attention_mask.bool())

    # the model call
    def timestep_kwargs(self, scheduler: Any, shape: tuple, steps: int) -> dict:
        if not scheduler.config.get("use_dynamic_shifting", False):
            return {}
        c = scheduler.config
        mu = calculate_shift(shape[2] * shape[3] * shape[4], c.get("base_image_seq_len", 256),
                             c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}

    def predict(self, components: Any, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
                mask: Optional[torch.Tensor] = None, **model_kwargs: Any) -> torch.Tensor:
        if _images(components):  # [B, C, F, h, w] -> B·F one-frame videos, frame-major per video, and back
            b, c, f, h, w = latents.shape
            images = latents.transpose(1, 2).reshape(b * f, c, 1, h, w)
            masks = None if mask is None else mask.repeat_interleave(f, dim=0)
            out = self._call(components, images, t, embeds.repeat_interleave(f, dim=0), masks, **model_kwargs)
            return out.reshape(b, f, -1, h, w).transpose(1, 2)
        return self._call(components, latents, t, embeds, mask, **model_kwargs)

    def _call(self, components: Any, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
              mask: Optional[torch.Tensor], **model_kwargs: Any) -> torch.Tensor:
        model = components.unet
        p, pt = model.config.patch_size, model.config.patch_size_t
        b, c, f, h, w = latents.shape
        tokens = latents.reshape(b, c, f // pt, pt, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        tokens = tokens.flatten(4, 7).flatten(1, 3)
        vae = components.vae
        out = model(
            hidden_states=tokens, encoder_hidden_states=embeds, timestep=torch.as_tensor(t).expand(b),
            encoder_attention_mask=mask, num_frames=f // pt, height=h // p, width=w // p,
            rope_interpolation_scale=(vae.temporal_compression_ratio / FRAME_RATE, vae.spatial_compression_ratio,
                                      vae.spatial_compression_ratio),
            return_dict=False, **model_kwargs,
        )[0]
        out = out.reshape(b, f // pt, h // p, w // p, -1, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    # latents <-> pixels
    @torch.no_grad()
    def iter_decoded(self, components: Any, latents: torch.Tensor, chunk: int = 8,
                     generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
        """The whole video in one VAE call (LTX's VAE has no causal cache in diffusers; tiling bounds its memory).
        A timestep-conditioned VAE gets LTXPipeline's decode noise, drawn from `generator` after sampling."""
        vae = components.vae
        mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        std = vae.latents_std.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        z = (latents * std / vae.config.scaling_factor + mean).to(components.dtype)
        # image mode: each latent frame decodes as a 1-frame video, `chunk` of them per VAE call
        pieces = z.transpose(1, 2).flatten(0, 1).unsqueeze(2).split(chunk) if _images(components) else [z]
        with components.placed(vae):
            for z in pieces:
                timestep = None
                if vae.config.timestep_conditioning:
                    noise = torch.randn(z.shape, generator=generator, device=generator.device if generator else "cpu",
                                        dtype=z.dtype).to(z.device)
                    timestep = torch.full((z.shape[0],), DECODE_TIMESTEP, device=z.device, dtype=z.dtype)
                    scale = timestep[:, None, None, None, None]
                    z = (1 - scale) * z + scale * noise
                video = vae.decode(z.to(components.device, vae.dtype), timestep, return_dict=False)[0]
                for item in video:
                    yield (item.float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0).cpu()

    @torch.no_grad()
    def encode_frames(self, components: Any, frames: np.ndarray, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        vae = components.vae
        video = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
        if _images(components):  # each frame encodes as a 1-frame video: [F, 3, 1, H, W]
            video = video[0].transpose(0, 1).unsqueeze(2)
        with components.placed(vae):
            z = vae.encode(video.to(device=components.device, dtype=vae.dtype)).latent_dist.mode()
        if _images(components):
            z = z.transpose(0, 2)  # [F, C, 1, h, w] -> [1, C, F, h, w]
        mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        std = vae.latents_std.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        return ((z - mean) * vae.config.scaling_factor / std).float()

    def still_video(self, components: Any, image: torch.Tensor, frames: int) -> torch.Tensor:
        raise ConfigError("a still video from one image (I4VGen) is built on unet3d, motion, unet2d and wan models, "
                          "not yet on ltx (its causal VAE needs the pixel path with its timestep-conditioned decode)")

    def attention_sites(self, components: Any) -> list[AttentionSite]:
        """attn1 self-attention over all tokens ("spatial-self" in image mode: one frame's), attn2 cross-attention."""
        own = "spatial-self" if _images(components) else "self"
        return [AttentionSite(key, "cross" if ".attn2." in key else own) for key in components.unet.attn_processors]


@torch.no_grad()
def tiny_ltx() -> dict:
    """LTX-Video-shaped, random: diffusers' test configuration (8 latent channels, a 4x VAE, one block)."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from vgen.tiny import TINY_WORDS
    from vgen.tokenizer import build_t5_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tokenizer = build_t5_tokenizer(TINY_WORDS, model_max_length=MAX_TEXT_TOKENS)
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                                               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
            upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False,
            patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
        )
        vae.use_framewise_encoding = False
        vae.use_framewise_decoding = False
        transformer = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
            attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": transformer,
            "scheduler": scheduler, "config": {"native_size": (32, 32)}}


@torch.no_grad()
def ltx_quarter() -> dict:
    """LTX-Video 0.9's layout (28 blocks of 64-channel heads, the VAE's 32x/8x compression to 128 channels) at a
    quarter of its widths, random: for benchmarks at LTX's sizes. Its decoder is not timestep-conditioned."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from vgen.tiny import TINY_WORDS
    from vgen.tokenizer import build_t5_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tokenizer = build_t5_tokenizer(TINY_WORDS, model_max_length=MAX_TEXT_TOKENS)
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=1024, d_kv=64, d_ff=2560,
                                               num_layers=2, num_heads=16, dropout_rate=0.0, pad_token_id=0,
                                               eos_token_id=1, decoder_start_token_id=0)).eval()
        # timestep_conditioning=True with this default decoder layout fails inside diffusers' decoder (temb of the
        # wrong rank), so the quarter model decodes unconditioned; the tiny tests cover the decode-noise path's RNG order
        vae = AutoencoderKLLTXVideo(block_out_channels=(32, 64, 128, 128), decoder_block_out_channels=(32, 64, 128, 128),
                                    timestep_conditioning=False)
        transformer = LTXVideoTransformer3DModel(in_channels=128, out_channels=128, num_attention_heads=8,
                                                 attention_head_dim=64, cross_attention_dim=512, num_layers=28,
                                                 caption_channels=1024)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": transformer,
            "scheduler": scheduler, "config": {"native_size": (512, 704)}}


BUILDERS = {"tiny-random-ltx": tiny_ltx, "ltx-quarter": ltx_quarter}
FAMILY = LTXFamily()
