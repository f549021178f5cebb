"""I4VGen on Wan (tiny-random-wan, tiny-random-wan22) against diffusers' own scheduler arithmetic, WanPipeline's
sampling and expert rule, and the causal VAE's encoding of a still video."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_job, run_vanilla
from vgen.core.prompts import encode_prompt
from vgen.core.sampler import to_uint8
from vgen.core.schedulers import add_noise, noise_level, prepare_scheduler, to_epsilon, to_x0
from vgen.methods.i4vgen import runner as I

PROMPT = "a red circle moving left"


def _run(c, job):
    """The i4vgen runner on loaded components, without writing files."""
    from vgen.core.sampler import resolve_size
    from vgen.methods.context import RunContext

    h, w = resolve_size(c, job.video.height, job.video.width)
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=h, width=w,
                     output_stem=Path("unused"), progress=False)
    return I.run(job, c, ctx)


def _job(model, **keys):
    base = {"method": "i4vgen", "model.id": model, "sampler.steps": 4, "video.frames": 5, "seed": 3,
            "i4vgen.candidates": 2, "i4vgen.save_candidates": False}
    return make_job(PROMPT, **{**base, **keys})


class _Calls:
    """Forward pre-hooks on the experts: (expert index, timestep) of every model call, in order."""

    def __init__(self, c):
        self.calls, self.handles = [], []
        for index, model in enumerate(m for m in (c.unet, c.unet_2) if m is not None):
            self.handles.append(model.register_forward_pre_hook(self._hook(index), with_kwargs=True))

    def _hook(self, index):
        def hook(module, args, kwargs):
            self.calls.append((index, float(kwargs["timestep"].flatten()[0])))

        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------- flow arithmetic


def _flow_euler(steps=5, shift=3.0):
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(shift=shift)
    s.set_timesteps(steps)
    return s


def test_flow_conversions_reproduce_the_schedulers_own_step():
    """From a velocity v at σ_i, x0 = x - σ_i·v and ε = x + (1 - σ_i)·v; the next sample (1 - σ_{i+1})·x0 + σ_{i+1}·ε
    is what FlowMatchEulerDiscreteScheduler.step makes (x + (σ_{i+1} - σ_i)·v)."""
    sched = _flow_euler()
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    for i, t in enumerate(sched.timesteps):
        alpha, sigma = noise_level(sched, t)
        assert sigma == pytest.approx(float(sched.sigmas[i])) and alpha == pytest.approx(1 - sigma)
        x0, eps = to_x0(v, x, alpha, sigma, "flow"), to_epsilon(v, x, alpha, sigma, "flow")
        nxt = float(sched.sigmas[i + 1])
        theirs = sched.step(v, t, x).prev_sample
        torch.testing.assert_close((1 - nxt) * x0 + nxt * eps, theirs, atol=1e-5, rtol=1e-5)
        x = theirs


def test_ni_vsds_epsilon_error_is_the_velocity_error_scaled_by_one_minus_sigma():
    """DIT.md §3: with v_σ = (1 - σ)·v + σ·ε and a predicted velocity û, ε̂ - ε = (1 - σ)·(û - (ε - v)); and the
    weight is 1 - ᾱ at equal SNR, σ² / ((1 - σ)² + σ²)."""
    g = torch.Generator().manual_seed(1)
    v, eps, u = (torch.randn(2, 6, generator=g, dtype=torch.float64) for _ in range(3))
    for sigma in (0.9, 0.5, 0.1):
        v_sigma = (1 - sigma) * v + sigma * eps
        eps_hat = to_epsilon(u, v_sigma, 1 - sigma, sigma, "flow")
        torch.testing.assert_close(eps_hat - eps, (1 - sigma) * (u - (eps - v)))
        snr = (1 - sigma) ** 2 / sigma**2  # ᾱ / (1 - ᾱ) at the same SNR
        assert I.vsds_weight(1 - sigma, sigma) == pytest.approx(1 - snr / (1 + snr))


class _VelocityOracle(torch.nn.Module):
    """A Wan transformer stand-in that knows ε and each timestep's σ: it predicts the velocity ε - x0 of the x0 its
    input was noised from, plus `delta` (the same for the conditional and unconditional calls)."""

    def __init__(self, eps, sigmas, delta=0.0):
        super().__init__()
        self.eps, self.sigmas, self.delta = eps, sigmas, delta
        self.dtype = torch.float32

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, return_dict=False, **kwargs):
        sigma = self.sigmas[int(timestep.flatten()[0])]
        x0 = (hidden_states - sigma * self.eps) / (1 - sigma)
        return (self.eps - x0 + self.delta,)


@pytest.mark.parametrize("delta", [0.0, 0.25])
def test_ni_vsds_on_flow_moves_the_video_by_the_closed_form(tiny, delta):
    """With û the true velocity + δ: ε̂ - ε = (1 - σ)·δ, so v_N = v_0 - δ·Σ α_i·w(σ_i)·(1 - σ_i), w = σ²/((1-σ)²+σ²);
    δ = 0: no update (the velocity analogue of a UNet that predicts the true noise)."""
    from dataclasses import replace

    c = tiny("tiny-random-wan")
    sched = prepare_scheduler("auto", c.scheduler, 10, "cpu", c.family)
    sigmas = {int(t): float(s) for t, s in zip(sched.timesteps, sched.sigmas)}
    g = torch.Generator().manual_seed(8)
    v, eps = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 16, 2, 4, 4, generator=g)
    oracle = replace(c, unet=_VelocityOracle(eps, sigmas, delta))
    ts = I.official_vsds_timesteps(sched)
    sizes = I.vsds_step_sizes(len(ts), 3, 10.0, 1.0)
    out = I.ni_vsds(oracle, v, eps, encode_prompt(c, PROMPT, "", 5.0), 5.0, ts, sizes, progress=False,
                    scheduler=sched)
    shift = delta * sum(a * sigmas[t] ** 2 / ((1 - sigmas[t]) ** 2 + sigmas[t] ** 2) * (1 - sigmas[t])
                        for a, t in zip(sizes, ts))
    assert len(ts) == 7 and (shift > 0.1 or delta == 0)
    torch.testing.assert_close(out, v - shift, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["unipc", "euler"])
def test_renoising_follows_the_flow_schedulers_sigma(tiny, kind):
    """SDEdit's start on a flow scheduler: (1 - σ)·x0 + σ·ε at the scheduler's σ for t (UniPC: add_noise; flow Euler,
    which has none: scale_noise)."""
    c = tiny("tiny-random-wan")
    sched = prepare_scheduler(kind, c.scheduler, 6, "cpu", c.family)
    timesteps = I.regen_timesteps(sched, 0.5)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 16, 2, 4, 4, generator=g)
    sigma = float(sched.sigmas[len(sched.timesteps) - len(timesteps)])
    torch.testing.assert_close(add_noise(sched, x0, eps, timesteps[0]), (1 - sigma) * x0 + sigma * eps)


# ---------------------------------------------------------------------------------------------- timesteps


@pytest.mark.parametrize("t_regen", [1.0, 0.5])
def test_regeneration_runs_the_flow_schedulers_own_timesteps_from_t_regen_on(tiny, t_regen):
    """The last int(t_regen·steps) of the Wan scheduler's own timesteps (diffusers' UniPC on flow sigmas, set up as
    WanPipeline sets it), and the regeneration's model calls are at exactly those."""
    c = tiny("tiny-random-wan")
    steps = 6
    theirs = type(c.scheduler).from_config(c.scheduler.config)
    theirs.set_timesteps(steps)
    expected = [float(t) for t in theirs.timesteps[steps - int(steps * t_regen):]]
    ours = I.regen_timesteps(prepare_scheduler("auto", c.scheduler, steps, "cpu", c.family), t_regen)
    assert [float(t) for t in ours] == expected

    job = _job("tiny-random-wan", **{"sampler.steps": steps, "i4vgen.t_regen": t_regen, "sampler.guidance": 5.0})
    with _Calls(c) as hooked:
        video = _run(c, job)
    regen_calls = [t for _, t in hooked.calls[-2 * len(expected):]]  # cond and uncond at each step
    assert regen_calls == [t for t in expected for _ in range(2)]
    assert video.metadata["regeneration"]["timesteps"] == [int(t) for t in expected]
    # NI-VSDS: the scheduler's first int(0.6·steps) + 1 timesteps, just before
    vsds = [float(t) for t in theirs.timesteps[: int(0.6 * steps) + 1]]
    assert [t for _, t in hooked.calls[-2 * (len(expected) + len(vsds)): -2 * len(expected)]] == [t for t in vsds for _ in range(2)]


