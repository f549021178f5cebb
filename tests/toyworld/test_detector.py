"""The detector against rendered ground truth, hand-drawn frames, noise and compressed video."""

import json

import imageio.v2 as iio2
import numpy as np
import pytest

from vgen.toyworld import (
    COLOURS, SHAPES, BackgroundSpec, ObjectSpec, Scene, caption, detect_frame, detect_video,
    estimate_motion, render_video, sample_scene, sample_specs, score_image, score_video,
)

YS, XS = np.mgrid[0:64, 0:64]


def draw(frame, colour, shape, cx, cy, h):
    """Aliased hand-drawn shape (independent of the renderer): pixel centres inside the shape."""
    u, v = XS[: frame.shape[0], : frame.shape[1]] - cx, YS[: frame.shape[0], : frame.shape[1]] - cy
    mask = {
        "square": (abs(u) <= h) & (abs(v) <= h),
        "circle": u * u + v * v <= h * h,
        "diamond": abs(u) + abs(v) <= h,
        "triangle": (v <= h) & (abs(u) <= (v + h) / 2),
    }[shape]
    frame[mask] = COLOURS[colour]
    return frame


def grey(frames=1, level=110, size=64):
    return np.full((frames, size, size, 3), level, np.uint8)


def check_scene(video, specs):
    score = score_video(video, caption(specs))
    for o in score.objects:
        assert o.present and o.colour_ok and o.shape_ok and o.motion_ok is not False, o
    assert score.all_present and score.all_correct
    assert score.extra_objects == [] and score.identity_drift == 0.0
    return score


def test_clean_renders_are_read_exactly():
    """Random scenes: 1-3 objects, plain and textured backgrounds, 8-16 frames, 64x64."""
    rng = np.random.default_rng(10)
    textured = 0
    for _ in range(200):
        frames = int(rng.integers(8, 17))
        specs = sample_specs(rng, int(rng.integers(1, 4)))
        scene = sample_scene(rng, specs, frames)
        textured += scene.background.texture > 0
        score = check_scene(render_video(scene, frames), specs)
        for o, layout in zip(score.objects, scene.objects):  # velocity matches the layout
            truth = np.array(layout.velocity())
            assert np.allclose(o.velocity, truth, atol=0.1), (o.velocity, truth)
    assert 50 < textured < 150


def test_clean_renders_at_32x32():
    rng = np.random.default_rng(11)
    for _ in range(60):
        frames = int(rng.integers(8, 17))
        specs = sample_specs(rng, int(rng.integers(1, 4)))
        check_scene(render_video(sample_scene(rng, specs, frames, 32), frames), specs)


def test_hand_computed_square_area_and_centroid():
    frame = grey()[0]
    frame[10:20, 30:42] = COLOURS["purple"]  # 10 rows x 12 columns
    (obj,) = detect_frame(frame)
    assert obj.colour == "purple" and obj.area == 120.0
    assert obj.cx == pytest.approx(35.5) and obj.cy == pytest.approx(14.5)
    frame[40:56, 40:56] = COLOURS["yellow"]
    found = {o.colour: o for o in detect_frame(frame)}
    assert found["yellow"].shape == "square" and found["yellow"].area == 256.0
    assert (found["yellow"].cx, found["yellow"].cy) == (47.5, 47.5)


@pytest.mark.parametrize("shape", SHAPES)
def test_hand_drawn_aliased_shapes(shape):
    for h in np.arange(6.0, 10.5, 0.5):
        for off in (0.0, 0.25, 0.5):
            (obj,) = detect_frame(draw(grey()[0], "green", shape, 30 + off, 31 + off / 2, h))
            assert obj.shape == shape, (h, off, obj)


@pytest.mark.parametrize("motion, dx, dy", [("left", -1.5, 0), ("right", 1, 0), ("up", 0, -2),
                                            ("down", 0, 0.75), ("still", 0, 0)])
def test_hand_made_moving_object(motion, dx, dy):
    video = grey(12)
    for f in range(12):
        draw(video[f], "orange", "circle", 32 + dx * (f - 6), 32 + dy * (f - 6), 7)
    score = score_video(video, f"an orange circle {'staying still' if motion == 'still' else 'moving ' + motion}")
    (o,) = score.objects
    assert o.motion == motion and o.motion_ok and score.all_correct
    assert o.velocity == pytest.approx((dx, dy), abs=0.15)


def test_motion_fit_is_robust_to_bad_frames():
    t = np.arange(16, dtype=float)
    cents = np.stack([10 + 1.5 * t, np.full(16, 30.0)], axis=1)
    cents[3] = (60, 5)  # a wild detection
    cents[[7, 8]] = np.nan  # missed frames
    motion, (vx, vy) = estimate_motion(cents)
    assert motion == "right" and vx == pytest.approx(1.5) and vy == pytest.approx(0.0)
    assert estimate_motion(np.array([[1.0, 2.0], [np.nan, np.nan]]))[0] is None
    assert estimate_motion(np.stack([10 + 0.2 * t, 10 - 0.1 * t], 1))[0] == "still"


