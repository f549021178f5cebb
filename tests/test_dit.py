"""The DiT families (Wan 2.1 / 2.2, LTX-Video) against diffusers' own pipelines, frame for frame, on tiny models."""

import numpy as np
import pytest
import torch

from conftest import make_job, run_vanilla
from vgen.core.sampler import to_uint8

PROMPT = "a red circle moving left"


def _max_diff(ours: np.ndarray, theirs_float) -> int:
    theirs = to_uint8(torch.from_numpy(np.asarray(theirs_float)))
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return int(np.abs(ours.astype(int) - theirs.astype(int)).max())


def _pipe_frames(c, frames, steps, guidance, seed=7, **extra):
    pipe = c.family.pipeline(c)
    out = pipe(PROMPT, num_frames=frames, height=32, width=32, num_inference_steps=steps, guidance_scale=guidance,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **extra)
    return out.frames[0]


def test_vanilla_wan21_matches_wan_pipeline(tiny):
    c = tiny("tiny-random-wan")
    job = make_job(PROMPT, **{"model.id": "tiny-random-wan", "sampler.steps": 3, "video.frames": 9, "seed": 7,
                              "sampler.guidance": 5.0})
    ours = run_vanilla(c, job)
    assert ours.shape == (9, 32, 32, 3)
    assert _max_diff(ours, _pipe_frames(c, 9, 3, 5.0)) <= 1


def test_vanilla_wan22_two_experts_match_wan_pipeline(tiny):
    """4 steps at shift 3 are t = 999, 900 (high-noise expert, guidance 5) and 750, 500 (low-noise, guidance_2 2)."""
    c = tiny("tiny-random-wan22")
    assert c.unet_2 is not None and c.config["boundary_ratio"] == 0.875
    job = make_job(PROMPT, **{"model.id": "tiny-random-wan22", "sampler.steps": 4, "video.frames": 5, "seed": 7,
                              "sampler.guidance": 5.0, "sampler.guidance_2": 2.0})
    ours = run_vanilla(c, job)
    assert _max_diff(ours, _pipe_frames(c, 5, 4, 5.0, guidance_scale_2=2.0)) <= 1
    # the second expert and guidance_2 matter: the pipeline with guidance_2 = guidance differs
    assert _max_diff(ours, _pipe_frames(c, 5, 4, 5.0, guidance_scale_2=5.0)) > 1


def test_vanilla_ltx_matches_ltx_pipeline(tiny):
    c = tiny("tiny-random-ltx")
    job = make_job(PROMPT, **{"model.id": "tiny-random-ltx", "sampler.steps": 3, "video.frames": 9, "seed": 7,
                              "sampler.guidance": 3.0, "negative": "blurry"})
    ours = run_vanilla(c, job)
    assert _max_diff(ours, _pipe_frames(c, 9, 3, 3.0, negative_prompt="blurry")) <= 1


def test_wan_frame_rule_rounds_as_the_pipeline(tiny):
    """WanPipeline turns 8 frames into 9 (4k+1) and the latent count is (F - 1) // 4 + 1."""
    from vgen.core.sampler import latent_shape

    c = tiny("tiny-random-wan")
    assert [c.family.video_frames(c, n) for n in (1, 5, 8, 16, 81)] == [1, 5, 9, 17, 81]
    assert latent_shape(c, 81, 480, 832) == (1, 16, 21, 60, 104)
    ltx = tiny("tiny-random-ltx")  # the tiny LTX VAE compresses 4x in time and space (the real one 8x / 32x)
    assert latent_shape(ltx, 9, 32, 32) == (1, 8, 3, 8, 8)


