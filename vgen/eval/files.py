"""Score existing video files against their prompts with the toy-world detector.

The prompt comes from the file's JSON sidecar (what `vgen generate` wrote) unless one is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vgen.errors import VgenError


@dataclass
class FileScore:
    path: Path
    prompt: str
    score: Optional[object] = None  # vgen.toyworld.VideoScore
    error: str = ""


def prompt_of(path: Path) -> str:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise VgenError(f"'{path}' has no sidecar {sidecar.name}; pass --prompt")
    try:
        return json.loads(sidecar.read_text())["prompt"]
    except (ValueError, KeyError):
        raise VgenError(f"sidecar '{sidecar}' has no prompt; pass --prompt") from None


def score_file(path: str | Path, prompt: Optional[str] = None) -> FileScore:
    """Detector score of one file; a file or prompt outside the toy world becomes an error entry."""
    from vgen.toyworld import score_video
    from vgen.video import read_video

    path = Path(path)
    try:
        video = read_video(path)
        text = prompt or prompt_of(path)
        try:
            score = score_video(video.frames, text)
        except ValueError as err:
            raise VgenError(f"prompt is not a toy-world prompt: {err}") from None
        return FileScore(path, text, score)
    except VgenError as err:
        return FileScore(path, prompt or "", error=str(err))
