"""mp4/gif/png writing: round trips, atomicity, clear errors."""

import numpy as np
import pytest

from vgen.errors import VgenError
from vgen.video import Mp4Writer, Video, atomic_path, read_video, write_gif, write_mp4, write_pngs


def _ramp(frames=6, h=32, w=48) -> np.ndarray:
    """Smooth content (codecs keep it), different per frame."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.stack([np.stack([(x * 5 + 10 * f) % 256, (y * 7) % 256, np.full_like(x, 40 * f % 256)], -1) for f in range(frames)])
    return out.astype(np.uint8)


def test_mp4_round_trip_keeps_size_count_and_content(tmp_path):
    frames = _ramp()
    path = write_mp4(Video(frames, fps=12), tmp_path / "v.mp4")
    back = read_video(path)
    assert back.frames.shape == frames.shape and back.fps == 12
    assert np.abs(back.frames.astype(int) - frames.astype(int)).mean() < 4  # h264 at crf 16
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_odd_size_is_an_error_not_a_resize(tmp_path):
    with pytest.raises(VgenError, match="even width and height"):
        write_mp4(Video(np.zeros((2, 33, 32, 3), np.uint8)), tmp_path / "odd.mp4")
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_stream_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with Mp4Writer(tmp_path / "s.mp4", fps=8) as writer:
            writer.write(_ramp(3))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_streaming_writer_matches_one_shot(tmp_path):
    frames = _ramp(8)
    with Mp4Writer(tmp_path / "s.mp4", fps=8) as writer:
        for chunk in (frames[:3], frames[3], frames[4:]):
            writer.write(chunk)
    write_mp4(Video(frames), tmp_path / "o.mp4")
    assert np.array_equal(read_video(tmp_path / "s.mp4").frames, read_video(tmp_path / "o.mp4").frames)


def test_atomic_path_only_renames_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyError
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_gif_and_pngs(tmp_path):
    frames = _ramp(4)
    gif = read_video(write_gif(Video(frames, fps=8), tmp_path / "v.gif"))
    assert gif.frames.shape == frames.shape
    folder = write_pngs(Video(frames), tmp_path / "frames")
    import imageio.v3 as iio

    assert np.array_equal(iio.imread(folder / "00002.png"), frames[2])


def test_video_rejects_wrong_arrays():
    with pytest.raises(ValueError):
        Video(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(VgenError, match="not found"):
        read_video("/no/such.mp4")


def test_outputs_get_the_umask_mode_not_private(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        mp4 = write_mp4(Video(_ramp(2)), tmp_path / "m.mp4")
        folder = write_pngs(Video(_ramp(2)), tmp_path / "f")
    finally:
        os.umask(old)
    assert stat.S_IMODE(mp4.stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_json_is_strict_non_finite_numbers_become_null(tmp_path):
    """Python's json writes NaN/Infinity, which RFC 8259 parsers reject; sidecars carry null there."""
    import json

    from vgen.video import write_json

    data = {"a": float("nan"), "b": [1.5, float("inf"), np.float32("-inf")], "c": {"d": np.array([0.25, np.nan])},
            "e": np.float64(2.0), "f": "NaN"}
    path = write_json(data, tmp_path / "s.json")

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    loaded = json.loads(path.read_text(), parse_constant=refuse)
    assert loaded == {"a": None, "b": [1.5, None, None], "c": {"d": [0.25, None]}, "e": 2.0, "f": "NaN"}
