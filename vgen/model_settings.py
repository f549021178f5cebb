"""Settings a model carries for each method: `vgen.yaml` beside its model_index.json.

Methods stay model-agnostic; what suits one model (the toy's Vico learning rate, its image sibling for
ZS2, its chunk count for StreamingT2V) lives in the model's folder and is merged between the methods'
defaults and `--config`. The file maps a method name to a partial job config:

```yaml
vanilla: {sampler: {steps: 20, guidance: 5.0}, video: {frames: 8}}
zs2: {model: {id: toy-t2i}}      # a method may send the job to a sibling model
```
One top-level key is not a method: `trained_frames: N`, the clip length the model was made for (vgen/sizes.py
warns beyond it). Hub ids carry none (nothing is fetched to resolve a config). Torch-free: `vgen --help` and
`vgen config show` read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SETTINGS_FILE = "vgen.yaml"
ASSETS = Path(__file__).parent / "assets"

# Built-in models: folders shipped in vgen/assets, and random models vgen.tiny builds in memory
# (kind and native size written here so listing them needs no torch; tests check them against the models).
BUILTIN_FOLDERS = {"toy": ASSETS / "toy", "toy-t2i": ASSETS / "toy-t2i", "toy-wan": ASSETS / "toy-wan"}


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    kind: str
    size: tuple[int, int]  # native (height, width) in pixels
    summary: str
    frames: str = "any"  # frame rule: any count, or 4k+1 / 8k+1 (the causal VAEs of Wan, LTX)


IN_MEMORY_MODELS = (
    BuiltinModel("tiny-random-unet3d", "unet3d", (32, 32), "random ModelScope-shaped model, for tests"),
    BuiltinModel("tiny-random-motion", "motion", (32, 32), "random AnimateDiff-shaped model, for tests"),
    BuiltinModel("tiny-random-unet2d", "unet2d", (32, 32), "random Stable-Diffusion-shaped model, for tests"),
    BuiltinModel("zeroscope-quarter", "unet3d", (320, 512), "random ZeroScope-shaped model at 1/4 width, for benchmarks"),
    BuiltinModel("tiny-random-wan", "wan", (32, 32), "random Wan 2.1-shaped model, for tests", "4k+1"),
    BuiltinModel("tiny-random-wan22", "wan", (32, 32), "random Wan 2.2-shaped model (two experts), for tests", "4k+1"),
    BuiltinModel("wan-quarter", "wan", (480, 832), "random Wan 2.1 1.3B-shaped model at 1/4 width, for benchmarks", "4k+1"),
    BuiltinModel("tiny-random-ltx", "ltx", (32, 32), "random LTX-Video-shaped model (4x VAE), for tests", "4k+1"),
    BuiltinModel("ltx-quarter", "ltx", (512, 704), "random LTX-Video-shaped model at 1/4 width, for benchmarks", "8k+1"),
)
FOLDER_SUMMARIES = {
    "toy": "text-to-video model of the toy world (ships with vgen; the default)",
    "toy-t2i": "text-to-image model of the toy world, same latent space (ZS2, I4VGen anchors)",
    "toy-wan": "Wan 2.1-architecture text-to-video model of the toy world (17 frames; DiT claims measured on it)",
}
_FOLDER_KINDS = {"TextToVideoSDPipeline": "unet3d", "AnimateDiffPipeline": "motion", "StableDiffusionPipeline": "unet2d",
                 "WanPipeline": "wan", "LTXPipeline": "ltx"}


def local_folder(model_id: str) -> Optional[Path]:
    """The folder a model id names (a built-in folder or a local directory), else None (hub id / in memory)."""
    if model_id in BUILTIN_FOLDERS:
        return BUILTIN_FOLDERS[model_id]
    path = Path(model_id).expanduser()
    return path if path.is_dir() else None


def settings_path(model_id: str) -> Optional[Path]:
    folder = local_folder(model_id)
    if folder is None or not (folder / SETTINGS_FILE).is_file():
        return None
    return folder / SETTINGS_FILE


def model_settings(model_id: str, method: str):
    """(partial config for `method`, the file it came from), or (None, None) when the model carries none."""
    from vgen.config_io import load_yaml
    from vgen.errors import ConfigError

    path = settings_path(model_id)
    if path is None:
        return None, None
    loaded = load_yaml(path)
    check_allowed_keys(loaded, path)  # the whole file, whichever method runs
    section = loaded.get(method)
    if section is None:
        return None, path
    from omegaconf import DictConfig

    if not isinstance(section, DictConfig):
        raise ConfigError(f"section '{method}' of '{path}' must be a mapping of config keys")
    for key in ("method", "prompt"):
        if key in section:
            raise ConfigError(f"'{path}' sets '{method}.{key}'; a model's settings cannot choose the {key}")
    return section, path


MODEL_FACTS = ("trained_frames",)  # top-level keys that describe the model rather than set a method's config


def allowed_keys(method: str) -> tuple[str, ...]:
    """What a model's settings for `method` may set: how to sample (sampler, video), the method's own section,
    and model.id (a sibling model). Never where files go or whether they are replaced (output), the device or
    the prompt: a downloaded model folder must not redirect or overwrite a user's files."""
    from vgen.config_io import METHOD_SECTIONS

    own = (method,) if method in METHOD_SECTIONS else ()
    return ("sampler", "video", *own, "model.id")


