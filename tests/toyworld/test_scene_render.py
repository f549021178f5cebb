"""Scene sampling and rendering checked against geometry computed by hand."""

import numpy as np
import pytest

from vgen.toyworld import (
    COLOURS, MOTIONS, SHAPES, BackgroundSpec, ObjectLayout, ObjectSpec, Scene,
    render_image, render_video, sample_scene, sample_specs,
)
from vgen.toyworld.scene import MIN_SPEED, SPEED_RANGE


def chroma(x):
    x = x.astype(int)
    return x.max(-1) - x.min(-1)


def test_world_constants():
    assert len(COLOURS) == 6 and len(SHAPES) == 4 and MOTIONS == ("left", "right", "up", "down", "still")
    for rgb in COLOURS.values():  # fully saturated: chroma 255
        assert max(rgb) == 255 and min(rgb) == 0


def test_spec_rejects_unknown_words():
    with pytest.raises(ValueError, match="colour"):
        ObjectSpec("pink", "circle", "left")
    with pytest.raises(ValueError, match="shape"):
        ObjectSpec("red", "star", "left")


def test_sample_specs_distinct_colours():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 4))
        specs = sample_specs(rng, n)
        assert len(specs) == n and len({s.colour for s in specs}) == n


def test_sampled_scenes_stay_inside_and_apart():
    rng = np.random.default_rng(1)
    for _ in range(150):
        frames = int(rng.integers(1, 25))
        size = int(rng.choice([32, 64, 128]))
        scene = sample_scene(rng, sample_specs(rng, int(rng.integers(1, 4))), frames, size)
        k = size / 64
        boxes = []
        for o in scene.objects:
            assert 12 * k - 1e-9 <= o.size <= 20 * k + 1e-9
            if o.spec.motion != "still" and frames > 1:
                assert MIN_SPEED * k - 1e-9 <= o.speed <= SPEED_RANGE[1] * k + 1e-9
            c = o.centres(frames)
            # pixel i spans [i - .5, i + .5]: the frame spans [-.5, size - .5]
            assert (c - o.size / 2 >= -0.5).all() and (c + o.size / 2 <= size - 0.5).all()
            boxes.append((c, o.size))
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                gap = np.abs(boxes[i][0] - boxes[j][0]) - (boxes[i][1] + boxes[j][1]) / 2
                assert (gap.max(axis=1) >= 1.0).all()


def test_render_coverage_matches_analytic_area():
    """On a plain background the summed coverage (chroma / 255) is the shape's area in every
    frame, so objects are drawn whole and inside the frame (4x4 supersampling: ~3% error)."""
    rng = np.random.default_rng(2)
    area = {"square": 1.0, "circle": np.pi / 4, "diamond": 0.5, "triangle": 0.5}
    for _ in range(30):
        specs = sample_specs(rng, 1)
        scene = sample_scene(rng, specs, 16)
        scene = Scene(scene.objects, BackgroundSpec(grey=100), 64)
        video = render_video(scene, 16)
        expected = area[specs[0].shape] * scene.objects[0].size ** 2
        covered = chroma(video).sum(axis=(1, 2)) / 255.0  # chroma = 255 * coverage over grey
        np.testing.assert_allclose(covered, expected, rtol=0.04)


def test_pixel_aligned_square_is_exact():
    spec = ObjectSpec("blue", "square", "right")
    # centre 14.5, side 10: covers pixels 10..19 exactly; moves 2 px per frame
    scene = Scene((ObjectLayout(spec, 14.5, 30.5, 10.0, 2.0),), BackgroundSpec(grey=90), 64)
    video = render_video(scene, 3)
    for f in range(3):
        expected = np.full((64, 64, 3), 90, np.uint8)
        expected[26:36, 10 + 2 * f : 20 + 2 * f] = COLOURS["blue"]
        np.testing.assert_array_equal(video[f], expected)


def test_half_pixel_edges_are_blended():
    spec = ObjectSpec("red", "square", "still")
    # centre 15, side 10: spans [10, 20], so columns/rows 10 and 20 are half covered
    scene = Scene((ObjectLayout(spec, 15.0, 15.0, 10.0, 0.0),), BackgroundSpec(grey=100), 64)
    img = render_image(scene).astype(int)
    assert tuple(img[15, 15]) == (255, 0, 0)
    assert tuple(img[15, 10]) == (178, 50, 50) and tuple(img[15, 20]) == (178, 50, 50)
    assert tuple(img[10, 10]) == (139, 75, 75)  # quarter covered corner: 100 + .25 * (255 - 100)
    assert tuple(img[15, 21]) == (100, 100, 100)


