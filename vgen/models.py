"""ModelConfig -> Components: tokenizer, text encoder, VAE, UNet and scheduler of one model kind.

A model is a Hugging Face hub id, a local diffusers folder, or a built-in name. Hub ids and folders go
through ``from_pretrained``; built-ins are either folders shipped in ``vgen/assets`` (the toy world) or
tiny randomly initialised models built in memory for tests. Kinds:

- ``unet3d``: ModelScope / ZeroScope (UNet3DConditionModel), latents [B, C, F, H, W]
- ``motion``: AnimateDiff (UNetMotionModel = SD 1.5 UNet + MotionAdapter), latents [B, C, F, H, W]
- ``unet2d``: Stable Diffusion image models; frames are a batch of independent images
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

# The libraries' info/warning chatter (torchvision fallbacks, dtype casts) is not for our users;
# an explicit TRANSFORMERS_VERBOSITY / DIFFUSERS_VERBOSITY still wins.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

from vgen.config import ModelConfig  # noqa: E402
from vgen.errors import ConfigError, ModelLoadError
from vgen.family_schedules import default_scheduler

ASSETS = Path(__file__).parent / "assets"

PIPELINE_KINDS = {
    "TextToVideoSDPipeline": "unet3d",
    "VideoToVideoSDPipeline": "unet3d",
    "AnimateDiffPipeline": "motion",
    "AnimateDiffVideoToVideoPipeline": "motion",
    "StableDiffusionPipeline": "unet2d",
    "StableDiffusionImg2ImgPipeline": "unet2d",
    "TextToVideoZeroPipeline": "unet2d",
}
UNET_KINDS = {
    "UNet3DConditionModel": "unet3d",
    "UNetMotionModel": "motion",
    "UNet2DConditionModel": "unet2d",
}


@dataclass
class Components:
    """Everything the sampler needs from one model, on one device and dtype."""

    kind: str
    name: str
    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: Any  # the model's own scheduler: the config every named scheduler starts from
    device: torch.device
    dtype: torch.dtype
    cpu_offload: bool = False
    extras: dict = field(default_factory=dict)  # method-specific weights that ship with a model
    folder: Optional[Path] = None  # the local diffusers folder it was loaded from (None: hub or built in memory)
    scheduler_source: str = "model"  # model: its folder's scheduler | animatediff: the family's (vgen.family_schedules)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def native_size(self) -> tuple[int, int]:
        """(height, width) in pixels the UNet was built for."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    @contextmanager
    def placed(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Run `module` on the device; with cpu_offload it goes back to the CPU afterwards."""
        if not self.cpu_offload:
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# device and dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but torch sees no CUDA device; use --device cpu")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but it is not available; use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# ----------------------------------------------------------------------------------------------
# built-in models


def _builtin_folders() -> dict[str, Path]:
    return {"toy": ASSETS / "toy", "toy-t2i": ASSETS / "toy-t2i"}


def builtin_names() -> list[str]:
    from vgen import tiny

    return list(_builtin_folders()) + list(tiny.BUILDERS)


# ----------------------------------------------------------------------------------------------
# reading configs of folders and hub ids


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or os.sep in source.replace("/", "")


def _offline_hint(source: str) -> str:
    return (
        f"model '{source}' is not a local folder or built-in name, and the Hugging Face Hub could not be "
        f"reached (offline or not found); on a machine with internet run "
        f"`huggingface-cli download {source} --local-dir DIR`, copy DIR here and pass --model DIR "
        f"(built-in: {', '.join(builtin_names())})"
    )


def hub_reachable() -> bool:
    """False at once when offline mode is on or the hub's host does not resolve (no slow retries)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True  # cached files may still serve; hf_hub_download says if not
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def read_json(source: str, filename: str, revision: Optional[str] = None) -> Optional[dict]:
    """A JSON file of a local folder or hub repo; None when the repo lacks it."""
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        return json.loads(path.read_text()) if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if not hub_reachable():
        raise ModelLoadError(_offline_hint(source))
    try:
        path = hf_hub_download(source, filename, revision=revision)
    except LocalEntryNotFoundError:  # offline and not cached (a subclass of EntryNotFoundError)
        raise ModelLoadError(_offline_hint(source)) from None
    except EntryNotFoundError:
        return None
    except Exception:
        raise ModelLoadError(_offline_hint(source)) from None
    return json.loads(Path(path).read_text())


def detect_kind(source: str, cfg: ModelConfig) -> str:
    """The model kind from model_index.json or unet/config.json, checked against model.kind."""
    index = read_json(source, "model_index.json", cfg.revision)
    kind = None
    if index is not None:
        kind = PIPELINE_KINDS.get(index.get("_class_name", ""))
    if kind is None:
        unet_cfg = read_json(source, "unet/config.json", cfg.revision)
        if unet_cfg is None:
            raise ModelLoadError(
                f"'{source}' is not a diffusers model folder (no model_index.json or unet/config.json)"
            )
        kind = UNET_KINDS.get(unet_cfg.get("_class_name", ""))
        if kind is None:
            raise ModelLoadError(
                f"'{source}' has a {unet_cfg.get('_class_name')} UNet; supported: {', '.join(UNET_KINDS)}"
            )
    if kind == "unet2d" and (cfg.motion_adapter or cfg.kind == "motion"):
        if not cfg.motion_adapter:
            raise ConfigError("model.kind=motion on an image model needs model.motion_adapter (a MotionAdapter id or folder)")
        kind = "motion"
    if cfg.kind != "auto" and cfg.kind != kind:
        raise ConfigError(f"model '{source}' is of kind '{kind}', but model.kind={cfg.kind} was asked for")
    return kind


def _load_scheduler(source: str, revision: Optional[str]):
    import diffusers

    sched_cfg = read_json(source, "scheduler/scheduler_config.json", revision)
    if sched_cfg is None:
        raise ModelLoadError(f"'{source}' has no scheduler/scheduler_config.json")
    cls = getattr(diffusers, sched_cfg.get("_class_name", ""), None) or diffusers.DDIMScheduler
    return cls.from_config(sched_cfg)


def _load_folder(source: str, cfg: ModelConfig, kind: str, dtype: torch.dtype) -> dict:
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its per-load weight bars are noise next to ours

    common = dict(revision=cfg.revision)
    weights = dict(common, torch_dtype=dtype, variant=cfg.variant)
    parts: dict[str, Any] = {
        "tokenizer": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
        "text_encoder": CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights),
        "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", **weights),
        "scheduler": _load_scheduler(source, cfg.revision),
    }
    unet_class = read_json(source, "unet/config.json", cfg.revision) or {}
    if kind == "unet3d":
        parts["unet"] = UNet3DConditionModel.from_pretrained(source, subfolder="unet", **weights)
    elif kind == "motion" and unet_class.get("_class_name") == "UNetMotionModel":
        parts["unet"] = UNetMotionModel.from_pretrained(source, subfolder="unet", **weights)
    elif kind == "motion":
        base = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights)
        adapter = MotionAdapter.from_pretrained(cfg.motion_adapter, torch_dtype=dtype)
        parts["unet"] = UNetMotionModel.from_unet2d(base, adapter).to(dtype)
    else:
        parts["unet"] = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights)
    return parts


