"""I4VGen: NI-VSDS against closed forms, the reward's choice against the detector, reproducible
candidates, and the runner end to end (files, sidecar, errors)."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import vgen_in_process
from vgen.methods.i4vgen import runner as I
from vgen.methods.i4vgen.rewards import load_reward

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
    """vsds_schedule=linspace: vgen's earlier rule, kept as an option."""
    ts = I.vsds_timesteps(1000, 0.96, 0.4, 16)
    assert len(ts) == 16 and ts[0] == 960 and ts[-1] == 400 and all(a > b for a, b in zip(ts, ts[1:]))
    assert I.vsds_timesteps(1000, 1.0, 1.0, 2) == [999, 999]  # clamped to the table
    assert I.vsds_step_sizes(5, 3, 10.0, 1.0) == [10.0, 10.0, 10.0, 1.0, 1.0]


def _ddim(steps):
    """A DDIM schedule like AnimateDiff's and the toy's: 1000 train steps, leading spacing, steps_offset 1."""
    from diffusers import DDIMScheduler

    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      steps_offset=1, timestep_spacing="leading", clip_sample=False, set_alpha_to_one=False)
    s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("steps", [25, 50])
def test_ni_vsds_and_regeneration_timesteps_follow_the_official_rule(steps):
    """The public code: NI-VSDS on timesteps[:int(0.6*steps) + 1] of the sampler; regeneration with p_re = 1 from
    the schedule's first timestep. Leading spacing by hand: t_i = (steps - 1 - i) * (1000 // steps) + 1."""
    by_hand = [(steps - 1 - i) * (1000 // steps) + 1 for i in range(steps)]
    sched = _ddim(steps)
    vsds = I.official_vsds_timesteps(sched, 0.6)
    assert vsds == by_hand[: int(0.6 * steps) + 1]
    if steps == 25:
        assert len(vsds) == 16 and vsds[0] == 961 and vsds[-1] == 361  # SPEC §3
    else:
        assert len(vsds) == 31 and vsds[0] == 981 and vsds[-1] == 381
    assert [int(t) for t in I.regen_timesteps(_ddim(steps), 1.0)] == by_hand  # p_re = 1: the whole schedule
    # the public code's get_timesteps(steps, strength=p_re): t_start = steps - min(int(steps * p_re), steps)
    for p_re in (0.8, 0.78, 0.5):
        t_start = steps - min(int(steps * p_re), steps)
        assert [int(t) for t in I.regen_timesteps(_ddim(steps), p_re)] == by_hand[t_start:], p_re
    # ours: t_regen a fraction of T, 0.96 -> the first timestep <= 960
    assert int(I.regen_timesteps(_ddim(steps), 0.96, "T")[0]) == max(t for t in by_hand if t <= 960)


def test_a_regeneration_of_no_steps_is_a_clear_error():
    from vgen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"i4vgen.t_regen 0.04 runs int\(0.04·20\) = 0 of the 20 sampler steps"):
        I.regen_timesteps(_ddim(20), 0.04)
    assert len(I.regen_timesteps(_ddim(20), 0.05)) == 1


def test_the_paper_preset_runs_the_public_codes_timesteps_and_step_sizes():
    """configs/i4vgen-paper.yaml (AnimateDiff, 25 DDIM steps): NI-VSDS on 961 ... 361 with α 10, 10, 10 then 1, and
    the regeneration over the whole schedule from 961 (p_re = 1), as pipeline_animation.py."""
    from vgen.config import build_job

    job = build_job(str(Path(__file__).resolve().parents[1] / "configs" / "i4vgen-paper.yaml"), {"prompt": "a cat"})
    cfg = job.i4vgen
    sched = _ddim(job.sampler.steps)
    by_hand = [(24 - i) * 40 + 1 for i in range(25)]
    vsds = I.official_vsds_timesteps(sched, cfg.vsds_fraction) if cfg.vsds_schedule == "sampler" else None
    assert vsds == by_hand[:16]
    assert I.vsds_step_sizes(len(vsds), cfg.warm_iterations, cfg.warm_step_size, cfg.step_size) == [10.0] * 3 + [1.0] * 13
    assert [int(t) for t in I.regen_timesteps(sched, cfg.t_regen, cfg.regen_rule)] == by_hand
    assert cfg.regen_hold == "none" and cfg.regen_noise == "fresh" and cfg.vsds_guidance is None


# ---------------------------------------------------------------------------------------------- anchor


def _render(*objects, grey=128):
    """A hand-rendered toy image: objects as (colour, shape, x) at y = 32, size 16."""
    from vgen.toyworld import BackgroundSpec, ObjectLayout, ObjectSpec, Scene, render_image

    layouts = tuple(ObjectLayout(ObjectSpec(c, sh, "still"), x, 32.0, 16.0, 0.0) for c, sh, x in objects)
    return render_image(Scene(layouts, BackgroundSpec(grey=grey), 64))


@pytest.mark.parametrize("colour, shape, wrong_colour, wrong_shape", [
    ("red", "circle", "green", "square"),
    ("blue", "triangle", "yellow", "circle"),
    ("orange", "diamond", "purple", "triangle"),
])
def test_the_graded_toy_reward_orders_images_as_a_person_would(colour, shape, wrong_colour, wrong_shape):
    """right > wrong colour > wrong shape > missing, and an extra object or a second copy lowers a right image."""
    prompt = f"a {colour} {shape}"
    right = _render((colour, shape, 30.0))
    candidates = np.stack([
        _render(),  # missing
        _render((colour, wrong_shape, 30.0)),  # wrong shape
        _render((wrong_colour, shape, 30.0)),  # wrong colour
        right,
        _render((colour, shape, 16.0), (wrong_colour, wrong_shape, 48.0)),  # right plus an unprompted object
        _render((colour, shape, 16.0), (colour, shape, 48.0)),  # two copies
    ])
    scores = load_reward("toy")(candidates, prompt)
    missing, bad_shape, bad_colour, good, extra, twice = scores
    assert missing < bad_shape < bad_colour < good
    assert extra < good and twice < good
    assert good == pytest.approx(1.0, abs=0.02)  # a clean right image is (nearly) the top of the scale
    assert I.best_candidate(scores) == 3
    assert len(set(np.round(scores, 9))) == len(scores)  # graded: no two of these tie


@pytest.mark.parametrize("extra", [("green", "triangle"), ("blue", "square")])
def test_the_toy_reward_puts_objects_right_above_objects_merely_present(extra):
    """Every prompted object right, plus an unprompted object or a second copy, beats every object present with one
    in the wrong shape (a person asked for a red circle and a blue square would pick the first); the clean image
    beats both."""
    prompt = "a red circle and a blue square"
    clean = _render(("red", "circle", 16.0), ("blue", "square", 48.0))
    crowded = _render(("red", "circle", 12.0), ("blue", "square", 34.0), (*extra, 54.0))
    wrong_shape = _render(("red", "circle", 16.0), ("blue", "circle", 48.0))
    wrong, right_plus, best = load_reward("toy")(np.stack([wrong_shape, crowded, clean]), prompt)
    assert wrong < right_plus < best


def test_the_toy_reward_breaks_ties_that_the_detector_verdicts_leave():
    """Two images the detector calls equally right (and a plain verdict-count reward scored 1.0 both) still differ:
    the purer colour wins."""
    from vgen.toyworld import score_image

    prompt = "a red circle"
    sharp = _render(("red", "circle", 30.0))
    soft = np.clip(sharp.astype(np.int16) // 2 + 64, 0, 255).astype(np.uint8)  # faded colour, same shape
    for image in (sharp, soft):
        assert all(o.present and o.colour_ok and o.shape_ok for o in score_image(image[None], prompt).objects)
    scores = load_reward("toy")(np.stack([soft, sharp]), prompt)
    assert scores[1] > scores[0]
    assert I.reward_summary(scores, I.best_candidate(scores))["ties"] == 0


def test_shape_fit_is_above_a_half_exactly_where_the_detector_calls_the_shape():
    from vgen.methods.i4vgen.rewards import shape_fit
    from vgen.toyworld.segment import SHAPE_PROTOTYPES, classify_shape

    rng = np.random.default_rng(0)
    for _ in range(200):
        f = tuple(np.asarray(SHAPE_PROTOTYPES["circle"]) + rng.normal(0, 0.3, 3))
        called = classify_shape(f)
        for shape in SHAPE_PROTOTYPES:
            assert (shape_fit(f, shape) > 0.5) == (shape == called)


def test_reward_summary_counts_rank_spread_and_ties():
    s = np.array([0.2, 0.9, 0.5, 0.9, 0.9])
    assert I.reward_summary(s, 1) == {"chosen_reward": 0.9, "chosen_rank": 1, "spread": 0.7, "ties": 2}
    assert I.reward_summary(s, 2)["chosen_rank"] == 4  # three candidates score higher
    assert I.reward_summary(np.array([1.0]), 0) == {"chosen_reward": 1.0, "chosen_rank": 1, "spread": 0.0, "ties": 0}


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


def test_candidate_noise_is_a_frame_of_one_video_draw_as_the_public_code_lays_it_out(tiny):
    """pipeline_animation.py draws [1, C, N, h, w] (prepare_latents) and makes candidate i of frame i ("b c f h w ->
    (b f) c h w", unsqueeze(2)); layout batch is vgen's earlier [N, C, 1, h, w] draw."""
    c = tiny("tiny-random-motion")
    n, seed = 5, 11
    draw = torch.randn(1, 4, n, 4, 4, generator=torch.Generator().manual_seed(seed))  # 8x8 pixels: 4x4 latents
    noise = I.candidate_noise(c, n, 8, 8, torch.Generator().manual_seed(seed), "frames")
    assert noise.shape == (n, 4, 1, 4, 4)
    for i in range(n):
        assert torch.equal(noise[i], draw[0, :, i : i + 1])
    batch = I.candidate_noise(c, n, 8, 8, torch.Generator().manual_seed(seed), "batch")
    assert torch.equal(batch, torch.randn(n, 4, 1, 4, 4, generator=torch.Generator().manual_seed(seed)))
    assert not torch.equal(batch, noise)  # the same numbers, other candidates


def test_i4vgen_draws_its_noises_in_the_public_codes_order(tiny, monkeypatch):
    """One seeded generator, three draws: the candidates' [1, C, N, h, w], NI-VSDS's ε [1, C, F, h, w], the
    regeneration's noise [1, C, F, h, w] (pipeline_animation.py: prepare_latents, randn_like, randn_like)."""
    from conftest import make_job
    from vgen.jobs import RunContext

    drawn = []
    real = I.iid_noise

    def record(shape, generator, device, dtype):
        drawn.append(real(shape, generator, device, dtype))
        return drawn[-1]

    monkeypatch.setattr(I, "iid_noise", record)
    c = tiny("tiny-random-motion")
    job = make_job(PROMPT, **{"method": "i4vgen", "model.id": "tiny-random-motion", "sampler.steps": 2,
                              "video.frames": 3, "i4vgen.candidates": 4, "i4vgen.save_candidates": False, "seed": 5})
    ctx = RunContext(generator=torch.Generator().manual_seed(5), height=32, width=32, output_stem=Path("unused"),
                     progress=False)
    I.run(job, c, ctx)
    g = torch.Generator().manual_seed(5)
    expected = [torch.randn(1, 4, 4, 16, 16, generator=g), torch.randn(1, 4, 3, 16, 16, generator=g),
                torch.randn(1, 4, 3, 16, 16, generator=g)]  # 32x32 pixels, VAE factor 2
    assert len(drawn) == 3 and all(torch.equal(a, b) for a, b in zip(drawn, expected))


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
    return vgen_in_process(*args)


def _scheduler_of(model):
    from vgen.config import ModelConfig
    from vgen.models import load_components

    return load_components(ModelConfig(id=model), "cpu", "float32").scheduler


@pytest.mark.parametrize("model", ["tiny-random-unet3d", "tiny-random-motion"])
def test_generate_i4vgen_writes_video_anchor_grid_and_sidecar(tmp_path, model):
    r = vgen("generate", PROMPT, "--method", "i4vgen", "--model", model, "--steps", "3", "--frames", "3",
             "--out", tmp_path, "i4vgen.candidates=3")
    assert r.returncode == 0, r.stderr
    mp4 = Path(r.stdout.splitlines()[0])
    from vgen.video import read_video

    assert read_video(mp4).frames.shape == (3, 32, 32, 3)
    side = json.loads(mp4.with_suffix(".json").read_text())
    info = side["method_info"]
    anchor_info = info["anchor"]
    assert len(anchor_info["scores"]) == 3 and anchor_info["image_model"] == model and anchor_info["source"] == "video"
    assert anchor_info["chosen"] == int(np.argmax(anchor_info["scores"]))
    scores = np.array(anchor_info["scores"])
    assert anchor_info["chosen_reward"] == pytest.approx(scores.max()) and anchor_info["chosen_rank"] == 1
    assert anchor_info["spread"] == pytest.approx(scores.max() - scores.min(), abs=1e-5)
    assert anchor_info["ties"] == int(np.sum(scores == scores.max())) - 1
    # 3 DDIM steps on the tiny models' schedule: the official rule keeps int(0.6 * 3) + 1 = 2 sampler timesteps
    from vgen.core.schedulers import make_scheduler

    sched = I.prepare_scheduler("ddim", make_scheduler("ddim", _scheduler_of(model)), 3, "cpu")
    expected = [int(t) for t in sched.timesteps]
    assert info["ni_vsds"]["timesteps"] == expected[:2] and info["ni_vsds"]["step_sizes"] == [10.0, 10.0]
    assert info["regeneration"]["timesteps"] == expected and info["regeneration"]["from_timestep"] == expected[0]
    anchor, grid = mp4.with_name(f"{mp4.stem}_anchor.png"), mp4.with_name(f"{mp4.stem}_candidates.png")
    assert sorted(side["files"]) == sorted([str(anchor), str(grid)])
    import imageio.v3 as iio

    assert iio.imread(anchor).shape == (32, 32, 3) and iio.imread(grid).shape[1] > 3 * 32


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-random-unet3d", "i4vgen.image_model=tiny-random-unet3d"], "must be an image (unet2d) model"),
    (["--model", "tiny-random-unet2d"], "runs on unet3d/motion/wan models"),
    (["--model", "tiny-random-unet3d", "i4vgen.reward=imagereward"], "image-reward"),
    (["--model", "tiny-random-unet3d", "i4vgen.t_start=0.2"], "t_end <= t_start"),
    (["--model", "tiny-random-unet3d", "i4vgen.candidate_model=frames"], "choose one of: auto, video, image"),
    (["--model", "tiny-random-unet3d", "i4vgen.regen_rule=x"], "choose one of: T, steps"),
    (["--model", "tiny-random-unet3d", "i4vgen.t_regen=0.2"], "i4vgen.t_regen 0.2 runs int(0.2·2) = 0 of the 2 sampler steps"),
])
def test_i4vgen_user_errors_are_one_line(tmp_path, args, message):
    r = vgen("generate", PROMPT, "--method", "i4vgen", "--steps", "2", "--frames", "2", "--out", tmp_path, *args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_a_video_model_without_a_known_image_model_says_what_to_set(tmp_path, tiny):
    """Only when the candidates are asked of a separate image model: by default the video model draws them."""
    from vgen.models import save_components

    folder = save_components(tiny("tiny-random-unet3d"), tmp_path / "my-video-model")
    r = vgen("generate", PROMPT, "--method", "i4vgen", "--model", folder, "--steps", "2", "--frames", "2", "--out", tmp_path,
             "i4vgen.candidate_model=image")
    assert r.returncode != 0 and "set i4vgen.image_model" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_candidates_from_the_image_model_stay_an_option(tmp_path):
    r = vgen("generate", PROMPT, "--method", "i4vgen", "--model", "tiny-random-unet3d", "--steps", "2", "--frames", "2",
             "--out", tmp_path, "i4vgen.candidate_model=image", "i4vgen.candidates=2")
    assert r.returncode == 0, r.stderr
    info = json.loads(Path(r.stdout.splitlines()[0]).with_suffix(".json").read_text())["method_info"]["anchor"]
    assert info["source"] == "image" and info["image_model"] == "tiny-random-unet2d" and len(info["scores"]) == 2


# ---------------------------------------------------------------------------------------------- motion on the toy


@pytest.fixture(scope="module")
def toy():
    from vgen.config import ModelConfig
    from vgen.models import load_components

    return load_components(ModelConfig(id="toy"), "cpu", "float32")


def _regenerate_static(toy, prompt, x, y, t_regen, steps=10, seed=0, hold=None, latents=False):
    """A static video of one hand-rendered anchor (encoded by the toy's VAE), regenerated from t_regen·T
    (with `hold`, that frame held to the anchor); the detector's reading of the prompted object."""
    from vgen.core.prompts import encode_prompt
    from vgen.core.sampler import decode_latents, encode_frames, to_uint8
    from vgen.core.schedulers import prepare_scheduler
    from vgen.toyworld import BackgroundSpec, ObjectLayout, ObjectSpec, Scene, render_image, score_video

    colour, shape = prompt.split()[1:3]
    image = render_image(Scene((ObjectLayout(ObjectSpec(colour, shape, "still"), x, y, 14.0, 0.0),),
                               BackgroundSpec(grey=128), 64))
    anchor = encode_frames(toy, image[None])
    video = anchor.repeat(1, 1, 8, 1, 1)
    sched = prepare_scheduler("ddim", toy.scheduler, steps, "cpu")
    timesteps = I.regen_timesteps(sched, t_regen)
    out = I.regenerate(toy, sched, timesteps, video, encode_prompt(toy, prompt, "", 5.0), 5.0,
                       torch.Generator().manual_seed(seed), progress=False, anchor=anchor, hold=hold)
    if latents:
        return anchor, out
    return score_video(to_uint8(decode_latents(toy, out)[0]), prompt).objects[0]


@pytest.mark.parametrize("prompt, x, y", [("a red circle moving right", 20.0, 32.0), ("a blue square moving down", 32.0, 20.0)])
def test_a_regeneration_from_the_top_of_the_schedule_moves_the_anchor_as_prompted(toy, prompt, x, y):
    """The static anchor video, re-noised to the schedule's first timestep (p_re = 1), comes out moving the
    prompted way and keeps the anchor's object; the detector reads it."""
    o = _regenerate_static(toy, prompt, x, y, 1.0)
    assert o.present and o.colour_ok and o.shape_ok
    assert o.motion == prompt.split()[-1]


def test_a_shallow_regeneration_freezes_the_anchor(toy):
    """Why the earlier toy videos froze: re-noised only to 0.7·T, the static anchor stays static."""
    o = _regenerate_static(toy, "a red circle moving right", 20.0, 32.0, 0.7)
    assert o.present and o.motion == "still"


def test_hold_frame_rule():
    assert [I.hold_frame(rule, 8) for rule in ("none", "first", "middle")] == [None, 0, 4]
    assert I.hold_frame("middle", 16) == 8 and I.hold_frame("middle", 1) == 0


def test_a_held_frame_ends_as_the_anchor_and_the_others_do_not(toy):
    """regen_hold (ours): the held frame's latent is exactly the anchor's after the last step; the others are the
    model's (a static copy would be a frozen video)."""
    anchor, out = _regenerate_static(toy, "a red circle moving right", 20.0, 32.0, 1.0, hold=4, latents=True)
    assert torch.equal(out[:, :, 4:5], anchor)
    others = out[:, :, [0, 1, 2, 3, 5, 6, 7]]
    assert (others - anchor).abs().amax(dim=(0, 1, 3, 4)).min() > 0.1


def _animate_and_regenerate_holding(toy, prompt, x, y, seed, steps=20, hold=4, release_below=0.0):
    """The runner's path on a hand-rendered anchor: NI-VSDS (official schedule and step sizes), then the
    regeneration from the top with the anchor held in frame `hold` (to the end by default); the detector's
    reading of the object."""
    from vgen.core.noise import iid_noise
    from vgen.core.prompts import encode_prompt
    from vgen.core.sampler import decode_latents, encode_frames, to_uint8
    from vgen.core.schedulers import prepare_scheduler
    from vgen.toyworld import BackgroundSpec, ObjectLayout, ObjectSpec, Scene, render_image, score_video

    colour, shape = prompt.split()[1:3]
    image = render_image(Scene((ObjectLayout(ObjectSpec(colour, shape, "still"), x, y, 14.0, 0.0),),
                               BackgroundSpec(grey=128), 64))
    anchor = encode_frames(toy, image[None])
    video = anchor.repeat(1, 1, 8, 1, 1)
    embeds = encode_prompt(toy, prompt, "", 5.0)
    gen = torch.Generator().manual_seed(seed)
    ts = I.official_vsds_timesteps(prepare_scheduler("ddim", toy.scheduler, steps, "cpu"))
    video = I.ni_vsds(toy, video, iid_noise(video.shape, gen, "cpu", torch.float32), embeds, 5.0, ts,
                      I.vsds_step_sizes(len(ts), 3, 10.0, 1.0), progress=False)
    sched = prepare_scheduler("ddim", toy.scheduler, steps, "cpu")
    out = I.regenerate(toy, sched, I.regen_timesteps(sched, 1.0), video, embeds, 5.0, gen, progress=False,
                       anchor=anchor, hold=hold, release_below=release_below)
    return score_video(to_uint8(decode_latents(toy, out)[0]), prompt).objects[0]


@pytest.mark.parametrize("prompt, axis", [("a red circle moving right", 0), ("a blue square moving down", 1)])
def test_holding_the_anchor_in_the_middle_frame_keeps_it_and_moves_through_it(toy, prompt, axis):
    """The hold's mechanism (held to the last step, regen_hold_until 0) on a hand-placed anchor at the centre,
    3 seeds: the object is the anchor's in every video, moves the prompted way in at least 2 of 3, and where it
    does it came from at least 6 px before the anchor's place (the other frames build the motion through the
    held frame rather than starting at it). With the default release at 0.6·T the model may move the object
    off the anchor's place; scripts/compare_i4vgen.py measures that setting."""
    readings = [_animate_and_regenerate_holding(toy, prompt, 32.0, 32.0, seed) for seed in range(3)]
    assert all(o.present and o.colour_ok and o.shape_ok for o in readings)
    moving = [o for o in readings if o.motion == prompt.split()[-1]]
    assert len(moving) >= 2
    for o in moving:
        assert o.trajectory[0][axis] < 32.0 - 6.0


def test_regeneration_with_given_noise_is_the_fresh_draw_replaced(tiny):
    """regen_noise=vsds hands NI-VSDS's ε to the re-noising: the result is exactly the regeneration whose fresh
    draw happened to be that ε, and with eta 0 the generator no longer matters."""
    from vgen.core.noise import iid_noise
    from vgen.core.prompts import encode_prompt
    from vgen.core.schedulers import prepare_scheduler

    m = tiny("tiny-random-unet3d")
    embeds = encode_prompt(m, "a red circle", "", 5.0)
    video = torch.randn((1, m.latent_channels, 4, 8, 8), generator=torch.Generator().manual_seed(1))

    def regen(generator, noise=None):
        sched = prepare_scheduler("ddim", m.scheduler, 4, "cpu")
        return I.regenerate(m, sched, I.regen_timesteps(sched, 1.0), video, embeds, 5.0, generator, progress=False,
                            noise=noise)

    eps = iid_noise(video.shape, torch.Generator().manual_seed(7), m.device, m.dtype)
    fresh = regen(torch.Generator().manual_seed(7))
    given = regen(torch.Generator().manual_seed(123), noise=eps)
    assert torch.equal(given, fresh)
    assert not torch.equal(regen(torch.Generator().manual_seed(123)), fresh)


def _compare_script():
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_i4vgen.py"
    spec = importlib.util.spec_from_file_location("compare_i4vgen", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_i4vgen_reads_motion_along_the_prompt_and_sets_jumps_apart():
    """Hand-made tracks: 3 px/frame right, missing frames skipped; a teleport of 20 px is a jump (the world's top speed
    is 3.5 px/frame at 64 px, so 7 px is the limit there and 14 px at 128)."""
    C = _compare_script()
    right = [[10 + 3 * i, 30] for i in range(8)]
    right[3] = [None, None]
    assert C.along_prompt(right, "right") == pytest.approx(21.0)
    assert C.along_prompt(right, "left") == pytest.approx(-21.0)
    assert C.along_prompt(right, "down") == pytest.approx(0.0)
    assert C.along_prompt(right, "still") is None
    assert C.jump_limit(64) == pytest.approx(7.0) and C.jump_limit(128) == pytest.approx(14.0)
    teleport = [[10, 30]] * 4 + [[30, 30]] * 4
    record = {"index": 0, "frame_px": 64, "objects": [
        {"present": True, "spec": "red circle right", "trajectory": right, "displacement_px": 21.0,
         "largest_step_px": 6.0, "colour_shape_ok": True, "motion_ok": True, "prompted_moving": True},
        {"present": True, "spec": "blue square still", "trajectory": teleport, "displacement_px": 20.0,
         "largest_step_px": 20.0, "colour_shape_ok": True, "motion_ok": False, "prompted_moving": False},
        {"present": False, "spec": "green diamond up", "trajectory": [[None, None]] * 8, "displacement_px": None,
         "largest_step_px": None, "colour_shape_ok": False, "motion_ok": False, "prompted_moving": True}]}
    moves = C.object_motion(record, [19.0, 0.0, 18.0])
    assert [(m["jump"], m["along"], m["world"]) for m in moves] == [(False, pytest.approx(21.0), 19.0), (True, None, 0.0)]
    summary = C.summarize([{**record, "all_present": False, "all_correct": False, "anchor": None, "seconds": 1.0}],
                          {0: [19.0, 0.0, 18.0]})
    assert summary["jump_rate"] == 0.5 and summary["smooth_disp_px"] == 21.0 and summary["along_px"] == 21.0
    assert summary["world_px"] == pytest.approx(9.5)


def test_the_world_reference_moves_a_still_object_zero_and_a_moving_one_at_the_worlds_speed():
    """The toy world draws speeds of 2-3.5 px/frame at 64 px (capped to fit the frame): 7 frame steps give 14-24.5."""
    C = _compare_script()
    still, moving = C.world_displacement("a red circle staying still and a blue square moving up", 8, 64, draws=16)
    assert still == 0.0
    assert 14.0 <= moving <= 24.5
    assert C.world_displacement("a red circle moving left", 8, 128, draws=16)[0] >= 28.0  # speeds scale with the frame


def test_compare_i4vgen_counts_what_each_prompted_moving_object_did():
    C = _compare_script()
    obj = lambda spec, present, motion: {"spec": spec, "present": present, "motion": motion}
    record = {"objects": [obj("red circle right", True, "right"), obj("blue square up", True, "still"),
                          obj("green diamond left", True, "right"), obj("purple triangle down", True, "left"),
                          obj("orange circle down", False, None), obj("yellow square still", True, "left")]}
    assert C.motion_verdicts([record]) == {"right way": 1, "still": 1, "sideways": 1, "backwards": 1, "missing": 1}


@pytest.mark.parametrize("won, lost", [(0, 0), (3, 0), (15, 6), (6, 15), (20, 20), (1, 30)])
def test_the_sign_test_is_scipys_exact_two_sided_binomial_test(won, lost):
    from scipy.stats import binomtest

    from vgen.eval.stats import sign_test_p

    expected = 1.0 if won + lost == 0 else binomtest(min(won, lost), won + lost, 0.5).pvalue
    assert sign_test_p(won, lost) == pytest.approx(expected, rel=1e-12)
    assert sign_test_p(3, 0) == pytest.approx(0.25)  # by hand: 2 * (1/2)^3


def _flag_record(method, index, present, disp=10.0):
    obj = {"spec": "red circle right", "present": True, "colour_shape_ok": present, "motion_ok": True, "motion": "right",
           "displacement_px": disp, "largest_step_px": 2.0, "prompted_moving": True,
           "trajectory": [[10.0, 30.0], [10.0 + disp, 30.0]]}
    return {"method": method, "index": index, "objects_n": 1, "all_present": present, "all_correct": present,
            "objects": [obj], "anchor": None, "seconds": 1.0, "frame_px": 64}


def test_the_paired_bootstrap_interval_matches_the_closed_form_for_paired_proportions():
    """400 prompts: the method wins 60, loses 30, 150 both yes, 160 both no. The paired difference is (60 - 30)/400
    = 7.5 points with standard error sqrt(b + c - (b - c)^2 / n) / n = 2.34 points: 95% about [2.9, 12.1]."""
    C = _compare_script()
    pattern = [(True, False)] * 60 + [(False, True)] * 30 + [(True, True)] * 150 + [(False, False)] * 160
    records = []
    for i, (mine, base) in enumerate(pattern):
        records += [_flag_record("i4vgen", i, mine, disp=12.0), _flag_record("vanilla", i, base, disp=10.0)]
    found = C.paired_intervals(records, "i4vgen", draws=2000, seed=1)
    value, low, high = found["all_present"]
    se = np.sqrt(60 + 30 - 30**2 / 400) / 400 * 100
    assert value == pytest.approx(7.5)
    assert low == pytest.approx(7.5 - 1.96 * se, abs=0.6) and high == pytest.approx(7.5 + 1.96 * se, abs=0.6)
    assert found["disp_px"] == pytest.approx((1.2, 1.2, 1.2))  # every pair moves 12 px against 10: no spread
    assert found["motion_ok"] == pytest.approx((1.0, 1.0, 1.0))


def test_compare_i4vgen_offset_continues_the_same_prompt_sequence_with_the_same_seeds():
    """--offset K runs prompts K.. of the sequence a longer run has, with the seeds that run gives them, so settings
    tuned on the first prompts are checked on others."""
    from types import SimpleNamespace

    C = _compare_script()
    whole = C.choose_prompts(12, [1, 2, 3], 0)
    assert C.choose_prompts(6, [1, 2, 3], 0) == whole[:6]
    assert C.choose_prompts(6, [1, 2, 3], 0, offset=6) == whole[6:]
    args = SimpleNamespace(variants=[], model="tiny-random-unet3d", seed=3, offset=6, steps=2, guidance=5.0,
                           scheduler="ddim", frames=2, device="cpu", dtype="float32", overrides=[])
    jobs = C.build_jobs(args, whole[6:])
    assert [job.seed for job in jobs["vanilla"]] == [3 + 6 + j for j in range(6)]
    assert [job.prompt for job in jobs["i4vgen"]] == [p for _, p in whole[6:]]


def _oracle_run(variant: str, prompt: str, seed: int = 5):
    """compare_i4vgen's oracle row for one toy prompt, run as the script runs it (8 frames, DDIM 20)."""
    from types import SimpleNamespace

    from vgen.jobs import ModelCache

    C = _compare_script()
    args = SimpleNamespace(variants=[variant], model="toy", seed=seed, offset=0, steps=20, guidance=5.0,
                           scheduler="ddim", frames=8, device="cpu", dtype="float32", overrides=[])
    job = C.build_jobs(args, [(2, prompt)])["i4vgen+1"][0]
    video, _ = C.run_one(job, ModelCache(), Path("/tmp/oracle"), C.method_overrides([variant])["i4vgen+1"][2])
    return C, job, video


def test_the_oracle_clip_regenerated_by_one_step_is_read_as_the_toy_worlds_own_clip():
    """oracle=clip hands the regeneration the toy world's own clip for the prompt; regenerated over the last step
    only (t_regen 0.05 of 20 steps) it must come back as that clip: the detector finds every object right in
    colour, shape and prompted motion, and the frames stay within a few grey levels of the renderer's."""
    from vgen.toyworld import score_video

    prompt = "a red circle moving right and a blue square moving down"
    C, job, video = _oracle_run("oracle=clip i4vgen.t_regen=0.05", prompt)
    assert video.metadata["regeneration"]["timesteps"] == [1]
    score = score_video(video.frames, prompt)
    assert score.all_correct and not score.extra_objects
    clip = C.oracle_clip(prompt, job.seed, 8, 64, 64)
    assert np.abs(video.frames.astype(float) - clip.astype(float)).mean() < 6.0


def test_the_oracle_anchor_is_the_only_candidate_and_the_rest_of_i4vgen_runs_on_it():
    """oracle=anchor makes the toy world's scene (the frame the regeneration holds) I4VGen's only candidate: the
    sidecar's one reward is the toy reward of that rendered frame, and NI-VSDS still runs (its timesteps are there)."""
    from vgen.methods.i4vgen.rewards import load_reward

    prompt = "a green triangle moving left"
    C, job, video = _oracle_run("oracle=anchor", prompt)
    frame = C.oracle_frame(job)
    assert frame == 4  # the toy holds the middle frame
    expected = load_reward("toy", None, "cpu")(C.oracle_clip(prompt, job.seed, 8, 64, 64)[frame][None], prompt)
    assert video.metadata["anchor"]["scores"] == [round(float(expected[0]), 6)]
    assert len(video.metadata["ni_vsds"]["timesteps"]) == 13


def test_the_oracle_latents_decode_to_the_world_where_the_vaes_encoding_blurs_the_shapes(toy):
    """The toy VAE's encoding of a world clip blurs diamonds into what the detector calls circles; the oracle's
    latents, refined on the decoder, decode to the renderer's clip: every object right in colour and shape in every
    frame, and a smaller pixel error than the plain encoding's."""
    from vgen.core.sampler import decode_latents, encode_frames, to_uint8
    from vgen.toyworld import score_video

    C = _compare_script()
    prompt = "a green diamond moving left and a red diamond moving up"
    clip = C.oracle_clip(prompt, 3, 8, 64, 64)
    assert score_video(clip, prompt).all_correct  # the renderer's clip: the reference

    def error_and_score(latents):
        with torch.no_grad():
            frames = to_uint8(decode_latents(toy, latents)[0])
        return np.abs(frames.astype(float) - clip.astype(float)).mean(), score_video(frames, prompt)

    plain_error, plain = error_and_score(encode_frames(toy, clip))
    refined_error, refined = error_and_score(C.oracle_latents(toy, clip))
    assert not all(o.shape_ok for o in plain.objects)  # what the refinement is for
    assert refined.all_correct and refined_error < plain_error


def test_a_bad_oracle_in_a_variant_is_one_clear_error():
    C = _compare_script()
    with pytest.raises(SystemExit, match="oracle="):
        C.method_overrides(["oracle=perfect"])
    assert C.method_overrides(["oracle=clip i4vgen.t_regen=0.9"])["i4vgen+1"] == ("i4vgen", ["i4vgen.t_regen=0.9"], "clip")
