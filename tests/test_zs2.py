"""ZS2: dependency noise moments, momentum attention against exact references, the runner end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_job, run_vanilla, vgen_in_process
from vgen.core.attention import attention_processors
from vgen.methods.zs2.attention import FrameState, MomentumAttnProcessor, momentum_factory, momentum_sites
from vgen.core.noise import ar1_noise, ar_matrix, iid_noise
from vgen.methods.zs2.noise import rho_from_lambda
from vgen.core.sampler import to_uint8

MODEL = {"model.id": "tiny-random-unet2d", "sampler.steps": 3, "video.frames": 4, "seed": 5}


def draw(rho, shape, seed=0):
    return ar1_noise(rho)(shape, torch.Generator("cpu").manual_seed(seed), torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("shape", [(1, 4, 8, 64, 64), (3, 4, 6, 32, 32)])
def test_ar1_noise_moments(shape):
    rho = 0.8
    eps = draw(rho, shape).double()
    per_frame = eps.transpose(1, 2).reshape(shape[0], shape[2], -1)  # [B, F, n]
    n = per_frame.shape[-1]
    tol = 6 / math.sqrt(n)  # six standard errors
    assert per_frame.mean(-1).abs().max() < tol
    assert (per_frame.var(-1) - 1).abs().max() < 2 * tol * math.sqrt(2)
    adjacent = (per_frame[:, 1:] * per_frame[:, :-1]).mean(-1)  # per pair of frames
    assert (adjacent - rho).abs().max() < 2 * tol
    lag2 = (per_frame[:, 2:] * per_frame[:, :-2]).mean(-1)
    assert (lag2 - rho**2).abs().max() < 2 * tol
    if shape[0] > 1:  # batch elements stay independent
        assert (per_frame[0] * per_frame[1]).mean(-1).abs().max() < 2 * tol


def test_ar1_noise_rho_zero_is_iid_noise_of_the_same_seed():
    shape = (2, 4, 5, 8, 8)
    iid = iid_noise(shape, torch.Generator("cpu").manual_seed(3), torch.device("cpu"), torch.float32)
    assert torch.equal(draw(0.0, shape, seed=3), iid)
    assert torch.equal(draw(rho_from_lambda(100.0), shape, seed=3), iid)  # λ large clamps ρ to 0


def test_lambda_maps_to_rho_and_extremes_stay_finite():
    assert rho_from_lambda(0.1) == pytest.approx(1 - 0.1 * math.exp(-0.5))
    assert rho_from_lambda(0.0) == 1.0 and rho_from_lambda(50.0) == 0.0
    same = draw(rho_from_lambda(0.0), (2, 4, 5, 8, 8))  # ρ = 1: every frame is frame 0
    assert torch.isfinite(same).all()
    assert torch.equal(same, same[:, :, :1].expand_as(same))
    assert torch.isfinite(draw(rho_from_lambda(1e6), (1, 4, 3, 8, 8))).all()


def test_ar_matrix_is_the_recursion():
    x = torch.randn(5, 3, dtype=torch.float64)
    y = [x[0]]
    for i in range(1, 5):
        y.append(0.7 * y[-1] + 0.2 * x[i])
    assert torch.allclose(ar_matrix(5, 0.7, 0.2) @ x, torch.stack(y))


# ---------------------------------------------------------------------------------------------- attention


def _attention(seed=0):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(seed)
    return Attention(query_dim=8, heads=2, dim_head=4).eval()


def test_momentum_attention_matches_a_hand_computed_case():
    """Intermediate μ against a loop over frames and heads with explicit softmax attention."""
    attn, mu, groups, frames, tokens = _attention(), 0.6, 2, 3, 5
    h = torch.randn(groups * frames, tokens, 8)
    with torch.no_grad():
        ours = MomentumAttnProcessor(mu, FrameState(frames))(attn, h)
        q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
        expected = torch.empty_like(h)
        for g in range(groups):
            kt = vt = None
            for i in range(frames):
                j = g * frames + i
                kt = k[j] if kt is None else mu * kt + (1 - mu) * k[j]
                vt = v[j] if vt is None else mu * vt + (1 - mu) * v[j]
                heads = []
                for head in range(2):
                    sl = slice(4 * head, 4 * head + 4)
                    weights = torch.softmax(q[j][:, sl] @ kt[:, sl].T / 2.0, dim=-1)
                    heads.append(weights @ vt[:, sl])
                expected[j] = attn.to_out[0](torch.cat(heads, dim=-1))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_momentum_attention_ends_match_diffusers_processors_exactly():
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor,
        CrossFrameAttnProcessor2_0,
    )

    attn, h = _attention(), torch.randn(2 * 4, 6, 8)  # uncond + cond halves of 4 frames
    with torch.no_grad():
        state = FrameState(4)
        assert torch.equal(MomentumAttnProcessor(0.0, state)(attn, h), AttnProcessor2_0()(attn, h))
        assert torch.equal(MomentumAttnProcessor(1.0, state, sdpa=False)(attn, h), CrossFrameAttnProcessor(2)(attn, h))
        assert torch.equal(MomentumAttnProcessor(1.0, state)(attn, h), CrossFrameAttnProcessor2_0(2)(attn, h))
        state.active = False  # outside the step range: plain attention
        assert torch.equal(MomentumAttnProcessor(1.0, state)(attn, h), AttnProcessor2_0()(attn, h))


def _denoise(components, factory, frames=4):
    from vgen.core.noise import iid_noise
    from vgen.core.prompts import encode_prompt
    from vgen.core.sampler import denoise, initial_latents, latent_shape
    from vgen.core.schedulers import prepare_scheduler

    scheduler = prepare_scheduler("euler", components.scheduler, 3, components.device)
    gen = torch.Generator("cpu").manual_seed(1)
    latents = initial_latents(components, latent_shape(components, frames, 32, 32), gen, scheduler, iid_noise)
    prompt = encode_prompt(components, "a red circle moving left", "", 7.5)
    with attention_processors(components.unet, factory):
        return denoise(components, scheduler, latents, prompt, 7.5, progress=False)


def test_momentum_one_samples_like_text2video_zero_cross_frame_attention(tiny):
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor

    c = tiny("tiny-random-unet2d")
    theirs = _denoise(c, lambda layer: CrossFrameAttnProcessor(2) if layer.role == "spatial-self" else None)
    ours = _denoise(c, momentum_factory(1.0, FrameState(4), momentum_sites(c), sdpa=False))
    assert torch.equal(ours, theirs)


# ---------------------------------------------------------------------------------------------- runner


def run_zs2(components, job):
    from vgen.core.sampler import resolve_size
    from vgen.jobs import RunContext
    from vgen.methods.zs2.runner import run

    h, w = resolve_size(components, job.video.height, job.video.width)
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=h, width=w, output_stem=Path("unused"), progress=False)
    return run(job, components, ctx)


def test_zs2_with_iid_noise_and_zero_momentum_is_per_frame_sampling(tiny):
    c = tiny("tiny-random-unet2d")
    ours = run_zs2(c, make_job(**MODEL, method="zs2", **{"zs2.rho": 0.0, "zs2.momentum": 0.0}))
    assert np.array_equal(ours.frames, run_vanilla(c, make_job(**MODEL)))
    assert ours.metadata["rho"] == 0.0 and ours.metadata["momentum"] == 0.0 and ours.metadata["layers"] == 4


def test_frame_chunks_carry_the_running_average(tiny):
    c = tiny("tiny-random-unet2d")
    keys = {**MODEL, "method": "zs2", "zs2.momentum": 0.7, "sampler.scheduler": "dpm++"}
    whole = run_zs2(c, make_job(**keys)).frames.astype(int)
    chunked = run_zs2(c, make_job(**keys, **{"zs2.frame_chunk": 3}))
    assert np.abs(whole - chunked.frames).max() <= 1 and chunked.metadata["frame_chunk"] == 3


def test_step_range_and_layer_filter(tiny):
    c = tiny("tiny-random-unet2d")
    plain = run_zs2(c, make_job(**MODEL, method="zs2", **{"zs2.momentum": 0.0}))
    off = run_zs2(c, make_job(**MODEL, method="zs2", **{"zs2.momentum": 0.9, "zs2.step_start": 0.5, "zs2.step_end": 0.5}))
    assert off.metadata["momentum_steps"] == 0 and np.array_equal(off.frames, plain.frames)
    some = run_zs2(c, make_job(**MODEL, method="zs2", **{"zs2.momentum": 0.9, "zs2.layers": ["up_blocks"]}))
    assert some.metadata["layers"] == 2 and not np.array_equal(some.frames, plain.frames)


def test_editing_an_input_video(tiny, tmp_path):
    from vgen.video import Video, write_mp4

    c = tiny("tiny-random-unet2d")
    source = np.zeros((3, 48, 48, 3), np.uint8)
    source[:, 10:30, 10:30, 0] = 255
    path = write_mp4(Video(source, fps=8), tmp_path / "in.mp4")
    job = make_job(**MODEL, method="zs2", **{"zs2.init_video": str(path), "zs2.strength": 0.7, "sampler.scheduler": "euler"})
    out = run_zs2(c, job)
    assert out.frames.shape == (3, 32, 32, 3)
    assert out.metadata["strength"] == 0.7 and out.metadata["steps_run"] == 2 and out.metadata["frames_edited"] == 3


def test_generate_zs2_from_the_command_line(tmp_path):
    r = vgen_in_process("generate", "a red circle moving left", "--method", "zs2", "--model", "tiny-random-unet2d",
                        "--steps", "2", "--frames", "3", "--out", tmp_path, "zs2.lam=0.2", "zs2.frame_chunk=2")
    assert r.returncode == 0, r.stderr
    side = json.loads(Path(r.stdout.splitlines()[0]).with_suffix(".json").read_text())
    assert side["method"] == "zs2" and side["video"]["frames"] == 3
    assert side["method_info"]["rho"] == pytest.approx(rho_from_lambda(0.2)) and side["method_info"]["momentum"] == 0.98
    from vgen.methods import get_method

    assert get_method("zs2").kinds == ("unet2d", "wan", "ltx")  # run_job refuses other kinds with one line


# ---------------------------------------------------------------------------------------------- Wan's image mode


def test_image_mode_makes_frames_images_where_the_family_can(tiny):
    """Wan's image mode: 5 frames are 5 latent frames (not (5 - 1) // 4 + 1 = 2), attn1 becomes "spatial-self", the
    original components stay a video model; a UNet3D model has no image mode: one ConfigError line."""
    from vgen.errors import ConfigError

    wan = tiny("tiny-random-wan")
    image = wan.family.image_model(wan)
    assert wan.family.latent_shape(wan, 5, 32, 32)[2] == 2 and image.family.latent_shape(image, 5, 32, 32)[2] == 5
    roles = {site.key: site.role for site in image.family.attention_sites(image)}
    assert roles["blocks.0.attn1.processor"] == "spatial-self" and roles["blocks.0.attn2.processor"] == "cross"
    assert {site.role for site in wan.family.attention_sites(wan)} == {"self", "cross"}
    unet2d = tiny("tiny-random-unet2d")
    assert unet2d.family.image_model(unet2d) is unet2d
    video = tiny("tiny-random-unet3d")
    with pytest.raises(ConfigError, match="families that can: unet2d, wan, ltx"):
        video.family.image_model(video)


def _wan_attn1(c, groups=2, frames=3, seed=0):
    """Tiny Wan's first self-attention, random hidden states for groups·frames one-frame videos, its RoPE."""
    torch.manual_seed(seed)
    attn = c.unet.blocks[0].attn1
    latents = torch.randn(1, 16, 1, 8, 8)  # one latent frame of 8x8 -> 16 tokens after the 2x2 patches
    rotary = c.unet.rope(latents)
    h = torch.randn(groups * frames, rotary[0].shape[1], attn.inner_dim)
    return attn, h, rotary


