"""Exact toy-world detector: per-frame objects -> per-colour tracks -> scores against a prompt.

Colours are distinct within a toy-world scene, so a track is simply "the largest blob of
that colour in each frame". Scores turn each method's claim into numbers: presence,
colour/shape/motion fidelity, extra objects and identity drift over time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .captions import parse_prompt
from .scene import MOTION_VECTORS, REFERENCE_SIZE, ObjectSpec
from .segment import FrameObject, classify_pixels, detect_frame

STILL_SPEED = 0.3  # px/frame at 64x64 (scaled by width); slower objects count as still
PRESENT_FRACTION = 0.5  # a track is present when seen in at least this fraction of frames
MAX_FIT_FRAMES = 64  # the robust motion fit uses at most this many (evenly spaced) frames
CHUNK_FRAMES = 32  # frames classified per vectorised call (bounds memory on long videos)
BORDER_REACH = 0.75  # x sqrt(area): the centre-to-tip half extent of the toy's widest shapes (triangle, diamond: 0.71)


def read_video(video) -> np.ndarray:
    """uint8 [F, H, W, 3] from an array ([F,H,W,C] or one [H,W,C] frame) or an mp4/gif/png path.

    Float arrays are taken to be in [0, 1].
    """
    if isinstance(video, (str, Path)):
        import imageio.v3 as iio

        video = iio.imread(str(video), index=None)
    arr = np.asarray(getattr(video, "frames", video))
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] < 3:
        raise ValueError(f"expected video frames [F, H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"expected uint8 or float frames, got {arr.dtype}")
        arr = np.rint(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
    return arr[..., :3]


@dataclass
class Track:
    """One colour across frames: the largest blob of that colour per frame (None where missing)."""

    colour: str
    observations: list[FrameObject | None]

    @property
    def presence(self) -> float:
        return sum(o is not None for o in self.observations) / max(len(self.observations), 1)

    @property
    def present(self) -> bool:
        return self.presence >= PRESENT_FRACTION

    @property
    def majority_shape(self) -> str | None:
        shapes = Counter(o.shape for o in self.observations if o is not None)
        return shapes.most_common(1)[0][0] if shapes else None

    def centroids(self) -> np.ndarray:
        """[F, 2] (x, y), NaN where the object is missing."""
        return np.array([(o.cx, o.cy) if o else (np.nan, np.nan) for o in self.observations], dtype=np.float64)

    def drift(self) -> float:
        """Fraction of frames where the object is missing or not its majority shape."""
        major = self.majority_shape
        return sum(o is None or o.shape != major for o in self.observations) / max(len(self.observations), 1)

    def at_border(self, width: int, height: int) -> np.ndarray:
        """[F] bool: frames where the object, or where it is missing its nearest sighting (the earlier on a tie),
        lies within BORDER_REACH·sqrt(median area) + 1 px of the frame's edge, i.e. touches it or is leaving.

        A moving object that reaches the edge is clipped (its shape reads wrong) and then gone: that is leaving
        the frame, not losing its identity. All True when the object is never seen."""
        seen = np.array([o is not None for o in self.observations])
        if not seen.any():
            return np.ones(len(self.observations), dtype=bool)
        reach = BORDER_REACH * float(np.sqrt(np.median([o.area for o in self.observations if o is not None]))) + 1.0
        idx = np.flatnonzero(seen)
        frames = np.arange(len(self.observations))
        nearest = idx[np.abs(frames[:, None] - idx[None, :]).argmin(axis=1)]  # argmin: the earlier on a tie
        cents = self.centroids()[nearest]
        edge = np.minimum.reduce([cents[:, 0], cents[:, 1], width - 1 - cents[:, 0], height - 1 - cents[:, 1]])
        return edge < reach

    def drift_inside(self, width: int, height: int) -> float | None:
        """drift() over the frames away from the border only (see at_border): identity lost where the object is
        whole in view. None when it is never away from the border."""
        inside = ~self.at_border(width, height)
        if not inside.any():
            return None
        major = self.majority_shape
        bad = np.array([o is None or o.shape != major for o in self.observations])
        return float(bad[inside].mean())


@dataclass
class VideoDetection:
    """Everything the detector saw: objects per frame and one track per colour."""

    frames: list[list[FrameObject]]
    tracks: dict[str, Track]
    height: int
    width: int

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def to_dict(self) -> dict:
        return {
            "n_frames": self.n_frames,
            "height": self.height,
            "width": self.width,
            "frames": [[o.to_dict() for o in objs] for objs in self.frames],
        }


def detect_video(video) -> VideoDetection:
    """Detect objects in every frame (array or file path) and link them into per-colour tracks."""
    arr = read_video(video)
    frames: list[list[FrameObject]] = []
    for start in range(0, len(arr), CHUNK_FRAMES):  # pixel classification is vectorised per chunk
        maps = classify_pixels(arr[start : start + CHUNK_FRAMES])
        frames += [detect_frame(f, tuple(m[i] for m in maps)) for i, f in enumerate(arr[start : start + CHUNK_FRAMES])]
    colours = sorted({o.colour for objs in frames for o in objs})
    tracks = {}
    for c in colours:
        obs = [next((o for o in objs if o.colour == c), None) for objs in frames]  # largest first
        tracks[c] = Track(c, obs)
    return VideoDetection(frames, tracks, int(arr.shape[1]), int(arr.shape[2]))


def estimate_motion(centroids: np.ndarray, width: int = REFERENCE_SIZE) -> tuple[str | None, tuple[float, float]]:
    """Direction and velocity (px/frame) from a Theil-Sen fit of the centroids over frame index.

    Median pairwise slopes ignore a few bad frames. Returns (None, (nan, nan)) with fewer than
    two observed frames; 'still' below STILL_SPEED (scaled to the frame width).
    """
    t = np.flatnonzero(~np.isnan(centroids[:, 0]))
    if len(t) < 2:
        return None, (float("nan"), float("nan"))
    if len(t) > MAX_FIT_FRAMES:
        t = t[np.unique(np.linspace(0, len(t) - 1, MAX_FIT_FRAMES).round().astype(int))]
    i, j = np.triu_indices(len(t), k=1)
    slopes = (centroids[t[j]] - centroids[t[i]]) / (t[j] - t[i])[:, None]
    vx, vy = (float(v) for v in np.median(slopes, axis=0))
    if np.hypot(vx, vy) < STILL_SPEED * width / REFERENCE_SIZE:
        return "still", (vx, vy)
    unit = (np.sign(vx), 0) if abs(vx) >= abs(vy) else (0, np.sign(vy))
    return next(m for m, v in MOTION_VECTORS.items() if v == unit), (vx, vy)


def _clean(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


@dataclass
class ObjectScore:
    """How one prompted object came out. motion_ok is None where motion is not judged."""

    spec: ObjectSpec
    present: bool
    presence: float
    colour_ok: bool
    shape_ok: bool
    detected_colour: str | None
    detected_shape: str | None
    motion: str | None
    velocity: tuple[float, float]
    motion_ok: bool | None
    drift: float
    trajectory: list[tuple[float, float]] = field(repr=False)

    @property
    def correct(self) -> bool:
        return self.present and self.colour_ok and self.shape_ok and self.motion_ok is not False

    def to_dict(self) -> dict:
        return {
            "colour": self.spec.colour,
            "shape": self.spec.shape,
            "prompted_motion": self.spec.motion,
            "present": self.present,
            "presence": self.presence,
            "colour_ok": self.colour_ok,
            "shape_ok": self.shape_ok,
            "detected_colour": self.detected_colour,
            "detected_shape": self.detected_shape,
            "motion": self.motion,
            "velocity": [_clean(v) for v in self.velocity],
            "motion_ok": self.motion_ok,
            "drift": self.drift,
            "correct": self.correct,
            "trajectory": [[_clean(x), _clean(y)] for x, y in self.trajectory],
        }


@dataclass
class VideoScore:
    """Scores of one video against its prompt; identity_drift is averaged over prompted objects."""

    objects: list[ObjectScore]
    extra_objects: list[str]
    n_frames: int

    @property
    def all_present(self) -> bool:
        return all(o.present for o in self.objects)

    @property
    def all_correct(self) -> bool:
        return all(o.correct for o in self.objects)

    @property
    def identity_drift(self) -> float:
        return float(np.mean([o.drift for o in self.objects])) if self.objects else 0.0

    @property
    def fraction_present(self) -> float:
        return float(np.mean([o.present for o in self.objects])) if self.objects else 1.0

    def to_dict(self) -> dict:
        return {
            "n_frames": self.n_frames,
            "all_present": self.all_present,
            "all_correct": self.all_correct,
            "fraction_present": self.fraction_present,
            "identity_drift": self.identity_drift,
            "extra_objects": list(self.extra_objects),
            "objects": [o.to_dict() for o in self.objects],
        }


def _match(specs: list[ObjectSpec], tracks: dict[str, Track]) -> list[Track | None]:
    """Track for each prompted object: its own colour first; failing that, an unprompted
    present track of the prompted shape (so a right shape in a wrong colour is present but
    not colour_ok); else a non-present track of its colour, if any, or None."""
    prompted = {s.colour for s in specs}
    spare = [t for c, t in tracks.items() if c not in prompted and t.present]
    spare.sort(key=lambda t: -t.presence)
    out: list[Track | None] = []
    for s in specs:
        own = tracks.get(s.colour)
        if own is None or not own.present:
            sub = next((t for t in spare if t.majority_shape == s.shape), None)
            if sub is not None:
                spare.remove(sub)
                own = sub
        out.append(own)
    return out


def _specs(prompt: str | list[ObjectSpec]) -> list[ObjectSpec]:
    return parse_prompt(prompt) if isinstance(prompt, str) else list(prompt)


def score_video(video_or_detection, prompt: str | list[ObjectSpec], judge_motion: bool = True) -> VideoScore:
    """Score a video (array, path or VideoDetection) against a prompt (text or specs).

    Motion is judged for prompted objects that name one, in videos of more than one frame.
    """
    det = video_or_detection if isinstance(video_or_detection, VideoDetection) else detect_video(video_or_detection)
    specs = _specs(prompt)
    judge = judge_motion and det.n_frames > 1
    scores = []
    for spec, track in zip(specs, _match(specs, det.tracks)):
        if track is None:
            nan = (float("nan"), float("nan"))
            scores.append(ObjectScore(spec, False, 0.0, False, False, None, None, None, nan,
                                      False if judge and spec.motion else None, 1.0, [nan] * det.n_frames))
            continue
        cents = track.centroids()
        motion, velocity = estimate_motion(cents, det.width) if det.n_frames > 1 else (None, (float("nan"),) * 2)
        present = track.present
        shape = track.majority_shape
        motion_ok = (present and motion == spec.motion) if judge and spec.motion is not None else None
        scores.append(ObjectScore(
            spec, present, track.presence, present and track.colour == spec.colour,
            present and shape == spec.shape, track.colour, shape, motion, velocity, motion_ok,
            track.drift(), [tuple(float(v) for v in c) for c in cents],
        ))
    prompted = {s.colour for s in specs}
    extra = sorted(c for c, t in det.tracks.items() if t.present and c not in prompted)
    return VideoScore(scores, extra, det.n_frames)


def score_image(frame, prompt: str | list[ObjectSpec]) -> VideoScore:
    """Text-to-image score: colour and shape only (any motion in the prompt is ignored)."""
    arr = read_video(frame)
    if arr.shape[0] != 1:
        raise ValueError(f"score_image takes one frame, got {arr.shape[0]}")
    return score_video(arr, prompt, judge_motion=False)
