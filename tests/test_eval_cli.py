"""`vgen eval FILES`: video metrics and detector scores of existing videos, prompts from sidecars."""

import json

import numpy as np
import pytest

from conftest import vgen_in_process as vgen
from vgen.toyworld import parse_prompt, render_video, sample_scene
from vgen.video import Video, write_json, write_mp4


def test_eval_scores_rendered_ground_truth_and_reports_bad_files(tmp_path):
    prompt = "a red circle moving left and a blue square moving up"
    frames = render_video(sample_scene(np.random.default_rng(1), parse_prompt(prompt), 12), 12)
    write_mp4(Video(frames), tmp_path / "gt.mp4")
    write_json({"prompt": prompt}, tmp_path / "gt.json")
    grey = np.full((12, 64, 64, 3), 128, np.uint8)
    write_mp4(Video(grey), tmp_path / "grey.mp4")

    r = vgen("eval", tmp_path / "gt.mp4", "--json")
    assert r.returncode == 0, r.stderr
    (gt,) = json.loads(r.stdout)
    assert gt["score"]["all_correct"] and [o["motion"] for o in gt["score"]["objects"]] == ["left", "up"]
    assert gt["scene_cuts"]["cuts"] == 0 and gt["scene_cuts"]["params"]["min_scene_len"] == 3
    assert gt["warp"]["flow"] == "opencv-dis-medium" and gt["warp"]["pairs"] == 11 and gt["warp"]["mawe"] > 0

    r = vgen("eval", tmp_path / "grey.mp4", "--prompt", prompt, "--json")
    (grey_score,) = json.loads(r.stdout)
    assert grey_score["score"]["fraction_present"] == 0.0
    assert grey_score["warp"]["mawe"] == grey_score["warp"]["flow_mean"] == 0.0  # a static clip

    r = vgen("eval", "grey.mp4", "missing.mp4", cwd=tmp_path)
    assert r.returncode == 2  # missing.mp4 does not exist; grey.mp4 has no sidecar, which only skips the detector
    assert "no sidecar" in r.stdout and "not found" in r.stdout and "MAWE" in r.stdout


def test_eval_measures_any_prompt_and_counts_a_cut(tmp_path):
    """A prompt outside the toy world gets video metrics and '-' in the detector columns, exit 0."""
    a = render_video(sample_scene(np.random.default_rng(1), parse_prompt("a red circle moving left"), 16), 16)
    b = render_video(sample_scene(np.random.default_rng(2), parse_prompt("a blue square moving up"), 16), 16)
    b = np.clip(b.astype(np.int16) + 60, 0, 255).astype(np.uint8)  # surely a different shot
    write_mp4(Video(np.concatenate([a, b])), tmp_path / "cut.mp4")
    write_json({"prompt": "a cat playing the piano"}, tmp_path / "cut.json")

    r = vgen("eval", tmp_path / "cut.mp4", "--json", "--flow", "farneback", "--min-scene-len", "5")
    assert r.returncode == 0, r.stderr
    (cut,) = json.loads(r.stdout)
    assert cut["score"] is None and "not a toy-world prompt" in cut["note"] and cut["error"] is None
    assert cut["scene_cuts"]["cut_frames"] == [16] and cut["scene_cuts"]["params"]["min_scene_len"] == 5
    assert cut["warp"]["flow"] == "opencv-farneback"

    r = vgen("eval", "cut.mp4", cwd=tmp_path)  # short names: no folding
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "cut.mp4" in line)
    cells = [c.strip() for c in row.split("│")]
    assert cells[3] == "1 @ 16" and cells[6] == "-" and cells[7] == "-"  # cuts with positions; no seams; all present
    assert "min_scene_len 8 frames" in r.stdout and "opencv-dis-medium" in r.stdout
    for measure in ("cuts (lower is better)", "MAWE (lower is better)", "warp err (lower is better)"):
        assert measure in r.stdout
    assert "at 64x64 (native)" in r.stdout and "not comparable with the paper's" in r.stdout
    assert "clip: not computed, no local CLIP weights" in r.stdout  # the test machine has none

    r = vgen("eval", tmp_path / "cut.mp4", "--flow", "raft")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown flow method 'raft'")


def test_eval_seams_from_flags_and_sidecar_and_dash_for_a_missing_object(tmp_path):
    """A 3-px jump every 8th frame after 16 shows in the seam columns; a missing object's drift is '-', not 1.00."""
    prompt = "a red circle moving right"
    scene = sample_scene(np.random.default_rng(3), parse_prompt(prompt), 40)
    frames = render_video(scene, 40)
    shifts = np.array([0] * 16 + [3] * 8 + [6] * 8 + [9] * 8)  # each boundary shifts the picture 3 px further right
    jumped = np.stack([np.roll(f, s, axis=1) for f, s in zip(frames, shifts)])
    write_mp4(Video(jumped), tmp_path / "seamed.mp4")
    write_json({"prompt": prompt, "method_info": {"mode": "trained", "chunks": 4, "chunk": 16, "cond_frames": 8}},
               tmp_path / "seamed.json")
    write_mp4(Video(frames), tmp_path / "clean.mp4")
    write_json({"prompt": prompt}, tmp_path / "clean.json")
    grey = np.full((20, 64, 64, 3), 128, np.uint8)
    write_mp4(Video(grey), tmp_path / "grey.mp4")

    r = vgen("eval", "seamed.mp4", "clean.mp4", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    seamed, clean = json.loads(r.stdout)
    s = seamed["seams"]
    assert s["layout"]["source"] == "sidecar" and s["boundaries"] == [16, 24, 32]
    step = float(np.hypot(*scene.objects[0].velocity()))
    assert s["object"]["inside"] == pytest.approx(step, abs=0.3)
    assert s["object"]["boundary"] == pytest.approx(step + 3, abs=0.6) and s["object"]["ratio"] > 2
    assert clean["seams"] is None and "no chunk layout" in clean["seam_note"]

    r = vgen("eval", "clean.mp4", "--chunk", "16", "--stride", "8", "--json", cwd=tmp_path)
    (flagged,) = json.loads(r.stdout)
    assert flagged["seams"]["layout"]["source"] == "given" and 0.7 < flagged["seams"]["object"]["ratio"] < 1.4

    r = vgen("eval", "grey.mp4", "--prompt", prompt, cwd=tmp_path)
    row = next(line for line in r.stdout.splitlines() if "grey.mp4" in line)
    cells = [c.strip() for c in row.split("│")]
    assert cells[9].startswith("red circle: missing") and cells[10] == "-"  # drift of a missing object
    assert "drift (lower is better)" in r.stdout

    r = vgen("eval", "clean.mp4", "--stride", "8", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: --stride needs --chunk (the first boundary)"


def test_explain_command_writes_a_grid_and_rejects_bad_steps(tmp_path):
    r = vgen("explain", "a red circle and a blue square", "--model", "tiny-random-unet3d",
                        "--frames", "2", "--steps", "2", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    (png,) = tmp_path.glob("*_flow_step0.png")
    assert Image.open(png).size[0] > 100
    r = vgen("explain", "a red circle and a blue square", "--model", "tiny-random-unet3d",
                        "--steps", "2", "--step", "5", "-o", tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: explain: step must be in [0, 1]")
