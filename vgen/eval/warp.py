"""Motion-aware warp error (MAWE) and the optical-flow numbers around it, with OpenCV flow.

StreamingT2V scores temporal consistency with MAWE(v) = mean_i W_i / (c · M_i), c = 9.5, over pairs of
consecutive frames (i, i+1):
  W_i  mean squared error between frame i+1 and frame i warped onto it by optical flow, over the pixels
       and RGB channels, on the 0-255 scale, counting only pixels whose flow source lies inside frame i
       (a pixel that came in over the border has nothing to be compared with);
  M_i  mean optical-flow magnitude in pixels, at the video's own resolution.
Dividing by motion keeps a still video from winning by not moving: a low warp error alone is easy.
The paper used RAFT flow on frames resized to 720x720; here it is OpenCV's DIS (default, preset medium) or
Farneback, named in the result, at the video's own size unless `size` asks for the paper's resize (`size=720`).
The numbers depend on both: W grows and M shrinks with a smaller frame (the same video scored 5.25 at 64x64 and
0.285 at 720x720), so MAWE is comparable with the paper's only at size 720, and then only up to the flow.

Flow direction: W_i needs frame i resampled on frame i+1's pixel grid, so the flow is computed from frame i+1
to frame i (backward flow b with frame_{i+1}(x) ≈ frame_i(x + b(x))) and frame i is sampled at x + b(x).
M_i is the mean of |b|; for a rigid motion |b| equals the forward motion's size.

No motion: M_i below MIN_FLOW (0.1 px, about the precision of either flow) counts as MIN_FLOW, so a static
clip (W_i = M_i = 0) scores 0, and a clip that changes without moving (flicker, a fade, a cut that the flow
cannot follow) gets a large but finite W_i / (c · 0.1) instead of a division by zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from vgen.errors import VgenError

MAWE_C = 9.5  # StreamingT2V's scale between warp error and flow magnitude
MIN_FLOW = 0.1  # px; the floor of M_i in MAWE's denominator
FLOW_METHODS = ("dis", "farneback")
DIS_MIN_SIDE = 12  # px; OpenCV's DIS refuses smaller images


@dataclass(frozen=True)
class WarpMetrics:
    """Per-video means over consecutive frame pairs, and the flow that produced them.

    mawe: mean W_i / (c · max(M_i, MIN_FLOW)); warp_error: mean W_i (MSE, 0-255 scale);
    flow_mean: mean M_i (px); flow_std: std of the per-pixel flow magnitude over all pixels of all pairs
    (StreamingT2V's "smoothness": jumps and stalls raise it); speed_std: std over pairs of M_i;
    frame_change: mean |frame_{i+1} - frame_i| / 255, no warping (what a static video drives to 0).
    """

    mawe: float
    warp_error: float
    flow_mean: float
    flow_std: float
    speed_std: float
    frame_change: float
    pairs: int
    flow: str  # e.g. "opencv-dis-medium"
    c: float = MAWE_C
    min_flow: float = MIN_FLOW
    size: Optional[int] = None  # frames resized to size x size before the flow (720: the paper's); None = native
    frame_size: Optional[tuple] = None  # (height, width) the flow and warp ran at

    def to_dict(self) -> dict:
        return asdict(self)


def import_cv2():
    """OpenCV, or one clear error line saying what to install."""
    try:
        import cv2
    except ImportError:
        raise VgenError("optical flow needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def flow_name(method: str) -> str:
    return {"dis": "opencv-dis-medium", "farneback": "opencv-farneback"}[check_flow_method(method)]


def check_flow_method(method: str) -> str:
    if method not in FLOW_METHODS:
        raise VgenError(f"unknown flow method '{method}'; use one of {', '.join(FLOW_METHODS)}")
    return method


def _grey(frame: np.ndarray) -> np.ndarray:
    cv2 = import_cv2()
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def optical_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Flow f [H, W, 2] (x, y) in px from image a to image b: a(p) ≈ b(p + f(p)). Inputs uint8 RGB or grey."""
    cv2 = import_cv2()
    check_flow_method(method)
    a = _grey(a) if a.ndim == 3 else np.ascontiguousarray(a)
    b = _grey(b) if b.ndim == 3 else np.ascontiguousarray(b)
    if method == "dis":
        if min(a.shape[:2]) < DIS_MIN_SIDE:
            raise VgenError(f"DIS optical flow needs frames of at least {DIS_MIN_SIDE}x{DIS_MIN_SIDE} px, "
                            f"got {a.shape[1]}x{a.shape[0]}; use farneback flow")
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(a, b, None)
    # OpenCV's documented example settings: pyramid 0.5 x 3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """image sampled at p + flow(p) (bilinear, float32) and the mask of p whose source lies inside image."""
    cv2 = import_cv2()
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
    out = cv2.remap(image.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return out, inside


def warp_error(prev: np.ndarray, nxt: np.ndarray, flow: np.ndarray) -> float:
    """W: MSE (0-255 scale) between nxt and prev warped by the backward flow nxt -> prev, inside pixels only."""
    warped, inside = warp(prev, flow)
    sq = (nxt.astype(np.float32) - warped) ** 2
    if sq.ndim == 3:
        sq = sq.mean(axis=2)
    return float(sq[inside].mean()) if inside.any() else float(sq.mean())


def mawe_term(w: float, m: float, c: float = MAWE_C) -> float:
    """One pair's W / (c · M), with M floored at MIN_FLOW (see the module docstring)."""
    return float(w / (c * max(m, MIN_FLOW)))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if len(frames) < 2:
        raise ValueError(f"warp metrics need at least 2 frames, got {len(frames)}")
    return frames


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 frames resized to size x size (bilinear; the paper's MAWE protocol resizes to 720x720)."""
    cv2 = import_cv2()
    if size < 16:
        raise VgenError(f"MAWE resize must be at least 16 px, got {size}")
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in frames])


def warp_metrics(frames: np.ndarray, method: str = "dis", c: float = MAWE_C, size: Optional[int] = None) -> WarpMetrics:
    """MAWE, warp error, flow statistics and frame change of uint8 RGB frames [F, H, W, 3] (F >= 2)."""
    return warp_pairs(frames, method, c, size)[0]


def warp_pairs(frames: np.ndarray, method: str = "dis", c: float = MAWE_C,
               size: Optional[int] = None) -> tuple[WarpMetrics, np.ndarray, np.ndarray]:
    """(warp_metrics, W_i [F-1], M_i [F-1]): the metrics and their per-pair series (the seam measure splits
    them at chunk boundaries). `size`: resize to size x size first (None: native)."""
    frames = _check_frames(frames)
    check_flow_method(method)
    if size is not None:
        frames = resize_frames(frames, size)
    greys = [_grey(f) for f in frames]
    ws, ms, terms = [], [], []
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(len(frames) - 1):
        flow = optical_flow(greys[i + 1], greys[i], method)  # backward: frame i+1 -> frame i
        mag = np.hypot(flow[..., 0], flow[..., 1]).astype(np.float64)
        w, m = warp_error(frames[i], frames[i + 1], flow), float(mag.mean())
        ws.append(w)
        ms.append(m)
        terms.append(mawe_term(w, m, c))
        total, total_sq, count = total + mag.sum(), total_sq + (mag**2).sum(), count + mag.size
    mean = total / count
    change = np.mean([np.abs(frames[i + 1].astype(np.int16) - frames[i]).mean() for i in range(len(frames) - 1)]) / 255
    metrics = WarpMetrics(
        mawe=float(np.mean(terms)), warp_error=float(np.mean(ws)), flow_mean=float(np.mean(ms)),
        flow_std=float(np.sqrt(max(total_sq / count - mean**2, 0.0))), speed_std=float(np.std(ms)),
        frame_change=float(change), pairs=len(ws), flow=flow_name(method), c=c, size=size,
        frame_size=(int(frames.shape[1]), int(frames.shape[2])),
    )
    return metrics, np.asarray(ws), np.asarray(ms)
