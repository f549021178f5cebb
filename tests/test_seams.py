"""The seam measure (vgen.eval.seams) on hand-made clips whose every move is known."""

from pathlib import Path

import numpy as np
import pytest

from vgen.eval.seams import (FLOORS, Layout, layout_from_sidecar, link_tracks, matched_distances, object_steps,
                             seam_measure, seams, toy_detections, windows)
from vgen.toyworld import detect_video


def test_seam_measure_hand_computed():
    # pairs 0..5; boundaries at frames 3 and 6 -> pairs 2 and 5
    m = seam_measure(np.array([1.0, 1.0, 5.0, 1.0, 1.0, 7.0]), [3, 6], floor=0.5)
    assert (m.boundary, m.inside, m.ratio) == (6.0, 1.0, 6.0)
    still = seam_measure(np.array([0.0, 0.0, 0.2, 0.0]), [3], floor=0.5)  # no change inside: the floor divides
    assert still.ratio == pytest.approx(0.4)
    none = seam_measure(np.array([1.0, np.nan, 2.0]), [2], floor=0.5)  # the boundary pair undefined
    assert none.boundary is None and none.ratio is None and none.inside == 1.5


def test_layout_boundaries_and_sidecar():
    assert Layout(16, 8).boundaries(40) == [16, 24, 32]
    assert Layout(16, 8).boundaries(16) == []
    lay = layout_from_sidecar({"method_info": {"mode": "trained", "chunks": 4, "chunk": 16, "cond_frames": 8}})
    assert (lay.chunk, lay.stride, lay.source) == (16, 8, "sidecar")
    assert layout_from_sidecar({"method_info": {"chunks": 1, "chunk": 16, "cond_frames": 8}}) is None
    assert layout_from_sidecar({"method_info": {"steps": 3}}) is None
    with pytest.raises(ValueError):
        Layout(0, 8)


