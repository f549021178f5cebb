"""Window scores of long videos on rendered toy clips: an object that disappears, changes colour or changes shape
halfway costs exactly the windows it is wrong in."""

import numpy as np
import pytest

from vgen.eval.longvideo import slice_detection, window_scores, windows
from vgen.toyworld import BackgroundSpec, ObjectLayout, ObjectSpec, Scene, caption, detect_video, render_video

RED = ObjectSpec("red", "circle", "still")
BLUE = ObjectSpec("blue", "square", "still")
PROMPT = caption([RED, BLUE])


def clip(*specs: ObjectSpec, frames: int = 32) -> np.ndarray:
    """Still objects at fixed places (first at the top left, second at the bottom right) on plain grey."""
    places = [(18.0, 18.0), (44.0, 44.0)]
    layouts = tuple(ObjectLayout(s, x, y, 16.0, 0.0) for s, (x, y) in zip(specs, places))
    return render_video(Scene(layouts, BackgroundSpec(grey=128)), frames)


def spliced(second: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """Frames 0-15 of the full scene, 16-31 of another one."""
    first = clip(RED, BLUE) if first is None else first
    return np.concatenate([first[:16], second[16:]])


def test_windows_are_full_and_disjoint():
    assert windows(32, 16) == [(0, 16), (16, 32)]
    assert windows(40, 16) == [(0, 16), (16, 32)]  # the trailing 8 frames fill no window
    assert windows(10, 16) == [(0, 10)]  # shorter than a window: the whole video
    assert windows(0, 16) == []
    with pytest.raises(ValueError):
        windows(10, 0)


def test_a_clip_that_keeps_its_objects_keeps_every_window():
    s = window_scores(clip(RED, BLUE), PROMPT)
    assert s.kept == (True, True) and s.rate == 1.0 and s.last_kept and s.first_lost is None


@pytest.mark.parametrize("second", [
    (RED,),  # the blue square disappears
    (RED, ObjectSpec("green", "square", "still")),  # it turns green
    (RED, ObjectSpec("blue", "triangle", "still")),  # it turns into a triangle
], ids=["disappears", "colour", "shape"])
def test_an_object_lost_in_the_second_half_costs_half_the_windows(second):
    s = window_scores(spliced(clip(*second)), PROMPT)
    assert s.kept == (True, False) and s.rate == 0.5
    assert not s.last_kept and s.first_lost == 16
    assert s.to_dict()["rate"] == 0.5


def test_an_object_that_only_comes_late_is_lost_early():
    s = window_scores(spliced(clip(RED, BLUE), first=clip(RED)), PROMPT, window=8)
    assert s.kept == (False, False, True, True) and s.rate == 0.5 and s.last_kept and s.first_lost == 0


def test_a_window_sees_only_its_own_frames():
    det = detect_video(spliced(clip(RED)))
    late = slice_detection(det, 16, 32)
    assert late.n_frames == 16 and set(late.tracks) == {"red"}  # the blue track of frames 0-15 is gone
    assert window_scores(det, PROMPT).rate == 0.5  # a detection is scored as it is
