"""Issue 30 item 1: an output's file set (mp4, sidecar, GIF, frames) is on disk whole or not at all.

A real SIGINT or SIGTERM is raised (signal.raise_signal, through the handlers `vgen` installs) at each stage of a
run that replaces an existing set: while the weights are hashed, while sampling, inside the mp4 writer (the
streamed StreamingT2V writer too), while the frames and the sidecar are written, and in the middle of placing the
files. Afterwards the folder holds the old set or the new one, never a mix, and the sidecar beside the mp4 names
that mp4's sha256 (checked with hashlib, not with vgen's helper).
"""

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from conftest import vgen_in_process

TINY = ["--model", "tiny-random-unet3d", "--steps", "1", "--frames", "2"]


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal: a shell that starts pytest in the background starts it
    with SIGINT ignored, which Python then keeps (the real-process test in test_cli.py resets it the same way)."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state(folder: Path, stem: str) -> str:
    """'old' or 'new' (by the sidecar's eta: 0.0 old, 0.5 new) after checking the set is whole and consistent."""
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if "staging" in n or "partial" in n or "replaced" in n], names
    mp4, side = folder / f"{stem}.mp4", folder / f"{stem}.json"
    assert mp4.is_file() and side.is_file(), names
    data = json.loads(side.read_text())
    assert sha(mp4).startswith(data["output_sha256"])  # the sidecar describes the video beside it
    eta = data["config"]["sampler"]["eta"]
    if eta == 0.0:  # the old set: mp4 + GIF + sidecar
        assert names == sorted([f"{stem}.mp4", f"{stem}.gif", f"{stem}.json"]), names
        return "old"
    assert eta == 0.5  # the new set: mp4 + frames + sidecar, the old GIF gone
    assert names == sorted([f"{stem}.mp4", f"{stem}_frames", f"{stem}.json"]), names
    assert len(list((folder / f"{stem}_frames").glob("*.png"))) == data["video"]["frames"]
    return "new"


class _OsWithReplaceHook:
    """vgen.fileset's `os`, whose replace raises `sig` before its `at`-th call (the 1st sets the old sidecar aside)."""

    def __init__(self, sig: int, at: int):
        self.sig, self.at, self.calls = sig, at, 0

    def replace(self, src, dst):
        self.calls += 1
        if self.calls == self.at:
            signal.raise_signal(self.sig)
        return os.replace(src, dst)

    def __getattr__(self, name):
        return getattr(os, name)


def _raise_then(sig, original):
    def hooked(*args, **kwargs):
        signal.raise_signal(sig)
        return original(*args, **kwargs)

    return hooked


def _after(sig, original):
    def hooked(*args, **kwargs):
        out = original(*args, **kwargs)
        signal.raise_signal(sig)
        return out

    return hooked


def hook(monkeypatch, stage: str, sig: int) -> None:
    import vgen.fingerprint
    import vgen.fileset
    import vgen.jobs
    import vgen.methods.vanilla.runner
    import vgen.video

    if stage == "weight hash":
        monkeypatch.setattr(vgen.fingerprint, "file_hash", _raise_then(sig, vgen.fingerprint.file_hash))
    elif stage == "sampling":
        monkeypatch.setattr(vgen.methods.vanilla.runner, "denoise", _raise_then(sig, vgen.methods.vanilla.runner.denoise))
    elif stage == "mp4 writer":
        monkeypatch.setattr(vgen.video.Mp4Writer, "write", _after(sig, vgen.video.Mp4Writer.write))
    elif stage == "frames":
        monkeypatch.setattr(vgen.jobs, "write_pngs", _after(sig, vgen.jobs.write_pngs))
    elif stage == "sidecar":
        monkeypatch.setattr(vgen.jobs, "write_json", _after(sig, vgen.jobs.write_json))
    elif stage.startswith("placing"):  # before the k-th rename of the commit
        monkeypatch.setattr(vgen.fileset, "os", _OsWithReplaceHook(sig, int(stage.split()[-1])))
    else:
        raise ValueError(stage)


STAGES = ["weight hash", "sampling", "mp4 writer", "frames", "sidecar", "placing 2", "placing 3", "placing 4", "placing 5"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", STAGES)
def test_an_interrupt_at_any_stage_leaves_the_old_set_or_the_new(tmp_path, monkeypatch, stage, sig):
    from vgen import fingerprint

    monkeypatch.setattr(fingerprint, "_memory", {})
    env = {"VGEN_CACHE_DIR": str(tmp_path / "cache")}
    model = ["--model", "toy"] if stage == "weight hash" else ["--model", "tiny-random-unet3d"]
    args = ["generate", "a red circle", *model, "--steps", "1", "--frames", "2", "--out", tmp_path / "out" / "clip.mp4"]
    first = vgen_in_process(*args, "--gif", env=env)
    assert first.returncode == 0, first.stderr
    assert state(tmp_path / "out", "clip") == "old"

    monkeypatch.setattr(fingerprint, "_memory", {})  # hashed again, as in a new process
    with monkeypatch.context() as patch:
        hook(patch, stage, sig)
        r = vgen_in_process(*args, "--overwrite", "--save-frames", "sampler.eta=0.5", env=env)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("interrupted")
    got = state(tmp_path / "out", "clip")
    # an interrupt before the files are placed keeps the old set; one while placing them is held until the new
    # set is complete
    assert got == ("new" if stage.startswith("placing") else "old")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_inside_the_streamed_writer_keeps_the_old_set(tmp_path, monkeypatch, sig):
    """StreamingT2V streams each chunk into its mp4: a signal after the first chunk is written keeps the old set."""
    import vgen.video

    args = ["generate", "a red circle", "--method", "streaming", *TINY[:4], "--frames", "20",
            "streaming.mode=training-free", "--out", tmp_path / "clip.mp4"]
    assert vgen_in_process(*args, "--gif", "sampler.eta=0.0").returncode == 0
    assert state(tmp_path, "clip") == "old"
    writes = []

    def second_chunk(self, frames):  # the signal arrives after the first chunk went into the (staged) mp4
        writes.append(len(frames))
        if len(writes) == 2:
            signal.raise_signal(sig)
        return original(self, frames)

    original = vgen.video.Mp4Writer.write
    monkeypatch.setattr(vgen.video.Mp4Writer, "write", second_chunk)
    r = vgen_in_process(*args, "--overwrite", "--save-frames", "sampler.eta=0.5")
    assert r.returncode == 130 and len(writes) == 2, r.stderr
    assert state(tmp_path, "clip") == "old"


def test_skip_existing_does_not_trust_an_mp4_its_sidecar_does_not_describe(tmp_path):
    """A set left mixed by a process killed outright (SIGKILL mid-commit): the sidecar's mp4 hash tells."""
    out = tmp_path / "clip.mp4"
    assert vgen_in_process("generate", "a cat", *TINY, "--out", out).returncode == 0
    other = tmp_path / "other.mp4"
    assert vgen_in_process("generate", "a cat", *TINY, "--seed", "9", "--out", other).returncode == 0
    os.replace(other, out)  # another video beside the first one's sidecar
    r = vgen_in_process("generate", "a cat", *TINY, "--out", out, "--skip-existing")
    assert r.returncode == 0 and "clip.mp4 is not the video clip.json describes" in r.stderr
    assert sha(out).startswith(json.loads(out.with_suffix(".json").read_text())["output_sha256"])
