"""Trainers for the toy models: an AutoencoderKL, then text encoder + UNet3D (+ UNet2D) in its latents.

The toy world has no checkpoints to fetch, so the project trains its own on CPU. Stages:

- ``vae``: AutoencoderKL 64x64 -> 8x8x4 latents (MSE + L1 + tiny KL); sets ``scaling_factor``
  from the latents' standard deviation so the diffusion models see unit-variance inputs.
- ``t2v`` / ``t2i`` / ``joint``: DDPM epsilon objective (scaled_linear betas, as SD) for a
  UNet3DConditionModel and/or a UNet2DConditionModel, with a small CLIPTextModel trained jointly
  (a frozen random encoder binds attributes poorly). ``joint`` shares one text encoder between
  both UNets, so the shipped ``toy`` and ``toy-t2i`` live in the same latent and text space.

Checkpoints hold models, optimizer, step and both RNGs, so a run resumes to the same state.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .captions import parse_prompt, vocabulary
from .dataset import sample_image_batch, sample_training_batch
from .scene import MOTIONS

STAGES = ("vae", "t2v", "t2i", "joint")
LOSS_WEIGHTS = ("eps", "v")
MAX_TOKENS = 32  # the longest toy caption (three objects with motion) is ~25 tokens
TEXT_DIM = 128
P_UNCOND = 0.1  # caption dropout, so classifier-free guidance has an unconditional model
PROBE_MIN_T = 900  # the motion probe's timesteps: alpha_bar < 0.02, the clip barely shows through


@dataclass
class TrainConfig:
    stage: str = "joint"
    out: str = "runs/toy"
    steps: int = 1000
    batch: int = 8
    frames: int = 8
    size: int = 64
    lr: float = 4e-4
    seed: int = 0
    threads: int = 1
    resume: bool = False
    vae: Optional[str] = None  # checkpoint of the vae stage (defaults to <out>/../vae/last.pt)
    text_from: Optional[str] = None  # t2i: take the (frozen) text encoder from this t2v/joint checkpoint
    save_every: int = 200
    log_every: int = 20
    width: int = 64  # UNet base channels (the second level doubles it)
    progress: bool = True
    loss_weight: str = "eps"  # eps: DDPM's plain epsilon MSE | v: epsilon MSE / alpha_bar_t (= v-prediction MSE)
    max_weight: float = 20.0  # cap of the v weight (1 / alpha_bar_t reaches ~200 at t = T)
    objects: tuple[float, ...] = (0.5, 0.3, 0.2)  # t2v clips: weights of 1, 2 and 3 objects
    motion_probe: float = 0.0  # weight of MotionProbe (motion word + per-frame path heads on the UNet3D mid block)


# ----------------------------------------------------------------------------------------------
# architectures


def build_vae():
    """8x downsampling, so 64x64 frames become 8x8x4 latents and the UNets stay cheap."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def build_text():
    """(tokenizer, text encoder): whole-word tokens of the toy vocabulary, a small CLIP encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from vgen.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(vocabulary(), model_max_length=MAX_TOKENS)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=2 * TEXT_DIM,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_DIM,
    )
    return tokenizer, CLIPTextModel(config)


def _unet_kwargs(width: int, dims: str) -> dict:
    """One toy UNet shape for video (dims "3D") and image ("2D"), so both share a latent space and text width.

    Cross-attention at both levels: colour/shape binding needs text at 8x8 and 4x4.
    """
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=(f"CrossAttnDownBlock{dims}",) * 2,
        up_block_types=(f"CrossAttnUpBlock{dims}",) * 2,
        block_out_channels=(width, 2 * width),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_unet3d(width: int = 64):
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel(**_unet_kwargs(width, "3D"))


def build_unet2d(width: int = 64):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**_unet_kwargs(width, "2D"))


def train_scheduler():
    """DDPM noise schedule of SD (scaled_linear betas), used to noise training latents."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def sample_scheduler():
    """The DDIM config shipped with the models (what every named sampler starts from)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


# ----------------------------------------------------------------------------------------------
# state and checkpoints


def timestep_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, kind: str = "eps",
                     cap: float = 20.0) -> torch.Tensor:
    """Per-sample weights of the epsilon MSE at timesteps t, with mean 1 over uniform t.

    ``eps`` is DDPM's simple loss: in x0 terms it weights an error by SNR(t), so at high noise, where
    a clip's layout and motion are decided, it hardly teaches anything. ``v`` divides by alpha_bar_t,
    which makes it the v-prediction MSE (|v_hat - v|^2 = |eps_hat - eps|^2 / alpha_bar_t), capped at
    ``cap`` so the last few timesteps do not swamp the batch.
    """
    if kind == "eps":
        return torch.ones(t.shape, dtype=alphas_cumprod.dtype)
    if kind != "v":
        raise ValueError(f"loss_weight must be one of {', '.join(LOSS_WEIGHTS)}, got {kind!r}")
    w = (1.0 / alphas_cumprod).clamp(max=cap)
    return w[t] / w.mean()


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Atomic write (tmp + rename) so a killed run never leaves a half checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def resume_training(state: dict, opt: torch.optim.Optimizer, rng: np.random.Generator, lr: float) -> int:
    """Restore the optimizer and both RNGs from a checkpoint; returns its step. The lr given now wins,
    so a resumed run may cool down."""
    opt.load_state_dict(state["optimizer"])
    for group in opt.param_groups:
        group["lr"] = lr
    torch.set_rng_state(state["torch_rng"])
    rng.bit_generator.state = state["numpy_rng"]
    return int(state["step"])


def to_pixels(uint8: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(uint8)).float().div(127.5).sub(1)
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).contiguous()


class Trainer:
    """One stage's models, optimizer, step and RNGs; `step()` trains one batch, `save/load` round-trip."""

    def __init__(self, cfg: TrainConfig):
        if cfg.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {cfg.stage!r}")
        if cfg.loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"loss_weight must be one of {', '.join(LOSS_WEIGHTS)}, got {cfg.loss_weight!r}")
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.step_count = 0
        self.models: dict[str, torch.nn.Module] = {}
        self.frozen: dict[str, torch.nn.Module] = {}
        self.tokenizer = None
        if cfg.stage == "vae":
            self.models["vae"] = build_vae()
        else:
            self.frozen["vae"] = load_vae(self.vae_path())
            self.tokenizer, text = build_text()
            if cfg.stage == "t2i" and cfg.text_from:
                state = torch.load(cfg.text_from, map_location="cpu", weights_only=False)["models"]
                text.load_state_dict(state["text_encoder"])
                self.frozen["text_encoder"] = text.requires_grad_(False).eval()
            else:
                self.models["text_encoder"] = text
            if cfg.stage in ("t2v", "joint"):
                self.models["unet3d"] = build_unet3d(cfg.width)
            if cfg.stage in ("t2i", "joint"):
                self.models["unet2d"] = build_unet2d(cfg.width)
            self.noise_sched = train_scheduler()
        params = [p for m in self.models.values() for p in m.parameters()]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        self.probe = self._motion_probe() if cfg.motion_probe > 0 and "unet3d" in self.models else None

    def _motion_probe(self) -> "MotionProbe":
        unet = self.models["unet3d"]
        channels = unet.config.block_out_channels
        vae = self.frozen["vae"]
        side = self.cfg.size // 2 ** (len(vae.config.block_out_channels) - 1) // 2 ** (len(channels) - 1)
        return MotionProbe(unet.mid_block, self.cfg.frames * channels[-1] * side * side, self.cfg.lr, self.cfg.frames)

    def vae_path(self) -> Path:
        return Path(self.cfg.vae) if self.cfg.vae else Path(self.cfg.out).parent / "vae" / "last.pt"

    @property
    def text_encoder(self):
        return self.models.get("text_encoder") or self.frozen["text_encoder"]

    # -- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
            "step": self.step_count,
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "frozen": {k: m.state_dict() for k, m in self.frozen.items()},
            "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
            "scaling_factor": (self.models.get("vae") or self.frozen["vae"]).config.scaling_factor,
            **({"motion_probe": self.probe.state_dict()} if self.probe is not None else {}),
        }

    def save(self, path: Optional[Path] = None) -> Path:
        return save_checkpoint(self.state(), path or Path(self.cfg.out) / "last.pt")

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        for k, m in self.models.items():
            m.load_state_dict(state["models"][k])
        self.step_count = resume_training(state, self.opt, self.rng, self.cfg.lr)
        if self.probe is not None and "motion_probe" in state:  # a probe added midway starts fresh
            self.probe.load_state_dict(state["motion_probe"])

    # -- one step ------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        for m in self.models.values():
            m.train()
        losses = self._vae_loss() if self.cfg.stage == "vae" else self._diffusion_loss()
        total = sum(losses.values())
        self.opt.zero_grad(set_to_none=True)
        if self.probe is not None:
            self.probe.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for m in self.models.values() for p in m.parameters()], 1.0)
        self.opt.step()
        if self.probe is not None:
            self.probe.opt.step()
        self.step_count += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    def _vae_loss(self) -> dict[str, torch.Tensor]:
        vae = self.models["vae"]
        # frames from 2-frame clips: objects anywhere, with motion blur-free renders
        _, imgs = sample_image_batch(self.rng, self.cfg.batch, self.cfg.size)
        x = to_pixels(imgs)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        # weight coloured (object) pixels up: they are a small fraction of the frame but all that matters
        chroma = (x.max(1, keepdim=True).values - x.min(1, keepdim=True).values) > 0.5
        w = 1.0 + 4.0 * chroma.float()
        err = (rec - x) ** 2
        return {"mse": (w * err).mean(), "l1": 0.5 * (w * (rec - x).abs()).mean(), "kl": 1e-6 * post.kl().mean()}

    @torch.no_grad()
    def _latents(self, uint8: np.ndarray) -> torch.Tensor:
        vae = self.frozen["vae"]
        return vae.encode(to_pixels(uint8)).latent_dist.sample() * vae.config.scaling_factor

    def _embed(self, captions: list[str]) -> torch.Tensor:
        captions = ["" if self.rng.random() < P_UNCOND else c for c in captions]
        ids = self.tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
        return self.text_encoder(ids["input_ids"])[0]

    def _eps_loss(self, unet, latents: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (latents.shape[0],))
        noisy = self.noise_sched.add_noise(latents, noise, t)
        err = (unet(noisy, t, encoder_hidden_states=embeds).sample - noise) ** 2
        w = timestep_weights(self.noise_sched.alphas_cumprod, t, self.cfg.loss_weight, self.cfg.max_weight)
        return (w.to(err.dtype) * err.flatten(1).mean(1)).mean()

    def _probe_loss(self, latents: torch.Tensor, captions: list[str], labels: list[int]) -> torch.Tensor:
        """The motion probe on a second forward of these clips at t in [PROBE_MIN_T, T), prompts kept."""
        n = self.noise_sched.config.num_train_timesteps
        t = torch.randint(PROBE_MIN_T, n, (latents.shape[0],))
        noisy = self.noise_sched.add_noise(latents, torch.randn_like(latents), t)
        ids = self.tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
        self.models["unet3d"](noisy, t, encoder_hidden_states=self.text_encoder(ids["input_ids"])[0])
        return self.probe.loss(labels)

    def _diffusion_loss(self) -> dict[str, torch.Tensor]:
        cfg, losses = self.cfg, {}
        if "unet3d" in self.models:
            caps, vids = sample_training_batch(self.rng, cfg.batch, cfg.frames, cfg.size, cfg.objects)
            lat = self._latents(vids)  # [B*F, C, h, w]
            lat = lat.reshape(cfg.batch, cfg.frames, *lat.shape[1:]).permute(0, 2, 1, 3, 4)
            losses["t2v"] = self._eps_loss(self.models["unet3d"], lat, self._embed(caps))
            if self.probe is not None:
                keep, labels = self.probe.targets(caps)
                if keep:
                    losses["probe"] = cfg.motion_probe * self._probe_loss(lat[keep], [caps[i] for i in keep], labels)
        if "unet2d" in self.models:
            caps, imgs = sample_image_batch(self.rng, 2 * cfg.batch, cfg.size)
            losses["t2i"] = self._eps_loss(self.models["unet2d"], self._latents(imgs), self._embed(caps))
        return losses


