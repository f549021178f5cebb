"""Video = uint8 frames + fps + metadata, and the files made from it (mp4, gif, png, JSON sidecar).

Every file is written under a temporary name in its own folder and renamed when complete, so an error
or Ctrl-C never leaves a half-written output. No torch here.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from vgen.errors import VgenError


@dataclass
class Video:
    frames: np.ndarray  # [F, H, W, 3] uint8
    fps: int = 8
    metadata: dict = field(default_factory=dict)  # method-specific facts for the sidecar

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"Video frames must be uint8 [F, H, W, 3], got {self.frames.dtype} {self.frames.shape}")

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return self.frames.shape[1], self.frames.shape[2]


@dataclass
class WrittenVideo:
    """A video a runner streamed straight into its mp4 (long videos never sit in memory whole)."""

    path: Path
    num_frames: int
    size: tuple[int, int]  # (height, width)
    fps: int
    metadata: dict = field(default_factory=dict)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename onto `path` only on success."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes private files; outputs get the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def check_writable(folder: str | Path) -> Path:
    """Create `folder` if needed and prove a file can be written there (before any slow work)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vgen-write-check-"):
            pass
    except OSError as err:
        raise VgenError(f"cannot write to output folder '{folder}': {err.strerror or err}") from None
    return folder


class Mp4Writer:
    """Frames in, an h264/yuv420p mp4 out, one frame at a time (memory does not grow with length).

    Use as a context manager: the file appears under its name only if the block completes.
    """

    def __init__(self, path: str | Path, fps: int, crf: int = 16):
        self.path, self.fps, self.crf = Path(path), fps, crf
        self._gen = None
        self._atomic = None
        self._tmp: Optional[Path] = None
        self.frames_written = 0

    def __enter__(self) -> "Mp4Writer":
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append frames [H, W, 3] or [N, H, W, 3] (uint8)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8:
            raise ValueError("Mp4Writer takes uint8 frames")
        h, w = frames.shape[1:3]
        if self._gen is None:
            if h % 2 or w % 2:
                raise VgenError(f"mp4 (yuv420p) needs an even width and height, got {w}x{h}")
            import imageio_ffmpeg

            self._size = (w, h)
            self._gen = imageio_ffmpeg.write_frames(
                str(self._tmp),
                (w, h),
                fps=self.fps,
                codec="libx264",
                pix_fmt_out="yuv420p",
                macro_block_size=1,
                quality=None,
                output_params=["-crf", str(self.crf), "-preset", "medium"],
                ffmpeg_log_level="error",
            )
            self._gen.send(None)
        elif (w, h) != self._size:
            raise ValueError(f"frame size changed from {self._size} to {(w, h)}")
        for frame in frames:
            self._gen.send(np.ascontiguousarray(frame))
            self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self._gen is not None:
                self._gen.close()
            if exc_type is None and self.frames_written == 0:
                raise VgenError("no frames were written")
        except BaseException as err:
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        self._atomic.__exit__(exc_type, exc, tb)
        return False


def write_mp4(video: Video, path: str | Path, crf: int = 16) -> Path:
    with Mp4Writer(path, video.fps, crf) as writer:
        writer.write(video.frames)
    return Path(path)


def write_gif(video: Video, path: str | Path) -> Path:
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, video.frames, extension=".gif", duration=1000 / video.fps, loop=0)
    return Path(path)


def write_pngs(video: Video, folder: str | Path) -> Path:
    """One PNG per frame in `folder` (written to a temporary folder, then renamed)."""
    import imageio.v3 as iio

    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for i, frame in enumerate(video.frames):
            iio.imwrite(tmp / f"{i:05d}.png", frame)
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        os.chmod(tmp, 0o777 & ~_umask())
        os.replace(tmp, folder)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """One uint8 [H, W, 3] image as a PNG, written atomically."""
    import imageio.v3 as iio

    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.ascontiguousarray(image), extension=".png")
    return path


def dumps_json(data: Any, indent: int = 2) -> str:
    """Strict JSON text (RFC 8259: no NaN or Infinity, which strict parsers reject): non-finite numbers
    become null. Every JSON vgen prints or writes goes through here."""
    return json.dumps(strict_json(data), indent=indent, default=_jsonable, allow_nan=False)


def write_json(data: dict, path: str | Path) -> Path:
    """`dumps_json` of `data`, written atomically."""
    text = dumps_json(data)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±inf; numpy's too) replaced by None, containers rebuilt."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def read_video(path: str | Path) -> Video:
    """Frames of an mp4/gif/webm file as a Video (fps from the file when known)."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise VgenError(f"video file '{path}' not found")
    try:
        frames = np.asarray(iio.imread(path, index=None))
        meta = iio.immeta(path)
    except Exception as err:
        raise VgenError(f"cannot read video '{path}': {str(err).splitlines()[0]}") from None
    if frames.ndim == 3:
        frames = frames[None]
    frames = frames[..., :3].astype(np.uint8)
    fps = meta.get("fps") or (1000 / meta["duration"] if meta.get("duration") else 8)
    return Video(frames=frames, fps=int(round(fps)))


def iter_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Flatten an iterable of [H, W, 3] or [N, H, W, 3] arrays into single frames."""
    for item in frames:
        item = np.asarray(item)
        if item.ndim == 3:
            yield item
        else:
            yield from item
