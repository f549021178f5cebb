"""The real `vgen` console script: outputs, batch, resume, config show, and every user error."""

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import VGEN, vgen_in_process

FAST = ["--model", "tiny-random-unet3d", "--steps", "2", "--frames", "4"]


def vgen(*args, cwd=None, timeout=300):
    return vgen_in_process(*args, cwd=cwd)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_generate_writes_mp4_gif_frames_and_sidecar(tmp_path):
    r = vgen("generate", "a red circle moving left", *FAST, "--out", tmp_path, "--gif", "--save-frames", "--seed", "3", "sampler.eta=0.0")
    assert r.returncode == 0, r.stderr
    mp4 = Path(r.stdout.splitlines()[0])
    assert mp4.parent == tmp_path and re.fullmatch(r"a-red-circle-moving-left-vanilla-3-[0-9a-f]{8}\.mp4", mp4.name)
    from vgen.video import read_video

    video = read_video(mp4)
    assert video.frames.shape == (4, 32, 32, 3)
    assert mp4.with_suffix(".gif").is_file()
    assert len(list(mp4.with_name(f"{mp4.stem}_frames").glob("*.png"))) == 4
    side = json.loads(mp4.with_suffix(".json").read_text())
    assert side["seed"] == 3 and side["config"]["sampler"]["steps"] == 2 and side["model"]["kind"] == "unet3d"
    assert side["versions"]["torch"] and side["timings"]["total_s"] > 0 and side["dtype"] == "float32"
    assert not [n for n in leftovers(tmp_path) if "partial" in n]