def test_linspace_vsds_on_a_flow_model_is_a_clear_error(tiny):
    from vgen.errors import ConfigError

    with pytest.raises(ConfigError, match="use i4vgen.vsds_schedule=sampler"):
        _run(tiny("tiny-random-wan"), _job("tiny-random-wan", **{"i4vgen.vsds_schedule": "linspace"}))


# ---------------------------------------------------------------------------------------------- the still video


def test_the_still_video_is_the_causal_vae_encoding_of_the_repeated_image_not_repeated_latents(tiny):
    c = tiny("tiny-random-wan")
    vae = c.vae
    g = torch.Generator().manual_seed(4)
    anchor = torch.randn(1, 16, 1, 4, 4, generator=g)
    still = c.family.still_video(c, anchor, 9)
    assert still.shape == (1, 16, 3, 4, 4)  # 9 frames -> 3 latent frames

    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        image = vae.decode(anchor * std + mean).sample.clamp(-1, 1)  # [1, 3, 1, 32, 32]
        z = vae.encode(image.repeat(1, 1, 9, 1, 1)).latent_dist.mode()
    torch.testing.assert_close(still, (z - mean) / std, atol=1e-5, rtol=1e-5)

    repeated = anchor.repeat(1, 1, 3, 1, 1)
    later = (still - repeated)[:, :, 1:].abs().mean().item()  # the 4-frame latents code a still image otherwise
    assert later > 0.1 * repeated.abs().mean().item(), later


