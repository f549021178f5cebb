"""Short hashes of the weight files a run loaded, for the sidecar: which weights made this video.

Hashing a multi-gigabyte checkpoint takes seconds to minutes, so each hash is cached by the file's
real path, size and modification time (in memory, and in a JSON file under ``$VGEN_CACHE_DIR``, default
``~/.cache/vgen``): a batch, or the next run, hashes a big model once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

HASH_CHARS = 12  # of the sha256 hex digest
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_memory: dict[str, str] = {}


def cache_file() -> Path:
    root = os.environ.get("VGEN_CACHE_DIR") or Path.home() / ".cache" / "vgen"
    return Path(root) / "weight-hashes.json"


def _key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_cache() -> dict[str, str]:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(entries: dict[str, str]) -> None:
    """Best effort (a read-only home only costs re-hashing)."""
    target = cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_cache(), **entries}
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, indent=0, sort_keys=True))
        os.replace(tmp, target)
    except OSError:
        pass


def file_hash(path: Path) -> str:
    """sha256 of the file's bytes, first HASH_CHARS hex digits; cached by path + size + mtime."""
    key = _key(path)
    if key in _memory:
        return _memory[key]
    cached = _read_cache().get(key)
    if cached is None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        cached = digest.hexdigest()[:HASH_CHARS]
        _write_cache({key: cached})
    _memory[key] = cached
    return cached


def weight_files(folder: Path, subfolders: Iterable[str], variant: Optional[str] = None) -> list[Path]:
    """The weight files diffusers/transformers load from these subfolders: safetensors when present,
    the variant's files (``*.fp16.safetensors``) when one is asked for, else the plain ones."""
    files: list[Path] = []
    for sub in subfolders:
        candidates = sorted(p for p in (folder / sub).glob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if any(p.suffix == ".safetensors" for p in candidates):
            candidates = [p for p in candidates if p.suffix == ".safetensors"]
        if variant:
            chosen = [p for p in candidates if f".{variant}." in p.name]
        else:
            chosen = [p for p in candidates if p.name.count(".") == 1]  # no variant infix
        files += chosen or candidates
    return files


def source_folder(source: str, revision: Optional[str] = None) -> Optional[Path]:
    """A local folder, or a hub id's snapshot in the local cache; None when neither (in memory, not cached)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, revision=revision, local_files_only=True))
    except Exception:  # not cached, or not a hub id: nothing to fingerprint
        return None


def model_folder(components: Any, model: Any) -> Optional[Path]:
    """The local folder a model was loaded from, or its hub snapshot in the local cache (None: in memory)."""
    if components.folder is not None:
        return Path(components.folder)
    return source_folder(model.id, model.revision)


def model_weight_hashes(components: Any, model: Any, streaming: bool = False) -> dict[str, str]:
    """'<model id>/<file>' -> short hash for every weight file this model's components came from, its motion
    adapter's included; `streaming`: also the folder's CAM/APM memories (a streaming job loads them)."""
    out: dict[str, str] = {}
    folder = model_folder(components, model)
    if folder is not None:
        subfolders = ["text_encoder", "vae", "unet"]
        if components.extras.get("streaming") is not None or (streaming and (folder / "streaming").is_dir()):
            subfolders.append("streaming")  # the trained CAM/APM memories the streaming runner may load
        out.update({f"{model.id}/{path.relative_to(folder).as_posix()}": file_hash(path)
                    for path in weight_files(folder, subfolders, model.variant)})
    adapter = getattr(model, "motion_adapter", None)
    if adapter:  # AnimateDiff: the MotionAdapter merged into an SD 1.5 UNet (loaded without a variant)
        adapter_folder = source_folder(adapter)
        if adapter_folder is not None:
            out.update({f"{adapter}/{path.relative_to(adapter_folder).as_posix()}": file_hash(path)
                        for path in weight_files(adapter_folder, ["."])})
    return out