def _capture_kv(monkeypatch):
    """Keys and values as the processor hands them to the attention kernel (after RoPE and the mix)."""
    from diffusers.models import attention_dispatch

    seen, real = [], attention_dispatch.dispatch_attention_fn

    def spy(query, key, value, **kwargs):
        seen.append((key.clone(), value.clone()))
        return real(query, key, value, **kwargs)

    monkeypatch.setattr(attention_dispatch, "dispatch_attention_fn", spy)
    return seen


def test_wan_momentum_zero_and_inactive_equal_wan_attn_processor_exactly(tiny):
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    from vgen.methods.zs2.attention import WanMomentumAttnProcessor

    attn, h, rotary = _wan_attn1(tiny("tiny-random-wan"))
    with torch.no_grad():
        theirs = WanAttnProcessor()(attn, h, None, None, rotary)
        assert torch.equal(WanMomentumAttnProcessor(0.0, FrameState(3))(attn, h, None, None, rotary), theirs)
        off = FrameState(3, active=False)
        assert torch.equal(WanMomentumAttnProcessor(0.9, off)(attn, h, None, None, rotary), theirs)
        assert not torch.equal(WanMomentumAttnProcessor(0.9, FrameState(3))(attn, h, None, None, rotary), theirs)


def test_wan_momentum_after_rope_matches_a_hand_written_recursion(tiny):
    """Output of the processor at μ = 0.6 against projections, RMS norms, RoPE as complex rotations, the
    recursion on the rotated keys and values frame by frame, and softmax attention per head, all by hand."""
    from vgen.methods.zs2.attention import WanMomentumAttnProcessor

    attn, h, (cos, sin) = _wan_attn1(tiny("tiny-random-wan"))
    mu, groups, frames, heads = 0.6, 2, 3, attn.heads
    with torch.no_grad():
        ours = WanMomentumAttnProcessor(mu, FrameState(frames))(attn, h, None, None, (cos, sin))
        q, k, v = attn.norm_q(attn.to_q(h)).double(), attn.norm_k(attn.to_k(h)).double(), attn.to_v(h).double()
        angle = torch.atan2(sin[0, :, 0, 0::2], cos[0, :, 0, 0::2]).double()  # [N, d/2]: one angle per channel pair

        def rope(x):  # [N, heads*d] -> rotated, pairs as complex numbers
            pairs = torch.view_as_complex(x.reshape(x.shape[0], heads, -1, 2).contiguous())
            return torch.view_as_real(pairs * torch.polar(torch.ones_like(angle), angle)[:, None]).reshape(x.shape)

        d = q.shape[-1] // heads
        expected = torch.empty_like(h)
        for g in range(groups):
            kt = vt = None
            for i in range(frames):
                j = g * frames + i
                kr = rope(k[j])
                kt = kr if kt is None else mu * kt + (1 - mu) * kr
                vt = v[j] if vt is None else mu * vt + (1 - mu) * v[j]
                qr = rope(q[j])
                out = []
                for head in range(heads):
                    sl = slice(head * d, (head + 1) * d)
                    weights = torch.softmax(qr[:, sl] @ kt[:, sl].T / math.sqrt(d), dim=-1)
                    out.append(weights @ vt[:, sl])
                expected[j] = attn.to_out[0](torch.cat(out, dim=-1).float())
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_wan_momentum_one_gives_every_frame_frame_zeros_rotated_keys(tiny, monkeypatch):
    """Inside the processor: at μ = 1 each frame's keys and values are frame 0's of its group; at μ = 0.6 they are
    the naive recursion over the rotated keys of μ = 0; mixing after RoPE equals rotating the mixed keys (all
    frames share frame index 0)."""
    from vgen.methods.zs2.attention import WanMomentumAttnProcessor, rotate

    attn, h, rotary = _wan_attn1(tiny("tiny-random-wan"))
    seen = _capture_kv(monkeypatch)
    with torch.no_grad():
        for mu in (1.0, 0.0, 0.6):
            WanMomentumAttnProcessor(mu, FrameState(3))(attn, h, None, None, rotary)
    (k1, v1), (k0, v0), (k6, v6) = seen
    for x in (k1, v1):
        g = x.reshape(2, 3, *x.shape[1:])
        assert torch.equal(g, g[:, :1].expand_as(g))
    assert torch.equal(k1.reshape(2, 3, *k1.shape[1:])[:, 0], k0.reshape(2, 3, *k0.shape[1:])[:, 0])
    for mixed, plain in ((k6, k0), (v6, v0)):
        m, p = mixed.reshape(2, 3, *mixed.shape[1:]), plain.reshape(2, 3, *plain.shape[1:])
        running = p[:, 0]
        for i in range(1, 3):
            running = 0.6 * running + 0.4 * p[:, i]
            torch.testing.assert_close(m[:, i], running, rtol=1e-6, atol=1e-6)
    raw = attn.norm_k(attn.to_k(h)).unflatten(2, (attn.heads, -1)).reshape(2, 3, *k0.shape[1:])
    mixed_first = rotate(0.6 * (0.6 * raw[:, 0] + 0.4 * raw[:, 1]) + 0.4 * raw[:, 2], *rotary)
    torch.testing.assert_close(k6.reshape(2, 3, *k6.shape[1:])[:, 2], mixed_first, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model,frames", [("tiny-random-wan", 3), ("tiny-random-wan22", 2)])
def test_zs2_on_wan_with_iid_noise_and_zero_momentum_is_wan_pipeline_per_frame(tiny, model, frames):
    """ρ = 0, μ = 0: each frame is WanPipeline's 1-frame video from that frame's slice of the same noise
    (Wan 2.2: both experts, switched at the boundary, carry the processors)."""
    c = tiny(model)
    job = make_job(**{"model.id": model, "sampler.steps": 3, "video.frames": frames, "seed": 5, "method": "zs2",
                      "zs2.rho": 0.0, "zs2.momentum": 0.0, "sampler.guidance": 5.0, "video.height": 32,
                      "video.width": 32})
    ours = run_zs2(c, job)
    noise = torch.randn((1, 16, frames, 4, 4), generator=torch.Generator("cpu").manual_seed(5))
    pipe = c.family.pipeline(c)
    for i in range(frames):
        out = pipe("a red circle moving left", num_frames=1, height=32, width=32, num_inference_steps=3,
                   guidance_scale=5.0, latents=noise[:, :, i : i + 1], output_type="np").frames[0]
        assert np.array_equal(ours.frames[i : i + 1], to_uint8(torch.from_numpy(np.asarray(out))))
    assert ours.metadata["layers"] == 2


def test_zs2_on_wan_frame_chunks_carry_the_running_average(tiny):
    c = tiny("tiny-random-wan")
    keys = {"model.id": "tiny-random-wan", "sampler.steps": 2, "video.frames": 5, "seed": 2, "method": "zs2",
            "zs2.momentum": 0.8, "video.height": 32, "video.width": 32}
    whole = run_zs2(c, make_job(**keys))
    chunked = run_zs2(c, make_job(**keys, **{"zs2.frame_chunk": 2}))
    plain = run_zs2(c, make_job(**{**keys, "zs2.momentum": 0.0}))
    assert whole.frames.shape == (5, 32, 32, 3)  # any frame count: one latent frame per frame, no 4k+1 rounding
    assert np.abs(whole.frames.astype(int) - chunked.frames).max() <= 1
    assert not np.array_equal(whole.frames, plain.frames)


def test_ltx_momentum_zero_equals_its_processor_and_ltx_pipeline_per_frame(tiny):
    """LTX's image mode: the processor at μ = 0 is LTXVideoAttnProcessor exactly; ρ = 0, μ = 0 sampling gives each
    frame as LTXPipeline's 1-frame video from that frame's slice of the noise (packed as the pipeline packs it)."""
    from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor

    from vgen.methods.zs2.attention import LTXMomentumAttnProcessor

    c = tiny("tiny-random-ltx")
    attn = c.unet.transformer_blocks[0].attn1
    torch.manual_seed(0)
    h = torch.randn(6, 16, attn.to_q.in_features)
    rotary = tuple(torch.randn(1, 16, attn.to_q.out_features) for _ in range(2))
    with torch.no_grad():
        theirs = LTXVideoAttnProcessor()(attn, h, None, None, rotary)
        assert torch.equal(LTXMomentumAttnProcessor(0.0, FrameState(3))(attn, h, None, None, rotary), theirs)
        assert not torch.equal(LTXMomentumAttnProcessor(0.9, FrameState(3))(attn, h, None, None, rotary), theirs)

    frames = 3
    job = make_job(**{"model.id": "tiny-random-ltx", "sampler.steps": 3, "video.frames": frames, "seed": 4,
                      "method": "zs2", "zs2.rho": 0.0, "zs2.momentum": 0.0, "sampler.guidance": 3.0, "negative": "blurry"})
    ours = run_zs2(c, job)
    noise = torch.randn((1, 8, frames, 8, 8), generator=torch.Generator("cpu").manual_seed(4))
    pipe = c.family.pipeline(c)
    for i in range(frames):
        packed = pipe._pack_latents(noise[:, :, i : i + 1], 1, 1)
        out = pipe("a red circle moving left", negative_prompt="blurry", num_frames=1, height=32, width=32,
                   num_inference_steps=3, guidance_scale=3.0, latents=packed, output_type="np").frames[0]
        assert np.abs(ours.frames[i : i + 1].astype(int) - to_uint8(torch.from_numpy(np.asarray(out)))).max() <= 1


def test_zs2_on_wan_and_ltx_from_the_command_line(tmp_path):
    from vgen.video import Video, write_mp4

    source = np.zeros((3, 32, 32, 3), np.uint8)
    source[:, 8:20, 8:20, 0] = 255
    path = write_mp4(Video(source, fps=8), tmp_path / "in.mp4")
    r = vgen_in_process("generate", "a red circle", "--method", "zs2", "--model", "tiny-random-wan", "--steps", "2",
                        "--frames", "3", "--height", "32", "--width", "32", "--out", tmp_path, f"zs2.init_video={path}")
    assert r.returncode == 0, r.stderr
    side = json.loads(Path(r.stdout.splitlines()[0]).with_suffix(".json").read_text())
    assert side["model"]["kind"] == "wan" and side["method_info"]["frames_edited"] == 3
    r = vgen_in_process("generate", "a red circle", "--method", "zs2", "--model", "tiny-random-ltx", "--steps", "2",
                        "--frames", "3", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    r = vgen_in_process("generate", "a red circle", "--method", "zs2", "--model", "tiny-random-unet3d", "--out", tmp_path)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "runs on unet2d/wan/ltx models" in lines[0]
