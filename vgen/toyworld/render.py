"""Anti-aliased renderer for toy-world scenes.

Each object is rasterised 4x4-supersampled inside a small window that follows it, for all
frames at once, then alpha-composited; that keeps a training batch cheap on a CPU.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .scene import COLOURS, BackgroundSpec, ObjectLayout, Scene

SUPERSAMPLE = 4


def _inside(shape: str, u: np.ndarray, v: np.ndarray, h: float) -> np.ndarray:
    """Point-in-shape test for offsets (u, v) from the centre; h is half the side; y points down."""
    if shape == "square":
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape == "circle":
        return u * u + v * v <= h * h
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= h
    if shape == "triangle":  # apex at the top (v = -h), base at the bottom (v = +h)
        return (v <= h) & (np.abs(u) <= (v + h) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def background_image(bg: BackgroundSpec, size: int) -> np.ndarray:
    """Grey level plus, when textured, smooth luminance blobs and faint per-channel noise (float32)."""
    img = np.full((size, size, 3), float(bg.grey), dtype=np.float32)
    if bg.texture > 0:
        rng = np.random.default_rng(bg.seed)
        coarse = rng.uniform(-1.0, 1.0, size=(5, 5))
        smooth = ndimage.zoom(coarse, size / 5, order=1)[:size, :size]
        lum = bg.texture * smooth + rng.normal(0.0, bg.texture / 4, size=(size, size))
        img += lum[..., None].astype(np.float32)
        img += rng.normal(0.0, 2.0, size=(size, size, 3)).astype(np.float32)
    return np.clip(img, 0, 255)


def coverage(layout: ObjectLayout, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame coverage window of one object: (alpha [F, W, W], left px [F], top px [F])."""
    side, h, s = layout.size, layout.size / 2, SUPERSAMPLE
    width = int(np.ceil(side)) + 3
    centres = layout.centres(frames)
    origin = np.floor(centres - h).astype(np.int64) - 1  # [F, 2] window's first pixel (x, y)
    sub = (np.arange(width * s) + 0.5) / s - 0.5  # subsample positions relative to origin
    u = (origin[:, 0, None] - centres[:, 0, None]) + sub[None, :]  # [F, W*s]
    v = (origin[:, 1, None] - centres[:, 1, None]) + sub[None, :]
    hit = _inside(layout.spec.shape, u[:, None, :], v[:, :, None], h)  # [F, W*s, W*s]
    alpha = hit.reshape(frames, width, s, width, s).mean(axis=(2, 4), dtype=np.float32)
    return alpha, origin[:, 0], origin[:, 1]


def _rescaled(scene: Scene, size: int) -> list[ObjectLayout]:
    """Layouts mapped to another frame size (pixel-centre convention: x' = (x + .5) k - .5)."""
    if size == scene.size:
        return list(scene.objects)
    k = size / scene.size

    def px(v: float) -> float:
        return (v + 0.5) * k - 0.5

    return [
        ObjectLayout(o.spec, px(o.x0), px(o.y0), o.size * k, o.speed * k,
                     None if o.bounds is None else (px(o.bounds[0]), px(o.bounds[1])))
        for o in scene.objects
    ]


def render_video(scene: Scene, frames: int, size: int | None = None) -> np.ndarray:
    """Render frames of the scene as uint8 [F, size, size, 3]; size defaults to the scene's own."""
    size = scene.size if size is None else int(size)
    if frames < 1 or size < 1:
        raise ValueError(f"frames and size must be >= 1, got frames={frames}, size={size}")
    layouts = _rescaled(scene, size)
    pad = int(np.ceil(max([o.size for o in layouts], default=0))) + 4
    canvas = np.zeros((frames, size + 2 * pad, size + 2 * pad, 3), dtype=np.float32)
    canvas[:, pad : pad + size, pad : pad + size] = background_image(scene.background, size)
    f = np.arange(frames)[:, None, None]
    for layout in layouts:
        alpha, left, top = coverage(layout, frames)
        width = alpha.shape[1]
        rows = (top + pad)[:, None, None] + np.arange(width)[None, :, None]
        cols = (left + pad)[:, None, None] + np.arange(width)[None, None, :]
        region = canvas[f, rows, cols]
        colour = np.asarray(COLOURS[layout.spec.colour], dtype=np.float32)
        a = alpha[..., None]
        canvas[f, rows, cols] = region * (1 - a) + colour * a
    out = canvas[:, pad : pad + size, pad : pad + size]
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def render_image(scene: Scene, size: int | None = None) -> np.ndarray:
    """Frame 0 of the scene as uint8 [size, size, 3]."""
    return render_video(scene, 1, size)[0]
