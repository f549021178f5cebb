"""Seams: is the change across chunk boundaries like the change inside chunks? For any long video.

A video made in chunks (StreamingT2V, or any sliding-window sampler) has boundaries: the frames where a
new chunk's output begins. For a per-pair change d_i (between frames i and i+1) the boundary pairs are
(b - 1, b) for every boundary b, every other pair is inside a chunk. Per measure:

    boundary = mean d_i over boundary pairs       inside = mean d_i over the other pairs
    ratio    = boundary / max(inside, floor)      (about 1 for a seamless video, higher when it jumps)

The floor is the measure's noise level (a video that does not change inside chunks and does not jump
either scores boundary/floor, near 0-1, not 0/0). Measures:
    pixels      mean |frame_{i+1} - frame_i| (0-255), floor 0.5
    warp        W_i, MSE of frame i+1 vs frame i warped by optical flow (vgen.eval.warp), floor 1.0
  toy-world videos (the detector's reading; undefined where it finds nothing):
    object      distance the detected objects move (px): the detections of frame i matched one-to-one to
                those of frame i+1 of the same colour at the least total distance, the mean over the matched
                pairs; floor 0.25 px: "object jump" at boundaries vs "in-chunk step" (the motion). Matched,
                not the largest blob per colour: a video that draws an object twice would otherwise read as
                one object jumping between the copies (13 px/frame on two-object toy prompts whose objects
                move 2-3.5). With the prompt known, only the prompted colours count
    background  change of the background level: mean grey of the low-chroma pixels (0-255), floor 0.5
Two readings the means above cannot give (a pair with no match is left out of a mean, and a mean hides one glitch):
    events      per pair, the prompted objects lost (seen in frame i, not in i+1), appearing, or changing shape
                (matched, another shape), from the same matching: the share of boundaries with any event beside
                the share of pairs inside chunks with one, and the counts at the boundaries
    jump        the largest move of one object in any pair of the video against the median object step: one
                glitch anywhere (inside a chunk too) reads here, not in the boundary mean
Also the in-chunk motion of the first chunk and of the later ones (px/frame): a memory that keeps objects
in place by stopping them shows as a later/first ratio well below 1. Two readings:
    motion      the mean object step inside chunks (as above): a centroid that wobbles or a blob that flickers
                counts as motion
    speed       per window of `stride` frames (the first chunk cut into such windows too, so every window has
                the same length), the detections linked frame to frame into tracks by the same matching, and
                per track |velocity| of a Theil-Sen fit of its positions, averaged: the objects' travel, robust
                to a few bad frames and to a duplicate; `speed_kept` is the later windows' over the first chunk's

The layout: first boundary `chunk` frames in, then one every `stride` frames (StreamingT2V: chunk F,
stride F - F_cond), read from a vgen sidecar's method_info or given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Optional

import numpy as np

FLOORS = {"pixels": 0.5, "warp": 1.0, "object": 0.25, "background": 0.5}
BACKGROUND_CHROMA = 24  # max - min of RGB at or below this is background grey (the detector's CHROMA_FLOOR)


@dataclass(frozen=True)
class Layout:
    """Chunk layout of a video: first boundary after `chunk` frames, then every `stride` frames."""

    chunk: int
    stride: int
    source: str = "given"  # "sidecar" | "given"

    def __post_init__(self) -> None:
        if self.chunk < 1 or self.stride < 1:
            raise ValueError(f"chunk layout needs chunk >= 1 and stride >= 1, got chunk {self.chunk}, stride {self.stride}")

    def boundaries(self, n_frames: int) -> list[int]:
        """First frame of every chunk after the first, below n_frames."""
        return list(range(self.chunk, n_frames, self.stride))


def layout_from_sidecar(sidecar: dict) -> Optional[Layout]:
    """The chunk layout a StreamingT2V sidecar records (method_info layout {chunk, stride} in frames, else
    chunk/cond_frames/chunks), or None."""
    info = sidecar.get("method_info") or {}
    if isinstance(info, dict) and isinstance(info.get("layout"), dict):  # chunks cut in latent time (Wan)
        return Layout(int(info["layout"]["chunk"]), int(info["layout"]["stride"]), "sidecar") if int(info.get("chunks", 2)) > 1 else None
    if not isinstance(info, dict) or "chunk" not in info or "cond_frames" not in info:
        return None
    if int(info.get("chunks", 2)) < 2:
        return None
    chunk, cond = int(info["chunk"]), int(info["cond_frames"])
    return Layout(chunk, chunk - cond, "sidecar")


@dataclass(frozen=True)
class SeamMeasure:
    """One measure across boundaries vs inside chunks; None where undefined (no pair of that kind)."""

    boundary: Optional[float]
    inside: Optional[float]
    ratio: Optional[float]
    floor: float


@dataclass(frozen=True)
class SeamEvents:
    """Prompted objects lost, appearing or changing shape from one frame to the next, at boundaries vs inside."""

    lost: int  # at boundary pairs, summed over the boundaries
    appeared: int
    changed: int
    boundary_rate: Optional[float]  # share of boundary pairs with any event (None: no boundary)
    inside_rate: Optional[float]  # share of the other pairs with any event


@dataclass(frozen=True)
class Jump:
    """The largest move of one object between two frames anywhere in the video, against the median step."""

    largest: float  # px
    at: int  # pair index: frames at -> at + 1
    median: float  # median over pairs of the mean object step (px)
    ratio: float  # largest / max(median, the object floor)
    over: int  # pairs whose largest move exceeds JUMP_FACTOR x the median step (floored)


JUMP_FACTOR = 3.0


@dataclass(frozen=True)
class Seams:
    layout: Layout
    boundaries: tuple[int, ...]
    pixels: SeamMeasure
    warp: Optional[SeamMeasure]  # None when warp errors were not given
    object: Optional[SeamMeasure]  # None for a video the detector finds nothing in
    background: Optional[SeamMeasure]
    motion_first: Optional[float]  # object px/frame inside the first chunk (mean step)
    motion_later: Optional[float]  # ... inside the later chunks
    speed_first: Optional[float] = None  # object px/frame in the first chunk's windows (Theil-Sen fit per window)
    speed_later: Optional[float] = None  # ... in the later windows
    events: Optional[SeamEvents] = None  # objects lost / appearing / changing shape (None without detections)
    jump: Optional[Jump] = None  # the largest single move in the video (None without a matched pair)

    @property
    def motion_kept(self) -> Optional[float]:
        """Later chunks' motion over the first chunk's (None when either is undefined or the first is still)."""
        if self.motion_first is None or self.motion_later is None or self.motion_first < FLOORS["object"]:
            return None
        return self.motion_later / self.motion_first

    @property
    def speed_kept(self) -> Optional[float]:
        """Later windows' object speed over the first chunk's (None when either is undefined or the first is still)."""
        if self.speed_first is None or self.speed_later is None or self.speed_first < FLOORS["object"]:
            return None
        return self.speed_later / self.speed_first

    def to_dict(self) -> dict:
        d = asdict(self)
        d["boundaries"] = list(self.boundaries)
        d["motion_kept"] = self.motion_kept
        d["speed_kept"] = self.speed_kept
        return d


def _mean(values: np.ndarray) -> Optional[float]:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def seam_measure(changes: np.ndarray, boundaries: list[int], floor: float) -> SeamMeasure:
    """changes [F-1] (pair i = frames i, i+1; NaN = undefined) split at the boundary pairs (b-1, b)."""
    changes = np.asarray(changes, dtype=np.float64)
    at = np.zeros(changes.shape[0], dtype=bool)
    idx = [b - 1 for b in boundaries if 1 <= b <= changes.shape[0]]
    at[idx] = True
    boundary, inside = _mean(changes[at]), _mean(changes[~at])
    ratio = None if boundary is None or inside is None else boundary / max(inside, floor)
    return SeamMeasure(boundary, inside, ratio, floor)


def pixel_changes(frames: np.ndarray) -> np.ndarray:
    """Mean |frame_{i+1} - frame_i| per pair, 0-255."""
    f = frames.astype(np.int16)
    return np.abs(f[1:] - f[:-1]).reshape(len(f) - 1, -1).mean(axis=1)


def background_levels(frames: np.ndarray) -> np.ndarray:
    """Per frame: mean grey of the pixels whose chroma (max - min of RGB) is at most BACKGROUND_CHROMA; NaN if none."""
    f = frames.astype(np.int16)
    chroma = f.max(axis=-1) - f.min(axis=-1)
    mask = chroma <= BACKGROUND_CHROMA
    grey = f.mean(axis=-1)
    counts = mask.reshape(len(f), -1).sum(axis=1)
    sums = np.where(mask, grey, 0).reshape(len(f), -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


Detection = tuple  # (colour, cx, cy) or (colour, cx, cy, shape) of one detected object, px


def toy_detections(detection, colours: Optional[Iterable[str]] = None) -> list[list[Detection]]:
    """Per frame, the toy detector's objects (a VideoDetection) as (colour, cx, cy, shape); only `colours` when
    given (the prompted ones: a stray blob of another colour is not an object the video is about)."""
    keep = None if colours is None else set(colours)
    return [[(o.colour, float(o.cx), float(o.cy), o.shape) for o in objs if keep is None or o.colour in keep]
            for objs in detection.frames]


def match(a: list[Detection], b: list[Detection]) -> list[tuple[int, int, float]]:
    """(index in a, index in b, distance px) of a one-to-one matching of a's detections to b's of the same colour
    with the least total distance (min(n_a, n_b) pairs per colour; the rest are unmatched)."""
    from scipy.optimize import linear_sum_assignment

    out = []
    for colour in sorted({d[0] for d in a} & {d[0] for d in b}):
        ia = [i for i, d in enumerate(a) if d[0] == colour]
        ib = [i for i, d in enumerate(b) if d[0] == colour]
        pa, pb = np.array([a[i][1:3] for i in ia]), np.array([b[i][1:3] for i in ib])
        cost = np.hypot(pa[:, None, 0] - pb[None, :, 0], pa[:, None, 1] - pb[None, :, 1])
        rows, cols = linear_sum_assignment(cost)
        out += [(ia[r], ib[c], float(cost[r, c])) for r, c in zip(rows, cols)]
    return out


def matched_distances(a: list[Detection], b: list[Detection]) -> np.ndarray:
    """Distances (px) of the matching (match) of a's detections to b's."""
    return np.array([d for _, _, d in match(a, b)])


def link_tracks(objects: list[list[Detection]]) -> list[np.ndarray]:
    """The detections of consecutive frames linked into tracks by match(): [F, 2] positions each, NaN where the
    track is not seen. A detection matched to none of the frame before starts a new track; a track not matched in
    a frame ends there."""
    tracks: list[np.ndarray] = []
    live: list[tuple[int, Detection]] = []  # (track, its detection) in the frame before
    for i, frame in enumerate(objects):
        linked = {ib: live[ia][0] for ia, ib, _ in match([d for _, d in live], frame)}
        live = []
        for ib, det in enumerate(frame):
            if ib not in linked:
                tracks.append(np.full((len(objects), 2), np.nan))
                linked[ib] = len(tracks) - 1
            tracks[linked[ib]][i] = det[1:3]
            live.append((linked[ib], det))
    return tracks


def object_steps(objects: list[list[Detection]]) -> Optional[np.ndarray]:
    """Per pair (i, i+1): the mean matched distance of the objects (matched_distances); NaN where no colour is
    seen in both frames; None when nothing is detected in any frame."""
    if not any(objects):
        return None
    steps = np.full(len(objects) - 1, np.nan)
    for i in range(len(objects) - 1):
        d = matched_distances(objects[i], objects[i + 1])
        if d.size:
            steps[i] = d.mean()
    return steps


def pair_events(a: list[Detection], b: list[Detection]) -> tuple[int, int, int]:
    """(lost, appeared, changed) from frame a to frame b: detections of a matched to none of b, of b to none of a
    (match(), per colour), and matched pairs whose shapes are both known and differ."""
    pairs = match(a, b)
    changed = sum(1 for ia, ib, _ in pairs
                  if len(a[ia]) > 3 and len(b[ib]) > 3 and a[ia][3] and b[ib][3] and a[ia][3] != b[ib][3])
    return len(a) - len(pairs), len(b) - len(pairs), changed


def seam_events(objects: list[list[Detection]], boundaries: list[int]) -> SeamEvents:
    """pair_events at every pair, split at the boundary pairs (b-1, b)."""
    at = {b - 1 for b in boundaries if 1 <= b < len(objects)}
    events = [pair_events(objects[i], objects[i + 1]) for i in range(len(objects) - 1)]
    hit = [sum(e) > 0 for e in events]
    on = [hit[i] for i in sorted(at)]
    off = [hit[i] for i in range(len(events)) if i not in at]
    return SeamEvents(
        lost=sum(events[i][0] for i in at), appeared=sum(events[i][1] for i in at),
        changed=sum(events[i][2] for i in at),
        boundary_rate=float(np.mean(on)) if on else None, inside_rate=float(np.mean(off)) if off else None)


def largest_jump(objects: list[list[Detection]], steps: np.ndarray) -> Optional[Jump]:
    """The largest matched move of one object in any pair against the median of the per-pair mean steps."""
    moves = np.array([d.max() if (d := matched_distances(objects[i], objects[i + 1])).size else np.nan
                      for i in range(len(objects) - 1)])
    finite = np.isfinite(moves)
    if not finite.any():
        return None
    at = int(np.nanargmax(moves))
    median = float(np.nanmedian(steps))
    base = max(median, FLOORS["object"])
    return Jump(float(moves[at]), at, median, float(moves[at] / base), int(np.sum(moves[finite] > JUMP_FACTOR * base)))


MIN_FIT_FRAMES = 3  # a colour seen in fewer frames of a window gives no speed there


def windows(layout: Layout, n_frames: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(first chunk's windows, later windows) as [start, stop) frame ranges of `stride` frames each: the first
    chunk cut from its start, then the frames between boundaries; a shorter tail is dropped."""
    s = layout.stride
    first = [(a, a + s) for a in range(0, min(layout.chunk, n_frames) - s + 1, s)]
    later = [(a, a + s) for a in layout.boundaries(n_frames) if a + s <= n_frames]
    return first, later


