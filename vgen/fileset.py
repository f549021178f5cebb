"""One output's file set (mp4, sidecar, GIF, frames, anchor images) appears whole or not at all.

A job writes its whole set into a hidden staging folder beside the output (same file system, so placing a
file is a rename). Only when every file, the sidecar included, is complete does `commit` place them:
the old set's sidecar is taken away first (an old set without its sidecar is an unfinished name, never a
"done" one), then the new files are renamed into place, the new sidecar last. SIGINT and SIGTERM are held
back during those renames and delivered right after, so an interrupt leaves the old set or the new one,
each with the sidecar that describes its video. A process killed outright (SIGKILL, power) mid-commit can
leave a set without a sidecar, which `--skip-existing` re-runs; the sidecar also records the mp4's hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

STAGING_MARK = ".vgen-staging-"
HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def staging_folder(mp4: Path) -> Path:
    """A new hidden folder beside `mp4` where its set is written."""
    return Path(tempfile.mkdtemp(prefix=f".{mp4.stem}{STAGING_MARK}", dir=mp4.parent))


@contextmanager
def staged(mp4: Path) -> Iterator[Path]:
    """A staging folder for `mp4`'s set, removed on the way out whatever happens (after a commit it is empty)."""
    folder = staging_folder(mp4)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends (then they are delivered as usual)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def short_file_hash(path: Path, chars: int = 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:chars]


def _set_aside(path: Path, trash: Path) -> None:
    if path.exists() or path.is_symlink():
        os.replace(path, trash / path.name)


def commit(stage: Path, folder: Path, sidecar_name: str, old_files: Iterable[Path] = ()) -> list[Path]:
    """Move every entry of `stage` into `folder`, replacing what is there, the sidecar last; `old_files` (the
    old set's extras, e.g. a GIF the new set does not have) are removed. Returns the placed paths."""
    entries = sorted(p for p in stage.iterdir() if p.name != sidecar_name)
    sidecar = stage / sidecar_name
    if not sidecar.is_file():
        raise RuntimeError(f"staging folder {stage} has no sidecar {sidecar_name}")
    trash = Path(tempfile.mkdtemp(prefix=f".{sidecar_name}.vgen-replaced-", dir=folder))
    placed = []
    try:
        with signals_held():
            _set_aside(folder / sidecar_name, trash)  # the old set stops claiming to be complete
            for old in old_files:
                if old.parent == folder and not (stage / old.name).exists():
                    _set_aside(old, trash)
            for entry in entries:
                target = folder / entry.name
                if entry.is_dir():  # a folder cannot be renamed over a non-empty one
                    _set_aside(target, trash)
                os.replace(entry, target)
                placed.append(target)
            os.replace(sidecar, folder / sidecar_name)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    return placed + [folder / sidecar_name]