class MotionProbe(torch.nn.Module):
    """Auxiliary heads on the UNet3D's mid-block output for single-object clips at nearly pure noise
    (t >= PROBE_MIN_T), where only the text can tell the motion: the motion word (all frames), and each
    frame's place along the path.

    Diffusion training alone leaves the toy UNet3D blind to motion words (probe_toy_conditioning: their
    effect on the prediction is ~50x below a colour's): no gradient reaches a word the network does not
    yet attend to. Asking the mid-block features to name the motion from the prompt gives one. At low
    noise the clip itself shows its motion, so a probe there learns nothing about the text. Not
    exported: only the UNet's weights ship.
    """

    def __init__(self, mid_block: torch.nn.Module, features: int, lr: float, frames: int):
        super().__init__()
        self.frames = frames
        self.head = torch.nn.Linear(features, len(MOTIONS))
        # per frame: where the object is along its path, dir * (f / (F-1) - 1/2); needs the frame's index,
        # which the UNet3D's temporal layers (no position embedding) must work out for themselves
        self.shift = torch.nn.Linear(features // frames, 2)
        self.opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.01)
        self.features: Optional[torch.Tensor] = None
        mid_block.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self.features = output[0] if isinstance(output, tuple) else output

    @staticmethod
    def targets(captions: list[str]) -> tuple[list[int], list[int]]:
        """(indices, motion labels) of the single-object captions that name a motion."""
        keep, labels = [], []
        for b, cap in enumerate(captions):
            specs = parse_prompt(cap) if cap.strip() else []
            if len(specs) == 1 and specs[0].motion is not None:
                keep.append(b)
                labels.append(MOTIONS.index(specs[0].motion))
        return keep, labels

    def path_targets(self, labels: list[int]) -> torch.Tensor:
        """[B, F, 2] (x, y) place along the path: the motion's unit vector (image axes, y down) times
        f / (F-1) - 1/2; zero for 'still'."""
        unit = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}
        dirs = torch.tensor([unit[MOTIONS[i]] for i in labels])
        ramp = torch.linspace(-0.5, 0.5, self.frames)
        return dirs[:, None, :] * ramp[None, :, None]

    def loss(self, labels: list[int]) -> torch.Tensor:
        """Cross-entropy of the motion word plus the per-frame path MSE, from the last forward's mid
        block (batch = len(labels) clips)."""
        feats = self.features.reshape(len(labels), self.frames, -1)  # [B*F, C, h, w] -> [B, F, C*h*w]
        ce = F.cross_entropy(self.head(feats.flatten(1)), torch.tensor(labels))
        return ce + F.mse_loss(self.shift(feats), self.path_targets(labels)) / 0.04  # /0.04: targets' scale

    def state_dict(self, *args, **kwargs) -> dict:
        return {"head": self.head.state_dict(), "shift": self.shift.state_dict(), "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state: dict, *args, **kwargs) -> None:
        if "shift" not in state:  # a probe of an older run: start afresh
            return
        self.head.load_state_dict(state["head"])
        self.shift.load_state_dict(state["shift"])
        self.opt.load_state_dict(state["optimizer"])


# ----------------------------------------------------------------------------------------------
# loops


@torch.no_grad()
def calibrate_vae(vae, rng: np.random.Generator, n: int = 256) -> float:
    """1 / std of the latents: SD's scaling_factor convention, measured on toy frames."""
    _, imgs = sample_image_batch(rng, n)
    lat = vae.eval().encode(to_pixels(imgs)).latent_dist.mean
    return float(1.0 / lat.std())


def load_vae(path: str | Path):
    """The frozen VAE of a vae-stage checkpoint, with its measured scaling_factor."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    vae = build_vae()
    vae.load_state_dict(state["models"]["vae"])
    factor = state.get("scaling_factor")
    if factor is None:  # checkpoints written before the factor was stored
        factor = calibrate_vae(vae, np.random.default_rng(123), 64)
    vae.register_to_config(scaling_factor=float(factor))
    return vae.requires_grad_(False).eval()


def run_steps(trainer, *, label: str, steps: int, out: str | Path, save_every: int, log_every: int = 20,
              progress: bool = True, before_save=None) -> None:
    """The training loop both trainers share: `trainer.step()` (dict of losses) until `steps`, a progress
    bar, a log line every `log_every` steps, `trainer.save()` every `save_every` steps and at the end
    (`before_save` runs first), and a step snapshot every 10 saves to pick an export from."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    Path(out).mkdir(parents=True, exist_ok=True)
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[loss]}")]
    t0, ema = time.time(), None
    with open(Path(out) / "log.txt", "a") as log, Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(label, total=steps, completed=trainer.step_count, loss="")
        while trainer.step_count < steps:
            losses = trainer.step()
            total = sum(losses.values())
            if not np.isfinite(total):
                raise FloatingPointError(f"loss became {total} at step {trainer.step_count}")
            ema = total if ema is None else 0.98 * ema + 0.02 * total
            bar.update(task, completed=trainer.step_count, loss=f"loss {ema:.4f}")
            if trainer.step_count % log_every == 0:
                parts = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
                log.write(f"step {trainer.step_count} {parts} ema={ema:.4f} t={time.time() - t0:.0f}s\n")
                log.flush()
            if trainer.step_count % save_every == 0 or trainer.step_count == steps:
                if before_save is not None:
                    before_save()
                trainer.save()
                if trainer.step_count % (10 * save_every) == 0:
                    trainer.save(Path(out) / f"step{trainer.step_count}.pt")


