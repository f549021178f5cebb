"""Scene cuts and motion-aware warp error, each checked against a reference that does not use the code under test:
clips built with a known cut or a known per-frame shift, the exact warp of that shift, and PySceneDetect
reading the same clip from a file."""

import dataclasses
import sys

import numpy as np
import pytest

from vgen.errors import VgenError
from vgen.eval import MAWE_C, MIN_FLOW, mawe_term, optical_flow, scene_cuts, warp, warp_error, warp_metrics
from vgen.toyworld import BackgroundSpec, parse_prompt, render_image, render_video, sample_scene

SHUFFLE = [7, 0, 6, 1, 5, 2, 4, 3]  # every step a jump of several frames, in both directions


def toy_clip(seed: int, prompt: str, grey: int, frames: int = 16) -> np.ndarray:
    """A moving toy-world clip on a plain background of the given grey (so two clips surely differ)."""
    scene = sample_scene(np.random.default_rng(seed), parse_prompt(prompt), frames)
    return render_video(dataclasses.replace(scene, background=BackgroundSpec(grey=grey)), frames)


def panned_clip(shift: tuple[int, int], frames: int = 8, size: int = 64, seed: int = 2) -> np.ndarray:
    """Windows of a textured toy image whose content moves by `shift` (dx, dy) px per frame:
    frame t+1 (p) = frame t (p - shift) exactly, so forward flow is +shift and backward flow -shift."""
    scene = sample_scene(np.random.default_rng(seed), parse_prompt("a red circle and a blue square and a green triangle"),
                         1, size=2 * size)
    big = render_image(dataclasses.replace(scene, background=BackgroundSpec(grey=120, texture=12.0, seed=seed)))
    dx, dy = shift
    o = size // 2 + frames  # keeps every window inside the big image for |shift| <= 3
    return np.stack([big[o - t * dy: o - t * dy + size, o - t * dx: o - t * dx + size] for t in range(frames)])


# --- scene cuts ------------------------------------------------------------------------------------------

def test_hard_cut_between_two_rendered_clips_is_exactly_one_cut_and_smooth_clips_none():
    a = toy_clip(1, "a red circle moving left and a blue square moving up", grey=70)
    b = toy_clip(2, "a green triangle moving right", grey=180)
    assert scene_cuts(a).cuts == 0 and scene_cuts(b).cuts == 0
    cut = scene_cuts(np.concatenate([a, b]), fps=8)
    assert cut.cuts == 1 and cut.cut_frames == (16,)
    assert cut.params["detector"] == "AdaptiveDetector" and cut.params["adaptive_threshold"] == 3.0


def test_min_scene_len_is_reported_and_pyscenedetect_default_hides_a_cut_in_a_short_clip():
    a = toy_clip(1, "a red circle moving left", grey=70, frames=8)
    b = toy_clip(2, "a blue square moving up", grey=180, frames=8)
    clip = np.concatenate([a, b])
    auto = scene_cuts(clip)
    assert auto.params["min_scene_len"] == 4 and auto.cut_frames == (8,)
    default = scene_cuts(clip, min_scene_len=15)  # the cut at frame 8 comes < 15 frames after the start
    assert default.params["min_scene_len"] == 15 and default.cuts == 0


def test_frames_from_memory_match_pyscenedetect_reading_the_file(tmp_path):
    from scenedetect import AdaptiveDetector, detect

    from vgen.video import Video, write_mp4

    clip = np.concatenate([toy_clip(3, "a yellow diamond moving down", 90), toy_clip(4, "a purple circle", 170)])
    path = write_mp4(Video(clip, fps=8), tmp_path / "cut.mp4")
    scenes = detect(str(path), AdaptiveDetector(min_scene_len=8))
    assert tuple(start.frame_num for start, _ in scenes[1:]) == scene_cuts(clip, fps=8, min_scene_len=8).cut_frames == (16,)


# --- optical flow and warp error -------------------------------------------------------------------------

def test_static_clip_has_zero_flow_zero_warp_error_and_zero_mawe():
    frame = panned_clip((0, 0), frames=1)[0]
    clip = np.stack([frame] * 6)
    assert not optical_flow(frame, frame).any()  # DIS on identical frames: exactly zero
    m = warp_metrics(clip)
    assert (m.mawe, m.warp_error, m.flow_mean, m.flow_std, m.frame_change, m.pairs) == (0, 0, 0, 0, 0, 5)
    far = warp_metrics(clip, "farneback")  # Farneback leaves ~1e-3 px of noise: below MIN_FLOW, MAWE stays ~0
    assert far.flow == "opencv-farneback" and far.flow_mean < 0.01 and far.mawe < 0.1


