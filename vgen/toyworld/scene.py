"""Scene grammar of the toy world: what a caption says and where things are drawn.

Kept separate from rendering so that captions, the sampler and the detector share
one source of truth for colours, shapes and motions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Fully saturated colours (max channel 255, min channel 0) so that chroma = max - min is
# 255 for every object and ~0 for the grey background. Hues in degrees: red 0, orange 30,
# yellow 60, green 120, blue 240, purple 280; the detector classifies pixels by hue.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "orange": (255, 128, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "purple": (170, 0, 255),
}

# Shapes in a fixed orientation (the triangle points up). Bounding-box fill ratios are
# square 1, circle pi/4, diamond 1/2, triangle 1/2; triangle and diamond differ in the
# vertical offset of the centroid (1/6 of the height for the triangle, 0 for the diamond).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")

# Unit velocity of each motion in image coordinates (x right, y down).
MOTION_VECTORS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}

REFERENCE_SIZE = 64  # sizes and speeds below are quoted at 64x64 and scale with the frame
OBJECT_SIZE_RANGE = (12.0, 20.0)  # bounding-box side in px at 64x64
SPEED_RANGE = (2.0, 3.5)  # px/frame at 64x64: fast enough that 8 frames move >= 2 latent pixels
MIN_SPEED = 0.6  # px/frame at 64x64; long clips slow down to this, never below
GREY_RANGE = (64, 192)  # background grey level
TEXTURE_AMPLITUDE = 12.0  # max luminance swing of a textured background
MARGIN = 1.0  # px kept free between an object and the frame border / other objects


@dataclass(frozen=True)
class ObjectSpec:
    """One object as a caption describes it; motion None means the caption leaves it out."""

    colour: str
    shape: str
    motion: str | None = "still"

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; the toy world has {', '.join(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; the toy world has {', '.join(SHAPES)}")
        if self.motion is not None and self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; the toy world has {', '.join(MOTIONS)}")


@dataclass(frozen=True)
class ObjectLayout:
    """Where and how fast one object is drawn: centre at frame 0 in px, side in px, px/frame.

    Pixel i covers [i - 0.5, i + 0.5], so a pixel's centre has an integer coordinate.
    bounds (lo, hi), when set, is the centre's range on both axes and the object bounces off its ends
    (a mirror reflection, speed kept): long clips then keep the short clips' speed.
    """

    spec: ObjectSpec
    x0: float
    y0: float
    size: float
    speed: float
    bounds: tuple[float, float] | None = None

    def velocity(self) -> tuple[float, float]:
        dx, dy = MOTION_VECTORS[self.spec.motion or "still"]
        return dx * self.speed, dy * self.speed

    def centres(self, frames: int) -> np.ndarray:
        """Centre of the object in every frame, shape [frames, 2] as (x, y)."""
        t = np.arange(frames, dtype=np.float64)
        vx, vy = self.velocity()
        path = np.stack([self.x0 + vx * t, self.y0 + vy * t], axis=1)
        return path if self.bounds is None else reflect(path, *self.bounds)


def reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions on an unbounded line into [lo, hi] as a ball bouncing between two walls would."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


@dataclass(frozen=True)
class BackgroundSpec:
    """A neutral grey background; texture > 0 adds smooth low-saturation noise drawn from seed."""

    grey: int = 128
    texture: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    """Objects (drawn in order, later on top) over a background, laid out for a size x size frame."""

    objects: tuple[ObjectLayout, ...]
    background: BackgroundSpec = BackgroundSpec()
    size: int = REFERENCE_SIZE

    @property
    def specs(self) -> list[ObjectSpec]:
        return [o.spec for o in self.objects]


def sample_specs(rng: np.random.Generator, n_objects: int) -> list[ObjectSpec]:
    """Random objects with distinct colours (the detector tracks by colour); shapes may repeat."""
    if not 1 <= n_objects <= len(COLOURS):
        raise ValueError(f"n_objects must be in 1..{len(COLOURS)}, got {n_objects}")
    colours = rng.choice(len(COLOURS), size=n_objects, replace=False)
    names = list(COLOURS)
    return [
        ObjectSpec(names[c], SHAPES[rng.integers(len(SHAPES))], MOTIONS[rng.integers(len(MOTIONS))])
        for c in colours
    ]


def sample_background(rng: np.random.Generator) -> BackgroundSpec:
    """Half plain, half textured; grey level uniform in GREY_RANGE."""
    grey = int(rng.integers(GREY_RANGE[0], GREY_RANGE[1] + 1))
    texture = float(TEXTURE_AMPLITUDE) if rng.random() < 0.5 else 0.0
    return BackgroundSpec(grey=grey, texture=texture, seed=int(rng.integers(2**31)))


def _fits(paths: list[np.ndarray], sizes: list[float]) -> bool:
    """True when no two objects' bounding boxes come within MARGIN px of each other in any frame."""
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            gap = np.abs(paths[i] - paths[j]) - (sizes[i] + sizes[j]) / 2
            if np.any(np.max(gap, axis=1) < MARGIN):
                return False
    return True


