"""Trainers for the toy world's Wan-architecture model (`toy-wan`): AutoencoderKLWan, then UMT5 + WanTransformer3DModel.

Stages (``scripts/train_toy.py --family wan STAGE``):

- ``vae``: AutoencoderKLWan in Wan's real layout (causal, 8x spatial, 4x temporal, 4k+1 frames, 16 latent
  channels) on 5-frame world clips (1 + 4: both the first-frame and the cached-frame paths train), weighted
  MSE + L1 (object pixels up-weighted: they are what the detector reads) and a tiny KL. Before each save the
  per-channel latent mean/std are measured on 17-frame world clips and written to the config
  (``latents_mean`` / ``latents_std``), as the Wan folders carry them.
- ``t2v``: flow matching (x_t = (1 - s) x0 + s e, velocity target e - x0, sigma drawn uniformly then shifted
  as the UniPC flow scheduler shifts its sigmas) for a WanTransformer3DModel with a small UMT5 encoder trained
  jointly (a frozen random encoder binds attributes poorly, as the UNet toy showed). RoPE gives frame positions.
  The text is encoded exactly as WanPipeline does at inference (padding zeroed, 512 positions, no mask to the
  transformer). Latents come from a ring buffer of encoded clips refreshed by ``fresh`` new clips per step:
  encoding 17 frames costs far more than a DiT step on a CPU.

- ``decoder``: the VAE's decoder alone, from a vae-stage checkpoint, its encoder (and so its latents and their
  mean/std) frozen, decoding the posterior mean (what ``t2v`` learns to generate): it can keep improving the round
  trip while ``t2v`` trains on the same latents.

Checkpoints hold models, optimizer, step and both RNGs (the latent buffer is refilled on resume).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .captions import vocabulary
from .dataset import sample_training_batch
from .train import open_trainer, resume_training, run_steps, save_checkpoint

WAN_STAGES = ("vae", "decoder", "t2v")
TEXT_TOKENS = 32  # the longest toy caption is ~25 tokens; the rest of WanPipeline's 512 is zero padding
MAX_TEXT_TOKENS = 512  # WanPipeline's max_sequence_length
TEXT_DIM = 64
P_UNCOND = 0.1  # caption dropout, so classifier-free guidance has an unconditional model
FLOW_SHIFT = 3.0  # the shipped scheduler's flow_shift (Wan's 480p value); training sigmas use the same shift
Z_DIM = 16  # Wan 2.1's latent channels


@dataclass
class WanTrainConfig:
    stage: str = "t2v"
    out: str = "runs/toy-wan/t2v"
    steps: int = 1000
    batch: int = 8
    frames: int = 17  # t2v clips (4k+1); the vae stage trains on vae_frames
    vae_frames: int = 5
    size: int = 64
    lr: float = 4e-4
    seed: int = 0
    threads: int = 1
    resume: bool = False
    vae: Optional[str] = None  # checkpoint of the vae stage (defaults to <out>/../vae/last.pt)
    save_every: int = 100
    log_every: int = 10
    progress: bool = True
    objects: tuple[float, ...] = (0.5, 0.3, 0.2)
    vae_base: int = 16  # AutoencoderKLWan base_dim (Wan 2.1: 96)
    vae_crop: int = 32  # vae: train on random crops of this side (a conv VAE is translation-equivariant; 4x cheaper)
    dit_dim: int = 128  # transformer width = heads x 32 (head dim 32; Wan: 128)
    dit_layers: int = 4
    shift: float = FLOW_SHIFT
    cache: int = 1024  # t2v: latent clips kept in the ring buffer
    fresh: int = 2  # t2v: new clips encoded into the buffer per step
    warm: int = 128  # t2v: clips encoded before the first step
    calib_clips: int = 32  # vae: clips (of `frames` frames) the latent mean/std are measured on at each save


# ----------------------------------------------------------------------------------------------
# architectures


def build_wan_vae(base: int = 16):
    """Wan 2.1's VAE layout (3 spatial downsamplings, causal temporal ones in the last two, 16 channels) at a
    toy width: 64x64 frames -> 8x8x16, 17 frames -> 5 latent frames."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=base, z_dim=Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def build_wan_text():
    """(tokenizer, encoder): an offline T5Tokenizer whose toy words are single tokens, a small UMT5 encoder."""
    from transformers import UMT5Config, UMT5EncoderModel

    from vgen.tokenizer import build_t5_tokenizer

    tokenizer = build_t5_tokenizer(vocabulary(), model_max_length=MAX_TEXT_TOKENS)
    config = UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=TEXT_DIM // 4, d_ff=2 * TEXT_DIM,
                        num_layers=2, num_heads=4, relative_attention_num_buckets=16, feed_forward_proj="gated-gelu",
                        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return tokenizer, UMT5EncoderModel(config)


