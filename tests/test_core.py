"""Core pieces: tokenizer, token spans, processor install/restore, chunked decode, SDEdit timesteps."""

import pytest
import torch

from conftest import make_job, run_vanilla
from vgen.core.attention import attention_layers, attention_processors
from vgen.core.prompts import prompt_length, token_spans
from vgen.core.sampler import decode_latents, strength_timesteps
from vgen.core.schedulers import make_scheduler
from vgen.tokenizer import build_clip_tokenizer


def test_tokenizer_whole_words_and_any_text():
    tok = build_clip_tokenizer(["red", "circle"])
    ids = tok("a red circle!")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "!</w>", "<|endoftext|>"]
    assert tok.decode(ids, skip_special_tokens=True) == "a red circle !"


def test_token_spans_of_single_and_split_words(tiny):
    tok = tiny("tiny-random-unet3d").tokenizer
    prompt = "a cat and a zebra"
    spans = token_spans(tok, prompt, ["cat", "zebra"])
    assert spans["cat"] == [2]
    ids = tok(prompt)["input_ids"]
    zebra = tok("zebra", add_special_tokens=False)["input_ids"]
    assert len(zebra) > 1 and [ids[i] for i in spans["zebra"]] == zebra  # split word -> its whole span
    assert prompt_length(tok, prompt) == len(ids)
    with pytest.raises(ValueError, match="not in the prompt"):
        token_spans(tok, prompt, ["dog"])


def test_attention_processors_are_restored_even_on_error(tiny):
    unet = tiny("tiny-random-unet3d").unet
    before = dict(unet.attn_processors)
    roles = {layer.role for layer in attention_layers(unet)}
    assert roles == {"spatial-self", "cross", "temporal"}

    class Marker:
        def __call__(self, attn, hidden_states, *args, **kwargs):
            raise AssertionError("not called in this test")

    with pytest.raises(RuntimeError):
        with attention_processors(unet, lambda layer: Marker() if layer.role == "cross" else None) as installed:
            assert len(installed) == sum(layer.role == "cross" for layer in attention_layers(unet))
            assert all(isinstance(unet.attn_processors[name], Marker) for name in installed)
            raise RuntimeError
    assert {k: type(v) for k, v in unet.attn_processors.items()} == {k: type(v) for k, v in before.items()}


@pytest.mark.parametrize("cross, residual", [(False, False), (True, False), (False, True)])
def test_one_key_attention_is_diffusers_attention_with_one_key(cross, residual):
    """Against diffusers' own AttnProcessor2_0: the same output for one key (self-attention over one frame, or a
    cross-attention to one token), and the fallback's for more keys."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from vgen.methods.i4vgen.attention import OneKeyAttention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12 if cross else None, heads=2, dim_head=8,
                     residual_connection=residual, rescale_output_factor=2.0 if residual else 1.0)
    x = torch.randn(5, 3 if cross else 1, 16)
    context = torch.randn(5, 1, 12) if cross else None
    mine = OneKeyAttention(AttnProcessor2_0())
    torch.testing.assert_close(mine(attn, x, context), AttnProcessor2_0()(attn, x, context), atol=1e-6, rtol=1e-5)
    longer = torch.randn(5, 4, 12) if cross else None
    x_long = x if cross else torch.randn(5, 4, 16)
    torch.testing.assert_close(mine(attn, x_long, longer), AttnProcessor2_0()(attn, x_long, longer))


def test_one_frame_temporal_attention_leaves_a_one_frame_unet3d_output_unchanged(tiny):
    from vgen.methods.i4vgen.attention import OneKeyAttention, one_frame_temporal_attention

    unet = tiny("tiny-random-unet3d").unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, unet.config.in_channels, 1, 16, 16, generator=g)
    text = torch.randn(3, 7, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        before = unet(x, 500, encoder_hidden_states=text).sample
        with one_frame_temporal_attention(unet) as installed:
            assert installed and all(isinstance(p, OneKeyAttention) for p in installed.values())
            assert {layer.role for layer in attention_layers(unet) if layer.name in installed} == {"temporal"}
            after = unet(x, 500, encoder_hidden_states=text).sample
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(p, OneKeyAttention) for p in unet.attn_processors.values())


def test_decode_chunk_size_does_not_change_frames(tiny):
    c = tiny("tiny-random-unet3d")
    latents = torch.randn(2, 4, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    one = decode_latents(c, latents, chunk=1)
    all_ = decode_latents(c, latents, chunk=10)
    assert one.shape == (2, 5, 32, 32, 3)
    torch.testing.assert_close(one, all_, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strength", [0.3, 0.35, 0.45, 0.8, 1.0])
def test_strength_timesteps_with_floor_is_diffusers_img2img_rule_for_a_second_order_scheduler(strength):
    """Against diffusers' own StableDiffusionImg2ImgPipeline.get_timesteps on Heun (order 2: two timesteps per step)."""
    from types import SimpleNamespace

    from diffusers import HeunDiscreteScheduler, StableDiffusionImg2ImgPipeline

    ours, theirs = HeunDiscreteScheduler(), HeunDiscreteScheduler()
    for s in (ours, theirs):
        s.set_timesteps(10)
    expected, _ = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=theirs), 10, strength, "cpu")
    assert strength_timesteps(ours, strength, floor=True) == list(expected)
    assert ours.begin_index == theirs.begin_index


