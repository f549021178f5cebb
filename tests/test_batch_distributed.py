"""`vgen batch` on many processes: torchrun (2 CPU ranks, gloo) and `--nproc`, against a plain run of the same batch.

The torchrun runs are real launches (`python -m torch.distributed.run --standalone`), so these tests check what a
user gets: which rank ran which job (read back from the sidecars), one summary, the exit code, resume, and frames
equal to a single-process run at the same thread count (on CPU, frames depend on the thread count).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import VGEN, make_job

# 5 jobs, the 3rd fails (its model folder is missing); jobs 1..5 go to ranks 0,1,0,1,0 (index mod 2)
BATCH = """
defaults:
  model: {id: tiny-random-unet3d}
  sampler: {steps: 2}
  video: {frames: 3}
  output: {dir: OUT}
jobs:
  - a red circle moving left
  - a blue square moving up
  - {prompt: a blue triangle, model: {id: ./missing-model}}
  - {prompt: a dog, seed: 5}
  - {prompt: a cat, seed: 2, method: zs2, model: {id: tiny-random-unet2d}}
"""
GOOD = [("a red circle moving left", 0, 0), ("a blue square moving up", 0, 1), ("a dog", 5, 1), ("a cat", 2, 0)]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "vgen.cli"]


def env1() -> dict:
    """One thread per process everywhere, so every run's frames are comparable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VGEN_PROGRESS": "0"}


def run(cmd, timeout=240):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env1(), timeout=timeout)


def write_batch(folder: Path, out: Path, text: str = BATCH) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "batch.yaml"
    path.write_text(text.replace("OUT", str(out)))
    return path


def sidecars(out: Path) -> dict[tuple, dict]:
    """Each written video's sidecar by (prompt, seed): the tests never assume the naming scheme."""
    found = {}
    for side in out.glob("*.json"):
        data = json.loads(side.read_text())
        found[(data["prompt"], data["seed"])] = data
    return found


