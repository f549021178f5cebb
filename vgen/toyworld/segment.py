"""Single-frame object finding: saturated pixels -> world colour by hue -> blobs -> shape.

The background is grey (chroma = max - min channel is near 0) and every object colour is
fully saturated (chroma 255), so a chroma threshold separates objects from the background
whatever its grey level, and hue alone names the colour.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .scene import COLOURS, REFERENCE_SIZE

CHROMA_MIN = 100  # ~40% coverage of a pure colour over grey; textured grey stays below ~20
MAX_HUE_DISTANCE = 30.0  # degrees from the nearest world colour; cyan/pink pixels are nobody's
MIN_AREA = 20  # px at 64x64 (scaled by area); the smallest object covers ~70 px
ASPECT_RANGE = (0.5, 2.0)  # width / height of a plausible object's bounding box
MIN_FILL = 0.3  # area / bounding-box area of a plausible object

CHROMA_FLOOR = 24  # chroma of textured grey stays below this; it counts as zero coverage
HALO = 2  # px around a blob searched for its anti-aliased / blurred edge

# Shape prototypes in moment space, computed from ideal shapes: (mean kurtosis of the x and
# y marginals, mu22 / (mu20 mu02), skewness of the y marginal). Moments of the soft coverage
# barely move under anti-aliasing, blur or the 2x2 chroma blocks of yuv420p video, where
# bounding-box features break down. The triangle points up, so its y skew is negative.
SHAPE_PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "square": (1.8, 1.0, 0.0),
    "circle": (2.0, 2.0 / 3.0, 0.0),
    "diamond": (2.4, 0.4, 0.0),
    "triangle": (2.4, 0.8, -0.566),
}


@dataclass(frozen=True)
class FrameObject:
    """One object found in one frame.

    area is the summed coverage (px) and (cx, cy) its centroid, pixel centres at integer
    coordinates; features are the moment features the shape was classified from.
    """

    colour: str
    shape: str
    cx: float
    cy: float
    area: float
    features: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d


def _channels(rgb: np.ndarray) -> tuple[np.ndarray, ...]:
    """r, g, b, max, min as float32; elementwise (a reduce over a length-3 axis is slow)."""
    x = np.asarray(rgb)
    r, g, b = (x[..., i].astype(np.float32) for i in range(3))
    return r, g, b, np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)


def _hue(r, g, b, mx, mn) -> np.ndarray:
    c = np.where(mx > mn, mx - mn, 1.0)
    h = np.where(mx == r, (g - b) / c, np.where(mx == g, (b - r) / c + 2.0, (r - g) / c + 4.0))
    return (h * 60.0) % 360.0


def hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in [0, 360) of an [..., 3] array; 0 where the pixel is grey."""
    return _hue(*_channels(rgb))


_NAMES = list(COLOURS)
_HUES = hue_degrees(np.array([COLOURS[n] for n in _NAMES], dtype=np.uint8))


