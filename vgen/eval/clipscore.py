"""CLIP text-video score for `vgen eval`: mean over frames of 100·cos(CLIP image, CLIP text), when the weights
are on this machine (a local folder, or the default model in the Hugging Face cache); never a download.

Frames: up to FRAMES evenly spaced ones (StreamingT2V's CLIP score averages per-frame scores too). The model
is the I4VGen reward's (vgen.methods.i4vgen.rewards.clip_reward), so both read CLIP the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

FRAMES = 8

ClipScorer = Callable[[np.ndarray, str], float]


def _cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def load_clip_scorer(source: Optional[str] = None, device: str = "cpu") -> tuple[Optional[ClipScorer], str]:
    """(scorer, note). With no source, the default CLIP if it is cached, else (None, a one-line note); an
    explicit source that cannot load raises ModelLoadError (the user asked for it)."""
    from vgen.methods.i4vgen.rewards import DEFAULT_CLIP, clip_reward

    if source is None:
        if not _cached(DEFAULT_CLIP):
            return None, (f"clip: not computed, no local CLIP weights ({DEFAULT_CLIP} is not in the Hugging Face "
                          "cache); pass --clip FOLDER with a CLIPModel")
        source = DEFAULT_CLIP
    reward = clip_reward(source if not Path(source).expanduser().is_dir() else str(Path(source).expanduser()), device)

    def score(frames: np.ndarray, prompt: str) -> float:
        idx = np.unique(np.linspace(0, len(frames) - 1, min(FRAMES, len(frames))).round().astype(int))
        return float(np.mean(reward(frames[idx], prompt)))

    return score, (f"clip (higher is better): CLIP text-image cosine x100 with {source}, mean over "
                   f"{FRAMES} evenly spaced frames")