def open_trainer(make, cfg):
    """``make(cfg)`` with cfg.threads torch threads, loaded from <out>/last.pt when cfg.resume and it exists
    (the start both trainers share)."""
    torch.set_num_threads(cfg.threads)
    trainer = make(cfg)
    last = Path(cfg.out) / "last.pt"
    if cfg.resume and last.is_file():
        trainer.load(last)
    return trainer


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) a stage up to cfg.steps; returns the last checkpoint's path."""
    trainer = open_trainer(Trainer, cfg)

    def calibrate() -> None:  # the VAE's latent scale follows its weights
        vae = trainer.models["vae"]
        vae.register_to_config(scaling_factor=calibrate_vae(vae, np.random.default_rng(123), 128))

    run_steps(trainer, label=cfg.stage, steps=cfg.steps, out=cfg.out, save_every=cfg.save_every,
              log_every=cfg.log_every, progress=cfg.progress, before_save=calibrate if cfg.stage == "vae" else None)
    return Path(cfg.out) / "last.pt"


# ----------------------------------------------------------------------------------------------
# export


def load_checkpoint_models(ckpt: str | Path, vae_ckpt: str | Path) -> dict:
    """Models of a t2v/t2i/joint checkpoint plus its VAE, in float32, ready to export or evaluate."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    width = state["config"].get("width", 64)
    vae = load_vae(vae_ckpt)
    tokenizer, text = build_text()
    text.load_state_dict(state["models"].get("text_encoder") or state["frozen"]["text_encoder"])
    out = {"tokenizer": tokenizer, "text_encoder": text, "vae": vae}
    if "unet3d" in state["models"]:
        out["unet3d"] = build_unet3d(width)
        out["unet3d"].load_state_dict(state["models"]["unet3d"])
    if "unet2d" in state["models"]:
        out["unet2d"] = build_unet2d(width)
        out["unet2d"].load_state_dict(state["models"]["unet2d"])
    return out


def components_from(models: dict, kind: str, dtype: torch.dtype = torch.float32):
    """vgen Components (kind unet3d or unet2d) from load_checkpoint_models' output."""
    from vgen.models import Components

    unet = models["unet3d" if kind == "unet3d" else "unet2d"]
    parts = {k: models[k] for k in ("text_encoder", "vae")} | {"unet": unet}
    for m in parts.values():
        m.to(dtype).requires_grad_(False).eval()
    return Components(kind=kind, name=f"toy-{kind}", tokenizer=models["tokenizer"], scheduler=sample_scheduler(),
                      device=torch.device("cpu"), dtype=dtype, **parts)


def export(ckpt: str | Path, vae_ckpt: str | Path, assets: str | Path) -> list[Path]:
    """Write float16 safetensors diffusers folders assets/toy (t2v) and assets/toy-t2i (t2i)."""
    import shutil

    from vgen.models import save_components

    written = []
    for kind, name in (("unet3d", "toy"), ("unet2d", "toy-t2i")):
        models = load_checkpoint_models(ckpt, vae_ckpt)  # fresh copies: components_from casts in place
        if kind not in models:
            continue
        comp = components_from(models, kind, torch.float16)
        folder = Path(assets) / name
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_components(comp, tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
        written.append(folder)
    return written
