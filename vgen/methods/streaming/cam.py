"""CAM, the Conditional Attention Module: StreamingT2V's short-term memory (SPEC §4).

The new chunk must continue the last F_cond frames of the previous one. CAM reads them twice:
E_cond encodes the frames in pixel space, and a trainable copy of the UNet's encoder (initialised
from the UNet) runs on the chunk's first F_cond noisy latents with E_cond's features added after
its first temporal transformer. Each of the copy's skip features (and its mid-block output) then
enters the frozen base UNet through a temporal cross-attention merger: the base skip feature's
F frames ask, the CAM feature's F_cond frames answer, and the answer is added through a
zero-initialised projection, so an untrained CAM leaves the base UNet exactly as it was.

Persistence of both memories (CAM and the optional APM) lives here too: a ``streaming/`` subfolder
of a diffusers model folder with ``config.json``, ``cam.safetensors`` and ``apm.safetensors``.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vgen.errors import ModelLoadError
from vgen.methods.streaming.unet_forward import Skips, encode, per_frame, time_embedding

# ----------------------------------------------------------------------------------------------
# E_cond


class ConditionEncoder(nn.Module):
    """E_cond: conditioning frames [N, 3, H, W] in [-1, 1] -> features [N, C0, H/f, W/f].

    Stacked 3x3 convs with SiLU, one stride-2 conv per factor of two of the VAE, so the features land
    on the latent grid with the UNet's first channel width. The last conv is zero-initialised: at
    the start the encoder copy sees exactly what the UNet's encoder would.
    """

    def __init__(self, out_channels: int, factor: int, base_channels: int = 16, max_channels: int = 256):
        super().__init__()
        levels = int(round(math.log2(factor)))
        if 2**levels != factor:
            raise ValueError(f"E_cond needs a power-of-two downsampling factor, got {factor}")
        chans = [min(base_channels * 2**i, max_channels) for i in range(levels + 1)]
        layers: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, padding=1), nn.SiLU()]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.SiLU(),
                       nn.Conv2d(c_in, c_out, 3, padding=1, stride=2), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.factor = factor

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(pixels))


# ----------------------------------------------------------------------------------------------
# the trainable copy of the UNet's encoder

ENCODER_PARTS = ("conv_in", "time_proj", "time_embedding", "transformer_in", "down_blocks", "mid_block")


class EncoderCopy(nn.Module):
    """A deep copy of the UNet's encoder (conv_in, time embedding, transformer_in, down blocks, mid
    block), run by the same code as the base UNet (`unet_forward.encode`)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        for name in ENCODER_PARTS:
            setattr(self, name, copy.deepcopy(getattr(unet, name)))
        self.requires_grad_(True)  # the base UNet is frozen; its copy is what CAM trains

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, sample: torch.Tensor, timestep: Any, text_embeds: torch.Tensor,
                added: Optional[torch.Tensor] = None) -> tuple[Skips, torch.Tensor]:
        """Latents [B, C, F, h, w] -> (skip features, mid output), frame-folded like the base UNet's."""
        emb = time_embedding(self, timestep, sample)
        return encode(self, sample, emb, per_frame(text_embeds, sample.shape[2]), after_transformer_in=added)


def skip_channels(unet: nn.Module) -> list[int]:
    """Channels of the skip features UNet3D's encoder emits, in order (transformer_in's output first)."""
    chans = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        chans += [resnet.out_channels for resnet in block.resnets]
        chans += [down.out_channels for down in (block.downsamplers or [])]
    return chans


# ----------------------------------------------------------------------------------------------
# the merger: temporal cross-attention into one skip connection