def check_allowed_keys(loaded, path: Path) -> None:
    """One-line ConfigError naming the first key of any section of a model's vgen.yaml that is not a method,
    or that sets something outside allowed_keys."""
    from vgen.config_io import leaf_keys
    from vgen.errors import ConfigError
    from vgen.methods import METHODS

    for method in loaded.keys():
        if method in MODEL_FACTS:  # a fact about the model (vgen/sizes.py checks its value), not settings
            continue
        if method not in METHODS:
            raise ConfigError(f"'{path}' has a section '{method}', which is no method; "
                              f"sections: {', '.join(METHODS)} (and {', '.join(MODEL_FACTS)})")
        section = loaded[method]
        keys = leaf_keys(section) if hasattr(section, "keys") else []
        allowed = allowed_keys(str(method))
        for key in keys:
            if not any(key == a or key.startswith(f"{a}.") for a in allowed):
                raise ConfigError(f"'{path}' sets '{method}.{key}'; a model's settings may set only "
                                  f"{', '.join(allowed)}")


def model_family(model_id: str) -> Optional[str]:
    """The family of a built-in model or a local folder, read without torch; None for a hub id (not fetched)."""
    for model in IN_MEMORY_MODELS:
        if model.name == model_id:
            return model.kind
    folder = local_folder(model_id)
    if folder is None or not (folder / "model_index.json").is_file():
        return None
    try:
        kind = _FOLDER_KINDS.get(json.loads((folder / "model_index.json").read_text()).get("_class_name", ""))
    except (OSError, ValueError):
        return None
    return kind


def folder_frames(folder: Path, kind: str) -> str:
    """The frame rule of a folder's model (no torch): k·n+1 on the causal video VAEs (Wan: the VAE's temporal
    factor; LTX: 8), any count elsewhere."""
    if kind == "ltx":
        return "8k+1"
    if kind != "wan":
        return "any"
    try:
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return "4k+1"
    return f"{2 ** sum(bool(t) for t in vae.get('temperal_downsample', [False, True, True]))}k+1"


def folder_info(folder: Path) -> tuple[str, Optional[tuple[int, int]]]:
    """(kind, native (height, width)) of a diffusers folder from its JSON files (no torch)."""
    index = json.loads((folder / "model_index.json").read_text())
    kind = _FOLDER_KINDS.get(index.get("_class_name", ""), "?")
    if index.get("_vgen_native_size"):  # a Wan folder trained at its own size (toy-wan), see vgen/models/wan.py
        h, w = index["_vgen_native_size"]
        return kind, (int(h), int(w))
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return kind, None
    size = unet["sample_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return kind, (h * factor, w * factor)