def _texture(size: int, seed: int) -> np.ndarray:
    """A smooth grey texture wider than the frame (values 60..196), so a crop can pan across it."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(60, 196, (size // 8 + 2, 4 * size // 8 + 2))
    fine = np.kron(coarse, np.ones((8, 8)))
    k = np.ones(5) / 5
    fine = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, fine)
    fine = np.apply_along_axis(lambda c: np.convolve(c, k, "same"), 0, fine)
    return fine[:size]


def _clip(offsets: list[float], square_x: list[float], grey_shift: list[float], size: int = 64) -> np.ndarray:
    """Frame t: the texture panned by offsets[t] px, plus grey_shift[t], with a red square centred at square_x[t]."""
    tex = _texture(size, 0)
    frames = []
    for off, sx, g in zip(offsets, square_x, grey_shift):
        f = np.repeat(np.clip(tex[:, int(off) : int(off) + size] + g, 0, 255)[..., None], 3, axis=2)
        x0 = int(round(sx)) - 5
        f[27:37, x0 : x0 + 10] = (230, 20, 20)
        frames.append(f)
    return np.stack(frames).astype(np.uint8)


def test_a_clean_pan_scores_about_one():
    n = 40
    frames = _clip([t for t in range(n)], [10 + t for t in range(n)], [0.0] * n)
    det = detect_video(frames)
    s = seams(frames, Layout(16, 8), objects=toy_detections(det))
    assert s.boundaries == (16, 24, 32)
    assert 0.8 < s.pixels.ratio < 1.25
    assert s.object.inside == pytest.approx(1.0, abs=0.05) and 0.8 < s.object.ratio < 1.25
    assert s.background.ratio < 1.5  # the texture pans, its low-chroma mean hardly moves
    assert s.motion_first == pytest.approx(1.0, abs=0.05) and s.motion_kept == pytest.approx(1.0, abs=0.1)
    assert s.speed_first == pytest.approx(1.0, abs=0.05) and s.speed_kept == pytest.approx(1.0, abs=0.05)


def test_a_jump_every_eight_frames_scores_high():
    n = 36
    bounds = [16, 24, 32]
    pan, x, grey = [], [], []
    shift = jump = g = 0.0
    for t in range(n):
        if t in bounds:  # the pan skips 10 px, the square 5 px, the background flips by 20 grey levels
            shift, jump, g = shift + 10, jump + 5, g + (20 if len(grey) and grey[-1] == 0 else -20)
        pan.append(t + shift)
        x.append(6 + t + jump)
        grey.append(g)
    frames = _clip(pan, x, grey)
    det = detect_video(frames)
    s = seams(frames, Layout(16, 8), objects=toy_detections(det))
    assert s.pixels.ratio > 3
    assert s.object.boundary == pytest.approx(6.0, abs=0.1) and s.object.inside == pytest.approx(1.0, abs=0.05)
    assert s.object.ratio > 5
    assert s.background.boundary == pytest.approx(20, abs=2) and s.background.ratio > 20
    # the same clip read with a layout that misses its seams sees the jumps inside chunks instead
    off = seams(frames, Layout(12, 8), objects=toy_detections(det))
    assert off.object.ratio < 1 and off.pixels.ratio < 1


def test_a_video_that_stops_after_the_first_chunk_keeps_no_motion():
    n = 40
    x = [10 + 2 * min(t, 15) for t in range(n)]  # 2 px/frame in chunk 1, then still
    frames = _clip([0] * n, x, [0.0] * n)
    det = detect_video(frames)
    s = seams(frames, Layout(16, 8), objects=toy_detections(det))
    assert s.motion_first == pytest.approx(2.0, abs=0.1) and s.motion_later == pytest.approx(0.0, abs=0.05)
    assert s.motion_kept < 0.05
    assert s.speed_first == pytest.approx(2.0, abs=0.05) and s.speed_later == pytest.approx(0.0, abs=0.05)
    assert s.object.ratio == pytest.approx(0.0, abs=0.2)  # nothing jumps either: ratio alone is not the story


def test_no_detector_means_no_object_measure_and_warp_series_split():
    frames = np.zeros((20, 32, 32, 3), np.uint8)
    w = np.ones(19)
    w[15] = 9.0  # pair (15, 16)
    s = seams(frames, Layout(16, 8), warp_errors=w)
    assert s.object is None and s.background is None and s.motion_kept is None
    assert s.warp.boundary == 9.0 and s.warp.inside == 1.0 and s.warp.ratio == 9.0 / max(1.0, FLOORS["warp"])
    assert s.pixels.ratio == 0.0


def test_matched_distances_hand_computed():
    a = [("red", 0.0, 0.0), ("red", 10.0, 0.0), ("blue", 5.0, 5.0)]
    b = [("red", 11.0, 0.0), ("red", 1.0, 0.0), ("green", 5.0, 5.0)]
    # red pairs 0->1 and 10->11 (total 2), not 0->11 and 10->1 (total 20); blue and green are seen once: unmatched
    assert sorted(matched_distances(a, b)) == [1.0, 1.0]
    assert matched_distances(a, [("red", 3.0, 4.0)]).tolist() == [5.0]  # one of the two reds goes unmatched
    steps = object_steps([a, b, [], b])
    assert steps[0] == 1.0 and np.isnan(steps[1]) and np.isnan(steps[2])
    assert object_steps([[], []]) is None


def _squares(paths: list[list[tuple[float, float, int]]], size: int = 64) -> np.ndarray:
    """Frame t: a flat grey background and one red square per path, centred at (x, y) with half-side h."""
    frames = np.full((len(paths[0]), size, size, 3), 128, np.uint8)
    for path in paths:
        for t, (x, y, h) in enumerate(path):
            x0, y0 = int(round(x)) - h, int(round(y)) - h
            frames[t, y0 : y0 + 2 * h, x0 : x0 + 2 * h] = (230, 20, 20)
    return frames


def test_a_duplicated_object_is_not_read_as_jumps():
    # two red squares 30 px apart, both moving 1 px/frame; the larger one alternates every frame, so "the largest
    # blob of each colour" would jump 30 px a frame; the matched step is the real 1 px
    n = 24
    a = [(10 + t, 16, 6 if t % 2 else 4) for t in range(n)]
    b = [(10 + t, 46, 4 if t % 2 else 6) for t in range(n)]
    frames = _squares([a, b])
    s = seams(frames, Layout(16, 8), objects=toy_detections(detect_video(frames)))
    assert s.object.inside == pytest.approx(1.0, abs=0.1) and s.object.boundary == pytest.approx(1.0, abs=0.1)


def test_speed_reads_travel_not_wobble():
    # the square travels 2 px/frame; its centre wobbles +-3 px across the motion every other frame. The mean step
    # counts the wobble (about 6.3 px/frame), the windowed Theil-Sen speed the travel (2)
    n = 40
    path = [(8 + 2 * t if t < 24 else 8 + 2 * 23, 32 + (3 if t % 2 else -3), 5) for t in range(n)]  # stops at frame 24
    frames = _squares([path])
    s = seams(frames, Layout(16, 8), objects=toy_detections(detect_video(frames)))
    assert s.motion_first > 5.5
    assert s.speed_first == pytest.approx(2.0, abs=0.15)  # windows [0, 8) and [8, 16)
    # later windows [16, 24) (moving) and [24, 32), [32, 40) (still, wobbling in place): (2 + 0 + 0) / 3
    assert s.speed_later == pytest.approx(2.0 / 3, abs=0.15)
    assert s.speed_kept == pytest.approx(1.0 / 3, abs=0.08)
    assert s.motion_later > 4  # the wobble alone keeps the step-based motion up
    d = s.to_dict()
    assert d["speed_kept"] == pytest.approx(1.0 / 3, abs=0.08) and d["speed_first"] == pytest.approx(2.0, abs=0.15)


def test_speed_follows_each_copy_of_a_duplicated_object():
    # a red square moving 1 px/frame and a still red copy 30 px away; which one is larger changes from frame to
    # frame (5 frames in 8 the still one), so "the largest blob" would wander between them. Linked tracks: the
    # mover's speed 1 and the copy's 0, mean 0.5, in every window
    n = 40
    mover = [(8 + t, 16, 4 if t % 8 < 5 else 6) for t in range(n)]
    still = [(32, 46, 6 if t % 8 < 5 else 4) for t in range(n)]
    frames = _squares([mover, still])
    s = seams(frames, Layout(16, 8), objects=toy_detections(detect_video(frames)))
    assert s.speed_first == pytest.approx(0.5, abs=0.05) and s.speed_later == pytest.approx(0.5, abs=0.05)
    assert s.object.inside == pytest.approx(0.5, abs=0.05)


def test_link_tracks_hand_computed():
    frames = [[("red", 0.0, 0.0), ("red", 20.0, 0.0)], [("red", 21.0, 0.0), ("red", 1.0, 0.0)],
              [("red", 2.0, 0.0)], [("red", 3.0, 0.0), ("blue", 9.0, 9.0)]]
    tracks = link_tracks(frames)
    assert len(tracks) == 3
    assert tracks[0][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]  # the left square, followed through the reordering
    assert tracks[1][:2, 0].tolist() == [20.0, 21.0] and np.isnan(tracks[1][2:]).all()  # gone at frame 2
    assert np.isnan(tracks[2][:3]).all() and tracks[2][3].tolist() == [9.0, 9.0]  # blue appears at frame 3


def test_windows_cut_the_first_chunk_and_drop_a_short_tail():
    assert windows(Layout(16, 8), 40) == ([(0, 8), (8, 16)], [(16, 24), (24, 32), (32, 40)])
    assert windows(Layout(16, 8), 23) == ([(0, 8), (8, 16)], [])  # frames 16-22: a 7-frame tail, dropped
    assert windows(Layout(16, 8), 25) == ([(0, 8), (8, 16)], [(16, 24)])
    assert windows(Layout(16, 12), 40) == ([(0, 12)], [(16, 28), (28, 40)])  # frames 12-15 fit no 12-frame window
    assert windows(Layout(16, 8), 10) == ([(0, 8)], [])


def test_paired_drift_counts_only_objects_every_mode_found():
    """compare_streaming's paired drift: an object one mode keeps and another loses is left out of both means."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_streaming.py"
    spec = importlib.util.spec_from_file_location("compare_streaming", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    records = [
        {"mode": "a", "row": 0, "object_drift": [0.1, 0.9]},  # a keeps object 1 (badly), b loses it
        {"mode": "b", "row": 0, "object_drift": [0.3, None]},
        {"mode": "a", "row": 1, "object_drift": [0.2]},
        {"mode": "b", "row": 1, "object_drift": [0.0]},
    ]
    count, by_mode = module.paired_drift(records, ["a", "b"])
    assert count == 2
    assert by_mode["a"] == pytest.approx((0.1 + 0.2) / 2) and by_mode["b"] == pytest.approx((0.3 + 0.0) / 2)


# ---- issue 30 item 4: objects lost / appearing / reshaped, and the largest single jump ----

from vgen.eval.seams import largest_jump, pair_events, seam_events  # noqa: E402


def _square_clip(n: int, missing: set[int], size: int = 64) -> np.ndarray:
    """A red 10x10 square on grey moving 1 px/frame to the right; absent in the frames `missing`."""
    frames = np.full((n, size, size, 3), 128, dtype=np.uint8)
    for t in range(n):
        if t not in missing:
            x0 = 10 + t
            frames[t, 27:37, x0 : x0 + 10] = (230, 20, 20)
    return frames


def test_an_object_lost_at_every_seam_is_counted_not_left_out():
    """The square vanishes in the first frame of every new chunk (and comes back in the next): the boundary pairs
    have no match, so the mean object jump at boundaries is undefined (the old reading: nothing to fail), while
    the events count one lost object per seam and one reappearance inside each chunk."""
    layout = Layout(8, 4)
    n = 24
    bounds = layout.boundaries(n)
    assert bounds == [8, 12, 16, 20]
    frames = _square_clip(n, set(bounds))
    objects = toy_detections(detect_video(frames), {"red"})
    assert [len(o) for o in objects] == [0 if t in bounds else 1 for t in range(n)]
    sm = seams(frames, layout, objects=objects)
    assert sm.object.boundary is None and sm.object.ratio is None  # the mean alone cannot see it
    e = sm.events
    assert (e.lost, e.appeared, e.changed) == (4, 0, 0)
    assert e.boundary_rate == 1.0  # every seam loses the object
    assert e.inside_rate == pytest.approx(4 / 19)  # the 4 reappearances among the 23 - 4 inside pairs


def test_an_object_that_changes_shape_or_appears_at_a_seam():
    sq, ci = ("red", 10.0, 30.0, "square"), ("red", 11.0, 30.0, "circle")
    assert pair_events([sq], [ci]) == (0, 0, 1)  # matched, another shape
    assert pair_events([sq], [sq, ("blue", 40.0, 30.0, "square")]) == (0, 1, 0)  # a new object
    assert pair_events([sq, ("red", 40.0, 30.0, "square")], [ci]) == (1, 0, 1)  # one lost, the other reshaped
    assert pair_events([("red", 10.0, 30.0)], [("red", 11.0, 30.0)]) == (0, 0, 0)  # no shapes known: no change
    objects = [[sq]] * 4 + [[ci]] * 4  # the shape changes at the seam (frame 4) only
    e = seam_events(objects, [4])
    assert (e.lost, e.appeared, e.changed, e.boundary_rate, e.inside_rate) == (0, 0, 1, 1.0, 0.0)


def test_one_jump_inside_a_chunk_reads_as_the_largest_jump_not_in_the_seam_mean():
    """2 px/frame, one 12 px glitch between frames 13 and 14 (inside the second chunk): the boundary mean stays
    the step and the glitch even lowers the seam ratio (2 / (18 x 2 + 14) / 19 = 0.76), while the largest jump is
    14 px at pair 13 against the median step 2: 7x, one pair over 3x."""
    n = 24
    xs = [10.0 + 2 * t + (12.0 if t >= 14 else 0.0) for t in range(n)]
    objects = [[("blue", x, 30.0, "circle")] for x in xs]
    frames = np.zeros((n, 8, 8, 3), dtype=np.uint8)
    sm = seams(frames, Layout(8, 4), objects=objects)
    assert sm.object.boundary == pytest.approx(2.0) and sm.object.ratio == pytest.approx(2.0 / (50 / 19))
    j = sm.jump
    assert (j.largest, j.at, j.median, j.ratio, j.over) == (pytest.approx(14.0), 13, pytest.approx(2.0),
                                                           pytest.approx(7.0), 1)
    still = largest_jump([[("blue", 5.0, 5.0)]] * 5, np.zeros(4))  # no motion: the floor divides
    assert still.largest == 0.0 and still.ratio == 0.0 and still.over == 0