def test_a_per_frame_vae_still_video_is_the_repeated_latent(tiny):
    """The public code's rule (AnimateDiff, ModelScope: each frame coded on its own)."""
    c = tiny("tiny-random-unet3d")
    anchor = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(c.family.still_video(c, anchor, 3), anchor.repeat(1, 1, 3, 1, 1))


# ---------------------------------------------------------------------------------------------- candidates, experts


@pytest.mark.parametrize("model, scheduler", [("tiny-random-wan", "auto"), ("tiny-random-wan22", "auto"),
                                              ("tiny-random-wan", "euler")])
def test_candidates_are_wan_pipelines_one_frame_videos_from_the_same_noise(tiny, model, scheduler):
    """Candidate i is WanPipeline(num_frames=1) from frame i of the one [1, C, N, h, w] draw (2.2: both experts, the
    low-noise one at guidance_2; euler: the pipeline given flow Euler)."""
    from vgen.core.schedulers import make_scheduler

    c = tiny(model)
    n, steps, seed = 3, 4, 11
    guidance_2 = 2.0 if c.unet_2 is not None else None
    latents, images = I.sample_candidates(c, PROMPT, "", n, steps=steps, guidance=5.0, scheduler=scheduler,
                                          generator=torch.Generator().manual_seed(seed), height=32, width=32,
                                          progress=False, guidance_2=guidance_2)
    assert latents.shape == (n, 16, 1, 4, 4) and images.shape == (n, 32, 32, 3)
    draw = torch.randn(1, 16, n, 4, 4, generator=torch.Generator().manual_seed(seed))
    pipe = c.family.pipeline(c)
    pipe.scheduler = make_scheduler(scheduler, c.scheduler, c.family)
    extra = {} if guidance_2 is None else {"guidance_scale_2": guidance_2}
    for i in range(n):
        out = pipe(PROMPT, negative_prompt="", num_frames=1, height=32, width=32, num_inference_steps=steps,
                   guidance_scale=5.0, latents=draw[:, :, i : i + 1], output_type="np", **extra).frames[0]
        theirs = to_uint8(torch.from_numpy(np.asarray(out)))[0]
        assert np.abs(images[i].astype(int) - theirs.astype(int)).max() <= 1, i


