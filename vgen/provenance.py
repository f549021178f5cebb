"""Which vgen made a video: its version, the git commit of a source checkout, and the check on re-running a
sidecar made by another version (docs/versioning.md says when the version changes). Torch-free."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding vgen/ (a checkout's root, or site-packages)


def vgen_version() -> str:
    from vgen import __version__

    return __version__


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def git_commit() -> Optional[dict[str, Any]]:
    """{"commit": sha, "dirty": bool} when vgen runs from a git checkout (its own root, not a repository that
    merely contains an installed copy), else None. `dirty`: tracked files under vgen/ differ from the commit."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != PACKAGE_ROOT:
        return None
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "vgen")
    return {"commit": sha, "dirty": bool(status)}


def source() -> dict[str, Any]:
    """The sidecar's `vgen` field: version, and commit + dirty in a checkout (null otherwise)."""
    git = git_commit()
    return {"version": vgen_version(), "commit": git["commit"] if git else None,
            "dirty": git["dirty"] if git else None}


def sidecar_version(sidecar: dict) -> Optional[str]:
    """The vgen version a sidecar was written by (its `vgen.version`, or the older `versions.vgen`)."""
    made = sidecar.get("vgen")
    if isinstance(made, dict) and made.get("version"):
        return str(made["version"])
    versions = sidecar.get("versions")
    if isinstance(versions, dict) and versions.get("vgen"):
        return str(versions["vgen"])
    return None


def version_warning(sidecar: dict, path: str | Path) -> Optional[str]:
    """One line when re-running `sidecar` (read from `path`) under another vgen version, else None."""
    made = sidecar_version(sidecar)
    now = vgen_version()
    if made is None or made == now:
        return None
    return (f"warning: {Path(path).name} was made by vgen {made}, this is vgen {now}: the same config may give "
            "other frames (docs/versioning.md)")
