"""I4VGen: NI-VSDS against closed forms, the reward's choice against the detector, reproducible
candidates, and the runner end to end (files, sidecar, errors)."""

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import VGEN
from vgen.methods import i4vgen as I
from vgen.methods.rewards import load_reward, toy_score

PROMPT = "a red circle moving left"


class FixedNoiseUNet(torch.nn.Module):
    """Predicts `eps + delta_uncond` for the unconditional half and `eps + delta_cond` for the conditional one,
    whatever the input: the oracle (deltas 0) and a known bias, for closed-form checks."""

    def __init__(self, eps, delta_uncond=0.0, delta_cond=0.0, config=None):
        super().__init__()
        self.eps, self.du, self.dc = eps, delta_uncond, delta_cond
        self.config = config
        self.calls = 0

    def forward(self, sample, t, encoder_hidden_states=None, **kwargs):
        self.calls += 1
        if sample.shape[0] == 2:  # CFG batch [uncond, cond]
            out = torch.cat([self.eps + self.du, self.eps + self.dc])
        else:
            out = self.eps + self.dc
        return SimpleNamespace(sample=out)


def oracle_components(base, unet):
    from dataclasses import replace

    return replace(base, unet=unet)


def _video(c, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, frames, 4, 4, generator=g), torch.randn(1, 4, frames, 4, 4, generator=g)


def _prompt(c, guidance):
    from vgen.core.prompts import encode_prompt

    return encode_prompt(c, PROMPT, "", guidance)


def test_zero_step_size_returns_the_anchor_unchanged(tiny):
    c = tiny("tiny-random-unet3d")
    v, eps = _video(c)
    ts = I.vsds_timesteps(1000, 0.96, 0.4, 5)
    out = I.ni_vsds(c, v, eps, _prompt(c, 7.5), 7.5, ts, [0.0] * 5, progress=False)
    assert torch.equal(out, v)


def test_a_unet_that_predicts_the_true_noise_gives_no_update(tiny):
    c = tiny("tiny-random-unet3d")
    v, eps = _video(c)
    unet = FixedNoiseUNet(eps, config=c.unet.config)
    ts = I.vsds_timesteps(1000, 0.96, 0.4, 6)
    out = I.ni_vsds(oracle_components(c, unet), v, eps, _prompt(c, 7.5), 7.5, ts, [10.0, 10.0, 1.0, 1.0, 1.0, 1.0], progress=False)
    assert unet.calls == 6
    torch.testing.assert_close(out, v, atol=1e-6, rtol=0)


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_a_biased_unet_moves_the_video_by_the_closed_form(tiny, guidance):
    """ε̂ = ε + δ (CFG-combined) -> v_N = v_0 - δ_cfg·Σ α_i (1 - ᾱ_{t_i})."""
    c = tiny("tiny-random-unet3d")
    v, eps = _video(c)
    du, dc = 0.3, -0.1
    unet = FixedNoiseUNet(eps, du, dc, config=c.unet.config)
    ts = I.vsds_timesteps(1000, 0.96, 0.4, 4)
    sizes = I.vsds_step_sizes(4, 1, 10.0, 1.0)
    out = I.ni_vsds(oracle_components(c, unet), v, eps, _prompt(c, guidance), guidance, ts, sizes, progress=False)
    delta = du + guidance * (dc - du) if guidance > 1 else dc
    abar = c.scheduler.alphas_cumprod.double()
    shift = delta * sum(a * (1 - float(abar[t])) for a, t in zip(sizes, ts))
    torch.testing.assert_close(out, v - shift, atol=1e-5, rtol=1e-6)  # float32: |shift| ~ 40


def test_schedule_of_timesteps_and_step_sizes():
    ts = I.vsds_timesteps(1000, 0.96, 0.4, 16)
    assert len(ts) == 16 and ts[0] == 960 and ts[-1] == 400 and all(a > b for a, b in zip(ts, ts[1:]))
    assert I.vsds_timesteps(1000, 1.0, 1.0, 2) == [999, 999]  # clamped to the table
    assert I.vsds_step_sizes(5, 3, 10.0, 1.0) == [10.0, 10.0, 10.0, 1.0, 1.0]