def test_render_image_is_frame_zero_and_deterministic():
    rng = np.random.default_rng(3)
    scene = sample_scene(rng, sample_specs(rng, 3), 8)
    scene = Scene(scene.objects, BackgroundSpec(grey=120, texture=12.0, seed=7), 64)
    a, b = render_video(scene, 8), render_video(scene, 8)
    assert a.dtype == np.uint8 and a.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(render_image(scene), a[0])
    # textured background: low saturation, varying luminance
    bg = render_video(Scene((), scene.background, 64), 1)[0].astype(int)
    assert chroma(bg).max() < 24 and bg.std() > 2


def test_render_at_another_size_scales_the_layout():
    spec = ObjectSpec("green", "square", "still")
    scene = Scene((ObjectLayout(spec, 31.5, 31.5, 16.0, 0.0),), BackgroundSpec(grey=128), 64)
    big = render_image(scene, 128)
    mask = chroma(big) > 0
    ys, xs = np.nonzero(mask)
    assert mask.sum() == 32 * 32 and xs.min() == 48 and xs.max() == 79 and ys.min() == 48


def test_long_clips_slow_down_then_refuse():
    rng = np.random.default_rng(4)
    specs = [ObjectSpec("red", "circle", "right")]
    scene = sample_scene(rng, specs, 60)
    o = scene.objects[0]
    assert o.x0 + o.speed * 59 + o.size / 2 <= 63.5 and o.speed >= 0.6
    with pytest.raises(ValueError, match="too long"):
        sample_scene(rng, specs, 200)
    still = sample_scene(rng, [ObjectSpec("red", "circle", "still")], 500)  # still objects: any length
    assert render_video(still, 500).shape == (500, 64, 64, 3)


def test_bouncing_path_reflects_at_the_walls():
    """A hand-computed path: centre 10, 3 px/frame to the right, walls at 5 and 20."""
    spec = ObjectSpec("red", "square", "right")
    o = ObjectLayout(spec, 10.0, 12.0, 8.0, 3.0, (5.0, 20.0))
    expected_x = [10, 13, 16, 19, 18, 15, 12, 9, 6, 7, 10]  # 22 -> 18, 25 -> 15, ..., 34 -> 6 -> 37 -> 7
    np.testing.assert_allclose(o.centres(11)[:, 0], expected_x)
    np.testing.assert_allclose(o.centres(11)[:, 1], 12.0)  # the other axis does not move
    up = ObjectLayout(ObjectSpec("red", "square", "up"), 30.0, 7.0, 8.0, 2.0, (5.0, 20.0))
    np.testing.assert_allclose(up.centres(4)[:, 1], [7, 5, 7, 9])


def test_bouncing_square_renders_at_its_reflected_place():
    spec = ObjectSpec("blue", "square", "left")
    # centre 14.5, side 10, 4 px/frame to the left, walls at 6.5 and 40: frame 3 is at 14.5 - 12 -> 6.5 + 4 = 10.5
    scene = Scene((ObjectLayout(spec, 14.5, 30.5, 10.0, 4.0, (6.5, 40.0)),), BackgroundSpec(grey=90), 64)
    video = render_video(scene, 4)
    for f, x in enumerate([14.5, 10.5, 6.5, 10.5]):
        expected = np.full((64, 64, 3), 90, np.uint8)
        left = int(x - 4.5)
        expected[26:36, left : left + 10] = COLOURS["blue"]
        np.testing.assert_array_equal(video[f], expected)
    twice = render_video(scene, 4, size=128)  # the walls scale with the frame
    ys, xs = np.nonzero(chroma(twice[3]) > 128)
    assert xs.min() == 2 * 6 and xs.max() == 2 * 16 - 1


def test_bouncing_long_clips_keep_speed_inside_and_apart():
    rng = np.random.default_rng(5)
    for _ in range(60):
        frames = int(rng.integers(32, 241))
        n = int(rng.integers(1, 3))
        scene = sample_scene(rng, sample_specs(rng, n), frames, 64, bounce=True)
        boxes = []
        for o in scene.objects:
            c = o.centres(frames)
            assert (c - o.size / 2 >= -0.5 - 1e-9).all() and (c + o.size / 2 <= 63.5 + 1e-9).all()
            if o.spec.motion != "still":
                assert SPEED_RANGE[0] - 1e-9 <= o.speed <= SPEED_RANGE[1] + 1e-9  # no slow-down
                step = np.abs(np.diff(c, axis=0)).max(axis=1)
                assert (step <= o.speed + 1e-9).all() and step.mean() > 0.7 * o.speed
            boxes.append((c, o.size))
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                gap = np.abs(boxes[i][0] - boxes[j][0]) - (boxes[i][1] + boxes[j][1]) / 2
                assert (gap.max(axis=1) >= 1.0).all()


def test_toyworld_imports_no_torch():
    """The toy world is pure numpy: importing it must not pull in torch beyond what vgen does."""
    import subprocess
    import sys

    code = ("import sys, vgen; before = 'torch' in sys.modules; import vgen.toyworld; "
            "assert before or 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
