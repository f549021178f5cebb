"""APM, the Appearance Preservation Module: StreamingT2V's long-term memory (SPEC §4).

Chunk after chunk, objects drift unless every chunk sees how the video began. APM embeds an anchor
image (frame 0 of the first chunk) with a frozen image encoder, and an MLP expands the embedding to
k = 16 tokens of the text width, appended to the text tokens (L + k). Each spatial cross-attention
layer l mixes them back into L tokens with its own linear map over the token axis and a LayerNorm,
x_mixed, and attends to x_text + SiLU(α_l)·x_mixed; α_l starts at 0, so an untrained APM is the
identity. Only the spatial Transformer2DModel attn2 layers see the tokens: UNet3D's temporal
transformers attend along frames and are called without encoder_hidden_states.

Anchor encoders: "vae" (the model's own VAE latent of the anchor, pooled and flattened; the toy
world has no CLIP vision model) and "clip" (CLIPVisionModelWithProjection's image_embeds, the
paper's choice). A null anchor is a mid-grey image.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vgen.core.attention import AttentionLayer, attention_layers, attention_processors
from vgen.errors import ModelLoadError

# ----------------------------------------------------------------------------------------------
# anchor image encoders (frozen; not part of APM's parameters)


class AnchorEncoder(Protocol):
    feat_dim: int
    spec: dict  # JSON-able, enough to rebuild it (with the model's VAE for "vae")

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> features [B, feat_dim] (float32, no gradient)."""