@pytest.mark.parametrize("kind", ["v_prediction", "sample", "epsilon"])
def test_to_epsilon_recovers_the_noise(kind):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    a = torch.tensor(0.3, dtype=torch.float64)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    pred = {"v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0, "epsilon": eps}[kind]
    torch.testing.assert_close(I.to_epsilon(pred, x_t, a, kind), eps)


# ---------------------------------------------------------------------------------------------- anchor


def test_toy_reward_picks_the_image_the_detector_rates_best():
    from vgen.toyworld import BackgroundSpec, ObjectLayout, ObjectSpec, Scene, render_image, score_image

    bg = BackgroundSpec(grey=128)

    def image(*objects):
        layouts = tuple(ObjectLayout(ObjectSpec(c, s, "still"), x, 32.0, 16.0, 0.0) for c, s, x in objects)
        return render_image(Scene(layouts, bg, 64))

    prompt = "a red circle and a blue square"
    candidates = np.stack([
        image(),  # nothing
        image(("red", "circle", 20.0)),  # one of two
        image(("red", "circle", 16.0), ("blue", "triangle", 46.0)),  # wrong shape
        image(("red", "circle", 16.0), ("blue", "square", 46.0)),  # right
        image(("green", "circle", 16.0), ("blue", "square", 46.0)),  # wrong colour
    ])
    scores = load_reward("toy")(candidates, prompt)
    assert I.best_candidate(scores) == 3 and scores[3] == pytest.approx(1.0)
    # independent reading: the detector's own per-object verdicts
    correct = [all(o.correct for o in score_image(c[None], prompt).objects) for c in candidates]
    assert correct == [False, False, False, True, False]
    assert scores[0] < scores[1] < scores[3]


def test_toy_reward_penalises_extra_objects():
    from vgen.toyworld import BackgroundSpec, ObjectLayout, ObjectSpec, Scene, render_image

    bg = BackgroundSpec(grey=100)
    one = render_image(Scene((ObjectLayout(ObjectSpec("red", "circle", "still"), 20.0, 32.0, 16.0, 0.0),), bg, 64))
    two = render_image(Scene((ObjectLayout(ObjectSpec("red", "circle", "still"), 20.0, 32.0, 16.0, 0.0),
                              ObjectLayout(ObjectSpec("yellow", "square", "still"), 46.0, 32.0, 16.0, 0.0)), bg, 64))
    assert toy_score(one, "a red circle") == pytest.approx(1.0)
    assert toy_score(two, "a red circle") == pytest.approx(0.75)


def test_toy_reward_rejects_a_prompt_outside_the_world():
    from vgen.errors import ConfigError

    with pytest.raises(ConfigError, match="toy-world prompt"):
        load_reward("toy")(np.zeros((1, 64, 64, 3), np.uint8), "a cat playing the piano")


def test_candidates_are_reproducible_by_seed_and_batch_size(tiny):
    c = tiny("tiny-random-unet2d")

    def sample(seed, batch):
        return I.sample_candidates(c, PROMPT, "", 3, steps=2, guidance=7.5, scheduler="ddim",
                                   generator=torch.Generator().manual_seed(seed), height=16, width=16, batch=batch)

    lat_a, img_a = sample(0, 0)
    lat_b, img_b = sample(0, 1)
    lat_c, _ = sample(1, 0)
    assert lat_a.shape == (3, 4, 1, 8, 8) and img_a.shape == (3, 16, 16, 3) and img_a.dtype == np.uint8
    torch.testing.assert_close(lat_a, lat_b, atol=1e-4, rtol=1e-4)  # one CFG batch or three: the same images (up to BLAS order)
    assert not torch.allclose(lat_a, lat_c)
    assert not torch.allclose(lat_a[0], lat_a[1])  # the candidates differ from each other


def test_clip_reward_is_the_cosine_score_of_a_local_clip_model(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from vgen.tiny import TINY_WORDS
    from vgen.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer(TINY_WORDS, model_max_length=77)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    model = CLIPModel(cfg).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    scores = load_reward("clip", str(tmp_path))(images, PROMPT)
    with torch.no_grad():
        inputs = processor(text=[PROMPT], images=list(images), return_tensors="pt", padding=True)
        logits = model(**inputs).logits_per_image[:, 0]
        expected = (100 * logits / model.logit_scale.exp()).double().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4)


def test_missing_reward_models_are_one_line_errors(tmp_path):
    from vgen.errors import VgenError

    with pytest.raises(VgenError, match="CLIP reward model"):
        load_reward("clip", str(tmp_path / "nope"))
    with pytest.raises(VgenError, match="imagereward"):
        load_reward("imagereward")


# ---------------------------------------------------------------------------------------------- runner


def vgen(*args, timeout=300):
    return subprocess.run([VGEN, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("model", ["tiny-random-unet3d", "tiny-random-motion"])
def test_generate_i4vgen_writes_video_anchor_grid_and_sidecar(tmp_path, model):
    r = vgen("generate", PROMPT, "--method", "i4vgen", "--model", model, "--steps", "3", "--frames", "3",
             "--out", tmp_path, "i4vgen.candidates=3", "i4vgen.iterations=2")
    assert r.returncode == 0, r.stderr
    mp4 = tmp_path / "a-red-circle-moving-left-i4vgen-0.mp4"
    from vgen.video import read_video

    assert read_video(mp4).frames.shape == (3, 32, 32, 3)
    side = json.loads(mp4.with_suffix(".json").read_text())
    info = side["method_info"]
    assert len(info["anchor"]["scores"]) == 3 and info["anchor"]["image_model"] == "tiny-random-unet2d"
    assert info["anchor"]["chosen"] == int(np.argmax(info["anchor"]["scores"]))
    assert info["ni_vsds"]["step_sizes"] == [10.0, 10.0]
    anchor, grid = tmp_path / "a-red-circle-moving-left-i4vgen-0_anchor.png", tmp_path / "a-red-circle-moving-left-i4vgen-0_candidates.png"
    assert sorted(side["files"]) == sorted([str(anchor), str(grid)])
    import imageio.v3 as iio

    assert iio.imread(anchor).shape == (32, 32, 3) and iio.imread(grid).shape[1] > 3 * 32


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-random-unet3d", "i4vgen.image_model=tiny-random-unet3d"], "must be an image (unet2d) model"),
    (["--model", "tiny-random-unet2d"], "runs on unet3d/motion models"),
    (["--model", "tiny-random-unet3d", "i4vgen.reward=imagereward"], "image-reward"),
    (["--model", "tiny-random-unet3d", "i4vgen.t_start=0.2"], "t_end <= t_start"),
])
def test_i4vgen_user_errors_are_one_line(tmp_path, args, message):
    r = vgen("generate", PROMPT, "--method", "i4vgen", "--steps", "2", "--frames", "2", "--out", tmp_path, *args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_a_video_model_without_a_known_image_model_says_what_to_set(tmp_path, tiny):
    from vgen.models import save_components

    folder = save_components(tiny("tiny-random-unet3d"), tmp_path / "my-video-model")
    r = vgen("generate", PROMPT, "--method", "i4vgen", "--model", folder, "--steps", "2", "--frames", "2", "--out", tmp_path)
    assert r.returncode != 0 and "set i4vgen.image_model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