def test_strength_timesteps_takes_the_tail(tiny):
    s = make_scheduler("ddim", tiny("tiny-random-unet3d").scheduler)
    s.set_timesteps(10)
    assert strength_timesteps(s, 1.0) == list(s.timesteps)
    assert strength_timesteps(s, 0.3) == list(s.timesteps[7:])
    with pytest.raises(Exception, match="strength"):
        strength_timesteps(s, 0.0)


def test_cpu_offload_gives_the_same_frames():
    from vgen.config import ModelConfig
    from vgen.models import load_components

    job = make_job(**{"sampler.steps": 2, "video.frames": 2})
    plain = load_components(ModelConfig(id="tiny-random-unet3d"), "cpu", "float32")
    offload = load_components(ModelConfig(id="tiny-random-unet3d"), "cpu", "float32", cpu_offload=True)
    assert (run_vanilla(plain, job) == run_vanilla(offload, job)).all()


def test_held_frames_follow_the_known_latents_noised_by_the_closed_form():
    """vgen.core.inpaint: after step i the held frames are sqrt(ab)·clean + sqrt(1-ab)·noise at timesteps[i+1]
    (ab = alphas_cumprod there), exactly `clean` after the last step; the other frames are untouched."""
    from diffusers import DDIMScheduler

    from vgen.core.inpaint import hold_frames

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sched.set_timesteps(5)
    ts = list(sched.timesteps)
    g = torch.Generator().manual_seed(0)
    latents, clean, noise = (torch.randn(1, 4, n, 3, 3, generator=g) for n in (6, 2, 2))
    hook = hold_frames(sched, ts, clean, noise, start=3)
    for i in (0, 2):
        ab = float(sched.alphas_cumprod[int(ts[i + 1])])
        out = hook(i, ts[i], latents)
        assert torch.allclose(out[:, :, 3:5], ab ** 0.5 * clean + (1 - ab) ** 0.5 * noise, atol=1e-6)
        assert torch.equal(out[:, :, :3], latents[:, :, :3]) and torch.equal(out[:, :, 5:], latents[:, :, 5:])
    assert torch.equal(hook(len(ts) - 1, ts[-1], latents)[:, :, 3:5], clean)


def test_held_frames_are_released_below_the_given_timestep():
    """release_below: held while the next timestep is >= it, the model's from then on (and after the last step)."""
    from diffusers import DDIMScheduler

    from vgen.core.inpaint import hold_frames

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          steps_offset=1)
    sched.set_timesteps(10)
    ts = [int(t) for t in sched.timesteps]  # 901, 801, ..., 1
    g = torch.Generator().manual_seed(1)
    latents, clean, noise = (torch.randn(1, 4, n, 2, 2, generator=g) for n in (3, 1, 1))
    hook = hold_frames(sched, ts, clean, noise, start=1, release_below=600)
    held = [not torch.equal(hook(i, ts[i], latents), latents) for i in range(len(ts))]
    assert held == [ts[i + 1] >= 600 if i + 1 < len(ts) else False for i in range(len(ts))]
    assert held[:3] == [True, True, True] and held[3] is False  # next timesteps 801, 701, 601 held; 501 not


def test_prediction_conversions_recover_x0_and_epsilon_in_closed_form():
    """x_t = α·x0 + σ·ε; each prediction type's output, built from (x0, ε) by its definition, converts back."""
    from vgen.core.schedulers import to_epsilon, to_x0

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    for sigma in (0.1, 0.5, 0.93):
        vp_alpha, vp_sigma = (1 - sigma**2) ** 0.5, sigma  # VP: α² + σ² = 1
        cases = {
            "epsilon": (vp_alpha, vp_sigma, eps),
            "v_prediction": (vp_alpha, vp_sigma, vp_alpha * eps - vp_sigma * x0),
            "sample": (vp_alpha, vp_sigma, x0),
            "flow": (1 - sigma, sigma, eps - x0),  # rectified flow: α = 1 - σ, velocity ε - x0
        }
        for kind, (a, s, out) in cases.items():
            x_t = a * x0 + s * eps
            assert torch.allclose(to_x0(out, x_t, a, s, kind), x0, atol=1e-5), kind
            assert torch.allclose(to_epsilon(out, x_t, a, s, kind), eps, atol=1e-5), kind


def test_flow_noise_level_and_x0_agree_with_unipc_flow_scheduler():
    """σ at a timestep is the scheduler's own, and x0 = x - σ·v is what UniPC's convert_model_output computes."""
    from diffusers import UniPCMultistepScheduler

    from vgen.core.schedulers import noise_level, prediction_type, to_x0

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sched.set_timesteps(10)
    assert prediction_type(sched) == "flow"
    x, v = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    for i in (0, 4, 9):
        t = sched.timesteps[i]
        alpha, sigma = noise_level(sched, t)
        assert sigma == float(sched.sigmas[i]) and alpha == 1 - sigma
        sched._step_index = i
        reference = sched.convert_model_output(v, sample=x)
        assert torch.allclose(to_x0(v, x, alpha, sigma, "flow"), reference, atol=1e-6)
