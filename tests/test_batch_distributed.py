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

# 5 jobs, the 3rd fails (its model folder is missing); nothing is done yet, so jobs 1..5 go to ranks 0,1,0,1,0
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


def _jobs(out: Path, n: int):
    keys = {"model.id": "tiny-random-unet3d", "sampler.steps": 1, "video.frames": 2, "output.dir": str(out)}
    return [make_job(f"job number {i}", **keys) for i in range(n)]


def test_a_resume_after_a_lost_rank_spreads_the_unfinished_jobs_over_every_rank(tmp_path):
    """Issue 30 item 5: rank 0 of a 2-rank run finished its jobs (1, 3, 5), rank 1 was lost before any: the resume
    hands jobs 2, 4, 6 out over both ranks, not all three to rank 1 (as index mod world size did)."""
    from vgen.batch import plan_ranks
    from vgen.jobs import ModelCache, run_job

    jobs = _jobs(tmp_path, 6)
    models = ModelCache()
    for i in (0, 2, 4):
        run_job(jobs[i], models)
    assert plan_ranks(jobs, 2, skip_existing=True) == {1: 0, 3: 1, 5: 0}
    assert plan_ranks(jobs, 3, skip_existing=True) == {1: 0, 3: 1, 5: 2}
    assert plan_ranks(jobs, 2, skip_existing=False) == {i: i % 2 for i in range(6)}  # no resume: everything runs
    jobs.append(jobs[1])  # a 7th job writing the 2nd one's file: neither is handed out (both fail, saying so)
    assert plan_ranks(jobs, 2, skip_existing=True) == {3: 0, 5: 1}


def test_only_rank_0_reads_the_batch_and_every_rank_runs_its_plan(tmp_path, monkeypatch):
    """The other ranks never read the batch file: what rank 0 read and handed out arrives by broadcast, so a file
    that differs on another node (or is missing there) cannot shift jobs between ranks."""
    from vgen import distributed
    from vgen.batch import BatchItem, share_plan
    from vgen.distributed import World

    jobs = _jobs(tmp_path, 3)
    sent = {}
    monkeypatch.setattr(distributed, "init", lambda world: None)

    def broadcast(obj, world):
        if world.is_main:
            sent["plan"] = obj
        return sent["plan"]

    monkeypatch.setattr(distributed, "broadcast", broadcast)
    items = [BatchItem(f"job {i + 1}", job) for i, job in enumerate(jobs)]
    plan0 = share_plan(lambda: items, False, World(0, 2, 0))

    def elsewhere():
        raise AssertionError("rank 1 read its own batch file")

    plan1 = share_plan(elsewhere, False, World(1, 2, 1))
    assert plan1 is plan0 and [i.label for i in plan1.items] == ["job 1", "job 2", "job 3"]
    assert (plan1.mine(0), plan1.mine(1)) == ([0, 2], [1])
    from vgen.errors import ConfigError

    sent.clear()
    with pytest.raises(ConfigError, match="no jobs"):  # a batch-file error on rank 0 stops every rank
        share_plan(lambda: (_ for _ in ()).throw(ConfigError("batch file 'b.yaml' has no jobs")), False, World(0, 2, 0))
    with pytest.raises(ConfigError, match="no jobs"):
        share_plan(elsewhere, False, World(1, 2, 1))


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
def test_torchrun_resume_after_a_lost_rank_uses_every_rank(tmp_path):
    """Jobs 1, 3, 5, 7 (rank 0's share) are done, as if rank 1 was lost: the resume spreads 2, 4, 6, 8 over both ranks."""
    out = tmp_path / "out"
    jobs = "".join(f"  - job number {i}\n" for i in range(8))
    batch = write_batch(tmp_path, out, f"defaults: {{model: {{id: tiny-random-unet3d}}, sampler: {{steps: 1}}, "
                                       f"video: {{frames: 2}}, output: {{dir: OUT}}}}\njobs:\n{jobs}")
    rank0 = write_batch(tmp_path / "rank0", out, f"defaults: {{model: {{id: tiny-random-unet3d}}, sampler: {{steps: 1}}, "
                        f"video: {{frames: 2}}, output: {{dir: OUT}}}}\njobs:\n"
                        + "".join(f"  - job number {i}\n" for i in range(0, 8, 2)))
    assert run([VGEN, "batch", rank0]).returncode == 0
    r = run([*TORCHRUN, "batch", batch, "--skip-existing"])
    assert r.returncode == 0, r.stderr[-3000:]
    written = {prompt: side for (prompt, _), side in sidecars(out).items()}
    assert len(written) == 8 and r.stderr.count("skipped: ") == 4 and r.stderr.count("done: ") == 4
    ranks = sorted(written[f"job number {i}"]["distributed"]["rank"] for i in range(1, 8, 2))
    assert ranks == [0, 0, 1, 1]


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