def sample_scene(
    rng: np.random.Generator,
    specs: list[ObjectSpec],
    frames: int,
    size: int = REFERENCE_SIZE,
    max_tries: int = 2000,
    bounce: bool = False,
    speed_range: tuple[float, float] = SPEED_RANGE,
) -> Scene:
    """Lay out specs so every object stays fully inside the frame and apart from the others.

    Sizes and speeds scale with size / 64. Long clips lower the speed (down to MIN_SPEED) and
    then the size of moving objects so the path fits; a clip too long even for the smallest
    object raises ValueError. With bounce, moving objects keep the short clips' speed at any
    length and bounce off the frame's border instead (ObjectLayout.bounds); the caption's motion
    is then the first direction, and `speed_range` (px/frame at 64x64) may widen the speeds.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    k = size / REFERENCE_SIZE
    longest = size - 2 * MARGIN - OBJECT_SIZE_RANGE[0] * k
    if not bounce and frames > 1 and any(s.motion not in (None, "still") for s in specs) and (
        MIN_SPEED * k * (frames - 1) > longest
    ):
        raise ValueError(
            f"{frames} frames is too long for a moving object to stay inside a {size}x{size} "
            f"frame at >= {MIN_SPEED * k:.2f} px/frame (at most {int(longest / (MIN_SPEED * k)) + 1} frames)"
        )
    background = sample_background(rng)
    for _ in range(max_tries):
        if bounce:
            layouts = [_bouncing_layout(rng, spec, frames, size, speed_range) for spec in specs]
        else:
            layouts = [_fitted_layout(rng, spec, frames, size) for spec in specs]
        if _fits([o.centres(frames) for o in layouts], [o.size for o in layouts]):
            return Scene(tuple(layouts), background, size)
    what = "bouncing objects" if bounce else "objects"
    raise ValueError(f"could not lay out {len(specs)} {what} in {size}x{size} for {frames} frames")


def _fitted_layout(rng: np.random.Generator, spec: ObjectSpec, frames: int, size: int) -> ObjectLayout:
    """One object whose whole straight path stays inside the frame (long clips slow down, then shrink)."""
    k = size / REFERENCE_SIZE
    moving = spec.motion not in (None, "still") and frames > 1
    side = float(rng.uniform(*OBJECT_SIZE_RANGE)) * k
    if moving:  # shrink big objects so the slowest allowed path still fits
        side = min(side, size - 2 * MARGIN - MIN_SPEED * k * (frames - 1))
    lo, hi = side / 2 + MARGIN - 0.5, size - 0.5 - side / 2 - MARGIN  # centre range
    speed = 0.0
    if moving:
        # at most half the free range, so several moving objects still find room; long
        # clips slow down (never below MIN_SPEED, checked by sample_scene)
        cap = max(0.5 * (hi - lo), MIN_SPEED * k * (frames - 1)) / (frames - 1)
        speed = min(float(rng.uniform(*SPEED_RANGE)) * k, cap, (hi - lo) / (frames - 1))
    dx, dy = MOTION_VECTORS[spec.motion or "still"] if moving else (0, 0)
    travel = speed * (frames - 1)
    free = max(hi - lo - travel, 0.0)  # room left for the start along each moving axis
    x0 = lo + (travel if dx < 0 else 0.0) + rng.random() * (free if dx else hi - lo)
    y0 = lo + (travel if dy < 0 else 0.0) + rng.random() * (free if dy else hi - lo)
    return ObjectLayout(spec, float(x0), float(y0), side, speed)


def _bouncing_layout(rng: np.random.Generator, spec: ObjectSpec, frames: int, size: int,
                     speed_range: tuple[float, float]) -> ObjectLayout:
    """One object at a speed from speed_range, starting anywhere, bouncing off the border."""
    k = size / REFERENCE_SIZE
    moving = spec.motion not in (None, "still") and frames > 1
    side = float(rng.uniform(*OBJECT_SIZE_RANGE)) * k
    lo, hi = side / 2 + MARGIN - 0.5, size - 0.5 - side / 2 - MARGIN
    speed = float(rng.uniform(*speed_range)) * k if moving else 0.0
    x0, y0 = lo + rng.random() * (hi - lo), lo + rng.random() * (hi - lo)
    return ObjectLayout(spec, float(x0), float(y0), side, speed, (lo, hi) if moving else None)
