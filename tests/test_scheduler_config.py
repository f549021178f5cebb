"""Scheduler settings: the motion family's AnimateDiff schedule against AnimateDiff's own recipe and a closed form,
a saved folder that chose its own schedule keeping it, and sampler.scheduler_config (applied, recorded, errors)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import vgen_in_process as vgen

PROMPT = "a red circle moving left"


def animatediff_reference():
    """AnimateDiff's inference scheduler: configs/inference/inference-v*.yaml of github guoyww/AnimateDiff, passed to
    DDIMScheduler(**noise_scheduler_kwargs); diffusers' AnimateDiff slow test builds the same one."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False)


def linear_alphas_cumprod(start=0.00085, end=0.012, n=1000):
    return np.cumprod(1.0 - np.linspace(start, end, n, dtype=np.float64))


def sd_base_scheduler():
    """Stable Diffusion 1.5's scheduler_config.json (what an AnimateDiff model on that base inherits)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
                         skip_prk_steps=True, steps_offset=1)


def assert_same_ddim(ours, theirs, steps=25):
    from diffusers import DDIMScheduler

    assert type(ours) is DDIMScheduler
    keys = [k for k in DDIMScheduler._get_init_keys(DDIMScheduler) if k != "self"]
    assert {k: ours.config[k] for k in keys} == {k: theirs.config[k] for k in keys}
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    assert float(ours.final_alpha_cumprod) == float(theirs.final_alpha_cumprod)


def test_motion_models_sample_with_animatediffs_schedule(tiny):
    from vgen.core.schedulers import make_scheduler, prepare_scheduler

    c = tiny("tiny-random-motion")  # built with SD 1.5's schedule (scaled_linear, set_alpha_to_one False)
    assert c.scheduler_source == "animatediff"
    for name in ("ddim", "model"):
        assert_same_ddim(make_scheduler(name, c.scheduler), animatediff_reference())
    sched = prepare_scheduler("ddim", c.scheduler, 25, "cpu")
    assert [int(t) for t in sched.timesteps[:2]] == [961, 921] and int(sched.timesteps[-1]) == 1
    # closed form: linear betas from 0.00085 to 0.012; ᾱ(961) = 0.002478 (SD's scaled_linear gives 0.007282)
    np.testing.assert_allclose(sched.alphas_cumprod.double().numpy(), linear_alphas_cumprod(), rtol=1e-5)
    assert float(sched.alphas_cumprod[961]) == pytest.approx(0.002478, abs=5e-7)
    assert float(sched.final_alpha_cumprod) == 1.0  # set_alpha_to_one True: the last DDIM step lands on x0
    # a DDIM step matches the reference's on the same inputs
    ref = animatediff_reference()
    ref.set_timesteps(25)
    x, eps = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0)), torch.ones(4, 2, 4, 4)
    for t in (961, 41, 1):
        assert torch.equal(sched.step(eps, t, x).prev_sample, ref.step(eps, t, x).prev_sample)


def test_other_families_keep_their_own_schedule(tiny):
    for name in ("tiny-random-unet3d", "tiny-random-unet2d"):
        c = tiny(name)
        assert c.scheduler_source == "model" and c.scheduler.config.beta_schedule == "scaled_linear"


def test_saved_motion_folder_keeps_a_schedule_it_chose_and_gets_animatediffs_otherwise(tiny, tmp_path):
    """A folder whose scheduler is only the SD base's gets AnimateDiff's; one saved with another schedule (here
    diffusers' documented AnimateDiff variant: linspace spacing over the base's config) keeps its own."""
    from diffusers import DDIMScheduler

    from vgen.config import ModelConfig
    from vgen.models import load_components, save_components

    c = tiny("tiny-random-motion")
    save_components(replace(c, scheduler=sd_base_scheduler()), tmp_path / "base")
    loaded = load_components(ModelConfig(id=str(tmp_path / "base")), "cpu", "float32")
    assert loaded.scheduler_source == "animatediff"
    assert_same_ddim(loaded.scheduler, animatediff_reference())

    chosen = DDIMScheduler.from_config(sd_base_scheduler().config, clip_sample=False, timestep_spacing="linspace",
                                       beta_schedule="linear", steps_offset=1)
    save_components(replace(c, scheduler=chosen), tmp_path / "chosen")
    loaded = load_components(ModelConfig(id=str(tmp_path / "chosen")), "cpu", "float32")
    assert loaded.scheduler_source == "model"
    assert loaded.scheduler.config.set_alpha_to_one is False and loaded.scheduler.config.timestep_spacing == "linspace"


def test_scheduler_config_is_set_over_the_models_schedule(tiny):
    from vgen.core.schedulers import make_scheduler, with_scheduler_config

    c = tiny("tiny-random-unet3d")
    sched = with_scheduler_config(c.scheduler, "ddim", {"beta_schedule": "linear", "set_alpha_to_one": True})
    assert sched.config.steps_offset == c.scheduler.config.steps_offset  # keys not given stay the model's
    np.testing.assert_allclose(sched.alphas_cumprod.double().numpy(), linear_alphas_cumprod(), rtol=1e-5)
    assert float(make_scheduler("ddim", sched).final_alpha_cumprod) == 1.0
    assert c.scheduler.config.beta_schedule == "scaled_linear"  # the model's own is not changed
    # a key of the named class that the model's class lacks reaches the named scheduler
    dpm = make_scheduler("dpm++", with_scheduler_config(c.scheduler, "dpm++", {"lower_order_final": False}))
    assert dpm.config.lower_order_final is False and dpm.config.algorithm_type == "dpmsolver++"


def test_scheduler_config_runs_and_is_recorded_in_the_sidecar(tmp_path):
    r = vgen("generate", PROMPT, "--model", "tiny-random-unet3d", "--steps", "2", "--frames", "2", "--out", tmp_path,
             "sampler.scheduler_config.beta_schedule=linear", "sampler.scheduler_config.timestep_spacing=trailing")
    assert r.returncode == 0, r.stderr
    side = json.loads(Path(r.stdout.splitlines()[0]).with_suffix(".json").read_text())
    assert side["config"]["sampler"]["scheduler_config"] == {"beta_schedule": "linear", "timestep_spacing": "trailing"}
    assert side["config_sources"]["sampler.scheduler_config"] == "override"
    used = side["scheduler"]
    assert used["class"] == "DDIMScheduler" and used["base"] == "model"
    assert used["config"]["beta_schedule"] == "linear" and used["config"]["timestep_spacing"] == "trailing"
    assert used["config"]["beta_start"] == 0.00085  # the model's own, untouched


@pytest.mark.parametrize("args, message", [
    (["sampler.scheduler_config.beta_shedule=linear"],
     "unknown key 'sampler.scheduler_config.beta_shedule' for DDIMScheduler (sampler.scheduler=ddim); valid keys: beta_end, "),
    (["--scheduler", "euler", "sampler.scheduler_config.clip_sample=false"], "for EulerDiscreteScheduler"),
    (["--scheduler", "model", "sampler.scheduler_config.solver_order=2"], "for DDIMScheduler (sampler.scheduler=model)"),
    (["sampler.scheduler_config.beta_end=.nan"], "config key 'sampler.scheduler_config.beta_end' must be a finite number, got nan"),
    (["sampler.scheduler_config.beta_end=.inf"], "must be a finite number, got inf"),
    (["sampler.scheduler_config.trained_betas=[0.1,.nan]"], "'sampler.scheduler_config.trained_betas' must hold finite numbers"),
    (["sampler.scheduler_config.steps_offset.x=1"],
     "'sampler.scheduler_config.steps_offset' is {'x': 1}; a scheduler setting is a finite number"),
    (["sampler.scheduler_config.trained_betas=[0.1,[0.2]]"], "'sampler.scheduler_config.trained_betas' is [0.1, [0.2]]"),
    (["--scheduler", "sde-dpm++", "sampler.scheduler_config.algorithm_type=dpmsolver++"],
     "contradicts sampler.scheduler=sde-dpm++, which sets algorithm_type=sde-dpmsolver++"),
])
def test_scheduler_config_mistakes_are_one_line_errors(tmp_path, args, message):
    r = vgen("generate", PROMPT, "--model", "tiny-random-unet3d", "--steps", "2", "--frames", "2", "--out", tmp_path, *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not list(tmp_path.glob("*"))


def test_config_show_writes_scheduler_config_so_it_reads_back(tmp_path):
    from vgen.config import build_job

    r = vgen("config", "show", "--model", "tiny-random-unet3d", "sampler.scheduler_config.beta_schedule=linear")
    assert r.returncode == 0, r.stderr
    assert "scheduler_config: {beta_schedule: linear}" in r.stdout
    (tmp_path / "job.yaml").write_text(r.stdout)
    job = build_job(str(tmp_path / "job.yaml"), flags={"prompt": PROMPT})
    assert job.sampler.scheduler_config == {"beta_schedule": "linear"}


def test_i4vgen_paper_preset_names_animatediffs_schedule():
    """The preset says what the public I4VGen code builds: AnimateDiff's inference-v2.yaml betas in a DDIMScheduler,
    whose pipeline then forces steps_offset 1 and clip_sample False (set_alpha_to_one stays DDIM's default True)."""
    from pathlib import Path

    from vgen.config import load_yaml
    from vgen.family_schedules import ANIMATEDIFF_SCHEDULE

    preset = load_yaml(Path(__file__).parents[1] / "configs" / "i4vgen-paper.yaml")
    assert preset.sampler.scheduler == "ddim"
    named = dict(preset.sampler.scheduler_config)
    ref = animatediff_reference()
    assert named == {k: ref.config[k] for k in named} and set(named) == set(ANIMATEDIFF_SCHEDULE)


def test_a_sidecar_from_before_scheduler_config_has_the_same_settings_when_it_is_empty():
    """--skip-existing compares a sidecar's config with the job's: a sidecar written before the key existed lacks it."""
    from vgen.config import build_job, to_dict
    from vgen.jobs import settings_diff

    job = build_job(flags={"prompt": PROMPT, "model.id": "tiny-random-unet3d"})
    before = to_dict(job, only_method=True)
    del before["sampler"]["scheduler_config"]
    assert settings_diff(before, job) == []
    changed = build_job(flags={"prompt": PROMPT, "model.id": "tiny-random-unet3d"},
                        overrides=["sampler.scheduler_config.beta_schedule=linear"])
    assert settings_diff(before, changed) == ["sampler.scheduler_config.beta_schedule (unset) -> linear"]