def frame_positions(frames: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Sinusoidal positions [frames, dim]: frame j of the conditioning aligns with frame j of the chunk
    (the chunk's first F_cond frames re-cover the conditioning frames), and attention alone has no order."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angle = torch.arange(frames, dtype=torch.float32)[:, None] * freq[None]
    pos = torch.cat([angle.sin(), angle.cos(), torch.zeros(frames, dim - 2 * half)], dim=1)
    return pos.to(device=device, dtype=dtype)


def to_frame_tokens(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[B*F, c, h, w] -> [B*h*w, F, c]: one sequence along time per pixel."""
    bf, c, h, w = x.shape
    return x.reshape(batch, bf // batch, c, h, w).permute(0, 3, 4, 1, 2).reshape(batch * h * w, bf // batch, c)


def from_frame_tokens(x: torch.Tensor, batch: int, h: int, w: int) -> torch.Tensor:
    """[B*h*w, F, c] -> [B*F, c, h, w]."""
    _, f, c = x.shape
    return x.reshape(batch, h, w, f, c).permute(0, 3, 4, 1, 2).reshape(batch * f, c, h, w)


class TemporalCrossAttention(nn.Module):
    """x_out = x_skip + P_out(attn(q = P_in(GroupNorm(x_skip)), k, v = CAM feature)), along frames.

    Queries: the base skip feature's F frames; keys and values: the CAM feature's F_cond frames
    (GroupNorm, then the key/value projections). P_out is zero-initialised.
    """

    def __init__(self, channels: int, heads: int, groups: int, frame_pos: bool = True, eps: float = 1e-6):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads, self.frame_pos = heads, frame_pos
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.p_in = nn.Linear(channels, channels)
        self.cond_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.p_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.p_out.weight)
        nn.init.zeros_(self.p_out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, batch: int, scale: float = 1.0) -> torch.Tensor:
        """x [B*F, c, h, w] (base skip), cond [B*F_cond, c, h, w] (CAM feature) -> [B*F, c, h, w]; `scale` multiplies
        what is added (1: the paper; as a ControlNet's conditioning scale)."""
        _, c, h, w = x.shape
        query_in = self.p_in(to_frame_tokens(self.norm(x), batch))  # [B*h*w, F, c]
        cond_in = to_frame_tokens(self.cond_norm(cond), batch)  # [B*h*w, F_cond, c]
        if self.frame_pos:
            query_in = query_in + frame_positions(query_in.shape[1], c, x.device, query_in.dtype)
            cond_in = cond_in + frame_positions(cond_in.shape[1], c, x.device, cond_in.dtype)
        n = query_in.shape[0]
        q, k, v = (proj(t).reshape(n, t.shape[1], self.heads, c // self.heads).transpose(1, 2)
                   for proj, t in ((self.to_q, query_in), (self.to_k, cond_in), (self.to_v, cond_in)))
        attn = F.scaled_dot_product_attention(q, k, v)  # [n, heads, F, d]
        out = self.p_out(attn.transpose(1, 2).reshape(n, -1, c))
        return x + scale * from_frame_tokens(out, batch, h, w)


# ----------------------------------------------------------------------------------------------
# CAM


@dataclass
class CAMFeatures:
    """What CAM's encoder copy made for one UNet call: skip features and mid output, frame-folded
    [B*F_cond, c, h', w'] (the order of the base UNet's skips), for a batch of `batch` videos."""

    skips: Skips
    mid: torch.Tensor
    batch: int


def _heads(channels: int, head_dim: int) -> int:
    heads = max(1, channels // head_dim)
    while channels % heads:
        heads -= 1
    return heads


class CAM(nn.Module):
    """E_cond + encoder copy + one temporal cross-attention merger per skip feature and one for the mid.

    `config` (JSON-able) holds the options it was built with; the UNet it was built from gives the shapes.
    """

    def __init__(self, unet: nn.Module, vae_scale_factor: int, head_dim: int = 64, cond_channels: int = 16,
                 frame_pos: bool = True):
        super().__init__()
        self.config = dict(vae_scale_factor=vae_scale_factor, head_dim=head_dim, cond_channels=cond_channels,
                           frame_pos=frame_pos)
        self.unet_signature = unet_signature(unet)
        groups = unet.config.norm_num_groups
        first = unet.conv_in.out_channels
        mid = unet.mid_block.resnets[-1].out_channels

        def merger(c: int) -> TemporalCrossAttention:
            return TemporalCrossAttention(c, _heads(c, head_dim), math.gcd(groups, c), frame_pos)

        self.e_cond = ConditionEncoder(first, vae_scale_factor, cond_channels)
        self.skip_mergers = nn.ModuleList(merger(c) for c in skip_channels(unet))
        self.mid_merger = merger(mid)
        self.to(device=unet.device, dtype=unet.dtype)
        self.encoder = EncoderCopy(unet)  # after .to: a copy already on the UNet's device and dtype

    @classmethod
    def from_unet(cls, unet: nn.Module, vae_scale_factor: int = 8, **options: Any) -> "CAM":
        """A fresh CAM for a UNet3DConditionModel: encoder copied from it, E_cond's last conv and every
        P_out zero (so the conditioned UNet starts as the base UNet). `vae_scale_factor`: pixels per latent."""
        return cls(unet, vae_scale_factor, **options)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype

    def features(self, noisy: torch.Tensor, timestep: Any, text_embeds: torch.Tensor,
                 cond_pixels: torch.Tensor) -> CAMFeatures:
        """noisy [B, C, F_cond, h, w] (the chunk's first F_cond noisy latents), the chunk's timestep, text
        [B, L, D], cond_pixels [B or 1, F_cond, 3, H, W] in [-1, 1] (H = h * vae_scale_factor)."""
        b, _, fc, h, w = noisy.shape
        if cond_pixels.shape[0] == 1 and b > 1:  # one set of frames for a CFG batch
            cond_pixels = cond_pixels.expand(b, *cond_pixels.shape[1:])
        if cond_pixels.shape[:2] != (b, fc):
            raise ValueError(f"cond_pixels {tuple(cond_pixels.shape)} do not match {b} videos of {fc} latent frames")
        factor = self.e_cond.factor
        if tuple(cond_pixels.shape[-2:]) != (h * factor, w * factor):
            raise ValueError(
                f"cond_pixels are {tuple(cond_pixels.shape[-2:])} pixels, the latents need {(h * factor, w * factor)}"
            )
        added = self.e_cond(cond_pixels.reshape(b * fc, *cond_pixels.shape[2:]).to(self.dtype))
        skips, mid = self.encoder(noisy.to(self.dtype), timestep, text_embeds.to(self.dtype), added)
        return CAMFeatures(skips, mid, b)

    def merge_skips(self, skips: Skips, feats: CAMFeatures, scale: float = 1.0) -> Skips:
        """The base UNet's skip features with CAM's injected, times `scale` (a `merge_skips` hook of unet3d_forward)."""
        return tuple(m(x, c, feats.batch, scale) for m, x, c in zip(self.skip_mergers, skips, feats.skips))

    def merge_mid(self, x: torch.Tensor, feats: CAMFeatures, scale: float = 1.0) -> torch.Tensor:
        return self.mid_merger(x, feats.mid, feats.batch, scale)


# ----------------------------------------------------------------------------------------------
# persistence: <model folder>/streaming/{config.json, cam.safetensors, apm.safetensors}

FOLDER = "streaming"
FORMAT = 1


class Streaming(NamedTuple):
    """The trained memories that ship with a model (APM is None after CAM-only training)."""

    cam: CAM
    apm: Optional[Any]  # apm.APM


def load_seam_check(folder: str | Path) -> Optional[dict]:
    """What ``folder/streaming/config.json`` records of the memories' seam test (scripts/compare_streaming.py
    --record): {"passed": bool, "object_ratio", "background_ratio", "floor", "settings", "measured", ...}; None when
    never measured (or no weights). mode=auto uses the memories only when it passed at the job's `settings`."""
    path = Path(folder) / FOLDER / "config.json"
    if not path.is_file():
        return None
    check = json.loads(path.read_text()).get("seam_check")
    return check if isinstance(check, dict) else None


def unet_signature(unet: nn.Module) -> dict:
    """The UNet shape the weights were trained for (checked on load)."""
    cfg = unet.config
    return dict(block_out_channels=list(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                in_channels=cfg.in_channels, cross_attention_dim=cfg.cross_attention_dim,
                down_block_types=list(cfg.down_block_types))


def save_streaming(folder: str | Path, cam: CAM, apm: Optional[Any] = None, dtype: Optional[torch.dtype] = None,
                   seam_check: Optional[dict] = None) -> Path:
    """Write CAM (and APM) into ``folder/streaming/``; `folder` is usually a diffusers model folder.
    `dtype` casts floating tensors on the way out (float16 for a shipped model); `seam_check` is recorded."""
    from safetensors.torch import save_file

    out = Path(folder) / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "cam": cam.config, "apm": apm.config if apm is not None else None,
              "unet": cam.unet_signature}
    if seam_check is not None:
        config["seam_check"] = seam_check
    tensors = {"cam": cam, "apm": apm}
    for name, module in tensors.items():
        path = out / f"{name}.safetensors"
        if module is None:
            path.unlink(missing_ok=True)
            continue
        state = {k: v.detach().cpu().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
                 for k, v in module.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt"})
        path.chmod(0o644)  # safetensors writes 0600; shipped weights must be readable by every user
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def load_streaming(folder: str | Path, unet: nn.Module, vae: Optional[nn.Module] = None,
                   device: Any = None, dtype: Optional[torch.dtype] = None) -> Optional[Streaming]:
    """(cam, apm) from ``folder/streaming/``, built on `unet` (its device and dtype unless given);
    None when the folder ships no streaming weights. A "vae" anchor encoder needs the model's `vae`."""
    from safetensors.torch import load_file

    src = Path(folder) / FOLDER
    if not (src / "config.json").is_file():
        return None
    config = json.loads((src / "config.json").read_text())
    if config.get("format") != FORMAT:
        raise ModelLoadError(f"{src}: streaming weights of format {config.get('format')}, this vgen reads {FORMAT}")
    if config["unet"] != unet_signature(unet):
        raise ModelLoadError(f"{src}: streaming weights were trained for another UNet shape ({config['unet']})")
    if not (src / "cam.safetensors").is_file():
        raise ModelLoadError(f"{src}: cam.safetensors is missing, the streaming weights are incomplete (save them again, "
                             "or remove the streaming/ folder to run training-free)")
    if config.get("apm") is not None and not (src / "apm.safetensors").is_file():
        raise ModelLoadError(f"{src}: config.json lists APM but apm.safetensors is missing (set \"apm\": null in "
                             "config.json to run with CAM alone)")
    cam = CAM.from_unet(unet, **config["cam"])
    cam.load_state_dict(load_file(str(src / "cam.safetensors")))
    apm = None
    if config.get("apm") is not None:
        from vgen.methods.streaming.apm import APM

        apm = APM.from_config(config["apm"], vae=vae, device=unet.device, dtype=unet.dtype)
        apm.load_state_dict(load_file(str(src / "apm.safetensors")))
    for module in (cam, apm):
        if module is not None and (device is not None or dtype is not None):
            module.to(device=device, dtype=dtype)
    return Streaming(cam, apm)
