"""Context parallelism: one video's sequence split over processes by diffusers' ContextParallelConfig.

The launched tests are real runs (`vgen generate --nproc 2`, `vgen batch --nproc 2`: torchrun underneath, gloo on
CPU) compared with a plain single-process run at the same thread count (on CPU, frames depend on the thread count).
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import VGEN
from vgen.errors import ConfigError

PROMPT = "a red circle moving left"
WAN = ["--model", "tiny-random-wan", "--steps", "3", "--frames", "9", "--seed", "4"]


def env1() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VGEN_PROGRESS": "0"}


def run(cmd, timeout=300):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env1(), timeout=timeout)


def frames(path) -> np.ndarray:
    from vgen.video import read_video

    return read_video(path).frames.astype(int)


# ---------------------------------------------------------------------------------------------- no processes


def test_parse_and_plan():
    from vgen.context_parallel import Plan, Spec, parse, plan

    assert parse("off") == Spec() and parse("off").off and parse(False).off  # YAML's bare off
    assert parse("ulysses") == Spec(ulysses=0) and parse("ring") == Spec(ring=0)
    assert parse("ulysses=2,ring=4") == Spec(ulysses=2, ring=4) and parse("ring:2") == Spec(ring=2)
    for bad in ("ulyses", "ulysses=0", "ring=2,ring=2", "ulysses=x"):
        with pytest.raises(ConfigError, match="runtime.context_parallel"):
            parse(bad)
    assert plan(parse("ulysses"), 4) == Plan(4, 1)  # a bare kind takes the whole group
    assert plan(parse("ring=2"), 8) == Plan(1, 2)  # groups of 2 in a world of 8
    assert plan(parse("ulysses=2,ring=2"), 4).sidecar() == {"kind": "ulysses+ring", "degree": 4, "ulysses": 2, "ring": 2}
    assert plan(parse("off"), 4) is None  # a batch: jobs over ranks, no split
    assert plan(parse("off"), 4, whole_world=True) == Plan(4, 1)  # generate on 4 processes: Ulysses by default
    assert plan(parse("ulysses"), 1) is None and plan(parse("off"), 1, whole_world=True) is None
    with pytest.raises(ConfigError, match="does not divide the 6 processes"):
        plan(parse("ulysses=4"), 6)
    with pytest.raises(ConfigError, match="splits one video over all 4 processes"):
        plan(parse("ulysses=2"), 4, whole_world=True)


def test_jobs_go_to_groups_and_the_first_rank_of_a_group_writes():
    """World 4 in groups of 2: ranks 0,1 form group 0, ranks 2,3 group 1; 5 jobs alternate between the groups."""
    from vgen.batch import jobs_of_group
    from vgen.context_parallel import Layout

    layout = Layout(world_size=4, degree=2)
    assert layout.groups == 2 and [layout.group_of(r) for r in range(4)] == [0, 0, 1, 1]
    assert [layout.writes(r) for r in range(4)] == [True, False, True, False]
    assert jobs_of_group(5, layout.groups, 0) == [0, 2, 4] and jobs_of_group(5, layout.groups, 1) == [1, 3]
    assert jobs_of_group(3, Layout(3).groups, 2) == [2]  # no split: a group per rank, as `assign`


def test_rank_0s_plan_hands_the_unfinished_jobs_to_groups(tmp_path):
    """Issue 30's plan under a split: with 4 ranks in groups of 2, the jobs left after a resume go round robin to
    the groups (to each group's first rank), both ranks of a group run them, and a 7th job sharing an output goes
    to no group; with degree 1 the plan is the per-rank one."""
    from conftest import make_job

    from vgen.batch import Plan, plan_ranks
    from vgen.context_parallel import Plan as Split
    from vgen.jobs import ModelCache, run_job

    keys = {"model.id": "tiny-random-unet3d", "sampler.steps": 1, "video.frames": 2, "output.dir": str(tmp_path)}
    jobs = [make_job(f"job number {i}", **keys) for i in range(6)]
    models = ModelCache()
    for i in (0, 2):
        run_job(jobs[i], models)
    ranks = plan_ranks(jobs, 4, skip_existing=True, degree=2)
    assert ranks == {1: 0, 3: 2, 4: 0, 5: 2}
    assert plan_ranks(jobs, 4, skip_existing=True) == {1: 0, 3: 1, 4: 2, 5: 3}  # degree 1: a group per rank
    plan = Plan([], ranks, split=Split(2, 1))
    assert plan.degree == 2 and [plan.mine(r) for r in range(4)] == [[1, 4], [1, 4], [3, 5], [3, 5]]
    jobs.append(jobs[1])
    assert plan_ranks(jobs, 4, skip_existing=True, degree=2) == {3: 0, 4: 2, 5: 0}


def test_a_batch_has_one_split():
    from vgen.context_parallel import Plan, batch_plan

    assert batch_plan(["ulysses=2", "ulysses=2"], 4) == Plan(2, 1)
    with pytest.raises(ConfigError, match="same for every job of a batch; found 'off', 'ulysses=2'"):
        batch_plan(["ulysses=2", "off"], 4)


def test_sequence_length_is_the_transformers_token_count(tiny):
    """The tokens the check divides are those Wan's patch embedding makes (9 frames, 32x32: 3 x 2 x 2)."""
    import torch

    from vgen.context_parallel import Plan, check_video, sequence_length
    from vgen.core.sampler import latent_shape

    c = tiny("tiny-random-wan")
    for frames, size in ((9, 32), (5, 48)):
        shape = latent_shape(c, frames, size, size)
        tokens = c.unet.patch_embedding(torch.zeros(shape)).flatten(2).shape[2]
        assert sequence_length(c, shape) == tokens
    check_video(c, latent_shape(c, 9, 32, 32), Plan(2, 1))
    with pytest.raises(ConfigError, match="12 tokens do not split evenly over 8 processes"):
        check_video(c, latent_shape(c, 9, 32, 32), Plan(8, 1))


def test_models_without_a_cp_plan_and_ring_on_cpu_are_one_line_errors(tiny):
    from vgen.context_parallel import Plan, check_model

    with pytest.raises(ConfigError, match="has no context-parallel plan in diffusers"):
        check_model(tiny("tiny-random-unet3d"), Plan(2, 1))
    with pytest.raises(ConfigError, match="does not run on ltx models: diffusers 0.42.1's LTX transformer fails under Ulysses"):
        check_model(tiny("tiny-random-ltx"), Plan(2, 1))
    with pytest.raises(ConfigError, match="needs an attention backend that returns the log-sum-exp"):
        check_model(tiny("tiny-random-wan"), Plan(1, 2))
    with pytest.raises(ConfigError, match=r"heads \(2\) divisible"):
        check_model(tiny("tiny-random-wan"), Plan(4, 1))


@pytest.mark.parametrize("args, message", [
    (["runtime.context_parallel=ring"], "error: context_parallel ring needs an attention backend that returns the log-sum-exp"),
    (["--method", "vico"], "error: method 'vico' does not run under context parallelism: its attention recording"),
    (["--method", "zs2"], "error: method 'zs2' does not run under context parallelism: its momentum attention"),
])
def test_refused_before_any_worker_starts(tmp_path, args, message):
    r = run([VGEN, "generate", PROMPT, *WAN, "--nproc", "2", "--out", tmp_path / "out", *args], timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), r.stderr[-2000:]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- launched


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "one.mp4"
    r = run([VGEN, "generate", PROMPT, *WAN, "--out", out])
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.slow
def test_generate_nproc_2_equals_one_process(tmp_path, plain):
    out = tmp_path / "out"
    r = run([VGEN, "generate", PROMPT, *WAN, "--out", out / "cp.mp4", "--nproc", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == str(out / "cp.mp4")  # rank 0 alone prints the path
    assert sorted(p.name for p in out.iterdir()) == ["cp.json", "cp.mp4"]  # one mp4 and one sidecar
    side = json.loads((out / "cp.json").read_text())
    assert side["context_parallel"] == {"kind": "ulysses", "degree": 2, "ulysses": 2, "ring": 1, "group": 0,
                                        "groups": 1, "ranks": [0, 1]}
    assert side["distributed"] == {"rank": 0, "world_size": 2}
    assert "context_parallel" not in json.loads(plain.with_suffix(".json").read_text())
    assert np.abs(frames(out / "cp.mp4") - frames(plain)).max() <= 1


BATCH = """
defaults:
  model: {id: tiny-random-wan}
  sampler: {steps: 3}
  video: {frames: 9}
  runtime: {context_parallel: ulysses=2}
  output: {dir: OUT}
jobs:
  - {prompt: PROMPT, seed: 4}
  - {prompt: a dog, seed: 3}
"""


@pytest.mark.slow
def test_batch_with_a_group_of_2_writes_each_job_once(tmp_path, plain):
    out = tmp_path / "out"
    (tmp_path / "batch.yaml").write_text(BATCH.replace("OUT", str(out)).replace("PROMPT", PROMPT))
    r = run([VGEN, "batch", tmp_path / "batch.yaml", "--nproc", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("done: ") == 2 and r.stdout.count("vgen batch") == 1  # the group's first rank reports
    assert len(list(out.glob("*.mp4"))) == 2 and len(list(out.glob("*.json"))) == 2
    sides = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert all(s["context_parallel"]["ranks"] == [0, 1] and s["distributed"]["rank"] == 0 for s in sides)
    first = next(s for s in sides if s["prompt"] == PROMPT)
    assert np.abs(frames(first["output"]) - frames(plain)).max() <= 1


def _pid_of_rank(rank: int, marker: str):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and f"RANK={rank}".encode() in environ and b"LOCAL_RANK" in b"".join(environ):
            return int(pid)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_rank_killed_mid_video_leaves_no_files(tmp_path):
    """Rank 1 is killed while both ranks denoise (rank 0 has logged the prompt check that follows the model load):
    no file appears, and one line says which rank stopped and that nothing was written."""
    out = tmp_path / "out"
    # a word the tiny model does not know, so rank 0 logs the prompt check (the tiny vocabulary knows PROMPT's words)
    cmd = [VGEN, "generate", PROMPT + " past a zeppelin", "--model", "tiny-random-wan", "--steps", "1000",
           "--frames", "17", "--out", out / "long.mp4", "--nproc", "2"]
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env1())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 180
    while time.time() < deadline and not any("does not know the word" in line for line in lines):
        time.sleep(0.2)
    time.sleep(2)  # into the denoising loop (1000 steps of 17 frames: a minute or more)
    pid = _pid_of_rank(1, str(out / "long.mp4"))
    assert pid is not None and proc.poll() is None, "".join(lines)[-2000:]
    os.kill(pid, 9)
    stdout = proc.stdout.read()  # not communicate(): the reader thread owns stderr
    proc.wait(timeout=120)
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert proc.returncode == 1, stderr[-3000:]
    assert "error: rank 1 stopped (killed by SIGKILL) and the launcher stopped the other ranks; " \
           "long.mp4: no output was written" in stderr
    assert stdout == "" and "Traceback" not in stderr
    assert not out.exists() or not list(out.iterdir())
