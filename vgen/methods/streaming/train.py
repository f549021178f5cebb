"""Train StreamingT2V's memories on the toy world (SPEC §4): the base UNet frozen, CAM first, then CAM+APM.

One example is a clip of 2F frames (32 for F = 16): the anchor is a random frame of the first F, the
conditioning frames are F..F+F_cond-1, and the chunk to denoise is F..2F-1, whose first F_cond frames
re-cover the conditioning frames (as at inference). Text, anchor, or both are dropped with 5% each so the
multi-conditional guidance has its unconditional terms. Checkpoints are resumable; `export` writes the
weights into the model folder's `streaming/` where the runner finds them.

Why the first toy weights stayed inert, and the levers against it (all options, paper values reachable):
- Every output starts at zero (P_out, E_cond's last conv, α_l) and Adam moves a parameter by about lr per
  step: 300 steps at 3e-4 left SiLU(α) <= 0.03. The new parts (`lr_new`) and α (`lr_alpha`) get their own
  learning rates; the encoder copy, initialised from the UNet, keeps `lr`.
- At inference the conditioning frames are the model's own decodes, not clean renders: `cond_roundtrip`
  feeds E_cond VAE-decoded latents, and `cond_noise` adds Gaussian pixel noise (std drawn in [0, cond_noise]).
- Why the trained toy chunks froze: the toy world fits a whole clip's path inside the frame, so a 32-frame clip
  moves its objects at ~0.7 px/frame, a quarter of the 8-frame clips the base model learned (2-3.5 px/frame),
  and the memories learned that later chunks crawl. `clip_motion="bounce"` keeps the short clips' speed over
  the 32 frames, objects bouncing off the border (toyworld.sample_scene(bounce=True)); `clip_speed` widens the
  speeds, so CAM learns to continue the speed it is shown (the base model's 16-frame chunks move faster than
  its 8-frame training clips) rather than the training clips' mean.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

STAGES = ("cam", "cam+apm")
CLIP_MOTIONS = ("slow", "bounce")


@dataclass
class StreamingTrainConfig:
    model: str = "toy"  # the base video model (built-in name or folder); it stays frozen
    stage: str = "cam"  # cam | cam+apm (cam+apm starts from the cam stage's checkpoint when given)
    out: str = "runs/streaming"
    init: Optional[str] = None  # cam+apm: the cam stage's checkpoint to start from
    steps: int = 1000
    batch: int = 4
    chunk: int = 16  # F
    cond_frames: int = 8  # F_cond
    lr: float = 5e-5  # the paper's, for the encoder copy (initialised from the UNet); short CPU runs want more
    lr_new: Optional[float] = None  # mergers, E_cond, APM's MLP and mixers (zero-initialised outputs); None = lr
    lr_alpha: Optional[float] = None  # APM's α_l (SiLU(0) = 0: they must travel far); None = lr_new
    cond_roundtrip: bool = False  # E_cond reads decode(encode(frames)), as at inference, not clean renders
    cond_noise: float = 0.0  # pixel noise on the conditioning frames, std ~ U(0, cond_noise) per clip
    clip_motion: str = "slow"  # slow: the toy world's long-clip layout (objects slow down to fit the frame);
    # bounce: the short clips' speed, objects bouncing off the border
    clip_speed: Optional[tuple] = None  # bounce: (low, high) px/frame at 64 px (None = the toy's 2-3.5)
    p_drop: float = 0.05  # drop text / anchor / both, each with this probability
    new_frame_weight: float = 1.0  # loss weight of the chunk's new frames against the re-covering ones (1: the paper's
    # plain mean); more asks CAM to continue the motion rather than re-cover what it is shown
    anchor_tokens: int = 16
    head_dim: int = 16
    seed: int = 0
    threads: int = 1
    resume: bool = False
    save_every: int = 100
    log_every: int = 10
    progress: bool = True


class StreamingTrainer:
    """The frozen base (text encoder, VAE, UNet3D), the trainable CAM (+ APM), one optimizer, the RNGs."""

    def __init__(self, cfg: StreamingTrainConfig):
        from vgen.config import ModelConfig
        from vgen.methods.streaming.apm import APM, anchor_encoder
        from vgen.methods.streaming.cam import CAM
        from vgen.models import load_components

        if cfg.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {cfg.stage!r}")
        if cfg.cond_frames >= cfg.chunk:
            raise ValueError("cond_frames must be smaller than chunk")
        if cfg.clip_motion not in CLIP_MOTIONS:
            raise ValueError(f"clip_motion must be one of {', '.join(CLIP_MOTIONS)}, got {cfg.clip_motion!r}")
        if cfg.new_frame_weight <= 0:
            raise ValueError(f"new_frame_weight must be positive, got {cfg.new_frame_weight}")
        if cfg.clip_speed is not None and cfg.clip_motion != "bounce":
            raise ValueError("clip_speed needs clip_motion='bounce' (the slow layout sets its own speeds)")
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.step_count = 0
        self.base = load_components(ModelConfig(id=cfg.model), "cpu", torch.float32)
        if self.base.kind != "unet3d":
            raise ValueError(f"StreamingT2V trains on a UNet3D model; '{cfg.model}' is {self.base.kind}")
        unet = self.base.unet
        self.cam = CAM.from_unet(unet, self.base.vae_scale_factor, head_dim=cfg.head_dim)
        self.apm = None
        if cfg.stage == "cam+apm":
            encoder = anchor_encoder("vae", vae=self.base.vae)
            self.apm = APM.from_unet(unet, self.base.tokenizer.model_max_length, encoder, tokens=cfg.anchor_tokens)
        if cfg.init:
            self.init_from(Path(cfg.init))
        self.modules = {"cam": self.cam} | ({"apm": self.apm} if self.apm is not None else {})
        self.opt = torch.optim.AdamW(self.param_groups(), weight_decay=0.0)
        from vgen.core.schedulers import make_scheduler

        self.noise_sched = make_scheduler("ddpm", self.base.scheduler)

    def init_from(self, src: Path) -> None:
        """Start from a checkpoint (its CAM, and its APM when both have one) or a model folder's shipped
        streaming/ weights."""
        if src.is_dir():
            from vgen.methods.streaming.cam import load_streaming

            shipped = load_streaming(src, self.base.unet, vae=self.base.vae, dtype=torch.float32)
            if shipped is None:
                raise ValueError(f"{src} has no streaming/ weights to start from")
            state = {"cam": shipped.cam.state_dict(), "apm": shipped.apm.state_dict() if shipped.apm else None}
        else:
            state = torch.load(src, map_location="cpu", weights_only=False)
        self.cam.load_state_dict(state["cam"])
        if self.apm is not None and state.get("apm") is not None:
            self.apm.load_state_dict(state["apm"])

    def lrs(self) -> dict[str, float]:
        lr_new = self.cfg.lr if self.cfg.lr_new is None else self.cfg.lr_new
        return {"copy": self.cfg.lr, "new": lr_new, "alpha": lr_new if self.cfg.lr_alpha is None else self.cfg.lr_alpha}

    def param_groups(self) -> list[dict]:
        """Three groups: CAM's encoder copy (lr), the zero-initialised new parts (lr_new), APM's α (lr_alpha)."""
        groups: dict[str, list] = {"copy": [], "new": [], "alpha": []}
        for name, module in self.modules.items():
            for key, p in module.named_parameters():
                part = "copy" if key.startswith("encoder.") else "alpha" if key.endswith(".alpha") else "new"
                groups[part].append(p)
        lrs = self.lrs()
        return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]

    # -- data -------------------------------------------------------------------------------------
    def batch(self) -> dict:
        """Captions and the clip layout of SPEC §4 (anchor / conditioning / chunk), pixels in [-1, 1]."""
        from vgen.toyworld import sample_training_batch

        cfg, (h, w) = self.cfg, self.base.native_size
        captions, clips = sample_training_batch(self.rng, cfg.batch, 2 * cfg.chunk, h,
                                                bounce=cfg.clip_motion == "bounce",
                                                speed_range=tuple(cfg.clip_speed) if cfg.clip_speed else None)
        pixels = torch.from_numpy(clips).float().div(127.5).sub(1).permute(0, 1, 4, 2, 3)  # [B, 2F, 3, H, W]
        F, Fc = cfg.chunk, cfg.cond_frames
        anchor_idx = self.rng.integers(0, F, cfg.batch)
        drop = self.rng.random(cfg.batch)  # [0, p): text; [p, 2p): anchor; [2p, 3p): both
        p = cfg.p_drop
        drop_text = (drop < p) | ((drop >= 2 * p) & (drop < 3 * p))
        drop_anchor = drop >= p
        drop_anchor &= drop < 3 * p
        return {
            "captions": ["" if d else c for c, d in zip(captions, drop_text)],
            "anchor": pixels[np.arange(cfg.batch), anchor_idx],
            "drop_anchor": torch.from_numpy(drop_anchor),
            "cond": pixels[:, F : F + Fc],
            "chunk": pixels[:, F : 2 * F],
        }

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, F, 3, H, W] in [-1, 1] -> latents [B, C, F, h, w] (the VAE posterior mean, as at inference)."""
        vae = self.base.vae
        b, f = frames.shape[:2]
        lat = vae.encode(frames.reshape(b * f, *frames.shape[2:])).latent_dist.mean * vae.config.scaling_factor
        return lat.reshape(b, f, *lat.shape[1:]).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def embed(self, captions: list[str]) -> torch.Tensor:
        from vgen.core.prompts import encode_text

        return encode_text(self.base, captions)

    @torch.no_grad()
    def condition_frames(self, pixels: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """What E_cond reads: the clean frames, or (cond_roundtrip) their latents decoded as at inference,
        plus pixel noise of a per-clip std in [0, cond_noise]; [B, F_cond, 3, H, W] in [-1, 1]."""
        if self.cfg.cond_roundtrip:
            from vgen.core.sampler import decode_latents

            pixels = to_model_pixels_batch(decode_latents(self.base, latents))
        if self.cfg.cond_noise > 0:
            std = torch.from_numpy(self.rng.uniform(0, self.cfg.cond_noise, pixels.shape[0])).float()
            pixels = pixels + std[:, None, None, None, None] * torch.randn_like(pixels)
        return pixels

    # -- one step ---------------------------------------------------------------------------------
    def loss(self, batch: dict) -> torch.Tensor:
        from vgen.methods.streaming.unet_forward import streaming_unet_forward

        latents = self.encode(batch["chunk"])
        cond = self.condition_frames(batch["cond"], latents[:, :, : batch["cond"].shape[1]])
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (latents.shape[0],))
        noisy = self.noise_sched.add_noise(latents, noise, t)
        text = self.embed(batch["captions"])
        tokens = None
        if self.apm is not None:
            h, w = batch["anchor"].shape[-2:]
            real = self.apm.anchor_tokens(batch["anchor"])
            null = self.apm.null_tokens(real.shape[0], h, w)
            tokens = torch.where(batch["drop_anchor"][:, None, None], null, real)
        pred = streaming_unet_forward(self.base.unet, noisy, t, text, cam=self.cam, cond_pixels=cond,
                                      apm=self.apm, anchor_tokens=tokens)
        return frame_weighted_mse(pred, noise, self.cfg.cond_frames, self.cfg.new_frame_weight)

    def step(self) -> dict[str, float]:
        for m in self.modules.values():
            m.train()
        loss = self.loss(self.batch())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for m in self.modules.values() for p in m.parameters()], 1.0)
        self.opt.step()
        self.step_count += 1
        return {"loss": float(loss.detach())}

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
            "step": self.step_count,
            **{k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
        }

    def save(self, path: Optional[Path] = None) -> Path:
        from vgen.toyworld.train import save_checkpoint

        return save_checkpoint(self.state(), path or Path(self.cfg.out) / "last.pt")

    def load(self, path: Path) -> None:
        from vgen.toyworld.train import resume_training

        state = torch.load(path, map_location="cpu", weights_only=False)
        for k, m in self.modules.items():
            m.load_state_dict(state[k])
        self.step_count = resume_training(state, self.opt, self.rng, self.cfg.lr)
        lrs = self.lrs()  # the lrs given now win, per group
        for group in self.opt.param_groups:
            group["lr"] = lrs[group.get("name", "copy")]

    def export(self, folder: str | Path) -> Path:
        """Write the weights (float16 when the model folder is float16) into <folder>/streaming/."""
        from vgen.methods.streaming.cam import save_streaming

        dtype = torch.float16 if _folder_is_half(Path(folder)) else None
        return save_streaming(folder, self.cam, self.apm, dtype=dtype)


