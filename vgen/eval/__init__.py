"""Metrics for generated videos: scene cuts (PySceneDetect), motion-aware warp error (OpenCV optical flow)
and, per file, toy-world detector scores. cv2 and scenedetect are imported only when a metric runs.
"""

from .scenecuts import SceneCuts, auto_min_scene_len, scene_cuts
from .warp import MAWE_C, MIN_FLOW, WarpMetrics, mawe_term, optical_flow, warp, warp_error, warp_metrics

__all__ = [
    "MAWE_C", "MIN_FLOW", "SceneCuts", "WarpMetrics", "auto_min_scene_len", "mawe_term", "optical_flow",
    "scene_cuts", "warp", "warp_error", "warp_metrics",
]
