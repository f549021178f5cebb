"""Shared fixtures: offline, quiet, tiny models built once per session."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("VGEN_PROGRESS", "0")

import pytest  # noqa: E402

VGEN = str(Path(sys.executable).parent / "vgen")


@pytest.fixture(scope="session")
def tiny():
    """Components of each tiny-random model, loaded once (tests must not modify them)."""
    from vgen.config import ModelConfig
    from vgen.models import load_components

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_components(ModelConfig(id=name), "cpu", "float32")
        return cache[name]

    return get


def make_job(prompt="a red circle moving left", **keys):
    """A JobConfig from dotted keys over the bare schema, e.g. make_job(**{"sampler.steps": 3}) (no method
    defaults or model settings: unit tests compare against references built from the schema's values)."""
    from vgen.config import build_job

    return build_job(flags={"prompt": prompt, **keys}, presets=False)


def run_vanilla(components, job):
    """Frames [F, H, W, 3] uint8 from the vanilla runner, without writing files."""
    import torch

    from vgen.core.sampler import resolve_size
    from vgen.jobs import RunContext
    from vgen.methods.vanilla.runner import run

    h, w = resolve_size(components, job.video.height, job.video.width)
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=h, width=w, output_stem=Path("unused"), progress=False)
    return run(job, components, ctx).frames


def vgen_in_process(*args, cwd=None, env=None, timeout=None):
    """`vgen ARGS...` through the console script's own main() in this process: the same exit code, stdout and
    stderr as the installed script, without a fresh interpreter that spends ~10 s importing torch and
    diffusers per call. Tests that are about the process itself (signals, torchrun, what --help imports)
    keep a real subprocess. `timeout` is accepted for drop-in use and ignored."""
    import contextlib
    import io
    import subprocess

    from vgen.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["vgen", *argv], code, out.getvalue(), err.getvalue())
