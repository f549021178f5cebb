"""Training batches for the toy models: (captions, uint8 pixels), never from the held-out split.

Pure numpy so trainers on any framework (and tests without torch) can use it.
"""

from __future__ import annotations

import numpy as np

from .captions import is_held_out, paraphrase
from .render import render_video
from .scene import ObjectSpec, sample_scene, sample_specs


def sample_training_specs(rng: np.random.Generator, n_objects_weights=(0.5, 0.3, 0.2)) -> list[ObjectSpec]:
    """Objects for one training example: n_objects = 1 + index drawn from the weights; not held out."""
    w = np.asarray(n_objects_weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"n_objects_weights must be non-negative with a positive sum, got {n_objects_weights}")
    n = 1 + int(rng.choice(len(w), p=w / w.sum()))
    while True:
        specs = sample_specs(rng, n)
        if not is_held_out(specs):
            return specs


def sample_training_batch(
    rng: np.random.Generator,
    batch: int,
    frames: int,
    size: int = 64,
    n_objects_weights=(0.5, 0.3, 0.2),
    bounce: bool = False,
    speed_range: tuple[float, float] | None = None,
) -> tuple[list[str], np.ndarray]:
    """batch paraphrased captions and their clips, uint8 [B, frames, size, size, 3] (bounce, speed_range: see
    sample_scene; speed_range needs bounce)."""
    if speed_range is not None and not bounce:
        raise ValueError("speed_range needs bounce=True (without it long clips slow down to fit the frame)")
    extra = {} if speed_range is None else {"speed_range": tuple(speed_range)}
    captions, videos = [], np.empty((batch, frames, size, size, 3), dtype=np.uint8)
    for b in range(batch):
        while True:  # bouncing objects may find no layout that keeps them apart: draw other objects
            specs = sample_training_specs(rng, n_objects_weights)
            try:
                scene = sample_scene(rng, specs, frames, size, bounce=bounce, **extra)
                break
            except ValueError:
                if not bounce:
                    raise
        videos[b] = render_video(scene, frames)
        captions.append(paraphrase(specs, rng))
    return captions, videos


def sample_image_batch(
    rng: np.random.Generator,
    batch: int,
    size: int = 64,
    n_objects_weights=(0.5, 0.3, 0.2),
    p_motion: float = 0.5,
) -> tuple[list[str], np.ndarray]:
    """batch captions and first frames, uint8 [B, size, size, 3], for text-to-image training.

    With probability 1 - p_motion a caption drops the motion phrases ('a red circle'); the
    image models are also prompted with video prompts, so both forms are trained.
    """
    captions, images = [], np.empty((batch, size, size, 3), dtype=np.uint8)
    for b in range(batch):
        specs = sample_training_specs(rng, n_objects_weights)
        images[b] = render_video(sample_scene(rng, specs, 1, size), 1)[0]
        captions.append(paraphrase(specs, rng, with_motion=bool(rng.random() < p_motion)))
    return captions, images