def test_out_as_mp4_path_and_config_file(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("sampler: {steps: 2}\nvideo: {frames: 3, fps: 4}\nmodel: {id: tiny-random-motion}\n")
    r = vgen("generate", "a cat", "--config", cfg, "--out", tmp_path / "clip.mp4")
    assert r.returncode == 0, r.stderr
    side = json.loads((tmp_path / "clip.json").read_text())
    assert side["video"] == {"frames": 3, "height": 32, "width": 32, "fps": 4}
    assert side["model"]["kind"] == "motion"


def test_methods_and_config_show():
    r = vgen("methods")
    assert r.returncode == 0 and r.stdout.startswith("vanilla")
    r = vgen("config", "show", "--method", "vanilla", "sampler.steps=7", "video.frames=5")
    assert r.returncode == 0, r.stderr
    import yaml

    shown = yaml.safe_load(r.stdout)
    assert shown["sampler"]["steps"] == 7 and shown["video"]["frames"] == 5 and shown["method"] == "vanilla"


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from vgen.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.splitlines()[-1]
    assert out == "False False"


BAD_INPUTS = [
    (["--method", "nope"], "unknown method 'nope'"),
    (["sampler.stepz=3"], "unknown config key 'sampler.stepz'"),
    (["sampler.steps=abc"], "config key 'sampler.steps'"),
    (["--frames", "0"], "video.frames"),
    (["--height", "33"], "not a multiple of 2"),
    (["--model", "./no/such/model"], "does not exist"),
    (["--model", "nobody/no-such-model"], "Hugging Face Hub"),
    (["--scheduler", "fancy"], "sampler.scheduler"),
    (["--bogus-flag"], "No such option"),
    (["--steps", "5000"], "sampler.steps=5000"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[a[0] for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_error(tmp_path, args, message):
    base = ["generate", "a cat", *FAST, "--out", tmp_path / "out"]
    r = vgen(*base, *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "out").glob("*.mp4")) if (tmp_path / "out").exists() else True


def test_empty_prompt_and_unwritable_output(tmp_path):
    r = vgen("generate", "   ", *FAST, "--out", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "prompt is empty" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = vgen("generate", "a cat", *FAST, "--out", blocker / "sub")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot write to output folder" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_leaves_no_partial_file(tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [VGEN, "generate", "a cat", "--model", "tiny-random-unet3d", "--steps", "900", "--frames", "8", "--out", out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as in a terminal: CI shells may start us with SIGINT ignored, which Python then keeps
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 60
    while time.time() < deadline and not out.exists():
        time.sleep(0.1)  # the output folder is made (write check) just before the model loads
    time.sleep(5)  # the model is loaded and the 900-step loop is running
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted")
    assert leftovers(out) == []


def _write_batch(tmp_path: Path) -> Path:
    (tmp_path / "prompts.txt").write_text("# comment\na green square moving up\n\n")
    batch = tmp_path / "batch.yaml"
    batch.write_text(
        f"""
defaults:
  model: {{id: tiny-random-unet3d}}
  sampler: {{steps: 2}}
  video: {{frames: 3}}
  output: {{dir: {tmp_path / 'out'}}}
jobs:
  - prompt: a red circle moving left
  - {{prompt: a blue triangle, model: {{id: ./missing-model}}}}
  - {{prompt: a cat, sampler: {{stepz: 2}}}}
  - {{prompt: a dog, seed: 5, model: {{id: tiny-random-unet2d}}}}
prompts: prompts.txt
seeds: [0, 1]
"""
    )
    return batch


def test_batch_failed_jobs_do_not_stop_others_and_resume_skips(tmp_path):
    batch = _write_batch(tmp_path)
    r = vgen("batch", batch)
    assert r.returncode == 1
    out = tmp_path / "out"
    done = sorted(re.sub(r"-[0-9a-f]{8}$", "", p.stem) for p in out.glob("*.mp4"))
    assert done == ["a-dog-vanilla-5", "a-green-square-moving-up-vanilla-0", "a-green-square-moving-up-vanilla-1",
                    "a-red-circle-moving-left-vanilla-0"]
    assert "does not exist" in r.stdout + r.stderr and "sampler.stepz" in r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: 2 of 6 jobs failed"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}

    r = vgen("batch", batch, "--skip-existing")
    assert r.returncode == 1
    assert r.stderr.count("skipped:") == 4 and r.stderr.count("failed:") == 1  # the bad-key job fails while loading
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == stamps


def test_batch_jobs_writing_the_same_file_fail_and_the_rest_run(tmp_path):
    """Issue 30 item 2: two jobs that resolve to one output fail, saying so; the others run."""
    batch = tmp_path / "b.yaml"
    batch.write_text("defaults: {model: {id: tiny-random-unet3d}, sampler: {steps: 1}, video: {frames: 2}}\n"
                     "jobs:\n  - a cat\n  - a dog\n  - a cat\n  - {prompt: a cow, output: {name: same}}\n"
                     "  - {prompt: a hen, output: {name: same}}\n")
    r = vgen("batch", batch, "--out", tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("jobs 1, 3 would all write") == 2 and r.stderr.count("jobs 4, 5 would all write") == 2
    assert r.stderr.count("done: ") == 1 and r.stderr.strip().splitlines()[-1] == "error: 4 of 5 jobs failed"
    assert [json.loads(p.read_text())["prompt"] for p in tmp_path.glob("*.json")] == ["a dog"]


def test_same_seed_same_frames_different_seed_different(tmp_path):
    from vgen.video import read_video

    paths = []
    for seed, name in [(1, "a"), (1, "b"), (2, "c")]:
        r = vgen("generate", "a cat", *FAST, "--seed", seed, "--out", tmp_path / f"{name}.mp4")
        assert r.returncode == 0, r.stderr
        paths.append(tmp_path / f"{name}.mp4")
    a, b, c = (read_video(p).frames for p in paths)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# ---- bad numbers never make a video (issue 37): the cases a new user tried, through the console script ----

NON_FINITE = [
    (["--guidance", "nan"], "config key 'sampler.guidance' must be a finite number, got nan"),
    (["--guidance", "inf"], "config key 'sampler.guidance' must be a finite number, got inf"),
    (["sampler.eta=inf"], "config key 'sampler.eta' must be a finite number, got inf"),
    (["--method", "vico", "vico.lr=nan"], "config key 'vico.lr' must be a finite number, got nan"),
    (["--method", "vico", "vico.lr=inf"], "config key 'vico.lr' must be a finite number, got inf"),
    (["--method", "zs2", "zs2.lam=nan"], "config key 'zs2.lam' must be a finite number, got nan"),
    (["--method", "vico", "vico.thresholds=[0.9, .nan, 0.2]"], "config key 'vico.thresholds' must hold finite numbers"),
]


@pytest.mark.parametrize("args,message", NON_FINITE, ids=[" ".join(a) for a, _ in NON_FINITE])
def test_non_finite_numbers_are_one_line_errors(tmp_path, args, message):
    out = tmp_path / "out"
    r = vgen("generate", "a cat", *FAST, "--out", out, *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}") and r.stdout == "", r.stderr
    assert not out.exists()  # refused before the output folder is made, so before any model loads
