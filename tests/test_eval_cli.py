"""`vgen eval FILES`: video metrics and detector scores of existing videos, prompts from sidecars."""

import json
import subprocess

import numpy as np

from conftest import VGEN
from vgen.toyworld import parse_prompt, render_video, sample_scene
from vgen.video import Video, write_json, write_mp4


def test_eval_scores_rendered_ground_truth_and_reports_bad_files(tmp_path):
    prompt = "a red circle moving left and a blue square moving up"
    frames = render_video(sample_scene(np.random.default_rng(1), parse_prompt(prompt), 12), 12)
    write_mp4(Video(frames), tmp_path / "gt.mp4")
    write_json({"prompt": prompt}, tmp_path / "gt.json")
    grey = np.full((12, 64, 64, 3), 128, np.uint8)
    write_mp4(Video(grey), tmp_path / "grey.mp4")

    r = subprocess.run([VGEN, "eval", tmp_path / "gt.mp4", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (gt,) = json.loads(r.stdout)
    assert gt["score"]["all_correct"] and [o["motion"] for o in gt["score"]["objects"]] == ["left", "up"]
    assert gt["scene_cuts"]["cuts"] == 0 and gt["scene_cuts"]["params"]["min_scene_len"] == 3
    assert gt["warp"]["flow"] == "opencv-dis-medium" and gt["warp"]["pairs"] == 11 and gt["warp"]["mawe"] > 0

    r = subprocess.run([VGEN, "eval", tmp_path / "grey.mp4", "--prompt", prompt, "--json"], capture_output=True, text=True)
    (grey_score,) = json.loads(r.stdout)
    assert grey_score["score"]["fraction_present"] == 0.0
    assert grey_score["warp"]["mawe"] == grey_score["warp"]["flow_mean"] == 0.0  # a static clip

    r = subprocess.run([VGEN, "eval", "grey.mp4", "missing.mp4"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2  # missing.mp4 does not exist; grey.mp4 has no sidecar, which only skips the detector
    assert "no sidecar" in r.stdout and "not found" in r.stdout and "MAWE" in r.stdout


def test_eval_measures_any_prompt_and_counts_a_cut(tmp_path):
    """A prompt outside the toy world gets video metrics and '-' in the detector columns, exit 0."""
    a = render_video(sample_scene(np.random.default_rng(1), parse_prompt("a red circle moving left"), 16), 16)
    b = render_video(sample_scene(np.random.default_rng(2), parse_prompt("a blue square moving up"), 16), 16)
    b = np.clip(b.astype(np.int16) + 60, 0, 255).astype(np.uint8)  # surely a different shot
    write_mp4(Video(np.concatenate([a, b])), tmp_path / "cut.mp4")
    write_json({"prompt": "a cat playing the piano"}, tmp_path / "cut.json")

    r = subprocess.run([VGEN, "eval", tmp_path / "cut.mp4", "--json", "--flow", "farneback", "--min-scene-len", "5"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (cut,) = json.loads(r.stdout)
    assert cut["score"] is None and "not a toy-world prompt" in cut["note"] and cut["error"] is None
    assert cut["scene_cuts"]["cut_frames"] == [16] and cut["scene_cuts"]["params"]["min_scene_len"] == 5
    assert cut["warp"]["flow"] == "opencv-farneback"

    r = subprocess.run([VGEN, "eval", "cut.mp4"], capture_output=True, text=True, cwd=tmp_path)  # short names: no folding
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "cut.mp4" in line)
    assert row.split("│")[3].strip() == "1" and row.split("│")[6].strip() == "-"  # cuts; all present
    assert "min_scene_len 8 frames" in r.stdout and "opencv-dis-medium" in r.stdout

    r = subprocess.run([VGEN, "eval", tmp_path / "cut.mp4", "--flow", "raft"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown flow method 'raft'")


def test_explain_command_writes_a_grid_and_rejects_bad_steps(tmp_path):
    r = subprocess.run([VGEN, "explain", "a red circle and a blue square", "--model", "tiny-random-unet3d",
                        "--frames", "2", "--steps", "2", "-o", tmp_path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    (png,) = tmp_path.glob("*_flow_step0.png")
    assert Image.open(png).size[0] > 100
    r = subprocess.run([VGEN, "explain", "a red circle and a blue square", "--model", "tiny-random-unet3d",
                        "--steps", "2", "--step", "5", "-o", tmp_path], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: explain: step must be in [0, 1]")