def frame_weighted_mse(pred: torch.Tensor, target: torch.Tensor, cond_frames: int, new_weight: float) -> torch.Tensor:
    """Mean squared error over [B, C, F, h, w] with the frames from `cond_frames` on weighted `new_weight` and the
    weights normalised to mean 1 (new_weight 1: the plain mean)."""
    weights = torch.ones(pred.shape[2], dtype=pred.dtype, device=pred.device)
    weights[cond_frames:] = new_weight
    weights = weights / weights.mean()
    return ((pred - target) ** 2 * weights[None, None, :, None, None]).mean()


def to_model_pixels_batch(frames: torch.Tensor) -> torch.Tensor:
    """decode_latents' [B, F, H, W, 3] in [0, 1] -> [B, F, 3, H, W] in [-1, 1]."""
    return (frames * 2 - 1).permute(0, 1, 4, 2, 3)


def _folder_is_half(folder: Path) -> bool:
    """Whether the model folder's UNet weights are stored in float16."""
    from safetensors import safe_open

    files = sorted((folder / "unet").glob("*.safetensors"))
    if not files:
        return False
    with safe_open(str(files[0]), "pt") as f:
        key = next(iter(f.keys()))
        return f.get_slice(key).get_dtype() in ("F16", "float16")


def train(cfg: StreamingTrainConfig) -> StreamingTrainer:
    from vgen.toyworld.train import open_trainer, run_steps

    trainer = open_trainer(StreamingTrainer, cfg)
    run_steps(trainer, label=cfg.stage, steps=cfg.steps, out=cfg.out, save_every=cfg.save_every,
              log_every=cfg.log_every, progress=cfg.progress)
    return trainer
