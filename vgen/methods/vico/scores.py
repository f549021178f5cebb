"""From a flow [F, P, J] to the loss: each key token's smoothed map, its score A_k (the map's max), and the
objective that raises the weakest key token."""

from __future__ import annotations

import torch

from vgen.methods.vico.keys import KeyToken


def smoothing_kernel3d(sigma: float, kind: str = "official", size: int = 3) -> torch.Tensor:
    """Normalised size^3 kernel over (frames, height, width), a product of one weight per axis offset d.

    official: exp(-(d / (2σ))²) (the public code's GaussianSmoothing: with σ 0.5 an effective σ of 0.71 and
    a centre weight of 0.19); textbook: exp(-d² / (2σ²)) (σ 0.5: centre 0.49).
    """
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-((d / (2 * sigma)) ** 2)) if kind == "official" else torch.exp(-(d**2) / (2 * sigma**2))
    k = g[:, None, None] * g[None, :, None] * g[None, None, :]
    return (k / k.sum()).float()


def smooth_maps(maps: torch.Tensor, sigma: float, kind: str = "official") -> torch.Tensor:
    """Smooth [K, F, h, w] maps with the 3x3x3 kernel. Borders: reflect (public code), or replicate for the
    textbook kernel and along any axis of length 1 (reflection needs two samples)."""
    if sigma <= 0:
        return maps
    x = maps[:, None]
    mode = "reflect" if kind == "official" and min(maps.shape[1:]) >= 2 else "replicate"
    x = torch.nn.functional.pad(x, (1, 1, 1, 1, 1, 1), mode=mode)
    return torch.nn.functional.conv3d(x, smoothing_kernel3d(sigma, kind).to(maps)[None, None])[:, 0]


def token_maps(flow: torch.Tensor, keys: list[KeyToken], n_tokens: int, h: int, w: int,
               scale: float = 100.0, sigma: float = 0.5, smoothing: str = "official", lead: int = 1) -> torch.Tensor:
    """Each key token's smoothed map [K, F, h, w]: softmax over the real tokens of scale*flow, the key's
    span summed (a multi-token word holds its span's share), then the 3x3x3 smoothing. Real tokens are
    lead .. n_tokens-2: after the ``lead`` start tokens (CLIP 1, T5/UMT5 0), before the end token."""
    F = flow.shape[0]
    probs = (flow[..., lead : n_tokens - 1].float() * scale).softmax(dim=-1)  # real tokens only
    maps = torch.stack([probs[..., [i - lead for i in k.indices]].sum(-1) for k in keys])  # [K, F, P]
    return smooth_maps(maps.reshape(len(keys), F, h, w), sigma, smoothing)


def token_scores(maps: torch.Tensor) -> torch.Tensor:
    """A_k = max of key token k's smoothed map."""
    return maps.flatten(1).amax(dim=1)


def vico_loss(scores: torch.Tensor, objective: str = "hinge") -> torch.Tensor:
    """hinge (public code): max_k relu(1 - A_k); min (paper): -min_k A_k. Both raise the weakest token."""
    if objective == "min":
        return -scores.min()
    return torch.relu(1 - scores).max()