@pytest.mark.parametrize("seed", [0, 9])
def test_one_candidate_is_vanillas_one_frame_video_of_the_same_seed(tiny, seed):
    c = tiny("tiny-random-wan22")
    _, images = I.sample_candidates(c, PROMPT, "", 1, steps=3, guidance=5.0, scheduler="auto", guidance_2=2.0,
                                    generator=torch.Generator().manual_seed(seed), height=32, width=32, progress=False)
    job = make_job(PROMPT, **{"model.id": "tiny-random-wan22", "sampler.steps": 3, "video.frames": 1, "seed": seed,
                              "sampler.guidance": 5.0, "sampler.guidance_2": 2.0, "negative": ""})
    vanilla = run_vanilla(c, job)
    assert vanilla.shape == (1, 32, 32, 3) and np.abs(images[0].astype(int) - vanilla[0].astype(int)).max() <= 1


def test_every_model_call_goes_to_the_expert_wan_pipelines_boundary_says(tiny):
    """WanPipeline: t >= boundary_ratio·1000 -> transformer, else transformer_2; in all three stages."""
    c = tiny("tiny-random-wan22")
    boundary = c.config["boundary_ratio"] * c.scheduler.config.num_train_timesteps
    job = _job("tiny-random-wan22", **{"sampler.steps": 5, "sampler.guidance": 5.0, "sampler.guidance_2": 2.0})
    with _Calls(c) as hooked:
        _run(c, job)
    assert hooked.calls and all(expert == (0 if t >= boundary else 1) for expert, t in hooked.calls)
    steps, vsds = 5, int(0.6 * 5) + 1
    stages = {"candidates": hooked.calls[: 2 * steps], "NI-VSDS": hooked.calls[2 * steps: 2 * (steps + vsds)],
              "regeneration": hooked.calls[2 * (steps + vsds):]}
    assert len(stages["regeneration"]) == 2 * steps
    for name, calls in stages.items():
        assert {expert for expert, _ in calls} == {0, 1}, name  # each stage crosses the boundary


@pytest.mark.parametrize("scheduler", ["auto", "euler"])
def test_a_held_latent_frame_ends_as_the_still_videos(tiny, scheduler):
    """regen_hold (ours) on Wan holds a latent frame of the still video (the causal VAE's, not the 1-frame anchor's
    latent); held to the end it is exactly that frame, while the others are the model's."""
    c = tiny("tiny-random-wan")
    g = torch.Generator().manual_seed(6)
    still = c.family.still_video(c, torch.randn(1, 16, 1, 4, 4, generator=g), 9)
    sched = prepare_scheduler(scheduler, c.scheduler, 4, "cpu", c.family)
    timesteps = I.regen_timesteps(sched, 1.0)
    out = I.regenerate(c, sched, timesteps, still, encode_prompt(c, PROMPT, "", 5.0), 5.0, g, progress=False,
                       anchor=still[:, :, 1:2], hold=1)
    torch.testing.assert_close(out[:, :, 1], still[:, :, 1])
    assert not torch.allclose(out[:, :, 2], still[:, :, 2], atol=1e-2)


def test_by_default_one_candidate_per_latent_frame_and_the_video_has_wans_length(tiny):
    """i4vgen.candidates=0: the public code splits one video's noise into its frames; on Wan 9 frames -> 3 latents."""
    c = tiny("tiny-random-wan")
    video = _run(c, _job("tiny-random-wan", **{"i4vgen.candidates": 0, "video.frames": 8, "sampler.steps": 2}))
    assert len(video.metadata["anchor"]["scores"]) == 3 and video.frames.shape == (9, 32, 32, 3)  # 8 -> 9 (4k+1)


def test_i4vgen_on_ltx_fails_in_one_line(tmp_path):
    from conftest import vgen_in_process

    r = vgen_in_process("generate", PROMPT, "--model", "tiny-random-ltx", "--method", "i4vgen", "--out", tmp_path / "v.mp4")
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "i4vgen" in lines[0] and "wan" in lines[0], lines
    assert not list(tmp_path.iterdir())
