"""Reading a model's JSON files from a local folder or the Hugging Face Hub, with one-line offline errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from vgen.errors import ModelLoadError


def looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or os.sep in source.replace("/", "")


def offline_hint(source: str) -> str:
    from vgen.models.registry import builtin_names

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
        raise ModelLoadError(offline_hint(source))
    try:
        path = hf_hub_download(source, filename, revision=revision)
    except LocalEntryNotFoundError:  # offline and not cached (a subclass of EntryNotFoundError)
        raise ModelLoadError(offline_hint(source)) from None
    except EntryNotFoundError:
        return None
    except Exception:
        raise ModelLoadError(offline_hint(source)) from None
    return json.loads(Path(path).read_text())


def load_scheduler(source: str, revision: Optional[str], fallback: str = "DDIMScheduler"):
    """The scheduler a folder ships, as its config names it."""
    import diffusers

    sched_cfg = read_json(source, "scheduler/scheduler_config.json", revision)
    if sched_cfg is None:
        raise ModelLoadError(f"'{source}' has no scheduler/scheduler_config.json")
    cls = getattr(diffusers, sched_cfg.get("_class_name", ""), None) or getattr(diffusers, fallback)
    return cls.from_config(sched_cfg)


def library_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