def window_speeds(objects: list[list[Detection]], spans: list[tuple[int, int]]) -> list[float]:
    """|velocity| (px/frame) of every track (link_tracks, within the span) in every span, from a Theil-Sen fit of
    its positions; tracks seen in fewer than MIN_FIT_FRAMES frames of a span are left out."""
    from vgen.toyworld.detector import estimate_motion

    out = []
    for a, b in spans:
        for track in link_tracks(objects[a:b]):
            if np.sum(~np.isnan(track[:, 0])) >= MIN_FIT_FRAMES:
                out.append(float(np.hypot(*estimate_motion(track)[1])))
    return out


def _inside_chunk(steps: np.ndarray, start: int, stop: int, boundaries: list[int]) -> Optional[float]:
    """Mean of per-pair values of pairs (i, i+1) with start <= i, i+1 < stop, none a boundary pair."""
    idx = [i for i in range(start, min(stop, steps.shape[0] + 1) - 1) if (i + 1) not in boundaries]
    return _mean(steps[idx]) if idx else None


def seams(frames: np.ndarray, layout: Layout, warp_errors: Optional[np.ndarray] = None,
          objects: Optional[list[list[Detection]]] = None) -> Seams:
    """Seam measures of uint8 frames [F, H, W, 3] under a chunk layout.

    warp_errors [F-1]: per-pair W_i (vgen.eval.warp.warp_pairs), optional; objects: per frame, the detected
    objects as (colour, cx, cy) (toy_detections), optional: with them, the object and background measures and
    the in-chunk motion.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8 or len(frames) < 2:
        raise ValueError(f"seams need uint8 frames [F >= 2, H, W, 3], got {frames.dtype} {frames.shape}")
    bounds = layout.boundaries(len(frames))
    pixels = seam_measure(pixel_changes(frames), bounds, FLOORS["pixels"])
    warp = None if warp_errors is None else seam_measure(np.asarray(warp_errors), bounds, FLOORS["warp"])
    obj = background = events = jump = None
    first = later = speed_first = speed_later = None
    if objects is not None:
        if len(objects) != len(frames):
            raise ValueError(f"objects for {len(objects)} frames, the video has {len(frames)}")
        bg = background_levels(frames)
        background = seam_measure(np.abs(np.diff(bg)), bounds, FLOORS["background"])
        steps = object_steps(objects)
        if steps is not None:
            events = seam_events(objects, bounds)
            jump = largest_jump(objects, steps)
            obj = seam_measure(steps, bounds, FLOORS["object"])
            first = _inside_chunk(steps, 0, layout.chunk, bounds)
            later_vals = [i for i in range(layout.chunk, len(frames) - 1) if (i + 1) not in bounds]
            later = _mean(steps[later_vals]) if later_vals else None
            first_spans, later_spans = windows(layout, len(frames))
            speed_first = _mean(np.array(window_speeds(objects, first_spans)))
            speed_later = _mean(np.array(window_speeds(objects, later_spans)))
    return Seams(layout, tuple(bounds), pixels, warp, obj, background, first, later, speed_first, speed_later,
                 events, jump)