def load_components(
    cfg: ModelConfig,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    cpu_offload: bool = False,
) -> Components:
    """Load a model by built-in name, local folder or hub id, and place it on `device`."""
    from vgen import tiny

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
    source = cfg.id
    folders = _builtin_folders()
    if source in tiny.BUILDERS:
        parts = tiny.BUILDERS[source]()
        kind = tiny.KINDS[source]
        if cfg.kind not in ("auto", kind):
            raise ConfigError(f"model '{source}' is of kind '{kind}', but model.kind={cfg.kind} was asked for")
        if dt != torch.float32:
            parts = {k: (v.to(dt) if isinstance(v, torch.nn.Module) else v) for k, v in parts.items()}
    else:
        if source in folders:
            if not folders[source].is_dir():
                raise ModelLoadError(f"built-in model '{source}' is not installed (missing {folders[source]})")
            source = str(folders[source])
        elif not Path(source).expanduser().is_dir() and _looks_like_path(source):
            raise ModelLoadError(f"model folder '{source}' does not exist")
        source = str(Path(source).expanduser()) if Path(source).expanduser().is_dir() else source
        kind = detect_kind(source, cfg)
        try:
            parts = _load_folder(source, cfg, kind, dt)
        except (ModelLoadError, ConfigError):
            raise
        except OSError as err:
            if Path(source).is_dir():
                raise ModelLoadError(f"cannot load model folder '{source}': {str(err).splitlines()[0]}") from None
            raise ModelLoadError(_offline_hint(source)) from None
    for module in ("text_encoder", "vae", "unet"):
        parts[module].requires_grad_(False).eval()
        if not cpu_offload:
            parts[module].to(dev)
    folder = Path(source) if source not in tiny.BUILDERS and Path(source).is_dir() else None
    parts["scheduler"], scheduler_source = default_scheduler(kind, parts["scheduler"])
    return Components(kind=kind, name=cfg.id, device=dev, dtype=dt, cpu_offload=cpu_offload, folder=folder,
                      scheduler_source=scheduler_source, **parts)


def save_components(components: Components, folder: str | Path) -> Path:
    """Save as a diffusers pipeline folder that both vgen and diffusers' pipelines can load."""
    folder = Path(folder)
    pipeline_class = {"unet3d": "TextToVideoSDPipeline", "motion": "AnimateDiffPipeline", "unet2d": "StableDiffusionPipeline"}
    parts: dict[str, Callable] = {
        "tokenizer": components.tokenizer,
        "text_encoder": components.text_encoder,
        "vae": components.vae,
        "unet": components.unet,
        "scheduler": components.scheduler,
    }
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    library = {"tokenizer": "transformers", "text_encoder": "transformers"}
    index = {"_class_name": pipeline_class[components.kind], "_diffusers_version": _version("diffusers")}
    for name, part in parts.items():
        index[name] = [library.get(name, "diffusers"), type(part).__name__]
    if components.kind == "motion":
        index["motion_adapter"] = [None, None]
    if components.kind == "unet2d":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
