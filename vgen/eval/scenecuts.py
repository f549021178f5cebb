"""Scene cuts (SCuts): how often a video jumps to a different shot, counted by PySceneDetect.

StreamingT2V reports the number of cuts PySceneDetect's AdaptiveDetector finds with its default
parameters. One default hides every cut in a short clip: a cut must come at least min_scene_len frames
(15) after the previous one or the start, so a 16-frame clip can never show one. We keep every other
default, make min_scene_len a parameter (auto: a quarter of the clip, capped at PySceneDetect's 15,
so long videos get exactly the default) and return the parameters with the count so reports can say
what was used.

AdaptiveDetector compares each frame's HSV change with the mean of its window_width (2) neighbours
on each side, so cuts at the first or last 2 frames are never seen.

Frames are fed from memory: scenedetect's VideoCaptureAdapter takes any object that behaves like an
opened cv2.VideoCapture (grab / retrieve / get), which we provide over the array; the rest of the
pipeline (SceneManager, its automatic downscaling of wide frames, the detector) is PySceneDetect's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from vgen.errors import VgenError

PYSCENEDETECT_MIN_SCENE_LEN = 15  # AdaptiveDetector's default, in frames


@dataclass(frozen=True)
class SceneCuts:
    """Number of cuts, the first frame of each new scene, and the detector settings that found them."""

    cuts: int
    cut_frames: tuple[int, ...]
    params: dict = field(default_factory=dict)  # detector name, version and every parameter used

    def to_dict(self) -> dict:
        return {**asdict(self), "cut_frames": list(self.cut_frames)}


def auto_min_scene_len(n_frames: int) -> int:
    """A quarter of the clip, at least 1, at most PySceneDetect's default (15 from 60 frames on)."""
    return int(min(PYSCENEDETECT_MIN_SCENE_LEN, max(1, n_frames // 4)))


def import_scenedetect():
    """PySceneDetect (and OpenCV under it), or one clear error line naming what to install."""
    try:
        import scenedetect
        from scenedetect.backends.opencv import VideoCaptureAdapter  # noqa: F401
    except ImportError as err:
        raise VgenError(
            f"scene cuts need PySceneDetect and OpenCV ({err.name or err} is missing): "
            "pip install 'scenedetect>=0.7.2' opencv-python-headless"
        ) from None
    return scenedetect


class _ArrayCapture:
    """Just enough of an opened cv2.VideoCapture for scenedetect's adapter: frames served from memory as BGR."""

    def __init__(self, frames: np.ndarray, fps: float):
        import cv2

        self._cv2, self._frames, self._fps, self._next = cv2, frames, float(fps), 0

    def isOpened(self) -> bool:  # noqa: N802 (cv2's name)
        return True

    def grab(self) -> bool:
        if self._next >= len(self._frames):
            return False
        self._next += 1
        return True

    def retrieve(self):
        return True, np.ascontiguousarray(self._frames[self._next - 1, :, :, ::-1])  # RGB -> BGR

    def get(self, prop: int) -> float:
        cv2 = self._cv2
        f, h, w = self._frames.shape[:3]
        values = {
            cv2.CAP_PROP_FPS: self._fps,
            cv2.CAP_PROP_FRAME_WIDTH: w,
            cv2.CAP_PROP_FRAME_HEIGHT: h,
            cv2.CAP_PROP_FRAME_COUNT: f,
            cv2.CAP_PROP_POS_MSEC: 1000.0 * max(self._next - 1, 0) / self._fps,
        }
        return float(values.get(prop, 0.0))  # 0 for anything else (e.g. aspect ratio: square pixels)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def scene_cuts(frames: np.ndarray, fps: float = 8.0, min_scene_len: int | None = None) -> SceneCuts:
    """Cuts in uint8 RGB frames [F, H, W, 3] by AdaptiveDetector: defaults except min_scene_len (None: auto)."""
    frames = _check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if min_scene_len is None:
        min_scene_len = auto_min_scene_len(len(frames))
    if min_scene_len < 0:
        raise VgenError(f"min_scene_len must be >= 0 frames, got {min_scene_len}")
    scenedetect = import_scenedetect()
    from scenedetect import AdaptiveDetector, SceneManager
    from scenedetect.backends.opencv import VideoCaptureAdapter

    detector = AdaptiveDetector(min_scene_len=int(min_scene_len))
    manager = SceneManager()
    manager.add_detector(detector)
    manager.detect_scenes(VideoCaptureAdapter(_ArrayCapture(frames, fps), frame_rate=float(fps)))
    scenes = manager.get_scene_list()  # empty when no cut was found
    starts = tuple(int(start.frame_num) for start, _ in scenes[1:])
    params = {
        "detector": "AdaptiveDetector",
        "scenedetect": scenedetect.__version__,
        "adaptive_threshold": detector.adaptive_threshold,
        "min_scene_len": int(min_scene_len),
        "window_width": detector.window_width,
        "min_content_val": detector.min_content_val,
        "luma_only": False,
    }
    return SceneCuts(len(starts), starts, params)
