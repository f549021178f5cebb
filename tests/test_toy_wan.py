"""The Wan-architecture toy trainer (vgen/toyworld/train_wan.py): checkpoints, the flow objective's schedule, the
text path, and the exported folder against diffusers' WanPipeline. Tiny sizes, a few training steps."""

import json

import numpy as np
import pytest
import torch

from conftest import make_job, run_vanilla

PROMPT = "a red circle moving left"
TINY = dict(size=32, frames=5, vae_frames=5, vae_base=4, vae_crop=16, batch=2, dit_dim=32, dit_layers=1,
            calib_clips=2, warm=2, fresh=1, cache=4, progress=False, save_every=1)


def _cfg(tmp, stage, steps, **extra):
    from vgen.toyworld.train_wan import WanTrainConfig

    return WanTrainConfig(stage=stage, out=str(tmp / stage), steps=steps, **(TINY | extra))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A toy-wan folder from 1 VAE step and 2 transformer steps (tiny sizes): trainer -> export, as shipped."""
    from vgen.toyworld.train_wan import export_wan, train_wan

    tmp = tmp_path_factory.mktemp("toywan")
    train_wan(_cfg(tmp, "vae", 1))
    ckpt = train_wan(_cfg(tmp, "t2v", 2))
    return tmp, export_wan(ckpt, None, tmp / "assets")


def test_vae_resume_continues_the_uninterrupted_run(tmp_path):
    """2 steps straight and 1 step + resume + 1 step give the same weights (optimizer, step and RNGs restored)."""
    from vgen.toyworld.train_wan import train_wan

    straight = torch.load(train_wan(_cfg(tmp_path / "a", "vae", 2)), weights_only=False)
    train_wan(_cfg(tmp_path / "b", "vae", 1))
    resumed = torch.load(train_wan(_cfg(tmp_path / "b", "vae", 2, resume=True)), weights_only=False)
    assert resumed["step"] == straight["step"] == 2
    for key, value in straight["models"]["vae"].items():
        assert torch.equal(value, resumed["models"]["vae"][key]), key
    fresh = torch.load(tmp_path / "b" / "vae" / "last.pt", weights_only=False)
    assert len(fresh["latents_mean"]) == len(fresh["latents_std"]) == 16


def test_training_sigmas_are_the_unipc_flow_schedulers():
    """The sigma shift of training is the one UniPCMultistepScheduler(use_flow_sigmas, flow_shift) samples with."""
    from vgen.toyworld.train_wan import flow_scheduler, shifted_sigmas

    sched = flow_scheduler(3.0)
    sched.set_timesteps(10)
    unshifted = torch.from_numpy(np.linspace(1, 1 / 1000, 11)[:-1])
    ours = shifted_sigmas(unshifted, 3.0)
    assert torch.allclose(ours[1:].float(), sched.sigmas[1:10].float(), atol=1e-6)  # sigma_0 is 1 - 1e-6 there
    assert abs(float(ours[0]) - 1.0) < 1e-12 and abs(float(sched.sigmas[0]) - 1.0) < 1e-5


def test_training_text_equals_wan_pipeline_encode_prompt(exported):
    """The trainer's 32-token masked encoding padded to 512 is what WanPipeline.encode_prompt feeds the model."""
    from diffusers import WanPipeline

    from vgen.toyworld.train_wan import WanTrainer

    tmp, folder = exported
    trainer = WanTrainer(_cfg(tmp, "t2v", 2, resume=True))
    trainer.load(tmp / "t2v" / "last.pt")
    trainer.models["text_encoder"].eval()
    captions = [PROMPT, "", "a blue square and a green triangle moving up"]
    with torch.no_grad():
        ours = trainer.encode_text(captions)
    pipe = WanPipeline.from_pretrained(folder)
    theirs, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=512)
    assert ours.shape == theirs.shape == (3, 512, 64)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_exported_folder_matches_wan_pipeline(exported):
    from diffusers import WanPipeline

    from vgen.config import ModelConfig
    from vgen.core.sampler import to_uint8
    from vgen.models import load_components

    _, folder = exported
    c = load_components(ModelConfig(id=str(folder)), "cpu", "float32")
    assert c.kind == "wan" and c.native_size == (32, 32)
    assert c.vae.config.scale_factor_spatial == 8 and c.vae.config.scale_factor_temporal == 4
    job = make_job(PROMPT, **{"model.id": str(folder), "sampler.steps": 3, "video.frames": 5, "seed": 7,
                              "sampler.guidance": 5.0})
    ours = run_vanilla(c, job)
    assert ours.shape == (5, 32, 32, 3)
    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, num_frames=5, height=32, width=32, num_inference_steps=3, guidance_scale=5.0,
               generator=torch.Generator("cpu").manual_seed(7), output_type="np")
    theirs = to_uint8(torch.from_numpy(np.asarray(out.frames[0])))
    assert int(np.abs(ours.astype(int) - theirs.astype(int)).max()) <= 1


def test_vgen_generate_runs_the_exported_folder_at_its_native_size(exported, tmp_path):
    from conftest import vgen_in_process

    _, folder = exported
    r = vgen_in_process("generate", PROMPT, "--model", str(folder), "--steps", "2", "--out", tmp_path / "w.mp4")
    assert r.returncode == 0, r.stderr
    side = json.loads((tmp_path / "w.json").read_text())
    # 17 frames from the exported vgen.yaml (vanilla's own default, 8, would round to 9)
    assert side["model"]["kind"] == "wan" and side["video"]["frames"] == 17
    assert (side["video"]["height"], side["video"]["width"]) == (32, 32)


def test_wan_stage_rejects_frames_off_the_4k_plus_1_rule(tmp_path):
    from vgen.toyworld.train_wan import WanTrainer

    with pytest.raises(ValueError, match="frames must be 4k\\+1"):
        WanTrainer(_cfg(tmp_path, "vae", 1, frames=8))


def test_decoder_stage_keeps_the_encoder_and_latent_statistics(tmp_path):
    """The decoder stage trains the decoder only: encoder weights and latents_mean/std stay those of the vae stage."""
    from vgen.toyworld.train_wan import train_wan

    vae = torch.load(train_wan(_cfg(tmp_path, "vae", 1)), weights_only=False)
    dec = torch.load(train_wan(_cfg(tmp_path, "decoder", 2)), weights_only=False)
    changed = {k.split(".")[0] for k, v in vae["models"]["vae"].items() if not torch.equal(v, dec["models"]["vae"][k])}
    assert changed == {"decoder", "post_quant_conv"}
    assert dec["latents_mean"] == vae["latents_mean"] and dec["latents_std"] == vae["latents_std"]


def test_export_takes_a_decoder_checkpoint_only_with_the_transformers_encoder(exported, tmp_path):
    """A decoder-stage VAE of the same vae stage exports; a VAE with another encoder is refused."""
    from vgen.toyworld.train_wan import export_wan, train_wan

    tmp, _ = exported
    dec = train_wan(_cfg(tmp, "decoder", 1, vae=str(tmp / "vae" / "last.pt")))
    folder = export_wan(tmp / "t2v" / "last.pt", dec, tmp_path / "a")
    assert (folder / "vae" / "config.json").is_file()
    other = train_wan(_cfg(tmp_path, "vae", 1, seed=1))
    with pytest.raises(ValueError, match="encodes differently"):
        export_wan(tmp / "t2v" / "last.pt", other, tmp_path / "b")
