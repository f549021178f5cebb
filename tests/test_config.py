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
        ("sampler.stepz=3", "unknown config key 'sampler.stepz' (in overrides); valid keys here: steps, guidance, scheduler, eta, guidance_2, scheduler_config"),
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
    import re

    job = build_job(flags={"prompt": "A Red Circle, moving LEFT!", "seed": 4})
    assert re.fullmatch(r"outputs/a-red-circle-moving-left-vanilla-4-[0-9a-f]{8}\.mp4", str(output_path(job)))
    assert re.fullmatch(r"outputs/a-cat-vico-0-[0-9a-f]{8}\.mp4",
                        str(output_path(build_job(flags={"prompt": "a cat", "method": "vico"}))))
    assert slugify("!!!") == "video"
    # the same job names the same file (in any process); where it goes and whether it may replace do not count
    again = build_job(flags={"prompt": "A Red Circle, moving LEFT!", "seed": 4, "output.overwrite": True,
                             "output.dir": "elsewhere"})
    assert output_path(again).name == output_path(job).name
    assert build_job(flags={"prompt": "x", "output.name": "mine"}).output.name == "mine"
    assert output_path(build_job(flags={"prompt": "x", "output.name": "mine"})).name == "mine.mp4"
    assert "steps: 20" in to_yaml(job)  # the toy's own setting
    assert "steps: 25" in to_yaml(build_job(flags={"prompt": "x"}, presets=False))  # the schema's


def test_names_never_collide_on_long_prompts_models_or_settings():
    """Issue 30 item 2: the slug is cut at 60 characters; the hash of what makes the output is not."""
    long = "a red circle moving left and a blue square moving up and a green triangle "
    a, b = long + "moving down", long + "staying still"
    assert slugify(a) == slugify(b)  # the readable part is the same ...
    names = {output_path(build_job(flags=flags)).name for flags in [
        {"prompt": a}, {"prompt": b},  # ... two prompts sharing 60 characters
        {"prompt": a, "model.id": "tiny-random-unet3d"},  # one prompt on two models
        {"prompt": a, "negative": "blurry"}, {"prompt": a, "sampler.eta": 0.5}]}
    assert len(names) == 5 and all(n.startswith(slugify(a)) for n in names)


# ---- per-method defaults, model-carried settings, sources (issue 18) ----

from vgen.config import config_sources, load_config_file  # noqa: E402


def _model_folder(tmp_path, settings: str):
    """A local model folder that carries only settings: resolving a config reads no weights."""
    folder = tmp_path / "mymodel"
    folder.mkdir()
    (folder / "vgen.yaml").write_text(settings)
    return folder


def test_precedence_schema_method_model_config_flags_overrides(tmp_path):
    folder = _model_folder(tmp_path, "vico:\n  sampler: {steps: 30, guidance: 4.0, scheduler: euler}\n"
                                     "  video: {frames: 6, fps: 12}\n  vico: {lr: 0.02, sigma: 0.3}\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sampler: {guidance: 3.0}\nvideo: {frames: 5, fps: 10}\nvico: {sigma: 0.2}\n")
    job = build_job(str(cfg), {"prompt": "x", "method": "vico", "model.id": str(folder), "video.frames": 7},
                    ["video.fps=11"])
    # schema 25 < vico's 50 (method) < model 30; model 4 < config 3; config 5 < flag 7; config 10 < override 11
    assert (job.sampler.steps, job.sampler.guidance, job.video.frames, job.video.fps) == (30, 3.0, 7, 11)
    assert (job.sampler.scheduler, job.vico.lr, job.vico.sigma, job.sampler.eta) == ("euler", 0.02, 0.2, 0.0)
    src = config_sources(job)
    model = f"model:{folder}"
    assert src["sampler.steps"] == model and src["sampler.scheduler"] == model and src["vico.lr"] == model
    assert src["sampler.guidance"] == str(cfg) and src["vico.sigma"] == str(cfg)
    assert src["video.frames"] == "flag" and src["video.fps"] == "override" and src["sampler.eta"] == "default"
    assert "zs2.lam" not in src  # only the method's own section


def test_method_defaults_without_model_settings():
    # a hub id carries no settings: the method's own (the paper's) defaults apply, nothing is fetched
    job = build_job(flags={"prompt": "x", "method": "streaming", "model.id": "ali-vilab/text-to-video-ms-1.7b"})
    assert (job.sampler.steps, job.sampler.eta, job.sampler.scheduler) == (50, 1.0, "auto")  # auto: DDIM on a UNet (the paper), the model's own on a DiT
    assert config_sources(job)["sampler.eta"] == "method"
    job = build_job(flags={"prompt": "x", "method": "vico", "model.id": "cerspense/zeroscope_v2_576w"})
    assert (job.sampler.steps, job.sampler.guidance, job.sampler.scheduler, job.vico.lr) == (50, 12.0, "sde-dpm++", 1e-4)


def test_the_toy_carries_settings_per_method():
    job = build_job(flags={"prompt": "x", "method": "zs2"})
    assert job.model.id == "toy-t2i" and config_sources(job)["model.id"] == "model:toy"
    assert (job.sampler.steps, job.sampler.guidance, job.video.frames) == (20, 5.0, 8)
    assert config_sources(job)["sampler.steps"] == "model:toy-t2i"  # the sibling's own settings follow
    job = build_job(flags={"prompt": "x", "method": "vico"})
    assert (job.vico.lr, job.sampler.steps, job.sampler.guidance, job.sampler.scheduler) == (1e-2, 20, 5.0, "ddim")
    job = build_job(flags={"prompt": "x", "method": "streaming"})
    assert job.video.frames == 64 and job.video.frames > job.streaming.chunk and job.sampler.eta == 1.0
    # naming the model that redirects changes nothing (issue 30 item 7) ...
    named = build_job(flags={"prompt": "x", "method": "zs2", "model.id": "toy"})
    alone = build_job(flags={"prompt": "x", "method": "zs2"})
    assert named == alone and config_sources(named) == config_sources(alone)
    # ... naming another model still wins
    assert build_job(flags={"prompt": "x", "method": "zs2", "model.id": "tiny-random-unet2d"}).model.id == "tiny-random-unet2d"


