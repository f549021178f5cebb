"""ModelConfig -> Components: recognise the family of a built-in name, local folder or hub id, and load it.

Hub ids and folders go through ``from_pretrained``; built-ins are either folders shipped in ``vgen/assets``
(the toy world) or tiny randomly initialised models built in memory for tests and benchmarks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

# The libraries' info/warning chatter (torchvision fallbacks, dtype casts) is not for our users;
# an explicit TRANSFORMERS_VERBOSITY / DIFFUSERS_VERBOSITY still wins.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

from vgen.errors import ConfigError, ModelLoadError  # noqa: E402
from vgen.models.components import Components, resolve_device, resolve_dtype  # noqa: E402
from vgen.models.hub import looks_like_path, offline_hint, read_json  # noqa: E402
from vgen.models.registry import FAMILY_MODULES, builders, builtin_folders, families, get_family  # noqa: E402

DENOISER_CLASSES = {  # a folder without model_index.json: its unet/config.json names the family
    "UNet3DConditionModel": "unet3d",
    "UNetMotionModel": "motion",
    "UNet2DConditionModel": "unet2d",
}


def detect_kind(source: str, cfg: Any) -> str:
    """The family from model_index.json (or unet/config.json), checked against model.kind."""
    index = read_json(source, "model_index.json", cfg.revision)
    kind = None
    if index is not None:
        name = index.get("_class_name", "")
        kind = next((f.name for f in families() if name in f.pipelines), None)
        if kind is None and name and "unet" not in index:
            raise ModelLoadError(f"'{source}' is a {name} folder; vgen runs the families {', '.join(FAMILY_MODULES)}")
    if kind is None:
        unet_cfg = read_json(source, "unet/config.json", cfg.revision)
        if unet_cfg is None:
            raise ModelLoadError(f"'{source}' is not a diffusers model folder (no model_index.json or unet/config.json)")
        kind = DENOISER_CLASSES.get(unet_cfg.get("_class_name", ""))
        if kind is None:
            raise ModelLoadError(
                f"'{source}' has a {unet_cfg.get('_class_name')} UNet; supported: {', '.join(DENOISER_CLASSES)}"
            )
    if kind == "unet2d" and (cfg.motion_adapter or cfg.kind == "motion"):
        if not cfg.motion_adapter:
            raise ConfigError("model.kind=motion on an image model needs model.motion_adapter (a MotionAdapter id or folder)")
        kind = "motion"
    if cfg.kind != "auto" and cfg.kind != kind:
        raise ConfigError(f"model '{source}' is of kind '{kind}', but model.kind={cfg.kind} was asked for")
    return kind


def load_components(
    cfg: Any,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    cpu_offload: bool = False,
    offload: Sequence[str] = (),
) -> Components:
    """Load a model by built-in name, local folder or hub id, and place it on `device`.

    `cpu_offload` keeps every component on the CPU until it runs; `offload` names only some of them
    (text_encoder, vae, unet, unet_2: e.g. the expert not in use).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    source = cfg.id
    built = builders()
    folders = builtin_folders()
    if source in built:
        kind, build = built[source]
        dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev, get_family(kind))
        if cfg.kind not in ("auto", kind):
            raise ConfigError(f"model '{source}' is of kind '{kind}', but model.kind={cfg.kind} was asked for")
        parts = build()
        if dt != torch.float32:
            parts = {k: (v.to(dt) if isinstance(v, torch.nn.Module) else v) for k, v in parts.items()}
    else:
        if source in folders:
            if not folders[source].is_dir():
                raise ModelLoadError(f"built-in model '{source}' is not installed (missing {folders[source]})")
            source = str(folders[source])
        elif not Path(source).expanduser().is_dir() and looks_like_path(source):
            raise ModelLoadError(f"model folder '{source}' does not exist")
        source = str(Path(source).expanduser()) if Path(source).expanduser().is_dir() else source
        kind = detect_kind(source, cfg)
        family = get_family(kind)
        dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev, family)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its per-load weight bars are noise next to ours
        try:
            parts = family.load(source, cfg, dt)
        except (ModelLoadError, ConfigError):
            raise
        except OSError as err:
            if Path(source).is_dir():
                raise ModelLoadError(f"cannot load model folder '{source}': {str(err).splitlines()[0]}") from None
            raise ModelLoadError(offline_hint(source)) from None
    folder = Path(source) if source not in built and Path(source).is_dir() else None
    parts["scheduler"], scheduler_source = get_family(kind).default_schedule(parts["scheduler"])
    components = Components(kind=kind, name=cfg.id, device=dev, dtype=dt, cpu_offload=cpu_offload, folder=folder,
                            offload=tuple(offload), scheduler_source=scheduler_source, **parts)
    for module in components.family.modules(components).values():
        module.requires_grad_(False).eval()
        if not components.offloaded(module):
            module.to(dev)
    return components


def save_components(components: Components, folder: str | Path) -> Path:
    """Save as a diffusers pipeline folder that both vgen and diffusers' pipelines can load."""
    folder = Path(folder)
    components.family.save(components, folder)
    return folder