class VaeAnchorEncoder:
    """The model's own VAE: the anchor's latent mean, average-pooled to pool x pool, flattened."""

    def __init__(self, vae: nn.Module, pool: int = 8):
        self.vae, self.pool = vae, pool
        self.feat_dim = vae.config.latent_channels * pool * pool
        self.spec = {"kind": "vae", "pool": pool}

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        posterior = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
        latents = posterior.mean.float() * vae.config.scaling_factor
        return F.adaptive_avg_pool2d(latents, self.pool).flatten(1)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's, also used by OpenCLIP's ViT-H/14
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipAnchorEncoder:
    """CLIPVisionModelWithProjection (hub id or local folder): image_embeds of the anchor."""

    def __init__(self, source: str, device: Any = None, dtype: Optional[torch.dtype] = None):
        from transformers import CLIPVisionModelWithProjection

        local = Path(source).expanduser()
        try:
            if not local.is_dir():
                from vgen.models import hub_reachable

                if not hub_reachable():
                    raise OSError("hub unreachable")
            model = CLIPVisionModelWithProjection.from_pretrained(str(local) if local.is_dir() else source,
                                                                  torch_dtype=dtype)
        except Exception as err:  # noqa: BLE001 - any failure is one line for the user
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelLoadError(
                f"APM image encoder '{source}' could not be loaded as a CLIP vision model ({reason}); "
                f"pass a local folder or use the 'vae' anchor encoder"
            ) from None
        self.model = model.requires_grad_(False).eval().to(device)
        self.size = model.config.image_size
        self.feat_dim = model.config.projection_dim
        self.spec = {"kind": "clip", "source": source}

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.float() + 1) / 2
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)  # CLIP's preprocessing: shortest side to size, centre crop
        x = F.interpolate(x, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        mean = torch.tensor(CLIP_MEAN, device=x.device)[:, None, None]
        std = torch.tensor(CLIP_STD, device=x.device)[:, None, None]
        x = ((x - mean) / std).to(device=self.model.device, dtype=self.model.dtype)
        return self.model(pixel_values=x).image_embeds.float()


def anchor_encoder(kind: str = "vae", *, vae: Optional[nn.Module] = None, source: Optional[str] = None,
                   pool: int = 8, device: Any = None, dtype: Optional[torch.dtype] = None) -> AnchorEncoder:
    """Build an anchor encoder by kind: "vae" (needs the model's `vae`) or "clip" (needs `source`)."""
    if kind == "vae":
        if vae is None:
            raise ValueError("the 'vae' anchor encoder needs the model's VAE")
        return VaeAnchorEncoder(vae, pool)
    if kind == "clip":
        if not source:
            raise ValueError("the 'clip' anchor encoder needs a source (hub id or local folder)")
        return ClipAnchorEncoder(source, device, dtype)
    raise ValueError(f"unknown anchor encoder '{kind}'; choose 'vae' or 'clip'")


def grey_anchor(batch: int, height: int, width: int, device: Any = None) -> torch.Tensor:
    """The null anchor: mid-grey images [B, 3, H, W] (0 in [-1, 1])."""
    return torch.zeros(batch, 3, height, width, device=device)


# ----------------------------------------------------------------------------------------------
# the per-layer token mixer and its attention processor


class TokenMixer(nn.Module):
    """x_text + SiLU(α)·LayerNorm(W·[x_text; x_anchor]) over the token axis (L + k -> L), α = 0 at start.

    W starts as the identity on the text tokens (plus nn.Linear's random init on the anchor tokens), so
    once α moves, x_mixed begins as the normalised text with a little of the anchor in it.
    """

    def __init__(self, text_len: int, anchor_len: int, dim: int):
        super().__init__()
        self.text_len, self.anchor_len = text_len, anchor_len
        self.mix = nn.Linear(text_len + anchor_len, text_len)
        with torch.no_grad():
            self.mix.weight[:, :text_len] = torch.eye(text_len)
            self.mix.bias.zero_()
        self.norm = nn.LayerNorm(dim)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, L + k, D] -> [N, L, D]."""
        if tokens.shape[1] != self.text_len + self.anchor_len:
            raise ValueError(
                f"APM layers expect {self.text_len} text + {self.anchor_len} anchor tokens, got {tokens.shape[1]} "
                f"(append the anchor tokens with apm.append)"
            )
        mixed = self.norm(self.mix(tokens.transpose(1, 2)).transpose(1, 2))
        return tokens[:, : self.text_len] + F.silu(self.alpha) * mixed


class APMProcessor:
    """Wraps a layer's own processor: its cross-attention sees the mixed L tokens instead of L + k."""

    def __init__(self, mixer: TokenMixer, inner: Any):
        self.mixer, self.inner = mixer, inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("APM processor on a self-attention layer: it belongs on spatial cross-attention only")
        mixed = self.mixer(encoder_hidden_states)
        return self.inner(attn, hidden_states, mixed, attention_mask, temb, *args, **kwargs)


def apm_layers(unet: nn.Module) -> list[AttentionLayer]:
    """The spatial cross-attention layers: attn2 of the Transformer2DModels (``.attentions.``)."""
    return [layer for layer in attention_layers(unet) if layer.role == "cross" and ".attentions." in layer.name]


def _key(name: str) -> str:
    return name.removesuffix(".processor").replace(".", "_")


# ----------------------------------------------------------------------------------------------
# APM