def test_flat_grey_and_random_noise_give_no_objects():
    for level in (0, 64, 128, 200, 255):
        assert detect_video(grey(4, level)).tracks == {}
    rng = np.random.default_rng(12)
    prompt = "a red circle moving left and a blue square staying still"
    noise = rng.integers(0, 256, size=(16, 64, 64, 3), dtype=np.uint8)
    det = detect_video(noise)
    assert sum(len(f) for f in det.frames) <= 2  # at most a stray blob, never a track
    score = score_video(det, prompt)
    assert not score.all_present and score.extra_objects == [] and score.identity_drift == 1.0
    textured = render_video(Scene((), BackgroundSpec(grey=150, texture=12.0, seed=3)), 4)
    assert detect_video(textured).tracks == {}


def test_missing_wrong_colour_and_extra_objects():
    video = grey(8)
    for f in range(8):
        draw(video[f], "red", "circle", 15 + f, 20, 7)  # prompted red circle, moving right
        draw(video[f], "green", "square", 45, 45, 7)  # a green square where a blue one was asked for
        draw(video[f], "yellow", "diamond", 20, 50, 8)  # not prompted at all
    score = score_video(video, "a red circle moving right and a blue square staying still and "
                               "a purple triangle moving up")
    red, blue, purple = score.objects
    assert red.present and red.colour_ok and red.shape_ok and red.motion_ok
    assert blue.present and not blue.colour_ok and blue.shape_ok and blue.detected_colour == "green"
    assert not purple.present and purple.motion_ok is False and purple.drift == 1.0
    assert np.isnan(purple.trajectory[0][0])
    assert score.extra_objects == ["green", "yellow"]
    assert not score.all_present and not score.all_correct
    assert score.identity_drift == pytest.approx(1 / 3)


def test_identity_drift_counts_shape_changes_and_gaps():
    video = grey(10)
    for f in range(10):
        if f in (2, 3):
            continue  # missing
        draw(video[f], "blue", "triangle" if f == 9 else "circle", 30, 30, 8)
    score = score_video(video, "a blue circle staying still")
    (o,) = score.objects
    assert o.present and o.shape_ok and o.presence == 0.8
    assert o.drift == pytest.approx(0.3) and score.identity_drift == pytest.approx(0.3)
    assert np.isnan(o.trajectory[2][0]) and o.trajectory[0] == pytest.approx((30.0, 30.0))
    assert json.loads(json.dumps(score.to_dict()))["objects"][0]["trajectory"][2] == [None, None]


def test_drift_inside_leaves_out_an_object_leaving_the_frame():
    """A square crossing the right edge: clipped, then gone. drift() counts those frames, drift_inside() does not;
    a shape change and a gap in the middle of the frame count in both."""
    video = grey(24)
    for f in range(24):
        draw(video[f], "red", "square", 20 + 3 * f, 30, 6)  # centre x 20 ... 89: past the edge (63) from f 15
    (track,) = detect_video(video).tracks.values()
    border = track.at_border(64, 64)
    # side 13 (area 169): reach 0.75 * 13 + 1 = 10.75 px; centre x 20 + 3f within it of x 63 from f 11 on; the frames
    # where it is gone take the last sighting's place, at the edge
    assert not border[:11].any() and border[11:].all()
    assert track.drift() > 0.2
    assert track.drift_inside(64, 64) == 0.0

    middle = grey(10)
    for f in range(10):
        if f != 4:  # one gap
            draw(middle[f], "red", "circle" if f < 7 else "diamond", 32, 32, 8)
    (track,) = detect_video(middle).tracks.values()
    assert not track.at_border(64, 64).any()
    assert track.drift_inside(64, 64) == pytest.approx(0.4) == track.drift()  # frames 4, 7, 8, 9


def test_score_image_ignores_motion():
    frame = draw(grey()[0], "red", "triangle", 20, 20, 8)
    draw(frame, "blue", "diamond", 45, 40, 9)
    assert score_image(frame, "a red triangle moving left and a blue diamond").all_correct
    assert score_image(frame, [ObjectSpec("red", "triangle", "up"), ObjectSpec("blue", "diamond", None)]).all_correct
    wrong = score_image(frame, "a red square and a blue diamond")
    assert not wrong.all_correct and wrong.all_present and not wrong.objects[0].shape_ok


def test_mp4_round_trip(tmp_path):
    """libx264 / yuv420p halves the chroma resolution; the detector must still be exact."""
    rng = np.random.default_rng(13)
    for i in range(12):
        frames = int(rng.integers(8, 17))
        specs = sample_specs(rng, int(rng.integers(1, 4)))
        video = render_video(sample_scene(rng, specs, frames), frames)
        path = tmp_path / f"clip{i}.mp4"
        iio2.mimwrite(path, video, fps=8, codec="libx264", pixelformat="yuv420p", macro_block_size=1)
        check_scene(str(path), specs)
    gif = tmp_path / "clip.gif"
    iio2.mimwrite(gif, video, duration=0.125)
    check_scene(gif, specs)