def test_exact_warp_by_the_true_backward_flow_reproduces_the_next_frame():
    clip = panned_clip((2, 1))
    backward = np.broadcast_to(np.float32([-2, -1]), (64, 64, 2))  # frame 1 (p) = frame 0 (p + backward)
    warped, inside = warp(clip[0], backward)
    assert inside.sum() == 62 * 63  # the 2 columns and 1 row that entered over the border are left out
    assert warp_error(clip[0], clip[1], backward) == 0.0  # integer shift: bilinear sampling is exact
    assert warp_error(clip[0], clip[1], -backward) > 100  # the opposite direction is far off


@pytest.mark.parametrize("shift", [(2, 1), (-1, 2)])
def test_flow_of_a_panned_clip_is_its_shift_and_warp_error_is_small(shift):
    # DIS refines to sub-pixel accuracy on textured content (typically ~0.1 px); the median over the interior
    # is robust to the few wrong vectors at the shapes' uniform insides and edges; an 8 px margin drops
    # pixels that entered over the border.
    clip = panned_clip(shift)
    flows = np.stack([optical_flow(clip[i], clip[i + 1]) for i in range(len(clip) - 1)])[:, 8:-8, 8:-8]
    flows = flows.reshape(-1, 2)
    assert np.allclose(np.median(flows, axis=0), shift, atol=0.1)
    assert np.abs(flows - shift).mean() < 0.3
    m = warp_metrics(clip)
    assert abs(m.flow_mean - np.hypot(*shift)) < 0.15
    unwarped = np.mean((clip[1:].astype(np.float64) - clip[:-1]) ** 2)
    assert m.warp_error < 0.05 * unwarped  # the flow explains >= 95% of the frame-to-frame change
    assert m.mawe < 1.0


def test_shuffled_frames_have_a_much_larger_mawe():
    clip = panned_clip((2, 1))
    smooth, shuffled = warp_metrics(clip), warp_metrics(clip[SHUFFLE])
    assert shuffled.mawe > 5 * smooth.mawe and shuffled.warp_error > 5 * smooth.warp_error
    assert shuffled.speed_std > smooth.speed_std  # jumps of different sizes: uneven motion


def test_change_without_motion_is_floored_not_divided_by_zero():
    assert mawe_term(0.0, 0.0) == 0.0
    assert mawe_term(10.0, 0.0) == pytest.approx(10.0 / (MAWE_C * MIN_FLOW))
    assert mawe_term(10.0, 2.0) == pytest.approx(10.0 / (MAWE_C * 2.0))
    frame = panned_clip((0, 0), frames=1)[0].astype(np.int16)
    flicker = np.stack([np.clip(frame + 20 * (i % 2), 0, 255) for i in range(6)]).astype(np.uint8)
    m = warp_metrics(flicker)  # brightness flicker: no motion, every pair changes
    assert m.flow_mean < MIN_FLOW and m.warp_error > 100
    assert m.mawe == pytest.approx(m.warp_error / (MAWE_C * MIN_FLOW), rel=1e-6)


# --- errors ---------------------------------------------------------------------------------------------

def test_bad_inputs_and_missing_packages_are_one_line_errors(monkeypatch):
    with pytest.raises(VgenError, match="at least 12x12"):
        warp_metrics(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(VgenError, match="unknown flow method 'raft'"):
        warp_metrics(np.zeros((2, 16, 16, 3), np.uint8), "raft")
    with pytest.raises(ValueError, match="at least 2 frames"):
        warp_metrics(np.zeros((1, 16, 16, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "scenedetect", None)  # makes `import scenedetect` fail
    with pytest.raises(VgenError, match=r"^scene cuts need PySceneDetect.*pip install"):
        scene_cuts(np.zeros((4, 16, 16, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(VgenError, match=r"^optical flow needs OpenCV"):
        warp_metrics(np.zeros((2, 16, 16, 3), np.uint8))


def test_mawe_size_resizes_first_so_the_flow_scales_with_it():
    """--mawe-size (the paper's 720x720 protocol): a 2 px/frame pan at 64 px is a 4 px/frame pan at 128 px."""
    clip = panned_clip((2, 0), frames=4)
    native, big = warp_metrics(clip), warp_metrics(clip, size=128)
    assert native.size is None and native.frame_size == (64, 64)
    assert big.size == 128 and big.frame_size == (128, 128)
    assert native.flow_mean == pytest.approx(2.0, abs=0.3) and big.flow_mean == pytest.approx(4.0, abs=0.6)