def frames(sidecar: dict) -> np.ndarray:
    from vgen.video import read_video

    return read_video(sidecar["output"]).frames


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The batch run by one process (1 thread): the reference."""
    root = tmp_path_factory.mktemp("plain")
    r = run([VGEN, "batch", write_batch(root, root / "out")])
    assert r.returncode == 1, r.stderr
    return root / "out"


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    batch = write_batch(root, root / "out")
    return batch, root / "out", run([*TORCHRUN, "batch", batch])


# ---------------------------------------------------------------------------------------------- no launcher


def test_world_from_env():
    from vgen.distributed import World, world_from_env
    from vgen.errors import ConfigError

    assert world_from_env({}) is None
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    assert world_from_env(env) == World(rank=3, world_size=4, local_rank=1)
    assert world_from_env(env).sidecar() == {"rank": 3, "world_size": 4}
    for bad, message in [({"RANK": "4"}, "does not fit"), ({"RANK": "x"}, "integers"), ({"MASTER_PORT": None}, "MASTER_PORT")]:
        broken = {k: v for k, v in {**env, **bad}.items() if v is not None}
        with pytest.raises(ConfigError, match=message):
            world_from_env(broken)


def test_assignment_is_index_mod_world_size():
    from vgen.batch import assign

    assert assign(5, 2) == [0, 1, 0, 1, 0]
    assert assign(7, 3) == [0, 1, 2, 0, 1, 2, 0]
    assert assign(2, 4) == [0, 1]  # more ranks than jobs: the extra ranks run nothing
    assert assign(3, 1) == [0, 0, 0]


def test_sidecar_records_distributed_only_when_given(tmp_path):
    from vgen.jobs import ModelCache, run_job

    models = ModelCache()
    keys = {"model.id": "tiny-random-unet3d", "sampler.steps": 1, "video.frames": 2, "output.dir": str(tmp_path)}
    plain = run_job(make_job("a cat", **keys), models)
    ranked = run_job(make_job("a dog", **keys), models, distributed={"rank": 1, "world_size": 2})
    plain_side = json.loads(plain.path.with_suffix(".json").read_text())
    ranked_side = json.loads(ranked.path.with_suffix(".json").read_text())
    assert "distributed" not in plain_side
    assert ranked_side["distributed"] == {"rank": 1, "world_size": 2}
    keys_in_order = list(ranked_side)
    assert keys_in_order.index("distributed") == keys_in_order.index("dtype") + 1  # beside device and dtype


# ---------------------------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_splits_the_batch_and_rank0_reports_once(torchrun):
    _, out, r = torchrun
    assert r.returncode == 1, r.stderr[-3000:]
    written = sidecars(out)
    assert sorted(written) == sorted((p, s) for p, s, _ in GOOD)
    for prompt, seed, rank in GOOD:  # each good job ran once, on the rank its index gives
        assert written[(prompt, seed)]["distributed"] == {"rank": rank, "world_size": 2}
    assert r.stderr.count("done: ") == 4
    assert len(list(out.glob("*.mp4"))) == 4 and not [p for p in out.iterdir() if "partial" in p.name]
    assert r.stderr.count("rank 0: [3/5] failed: job 3 -> model folder './missing-model' does not exist") == 1
    assert r.stdout.count("vgen batch") == 1  # one summary table, printed by rank 0
    assert r.stderr.count("error: 1 of 5 jobs failed") == 1


@pytest.mark.slow
def test_torchrun_resume_with_skip_existing_writes_nothing(torchrun):
    batch, out, first = torchrun
    assert first.returncode == 1
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = run([*TORCHRUN, "batch", batch, "--skip-existing"])
    assert r.returncode == 1, r.stderr[-3000:]  # the bad job fails again
    assert r.stderr.count("skipped: ") == 4 and r.stderr.count("failed: ") == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.slow
def test_torchrun_frames_equal_a_single_process_run(torchrun, plain):
    _, out, r = torchrun
    assert r.returncode == 1
    ref, got = sidecars(plain), sidecars(out)
    assert sorted(ref) == sorted(got)
    for key in ref:
        assert Path(ref[key]["output"]).name == Path(got[key]["output"]).name  # names do not depend on world size
        assert np.array_equal(frames(ref[key]), frames(got[key])), key
        assert "distributed" not in ref[key]


@pytest.mark.slow
def test_nproc_behaves_like_torchrun(tmp_path, plain):
    out = tmp_path / "out"
    r = run([VGEN, "batch", write_batch(tmp_path, out), "--nproc", "2"])
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stdout.count("vgen batch") == 1 and r.stderr.count("error: 1 of 5 jobs failed") == 1
    assert "ChildFailedError" not in r.stderr  # vgen reports, not the launcher's dump
    ref, got = sidecars(plain), sidecars(out)
    assert sorted(ref) == sorted(got)
    for prompt, seed, rank in GOOD:
        assert got[(prompt, seed)]["distributed"] == {"rank": rank, "world_size": 2}
        assert np.array_equal(frames(ref[(prompt, seed)]), frames(got[(prompt, seed)]))


def _pid_of_rank(rank: int, marker: str):
    """The worker process with RANK=rank whose command line names `marker` (Linux /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


DEAD_BATCH = """
defaults:
  model: {id: tiny-random-unet3d}
  sampler: {steps: 2}
  video: {frames: 3}
  output: {dir: OUT}
jobs:
  - a red circle moving left
  - {prompt: a blue square moving up, sampler: {steps: 900}, video: {frames: 8}}
  - a dog
  - a cat
"""


def kill_rank1_after_two_outputs(cmd: list, batch: Path, out: Path) -> tuple[int, str, str]:
    """Launch `cmd`, wait until two sidecars are written while the other rank is still in its 900-step job,
    SIGKILL rank 1, and return (exit code, stdout, stderr) of the launch."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env1())
    deadline = time.time() + 180
    while time.time() < deadline and len(list(out.glob("*.json"))) < 2:
        time.sleep(0.5)
    pid = _pid_of_rank(1, str(batch))
    assert pid is not None and proc.poll() is None, "a rank should still be in its 900-step job"
    os.kill(pid, 9)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_dead_rank_is_reported_and_the_others_outputs_kept(tmp_path):
    """Rank 1 is killed during its long job: rank 0's finished videos stay, the launcher's parent reports rank 1."""
    out = tmp_path / "out"
    batch = write_batch(tmp_path, out, DEAD_BATCH)
    returncode, stdout, stderr = kill_rank1_after_two_outputs([VGEN, "batch", str(batch), "--nproc", "2"], batch, out)
    assert returncode == 1, stderr[-3000:]
    written = sidecars(out)
    assert sorted(written) == [("a dog", 0), ("a red circle moving left", 0)]
    assert all(side["distributed"]["rank"] == 0 for side in written.values())
    assert not [p for p in out.iterdir() if "partial" in p.name]
    assert "rank 1 stopped (killed by SIGKILL)" in stderr and "error: 2 of 4 jobs failed" in stderr
    assert stdout.count("vgen batch") == 1 and stdout.count("not finished on rank 1") == 2


SLOW_RANK0_BATCH = """
defaults:
  model: {id: tiny-random-unet3d}
  sampler: {steps: 2}
  video: {frames: 3}
  output: {dir: OUT}
jobs:
  - {prompt: a red circle moving left, sampler: {steps: 900}, video: {frames: 8}}
  - a blue square moving up
  - a dog
  - a cat
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_under_torchrun_rank0_stopped_mid_job_still_reports(tmp_path):
    """Rank 1 finishes its jobs and is killed; torchrun then sends rank 0 SIGTERM in the middle of its long job:
    rank 0 unwinds (no partial file) and prints the summary from the output folder."""
    out = tmp_path / "out"
    batch = write_batch(tmp_path, out, SLOW_RANK0_BATCH)
    returncode, stdout, stderr = kill_rank1_after_two_outputs([*TORCHRUN, "batch", str(batch)], batch, out)
    assert returncode == 1, stderr[-3000:]
    written = sidecars(out)
    assert sorted(written) == [("a blue square moving up", 0), ("a cat", 0)]
    assert all(side["distributed"]["rank"] == 1 for side in written.values())
    assert not [p for p in out.iterdir() if "partial" in p.name]
    assert "rank 0 was stopped by the launcher (SIGTERM)" in stderr and "error: 2 of 4 jobs failed" in stderr
    assert stdout.count("vgen batch") == 1 and stdout.count("not finished on rank 0") == 2
