"""Why do trained memories act or not: numbers to read before (and while) training CAM and APM.

- share: how much CAM, and APM on top of it, change the noise prediction, relative to the base UNet's
  (|ε_cam - ε_base| / |ε_base|), at a few timesteps, on training clips;
- alpha: SiLU(α_l) per APM layer, and the anchor term's size against the text term in that layer
  (|SiLU(α)·x_mixed| / |x_text|);
- grads: gradient norms of one training step, per part (the zero-initialised outputs P_out and E_cond's
  last conv, α, the rest), which says whether a part can move at all;
- cond: what E_cond reads at training (clean renders) and at inference (the model's own decodes):
  mean, std and sharpness (mean |horizontal difference|) of the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Diagnosis:
    share: dict[str, dict[int, float]] = field(default_factory=dict)  # "cam" | "apm" -> t -> relative change
    alpha: dict[str, tuple[float, float]] = field(default_factory=dict)  # layer -> (SiLU(α), anchor/text ratio)
    grads: dict[str, float] = field(default_factory=dict)  # part -> gradient norm
    cond: dict[str, dict[str, float]] = field(default_factory=dict)  # "train" | "roundtrip" | ... -> stats

    def render(self) -> str:
        lines = ["prediction change (|delta eps| / |eps_base|) by timestep:"]
        for name, by_t in self.share.items():
            lines.append(f"  {name:4s} " + "  ".join(f"t={t}: {v:.3f}" for t, v in by_t.items()))
        if self.alpha:
            lines.append("APM layers: SiLU(alpha), |anchor term| / |text term|:")
            for layer, (a, r) in self.alpha.items():
                lines.append(f"  {a:7.4f}  {r:7.4f}  {layer}")
        lines.append("gradient norms of one step:")
        lines += [f"  {k:24s} {v:.3e}" for k, v in self.grads.items()]
        lines.append("conditioning pixels (mean, std, sharpness):")
        for k, st in self.cond.items():
            lines.append(f"  {k:10s} " + "  ".join(f"{n} {v:.3f}" for n, v in st.items()))
        return "\n".join(lines)


def pixel_stats(pixels: torch.Tensor) -> dict[str, float]:
    """Pixels in [-1, 1]: mean, std, sharpness (mean absolute difference of horizontal neighbours)."""
    x = pixels.float()
    return {"mean": float(x.mean()), "std": float(x.std()), "sharp": float((x[..., 1:] - x[..., :-1]).abs().mean())}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@torch.no_grad()
def _shares(trainer, batch: dict, timesteps: tuple[int, ...]) -> dict[str, dict[int, float]]:
    from vgen.methods.streaming.unet_forward import streaming_unet_forward, unet3d_forward

    unet = trainer.base.unet
    latents = trainer.encode(batch["chunk"])
    cond = trainer.condition_frames(batch["cond"], latents[:, :, : batch["cond"].shape[1]])
    text = trainer.embed(batch["captions"])
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=gen)
    out: dict[str, dict[int, float]] = {"cam": {}}
    if trainer.apm is not None:
        out["apm"] = {}
        tokens = trainer.apm.anchor_tokens(batch["anchor"])
    for t in timesteps:
        tt = torch.full((latents.shape[0],), t, dtype=torch.long)
        noisy = trainer.noise_sched.add_noise(latents, noise, tt)
        base = unet3d_forward(unet, noisy, tt, text)
        cam = streaming_unet_forward(unet, noisy, tt, text, cam=trainer.cam, cond_pixels=cond)
        out["cam"][t] = _rel(cam, base)
        if trainer.apm is not None:
            both = streaming_unet_forward(unet, noisy, tt, text, cam=trainer.cam, cond_pixels=cond, apm=trainer.apm,
                                          anchor_tokens=tokens)
            out["apm"][t] = _rel(both, cam)
    return out


@torch.no_grad()
def _alphas(trainer, batch: dict) -> dict[str, tuple[float, float]]:
    apm = trainer.apm
    text = trainer.embed(batch["captions"])
    tokens = apm.append(text, apm.anchor_tokens(batch["anchor"]))
    out = {}
    for key, mixer in apm.mixers.items():
        mixed = mixer.norm(mixer.mix(tokens.transpose(1, 2)).transpose(1, 2))
        term = F.silu(mixer.alpha) * mixed
        out[key] = (float(F.silu(mixer.alpha)), float(term.norm() / text.norm()))
    return out


def _grads(trainer, batch: dict) -> dict[str, float]:
    for m in trainer.modules.values():
        m.zero_grad(set_to_none=True)
    trainer.loss(batch).backward()
    parts: dict[str, list[torch.Tensor]] = {}
    for name, module in trainer.modules.items():
        for key, p in module.named_parameters():
            if p.grad is None:
                continue
            if key.endswith("p_out.weight") or key.endswith("p_out.bias"):
                part = f"{name}: P_out"
            elif key.startswith("e_cond.out."):
                part = f"{name}: E_cond out"
            elif key.startswith("e_cond."):
                part = f"{name}: E_cond body"
            elif key.startswith("encoder."):
                part = f"{name}: encoder copy"
            elif key.endswith(".alpha"):
                part = f"{name}: alpha"
            elif key.startswith("mlp."):
                part = f"{name}: anchor MLP"
            elif "mixers." in key:
                part = f"{name}: mixers"
            else:
                part = f"{name}: mergers (q/k/v/norm)"
            parts.setdefault(part, []).append(p.grad.detach().flatten())
    for m in trainer.modules.values():
        m.zero_grad(set_to_none=True)
    return {k: float(torch.cat(v).norm()) for k, v in sorted(parts.items())}


@torch.no_grad()
def _inference_cond(trainer, prompt: str, steps: int, seed: int) -> torch.Tensor:
    """The last F_cond decoded frames of a first chunk made by the base model (what chunk 2's E_cond reads)."""
    from vgen.core.prompts import encode_prompt
    from vgen.core.sampler import decode_latents, denoise, latent_shape
    from vgen.core.schedulers import prepare_scheduler
    from vgen.methods.streaming.train import to_model_pixels_batch

    base = trainer.base
    h, w = base.native_size
    sched = prepare_scheduler("ddim", base.scheduler, steps, base.device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(latent_shape(base, trainer.cfg.chunk, h, w), generator=gen)
    lat = denoise(base, sched, x * sched.init_noise_sigma, encode_prompt(base, prompt, "", 7.5), 7.5, generator=gen,
                  eta=1.0, progress=False)
    return to_model_pixels_batch(decode_latents(base, lat[:, :, -trainer.cfg.cond_frames :]))


def diagnose(trainer, timesteps: tuple[int, ...] = (100, 500, 900), prompt: str = "a blue circle moving right",
             steps: int = 10, seed: int = 0) -> Diagnosis:
    """All four readings on one fixed training batch (the trainer's RNG advances by one batch)."""
    batch = trainer.batch()
    d = Diagnosis(share=_shares(trainer, batch, timesteps), grads=_grads(trainer, batch))
    if trainer.apm is not None:
        d.alpha = _alphas(trainer, batch)
    d.cond["train"] = pixel_stats(batch["cond"])
    lat = trainer.encode(batch["cond"])
    from vgen.core.sampler import decode_latents
    from vgen.methods.streaming.train import to_model_pixels_batch

    d.cond["roundtrip"] = pixel_stats(to_model_pixels_batch(decode_latents(trainer.base, lat)))
    d.cond["inference"] = pixel_stats(_inference_cond(trainer, prompt, steps, seed))
    return d