def classify_pixels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(colour map, faint colour map, chroma) of an [..., 3] uint8 array.

    A colour map holds the index into COLOURS of each pixel's world colour (hue within
    MAX_HUE_DISTANCE) or -1; the plain map needs chroma >= CHROMA_MIN, the faint one only
    chroma > CHROMA_FLOOR (used to keep a neighbour's soft edge out of a blob's halo).
    """
    r, g, b, mx, mn = _channels(rgb)
    chroma = mx - mn
    d = np.abs(_hue(r, g, b, mx, mn)[..., None] - _HUES)
    d = np.minimum(d, 360.0 - d)
    best = d.argmin(axis=-1)
    hue_ok = np.take_along_axis(d, best[..., None], -1)[..., 0] <= MAX_HUE_DISTANCE
    strong = np.where(hue_ok & (chroma >= CHROMA_MIN), best, -1)
    faint = np.where(hue_ok & (chroma > CHROMA_FLOOR), best, -1)
    return strong, faint, chroma


def classify_shape(features: tuple[float, float, float]) -> str:
    """Nearest shape prototype (Euclidean) in moment-feature space."""
    f = np.asarray(features)
    return min(SHAPE_PROTOTYPES, key=lambda k: float(np.sum((f - SHAPE_PROTOTYPES[k]) ** 2)))


def moment_features(alpha: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(area, cx, cy, kurtosis, cross, skew_y) of a coverage map; see SHAPE_PROTOTYPES."""
    w = alpha / alpha.sum()
    area = float(alpha.sum())
    py, px = w.sum(axis=1), w.sum(axis=0)  # marginals
    cx, cy = float(px @ np.arange(len(px))), float(py @ np.arange(len(py)))
    dx2, dy = (np.arange(len(px)) - cx) ** 2, np.arange(len(py)) - cy
    dy2 = dy * dy
    m20, m02 = float(px @ dx2), float(py @ dy2)
    kurt = (float(px @ dx2**2) / m20**2 + float(py @ dy2**2) / m02**2) / 2
    cross = float(dy2 @ w @ dx2) / (m20 * m02)
    return area, cx, cy, kurt, cross, float(py @ (dy2 * dy)) / m02**1.5


def _plausible(comp: np.ndarray) -> bool:
    """Thresholded blob with an object-like bounding box (noise specks fail this)."""
    ys, xs = np.nonzero(comp)
    w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    return ASPECT_RANGE[0] <= w / h <= ASPECT_RANGE[1] and len(ys) / (w * h) >= MIN_FILL


def _blob(colour: str, labels: np.ndarray, k: int, box: tuple[slice, slice], chroma: np.ndarray,
          other: np.ndarray) -> FrameObject | None:
    """Measure component k from its soft coverage in a window around its box, or None if implausible."""
    y0, x0 = max(box[0].start - HALO, 0), max(box[1].start - HALO, 0)
    win = (slice(y0, box[0].stop + HALO), slice(x0, box[1].stop + HALO))
    lab = labels[win]
    comp = lab == k
    if not _plausible(comp):
        return None
    near = ndimage.binary_dilation(comp, iterations=HALO) & ((lab == 0) | comp) & ~other[win]
    c = chroma[win].astype(np.float64)
    ref = max(float(np.percentile(c[comp], 75)), CHROMA_MIN)
    alpha = np.clip((c - CHROMA_FLOOR) / (ref - CHROMA_FLOOR), 0.0, 1.0) * near
    area, cx, cy, *features = moment_features(alpha)
    feats = tuple(round(float(f), 4) for f in features)
    return FrameObject(colour, classify_shape(feats), cx + x0, cy + y0, area, feats)


def detect_frame(frame: np.ndarray, pixels: tuple[np.ndarray, ...] | None = None) -> list[FrameObject]:
    """All plausible objects in one [H, W, 3] uint8 frame, largest first within each colour.

    pixels: classify_pixels(frame), when the caller computed it for many frames at once.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] < 3:
        raise ValueError(f"expected a frame [H, W, 3], got shape {frame.shape}")
    cmap, faint, chroma = classify_pixels(frame[..., :3]) if pixels is None else pixels
    min_area = max(4, round(MIN_AREA * frame.shape[0] * frame.shape[1] / REFERENCE_SIZE**2))
    counts = np.bincount(cmap[cmap >= 0].ravel(), minlength=len(_NAMES))
    found: list[FrameObject] = []
    for ci in np.flatnonzero(counts >= min_area):
        labels, _ = ndimage.label(cmap == ci)
        sizes = np.bincount(labels.ravel())
        other = (faint >= 0) & (faint != ci)  # pixels, faint ones included, of another colour
        blobs = []
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is not None and sizes[k] >= min_area:
                obj = _blob(_NAMES[ci], labels, k, box, chroma, other)
                if obj is not None:
                    blobs.append(obj)
        found += sorted(blobs, key=lambda o: -o.area)
    return found