def test_bad_model_settings_name_the_file(tmp_path):
    folder = _model_folder(tmp_path, "vanilla:\n  sampler: {stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'sampler.stepz' \(in .*vgen.yaml \[vanilla\]\)"):
        build_job(flags={"prompt": "x", "model.id": str(folder)})


@pytest.mark.parametrize("settings,key", [
    ("vanilla:\n  output: {overwrite: true}\n", "vanilla.output.overwrite"),
    ("vanilla:\n  output: {dir: /tmp/elsewhere}\n", "vanilla.output.dir"),
    ("zs2:\n  runtime: {device: cpu}\n", "zs2.runtime.device"),
    ("vico:\n  zs2: {lam: 0.2}\n", "vico.zs2.lam"),  # another method's section
    ("zs2:\n  model: {id: toy-t2i, revision: main}\n", "zs2.model.revision"),
    ("output:\n  dir: /tmp/elsewhere\n", "output"),  # a section that is no method
])
def test_a_model_vgen_yaml_sets_only_what_suits_the_model(tmp_path, settings, key):
    """Issue 30 item 3: a downloaded model folder cannot redirect or overwrite a user's files."""
    folder = _model_folder(tmp_path, settings)
    with pytest.raises(ConfigError) as err:
        build_job(flags={"prompt": "x", "model.id": str(folder), "method": "vanilla"})
    message = str(err.value)
    assert "\n" not in message and str(folder / "vgen.yaml") in message and f"'{key}'" in message


def test_a_model_vgen_yaml_may_set_sampling_its_method_and_a_sibling(tmp_path):
    folder = _model_folder(tmp_path, "vico:\n  sampler: {steps: 9}\n  video: {frames: 4}\n  vico: {lr: 0.5}\n"
                                     "zs2:\n  model: {id: tiny-random-unet2d}\n")
    job = build_job(flags={"prompt": "x", "model.id": str(folder), "method": "vico"})
    assert (job.sampler.steps, job.video.frames, job.vico.lr) == (9, 4, 0.5)
    assert build_job(flags={"prompt": "x", "model.id": str(folder), "method": "zs2"}).model.id == "tiny-random-unet2d"


def test_list_overrides_take_commas():
    job = build_job(flags={"prompt": "x", "method": "vico"}, overrides=["vico.words=cat,dog", "vico.tokens=2,5"])
    assert job.vico.words == ["cat", "dog"] and job.vico.tokens == [2, 5]
    assert build_job(flags={"prompt": "x", "method": "vico"}, overrides=["vico.words=[cat, dog]"]).vico.words == ["cat", "dog"]


def test_override_of_an_unused_method_section_is_an_error():
    with pytest.raises(ConfigError) as err:
        build_job(flags={"prompt": "x"}, overrides=["vico.lr=1e-2"], strict=True)
    assert "vico.lr" in str(err.value) and "method vanilla" in str(err.value) and "\n" not in str(err.value)
    assert build_job(flags={"prompt": "x", "method": "vico"}, overrides=["vico.lr=1e-2"], strict=True).vico.lr == 1e-2


def test_a_sidecar_loads_as_its_config(tmp_path):
    import json

    side = tmp_path / "run.json"
    side.write_text(json.dumps({"output": "o.mp4", "versions": {}, "command": ["vgen"], "config": {
        "prompt": "a red circle", "method": "zs2", "seed": 3, "model": {"id": "toy-t2i"},
        "sampler": {"steps": 7}, "output": {"dir": "elsewhere", "name": "old"}}}))
    cfg = load_config_file(side)
    assert "output" not in cfg or "dir" not in cfg.output  # the re-run names its own file
    job = build_job(str(side))
    assert (job.prompt, job.method, job.seed, job.sampler.steps, job.output.name) == ("a red circle", "zs2", 3, 7, None)


def test_non_finite_values_in_a_config_file_name_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: i4vgen\nsampler: {guidance: 5.0}\ni4vgen: {image_guidance: -.inf}\n")
    with pytest.raises(ConfigError, match=r"^config key 'i4vgen.image_guidance' must be a finite number, got -inf$"):
        build_job(str(cfg), {"prompt": "x"})


@pytest.mark.parametrize("override", ["video.frames=-1", "sampler.steps=0", "sampler.eta=-0.5"])
def test_range_checks_still_hold(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        build_job(flags={"prompt": "x"}, overrides=[override])


def test_range_checks_fail_on_nan_even_without_the_finite_check():
    # the comparisons themselves are NaN-safe (`not v >= low`): a check called directly still refuses NaN
    from vgen.config import I4VGenConfig, StreamingConfig, VicoConfig, ZS2Config
    from vgen.methods.vico.config import check as check_vico

    checks = {VicoConfig: check_vico}  # sections whose checks moved into their method's package

    for section, key in [(ZS2Config, "lam"), (ZS2Config, "momentum"), (VicoConfig, "tau"), (VicoConfig, "lr"),
                         (I4VGenConfig, "step_size"), (I4VGenConfig, "t_regen"), (StreamingConfig, "cam_scale")]:
        cfg = section()
        setattr(cfg, key, float("nan"))
        with pytest.raises(ConfigError, match=key):
            checks[section](cfg) if section in checks else cfg.check()
