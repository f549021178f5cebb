"""`vgen eval FILES`: detector scores of existing videos, prompts from sidecars."""

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

    r = subprocess.run([VGEN, "eval", tmp_path / "grey.mp4", "--prompt", prompt, "--json"], capture_output=True, text=True)
    (grey_score,) = json.loads(r.stdout)
    assert grey_score["score"]["fraction_present"] == 0.0

    r = subprocess.run([VGEN, "eval", tmp_path / "grey.mp4", tmp_path / "missing.mp4"], capture_output=True, text=True)
    assert r.returncode == 2  # grey.mp4 has no sidecar and missing.mp4 does not exist
    assert "no sidecar" in r.stdout and "not found" in r.stdout


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