def build_wan_transformer(dim: int = 128, layers: int = 4):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=dim // 32, attention_head_dim=32,
                                 in_channels=Z_DIM, out_channels=Z_DIM, text_dim=TEXT_DIM, freq_dim=64,
                                 ffn_dim=4 * dim, num_layers=layers, cross_attn_norm=True,
                                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=256)


def flow_scheduler(shift: float = FLOW_SHIFT):
    """The Wan folders' sampler: UniPC on flow sigmas with flow_shift."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """UniPC's flow-sigma shift s*u / (1 + (s-1)*u) (scheduling_unipc_multistep.py), applied to training sigmas."""
    return shift * u / (1 + (shift - 1) * u)


def clips_to_tensor(uint8: np.ndarray) -> torch.Tensor:
    """uint8 [B, F, H, W, 3] -> float [B, 3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(uint8)).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3).contiguous()


def random_crop(x: torch.Tensor, side: int, rng: np.random.Generator) -> torch.Tensor:
    """One random side x side window (a multiple of 8 from the origin, the VAE's stride) of [B, C, F, H, W]."""
    h, w = x.shape[-2:]
    if side >= min(h, w):
        return x
    top, left = (int(rng.integers(0, (n - side) // 8 + 1)) * 8 for n in (h, w))
    return x[..., top : top + side, left : left + side].contiguous()


def _stats(vae) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, Z_DIM, 1, 1, 1)
    return (torch.tensor(vae.config.latents_mean).view(shape), torch.tensor(vae.config.latents_std).view(shape))


@torch.no_grad()
def latent_stats(vae, rng: np.random.Generator, n: int = 32, frames: int = 17, size: int = 64) -> tuple[list, list]:
    """Per-channel mean and std of the posterior means of n world clips (what Wan's latents_mean/std are)."""
    lats = []
    for start in range(0, n, 8):
        _, vids = sample_training_batch(rng, min(8, n - start), frames, size)
        lats.append(vae.eval().encode(clips_to_tensor(vids)).latent_dist.mode())
    z = torch.cat(lats).transpose(0, 1).reshape(Z_DIM, -1)
    return z.mean(1).tolist(), z.std(1).clamp(min=1e-4).tolist()


def calibrate(vae, n: int = 32, frames: int = 17, size: int = 64, seed: int = 123) -> None:
    mean, std = latent_stats(vae, np.random.default_rng(seed), n, frames, size)
    vae.register_to_config(latents_mean=mean, latents_std=std)


def load_wan_vae(path: str | Path):
    """The frozen VAE of a vae-stage checkpoint, with its measured latent mean/std."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    vae = build_wan_vae(state["config"].get("vae_base", 16))
    vae.load_state_dict(state["models"]["vae"])
    vae.register_to_config(latents_mean=state["latents_mean"], latents_std=state["latents_std"])
    return vae.requires_grad_(False).eval()


@torch.no_grad()
def encode_normalised(vae, uint8: np.ndarray) -> torch.Tensor:
    """World clips -> normalised latents (posterior mean - mean) / std, as pipeline_wan_i2v normalises."""
    mean, std = _stats(vae)
    return (vae.encode(clips_to_tensor(uint8)).latent_dist.mode() - mean) / std


@torch.no_grad()
def vae_round_trip(vae, n: int = 64, frames: int = 17, size: int = 64, seed: int = 7) -> dict[str, float]:
    """Encode + decode n world clips (seeded, training split) and let the detector judge every object:
    the fraction kept with colour+shape (and with its motion) after the round trip, beside the originals'."""
    from .detector import score_video

    rng = np.random.default_rng(seed)
    kept = {"original colour+shape": [], "round trip present": [], "round trip colour": [],
            "round trip colour+shape": [], "round trip motion": []}
    vae.eval()
    for start in range(0, n, 8):
        caps, vids = sample_training_batch(rng, min(8, n - start), frames, size)
        rec = vae.decode(vae.encode(clips_to_tensor(vids)).latent_dist.mode()).sample
        rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
        for cap, vid, out in zip(caps, vids, rec):
            for o in score_video(vid, cap).objects:
                kept["original colour+shape"].append(o.present and o.colour_ok and o.shape_ok)
            for o in score_video(out, cap).objects:
                kept["round trip present"].append(o.present)
                kept["round trip colour"].append(o.present and o.colour_ok)
                kept["round trip colour+shape"].append(o.present and o.colour_ok and o.shape_ok)
                if o.motion_ok is not None:
                    kept["round trip motion"].append(bool(o.motion_ok))
    return {k: float(np.mean(v)) for k, v in kept.items()} | {"objects": len(kept["original colour+shape"])}


# ----------------------------------------------------------------------------------------------
# trainer


class WanTrainer:
    """One stage's models, optimizer, step and RNGs; `step()` trains one batch; save/load round-trip."""

    def __init__(self, cfg: WanTrainConfig):
        if cfg.stage not in WAN_STAGES:
            raise ValueError(f"stage must be one of {', '.join(WAN_STAGES)}, got {cfg.stage!r}")
        for name in ("frames", "vae_frames"):
            if getattr(cfg, name) % 4 != 1:
                raise ValueError(f"{name} must be 4k+1 (Wan's causal VAE), got {getattr(cfg, name)}")
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.step_count = 0
        self.models: dict[str, torch.nn.Module] = {}
        self.frozen: dict[str, torch.nn.Module] = {}
        if cfg.stage == "vae":
            self.models["vae"] = build_wan_vae(cfg.vae_base)
        elif cfg.stage == "decoder":
            vae = load_wan_vae(self.vae_path())
            for part in (vae.decoder, vae.post_quant_conv):
                part.requires_grad_(True)
            self.models["vae"] = vae
        else:
            self.frozen["vae"] = load_wan_vae(self.vae_path())
            self.tokenizer, self.models["text_encoder"] = build_wan_text()
            self.models["transformer"] = build_wan_transformer(cfg.dit_dim, cfg.dit_layers)
            self.buffer: Optional[torch.Tensor] = None
            self.buffer_caps: list[str] = []
            self.buffer_next = 0
        self.opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=0.01)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.models.values() for p in m.parameters() if p.requires_grad]

    def vae_path(self) -> Path:
        return Path(self.cfg.vae) if self.cfg.vae else Path(self.cfg.out).parent / "vae" / "last.pt"

    # -- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        vae = self.models.get("vae") or self.frozen["vae"]
        return {
            "family": "wan",
            "config": dataclasses.asdict(self.cfg),
            "step": self.step_count,
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "frozen": {k: m.state_dict() for k, m in self.frozen.items()},
            "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
            "latents_mean": list(vae.config.latents_mean),
            "latents_std": list(vae.config.latents_std),
        }

    def save(self, path: Optional[Path] = None) -> Path:
        return save_checkpoint(self.state(), path or Path(self.cfg.out) / "last.pt")

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        for k, m in self.models.items():
            m.load_state_dict(state["models"][k])
        if self.cfg.stage == "vae":
            self.models["vae"].register_to_config(latents_mean=state["latents_mean"], latents_std=state["latents_std"])
        self.step_count = resume_training(state, self.opt, self.rng, self.cfg.lr)

    # -- one step ------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        for m in self.models.values():
            m.train()
        if self.cfg.stage == "decoder":  # the frozen encoder stays in eval mode
            self.models["vae"].encoder.eval()
        losses = self._flow_loss() if self.cfg.stage == "t2v" else self._vae_loss()
        total = sum(losses.values())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0)
        self.opt.step()
        self.step_count += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    def _vae_loss(self) -> dict[str, torch.Tensor]:
        vae = self.models["vae"]
        _, vids = sample_training_batch(self.rng, self.cfg.batch, self.cfg.vae_frames, self.cfg.size, self.cfg.objects)
        x = random_crop(clips_to_tensor(vids), self.cfg.vae_crop, self.rng)
        with torch.set_grad_enabled(self.cfg.stage == "vae"):  # decoder stage: the encoder is frozen
            post = vae.encode(x).latent_dist
        # the decoder stage decodes the posterior mean: what the transformer learns to generate (encode_normalised)
        rec = vae.decode(post.sample() if self.cfg.stage == "vae" else post.mode()).sample
        # object pixels are a small part of the frame but all the detector reads (colour, then shape moments)
        chroma = (x.max(1, keepdim=True).values - x.min(1, keepdim=True).values) > 0.5
        w = 1.0 + 4.0 * chroma.float()
        return {"mse": (w * (rec - x) ** 2).mean(), "l1": 0.5 * (w * (rec - x).abs()).mean(),
                "kl": 1e-6 * post.kl().mean()}

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """UMT5 states for captions as WanPipeline feeds them: padding positions zeroed, 512 positions.
        The encoder sees the attention mask, so its states for the real tokens equal those of a 512 padding."""
        tok = self.tokenizer(captions, padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        hidden = self.models["text_encoder"](tok.input_ids, tok.attention_mask).last_hidden_state
        hidden = hidden * tok.attention_mask[..., None].to(hidden.dtype)
        return F.pad(hidden, (0, 0, 0, MAX_TEXT_TOKENS - TEXT_TOKENS))

    def _refresh(self, n: int) -> None:
        """Encode n new world clips into the ring buffer."""
        cfg = self.cfg
        caps, vids = sample_training_batch(self.rng, n, cfg.frames, cfg.size, cfg.objects)
        lat = encode_normalised(self.frozen["vae"], vids)
        if self.buffer is None:
            self.buffer = torch.empty((cfg.cache, *lat.shape[1:]))
            self.buffer_caps = [""] * cfg.cache
            self.filled = 0
        for cap, z in zip(caps, lat):
            i = self.buffer_next % cfg.cache
            self.buffer[i], self.buffer_caps[i] = z, cap
            self.buffer_next += 1
        self.filled = min(cfg.cache, self.buffer_next)

    def _flow_loss(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if self.buffer is None:
            for _ in range(0, cfg.warm, 8):
                self._refresh(8)
        if cfg.fresh:
            self._refresh(cfg.fresh)
        idx = self.rng.integers(0, self.filled, cfg.batch)
        x0 = self.buffer[torch.from_numpy(idx)]
        caps = ["" if self.rng.random() < P_UNCOND else self.buffer_caps[i] for i in idx]
        noise = torch.randn_like(x0)
        sigma = shifted_sigmas(torch.rand(cfg.batch), cfg.shift).view(-1, 1, 1, 1, 1)
        xt = (1 - sigma) * x0 + sigma * noise
        v = self.models["transformer"](hidden_states=xt, timestep=sigma.flatten() * 1000,
                                       encoder_hidden_states=self.encode_text(caps), return_dict=False)[0]
        return {"flow": F.mse_loss(v, noise - x0)}


def train_wan(cfg: WanTrainConfig) -> Path:
    """Run (or resume) a stage up to cfg.steps; returns the last checkpoint's path."""
    trainer = open_trainer(WanTrainer, cfg)

    def before_save() -> None:  # the VAE's latent statistics follow its weights
        calibrate(trainer.models["vae"], cfg.calib_clips, cfg.frames, cfg.size)

    run_steps(trainer, label=f"wan {cfg.stage}", steps=cfg.steps, out=cfg.out, save_every=cfg.save_every,
              log_every=cfg.log_every, progress=cfg.progress, before_save=before_save if cfg.stage == "vae" else None)
    return Path(cfg.out) / "last.pt"


# ----------------------------------------------------------------------------------------------
# export


def load_wan_checkpoint(ckpt: str | Path, vae_ckpt: Optional[str | Path] = None) -> tuple[dict, dict]:
    """(WanPipeline's parts, the run's config) from a t2v checkpoint: float32, eval mode, its frozen VAE and
    latent statistics unless vae_ckpt names another vae-stage checkpoint."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    if state.get("family") != "wan" or "transformer" not in state["models"]:
        raise ValueError(f"{ckpt} is not a t2v checkpoint of the Wan toy")
    cfg = state["config"]
    if vae_ckpt:  # e.g. a decoder-stage checkpoint: its encoder must be the one the transformer learnt on
        vae = load_wan_vae(vae_ckpt)
        enc = {k: v for k, v in state["frozen"]["vae"].items() if not k.startswith(("decoder.", "post_quant_conv."))}
        same = all(torch.equal(v, vae.state_dict()[k]) for k, v in enc.items())
        if not same or list(vae.config.latents_mean) != list(state["latents_mean"]):
            raise ValueError(f"{vae_ckpt} encodes differently from the VAE {ckpt} was trained on")
    else:
        vae = build_wan_vae(cfg.get("vae_base", 16))
        vae.load_state_dict(state["frozen"]["vae"])
        vae.register_to_config(latents_mean=state["latents_mean"], latents_std=state["latents_std"])
    tokenizer, text = build_wan_text()
    text.load_state_dict(state["models"]["text_encoder"])
    transformer = build_wan_transformer(cfg.get("dit_dim", 128), cfg.get("dit_layers", 4))
    transformer.load_state_dict(state["models"]["transformer"])
    parts = {"tokenizer": tokenizer, "text_encoder": text, "vae": vae, "transformer": transformer,
             "scheduler": flow_scheduler(cfg.get("shift", FLOW_SHIFT))}
    for name in ("text_encoder", "vae", "transformer"):
        parts[name].requires_grad_(False).eval()
    return parts, cfg


VGEN_YAML = """\
# Settings of the toy world's Wan-architecture model (read by vgen/model_settings.py); the methods' sections come
# with the methods issue. The flow shift is the scheduler's own (scheduler/scheduler_config.json: flow_shift 3.0,
# the shift it was trained with); `auto` runs that UniPC flow scheduler.
vanilla:
  sampler: {steps: 20, guidance: 5.0, scheduler: auto}
  video: {frames: 17}
"""


def save_wan_folder(parts: dict, folder: str | Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A diffusers WanPipeline folder (what the Wan family and WanPipeline.from_pretrained load), written
    atomically, with its native size in model_index.json and a vgen.yaml (the one already in the folder is kept,
    else VGEN_YAML)."""
    import json
    import shutil

    from diffusers import WanPipeline

    from vgen.models.wan import NATIVE_SIZE_KEY

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    WanPipeline(**parts).save_pretrained(tmp)
    index = json.loads((tmp / "model_index.json").read_text())
    index[NATIVE_SIZE_KEY] = list(size)
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if (folder / "vgen.yaml").is_file():
        shutil.copy2(folder / "vgen.yaml", tmp / "vgen.yaml")
    else:
        (tmp / "vgen.yaml").write_text(VGEN_YAML)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


def export_wan(ckpt: str | Path, vae_ckpt: Optional[str | Path], assets: str | Path, name: str = "toy-wan") -> Path:
    """Write <assets>/<name> (float32 safetensors) from a t2v checkpoint, its native size the training size."""
    parts, cfg = load_wan_checkpoint(ckpt, vae_ckpt)
    return save_wan_folder(parts, Path(assets) / name, (cfg["size"], cfg["size"]))