def test_streamed_wan_decode_equals_vae_decode(tiny):
    c = tiny("tiny-random-wan")
    from vgen.models.wan import stream_decode

    z = torch.randn(1, 16, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    pieces = list(stream_decode(c.vae, z))
    assert [p.shape[0] for p in pieces] == [1, 4, 4, 4]
    ours = torch.cat(pieces)
    theirs = c.vae.decode(z).sample[0]
    reference = (theirs / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0)
    assert torch.equal(ours, reference)


def test_wan_text_padding_is_zero_and_has_no_start_token(tiny):
    from vgen.core.prompts import leading_tokens, token_spans

    c = tiny("tiny-random-wan")
    embeds = c.family.encode_text(c, [PROMPT])
    n = int(embeds.mask.sum())
    assert n == 6  # 5 words + </s>
    assert embeds.hidden.shape == (1, 512, 32)
    assert torch.all(embeds.hidden[0, n:] == 0) and torch.all(embeds.hidden[0, :n].abs().sum(-1) > 0)
    assert leading_tokens(c.tokenizer) == 0
    assert token_spans(c.tokenizer, PROMPT, ["circle", "left"]) == {"circle": [2], "left": [4]}


def test_wan_attention_sites(tiny):
    c = tiny("tiny-random-wan")
    sites = c.family.attention_sites(c)
    assert [(s.key, s.role) for s in sites] == [
        ("blocks.0.attn1.processor", "self"), ("blocks.0.attn2.processor", "cross"),
        ("blocks.1.attn1.processor", "self"), ("blocks.1.attn2.processor", "cross"),
    ]


def _tiny_lora(path, c, keys=("blocks.0.attn1.to_q", "blocks.1.attn2.to_v"), rank=2, seed=1):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {}
    for key in keys:
        layer = c.unet.get_submodule(key) if hasattr(c.unet, "get_submodule") and key in dict(c.unet.named_modules()) else None
        out_f, in_f = (layer.out_features, layer.in_features) if layer is not None else (24, 24)
        state[f"transformer.{key}.lora_A.weight"] = torch.randn(rank, in_f, generator=g)
        state[f"transformer.{key}.lora_B.weight"] = torch.randn(out_f, rank, generator=g)
    save_file(state, str(path))
    return path


def test_lora_changes_wan_output_as_pipeline_load_lora_weights(tiny, tmp_path):
    from vgen.config import ModelConfig
    from vgen.models import load_components
    from vgen.models.lora import apply_loras

    lora = _tiny_lora(tmp_path / "tiny.safetensors", tiny("tiny-random-wan"))
    job = make_job(PROMPT, **{"model.id": "tiny-random-wan", "sampler.steps": 2, "video.frames": 5, "seed": 7,
                              "sampler.guidance": 5.0})
    ours = load_components(ModelConfig(id="tiny-random-wan"), "cpu", "float32")
    apply_loras(ours, [f"{lora}:0.5"])
    frames = run_vanilla(ours, job)
    assert ours.loras[0]["scale"] == 0.5 and len(ours.loras[0]["sha256"]) == 12

    ref = load_components(ModelConfig(id="tiny-random-wan"), "cpu", "float32")
    pipe = ref.family.pipeline(ref)
    pipe.load_lora_weights(str(lora), adapter_name="x")
    pipe.set_adapters(["x"], adapter_weights=[0.5])
    assert _max_diff(frames, _pipe_frames(ref, 5, 2, 5.0)) <= 1
    assert _max_diff(frames, _pipe_frames(tiny("tiny-random-wan"), 5, 2, 5.0)) > 1  # the LoRA did something


def test_mismatched_lora_fails_in_one_line_naming_the_key(tmp_path):
    from conftest import vgen_in_process
    from safetensors.torch import save_file

    save_file({"transformer.blocks.0.attn1.to_zz.lora_A.weight": torch.ones(2, 24),
               "transformer.blocks.0.attn1.to_zz.lora_B.weight": torch.ones(24, 2)}, str(tmp_path / "bad.safetensors"))
    r = vgen_in_process("generate", PROMPT, "--model", "tiny-random-wan", "--frames", "5", "--steps", "1",
                        "--out", tmp_path / "o.mp4", f"model.lora={tmp_path / 'bad.safetensors'}")
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "transformer.blocks.0.attn1.to_zz.lora_A.weight" in lines[0], r.stderr
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o.json").exists()


FAMILY_MODELS = ["tiny-random-unet3d", "tiny-random-wan", "tiny-random-ltx"]


@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_every_scheduler_name_runs_or_fails_in_one_line(tiny, model):
    from vgen.config import SCHEDULERS
    from vgen.errors import ConfigError

    c = tiny(model)
    ran, refused = [], []
    for name in SCHEDULERS:
        job = make_job(PROMPT, **{"model.id": model, "sampler.scheduler": name, "sampler.steps": 2, "video.frames": 5})
        try:
            frames = run_vanilla(c, job)
        except ConfigError as err:
            message = str(err)
            assert "\n" not in message and f"scheduler '{name}' does not run on {c.kind} models" in message
            refused.append(name)
            continue
        assert frames.shape[0] == 5 and frames.std() > 0
        ran.append(name)
    if c.kind == "unet3d":
        assert refused == []
    if c.kind == "wan":
        assert {"unipc", "euler", "dpm++", "model", "auto"} <= set(ran) and "ddim" in refused
    if c.kind == "ltx":
        assert {"euler", "model", "auto"} <= set(ran)


@pytest.mark.parametrize("name", ["unipc", "euler", "dpm++"])
def test_wan_named_schedulers_match_the_pipeline_with_that_scheduler(tiny, name):
    from vgen.core.schedulers import make_scheduler

    c = tiny("tiny-random-wan")
    job = make_job(PROMPT, **{"model.id": "tiny-random-wan", "sampler.scheduler": name, "sampler.steps": 3,
                              "video.frames": 5, "seed": 7, "sampler.guidance": 5.0})
    ours = run_vanilla(c, job)
    pipe = c.family.pipeline(c)
    pipe.scheduler = make_scheduler(name, c.scheduler, c.family)
    out = pipe(PROMPT, num_frames=5, height=32, width=32, num_inference_steps=3, guidance_scale=5.0,
               generator=torch.Generator("cpu").manual_seed(7), output_type="np").frames[0]
    assert _max_diff(ours, out) <= 1


def test_saved_wan22_folder_loads_as_wan_pipeline_and_by_path(tiny, tmp_path):
    from diffusers import WanPipeline

    from vgen.config import ModelConfig
    from vgen.models import load_components, save_components

    c = tiny("tiny-random-wan22")
    save_components(c, tmp_path / "wan22")
    pipe = WanPipeline.from_pretrained(tmp_path / "wan22")
    assert pipe.transformer_2 is not None and pipe.config.boundary_ratio == 0.875
    loaded = load_components(ModelConfig(id=str(tmp_path / "wan22")), "cpu", "float32")
    assert loaded.kind == "wan" and loaded.unet_2 is not None and loaded.config["boundary_ratio"] == 0.875
    job = make_job(PROMPT, **{"model.id": "tiny-random-wan22", "sampler.steps": 2, "video.frames": 5, "seed": 3,
                              "video.height": 32, "video.width": 32})
    assert np.abs(run_vanilla(c, job).astype(int) - run_vanilla(loaded, job).astype(int)).max() <= 1


def test_methods_other_than_vanilla_fail_on_a_dit_in_one_line(tmp_path):
    from conftest import vgen_in_process

    r = vgen_in_process("generate", PROMPT, "--model", "tiny-random-ltx", "--method", "vico", "--out", tmp_path / "v.mp4")
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "method 'vico' runs on unet3d/motion/wan models" in lines[0] and "ltx model" in lines[0]
    assert not list(tmp_path.iterdir())


def test_wan22_offload_keeps_only_the_active_expert_placed(tiny, monkeypatch):
    """t = 999, 900 run the high-noise expert, 750, 500 the low-noise one (boundary 875): one placement each,
    the first released before the second is placed."""
    import contextlib

    from vgen.models import Components

    c = tiny("tiny-random-wan22")
    events = []

    @contextlib.contextmanager
    def placed(self, module):
        name = "unet" if module is self.unet else "unet_2" if module is self.unet_2 else "other"
        events.append(("in", name))
        yield module
        events.append(("out", name))

    monkeypatch.setattr(Components, "placed", placed)
    job = make_job(PROMPT, **{"model.id": "tiny-random-wan22", "sampler.steps": 4, "video.frames": 5})
    run_vanilla(c, job)
    experts = [e for e in events if e[1] != "other"]
    assert experts == [("in", "unet"), ("out", "unet"), ("in", "unet_2"), ("out", "unet_2")]


def test_hub_wan_id_offline_fails_in_one_line(tmp_path):
    from conftest import vgen_in_process

    r = vgen_in_process("generate", PROMPT, "--model", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "--out", tmp_path / "w.mp4")
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in lines[0] and "--model DIR" in lines[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["tiny-random-wan", "tiny-random-wan22", "tiny-random-ltx"])
def test_models_listing_matches_the_built_models(tiny, name):
    from conftest import vgen_in_process

    rows = {line.split()[0]: line.split()[1:4] for line in vgen_in_process("models").stdout.splitlines()[1:-1]}
    c = tiny(name)
    kind, size, rule = rows[name]
    assert (kind, size) == (c.kind, f"{c.native_size[0]}x{c.native_size[1]}")
    k = int(rule.removesuffix("k+1"))  # 4k+1: exactly the counts the model keeps
    assert all(c.family.video_frames(c, n) == n for n in (1, k + 1, 2 * k + 1))
    assert c.family.video_frames(c, k + 2) != k + 2


def test_methods_listing_says_which_families_each_method_runs_on():
    from conftest import vgen_in_process

    out = vgen_in_process("methods").stdout
    assert "runs on: unet3d, motion, unet2d, wan, ltx\n" in out  # vanilla
    assert out.count("runs on: unet3d, motion, wan (not yet on unet2d, ltx)") == 3  # vico, i4vgen, streaming
    assert "runs on: unet2d, wan, ltx (not yet on unet3d, motion)" in out  # zs2: image models and DiT image modes


def test_generate_on_tiny_wan_writes_video_and_sidecar(tmp_path):
    import json

    from conftest import vgen_in_process

    r = vgen_in_process("generate", PROMPT, "--model", "tiny-random-wan", "--frames", "8", "--steps", "2",
                        "--out", tmp_path / "w.mp4")
    assert r.returncode == 0, r.stderr
    side = json.loads((tmp_path / "w.json").read_text())
    assert side["model"]["kind"] == "wan" and side["video"]["frames"] == 9  # 8 -> 9, as WanPipeline rounds
    assert side["method_info"]["scheduler"] == "UniPCMultistepScheduler" and "unknown_words" not in side


def test_wan_unipc_at_many_steps_takes_step_i_at_sigma_i(tiny, monkeypatch):
    """From ~400 steps the flow sigmas round to repeated integer timesteps (999, 999, ...); diffusers' UniPC then
    finds its first step by value at the second 999 and fails one step past its end. Each step i must run at
    sigma i, as the schedule defines."""
    from diffusers import UniPCMultistepScheduler

    c = tiny("tiny-random-wan")
    seen: list[tuple[int, int]] = []
    real_step = UniPCMultistepScheduler.step

    def spy(self, model_output, timestep, sample, *args, **kwargs):
        out = real_step(self, model_output, timestep, sample, *args, **kwargs)
        seen.append((self.step_index - 1, len(seen)))
        return out

    monkeypatch.setattr(UniPCMultistepScheduler, "step", spy)
    job = make_job(PROMPT, **{"model.id": "tiny-random-wan", "sampler.scheduler": "unipc", "sampler.steps": 450,
                              "video.frames": 5, "sampler.guidance": 1.0})
    frames = run_vanilla(c, job)
    assert len(seen) == 450 and all(index == i for index, i in seen)
    assert np.isfinite(frames.astype(float)).all() and frames.std() > 0
