"""Config resolution order, one-line errors naming the key and the choices."""

import pytest

from vgen.config import build_job, output_path, slugify, to_yaml
from vgen.errors import ConfigError


def test_layers_override_in_order(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sampler: {steps: 11, guidance: 3.0}\nvideo: {frames: 5}\n")
    job = build_job(str(cfg), {"prompt": "x", "video.frames": 6}, ["sampler.steps=12"])
    assert (job.sampler.steps, job.sampler.guidance, job.video.frames) == (12, 3.0, 6)
    assert job.sampler.scheduler == "ddim"  # untouched default


@pytest.mark.parametrize(
    "override,expected",
    [
        ("sampler.stepz=3", "unknown config key 'sampler.stepz' (in overrides); valid keys here: steps, guidance, scheduler, eta"),
        ("nope=1", "unknown config key 'nope'"),
        ("sampler.steps=abc", "bad value for config key 'sampler.steps'"),
        ("sampler.scheduler=fancy", "config key 'sampler.scheduler' is 'fancy'; choose one of: ddim, dpm++"),
        ("runtime.dtype=float8", "choose one of: auto, float32, float16, bfloat16"),
        ("runtime.device=tpu", "config key 'runtime.device' is 'tpu'"),
        ("video.frames=0", "config key 'video.frames' must be >= 1"),
        ("sampler.guidance=-1", "sampler.guidance"),
        ("seed=-1", "config key 'seed'"),
        ("vico.checkpoint_levels=0", "config key 'vico.checkpoint_levels' must be >= 1"),
        ("method=magic", "unknown method 'magic'; choose one of: vanilla"),
        ("steps", "is not of the form key=value"),
    ],
)
def test_errors_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        build_job(flags={"prompt": "a cat"}, overrides=[override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_job(str(tmp_path / "missing.yaml"), {"prompt": "x"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampler: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_job(str(bad), {"prompt": "x"})
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("sampler: {stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'sampler.stepz' \(in .*unknown.yaml\)"):
        build_job(str(unknown), {"prompt": "x"})


def test_shipped_configs_resolve():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")):
        job = build_job(str(path), {"prompt": "a red circle"})
        assert job.method == path.stem.split("-")[0]  # <method>.yaml or <method>-<variant>.yaml


def test_output_naming_and_yaml():
    job = build_job(flags={"prompt": "A Red Circle, moving LEFT!", "seed": 4})
    assert str(output_path(job)) == "outputs/a-red-circle-moving-left-4.mp4"
    assert slugify("!!!") == "video"
    assert "steps: 25" in to_yaml(job)