class APM(nn.Module):
    """Anchor MLP (feat_dim -> k tokens of width D) + one TokenMixer per spatial cross-attention layer.

    The anchor encoder is frozen and kept outside the parameters (`apm.parameters()` is what trains).
    """

    def __init__(self, layers: list[str], text_len: int, text_dim: int, encoder: AnchorEncoder,
                 tokens: int = 16, hidden: Optional[int] = None):
        super().__init__()
        hidden = hidden or text_dim
        self.config = dict(layers=list(layers), text_len=text_len, text_dim=text_dim, tokens=tokens, hidden=hidden,
                           feat_dim=encoder.feat_dim, encoder=encoder.spec)
        self.text_len, self.tokens, self.text_dim = text_len, tokens, text_dim
        self.mlp = nn.Sequential(nn.Linear(encoder.feat_dim, hidden), nn.SiLU(), nn.Linear(hidden, tokens * text_dim))
        self.mixers = nn.ModuleDict({_key(name): TokenMixer(text_len, tokens, text_dim) for name in layers})
        object.__setattr__(self, "encoder", encoder)  # not a submodule: frozen, not saved, not trained

    @classmethod
    def from_unet(cls, unet: nn.Module, text_len: int, encoder: AnchorEncoder, tokens: int = 16,
                  hidden: Optional[int] = None) -> "APM":
        """A fresh APM (every α = 0) for the UNet's spatial cross-attention layers. `text_len`: the
        tokenizer's length (``tokenizer.model_max_length``); `encoder`: from `anchor_encoder(...)`."""
        layers = [layer.name for layer in apm_layers(unet)]
        if not layers:
            raise ValueError("this UNet has no spatial cross-attention layers for APM")
        apm = cls(layers, text_len, unet.config.cross_attention_dim, encoder, tokens, hidden)
        return apm.to(device=unet.device, dtype=unet.dtype)

    @classmethod
    def from_config(cls, config: dict, vae: Optional[nn.Module] = None, device: Any = None,
                    dtype: Optional[torch.dtype] = None) -> "APM":
        """Rebuild from `config` (as saved): the encoder from its spec (the model's `vae` for "vae")."""
        spec = dict(config["encoder"])
        encoder = anchor_encoder(spec.pop("kind"), vae=vae, device=device, **spec)
        if encoder.feat_dim != config["feat_dim"]:
            raise ModelLoadError(
                f"APM anchor encoder gives {encoder.feat_dim} features, the weights expect {config['feat_dim']}"
            )
        apm = cls(config["layers"], config["text_len"], config["text_dim"], encoder, config["tokens"], config["hidden"])
        return apm.to(device=device, dtype=dtype)

    def anchor_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Anchor images [B, 3, H, W] in [-1, 1] -> tokens [B, k, D] (gradient flows into the MLP only)."""
        weight = self.mlp[0].weight
        feats = self.encoder(pixels).to(device=weight.device, dtype=weight.dtype)
        return self.mlp(feats).reshape(pixels.shape[0], self.tokens, self.text_dim)

    def null_tokens(self, batch: int, height: int, width: int) -> torch.Tensor:
        """Tokens of the null anchor (a mid-grey image of the video's size)."""
        return self.anchor_tokens(grey_anchor(batch, height, width, self.mlp[0].weight.device))

    def append(self, text_embeds: torch.Tensor, anchor_tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, D] text + [B or 1, k, D] anchor -> [B, L + k, D], what the APM layers expect."""
        if text_embeds.shape[1] != self.text_len:
            raise ValueError(f"APM was built for {self.text_len} text tokens, got {text_embeds.shape[1]}")
        if anchor_tokens.shape[0] == 1 and text_embeds.shape[0] > 1:
            anchor_tokens = anchor_tokens.expand(text_embeds.shape[0], -1, -1)
        return torch.cat([text_embeds, anchor_tokens.to(text_embeds.dtype)], dim=1)

    def _installed_on(self, unet: nn.Module) -> bool:
        mixers = {id(m) for m in self.mixers.values()}
        return any(isinstance(p, APMProcessor) and id(p.mixer) in mixers for p in unet.attn_processors.values())

    @contextmanager
    def installed(self, unet: nn.Module) -> Iterator[None]:
        """APM processors on the UNet's spatial cross-attention layers for the block (re-entrant)."""
        if self._installed_on(unet):
            yield
            return
        missing = {_key(name) for name in self.config["layers"]} - {_key(layer.name) for layer in apm_layers(unet)}
        if missing:
            raise ValueError(f"APM layers not in this UNet: {sorted(missing)[:3]}")

        def factory(layer: AttentionLayer) -> Optional[APMProcessor]:
            key = _key(layer.name)
            return APMProcessor(self.mixers[key], layer.module.processor) if key in self.mixers else None

        with attention_processors(unet, factory):
            yield
