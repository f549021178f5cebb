"""Does a long video keep its objects? Toy-world detector scores per time window.

Whole-video scores (vgen.toyworld.score_video) call an object present when it is seen in half the frames,
so a video that loses an object, or turns it into another colour or shape, after 60% of its length still
passes. StreamingT2V's claim is about the whole length, so here the video is cut into windows of
`window` frames (16 by default: one base-model chunk) and each window is scored on its own: a window is
kept when every prompted object is present in it with its prompted colour and shape. Motion is not judged
per window (a still object in 16 frames and a slow one are hard to tell apart).

Windows do not overlap and start at frame 0; trailing frames that do not fill a window are left out (a
video shorter than one window is one window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vgen.toyworld import Track, VideoDetection, VideoScore, detect_video, score_video

WINDOW = 16  # frames per window: one chunk of the base model


def windows(n_frames: int, window: int = WINDOW) -> list[tuple[int, int]]:
    """[start, stop) of each full non-overlapping window; the whole video when it is shorter than one."""
    if window < 1:
        raise ValueError(f"window must be >= 1 frame, got {window}")
    if n_frames < 1:
        return []
    if n_frames < window:
        return [(0, n_frames)]
    return [(a, a + window) for a in range(0, n_frames - window + 1, window)]


def slice_detection(det: VideoDetection, start: int, stop: int) -> VideoDetection:
    """The detection of frames [start, stop) only, so scores see nothing outside the window."""
    tracks = {c: Track(c, t.observations[start:stop]) for c, t in det.tracks.items()}
    tracks = {c: t for c, t in tracks.items() if any(o is not None for o in t.observations)}
    return VideoDetection(det.frames[start:stop], tracks, det.height, det.width)


def colour_shape_kept(score: VideoScore) -> bool:
    """Every prompted object present with its prompted colour and shape (motion aside)."""
    return all(o.present and o.colour_ok and o.shape_ok for o in score.objects)


@dataclass(frozen=True)
class WindowScores:
    """Per window: was every prompted object present with the right colour and shape."""

    window: int
    starts: tuple[int, ...]
    kept: tuple[bool, ...]

    @property
    def rate(self) -> float:
        """Fraction of windows kept (nan for an empty video)."""
        return sum(self.kept) / len(self.kept) if self.kept else float("nan")

    @property
    def last_kept(self) -> bool:
        return bool(self.kept) and self.kept[-1]

    @property
    def first_lost(self) -> Optional[int]:
        """First frame of the first window not kept, or None."""
        return next((s for s, k in zip(self.starts, self.kept) if not k), None)

    def to_dict(self) -> dict:
        return {"window": self.window, "rate": self.rate, "last_kept": self.last_kept,
                "first_lost": self.first_lost, "kept": list(self.kept)}


def window_scores(video_or_detection, prompt, window: int = WINDOW) -> WindowScores:
    """Score each window of a video (array, path or VideoDetection) against a toy-world prompt (text or specs)."""
    det = video_or_detection if isinstance(video_or_detection, VideoDetection) else detect_video(video_or_detection)
    spans = windows(det.n_frames, window)
    kept = tuple(colour_shape_kept(score_video(slice_detection(det, a, b), prompt, judge_motion=False))
                 for a, b in spans)
    return WindowScores(window, tuple(a for a, _ in spans), kept)
