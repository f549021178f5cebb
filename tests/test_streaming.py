"""StreamingT2V runner: the chunk plan, streamed output, shared noise, temporal inpainting (training-free),
zero-initialised CAM/APM = the base model, the three-pass guidance, and the training step."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_job
from vgen.methods.streaming import runner as R

PROMPT = "a red circle moving left"
SMALL = {"sampler.steps": 2, "streaming.chunk": 4, "streaming.cond_frames": 2}


def test_chunk_plan_matches_the_frame_formula():
    assert [R.frames_made(n, 16, 8) for n in (1, 2, 3, 30)] == [16, 24, 32, 248]
    for chunk, cond in [(16, 8), (4, 2), (5, 1), (3, 2)]:
        for frames in range(1, 60):
            n = R.chunk_count(frames, chunk, cond)
            assert R.frames_made(n, chunk, cond) >= frames  # enough frames ...
            assert n == 1 or R.frames_made(n - 1, chunk, cond) < frames  # ... with the fewest chunks


def run_streaming(components, job, tmp_path, monkeypatch=None):
    """Run the runner in-process; returns (WrittenVideo, [(input latents, output latents) per chunk])."""
    from vgen.core.sampler import resolve_size
    from vgen.jobs import RunContext

    calls = []
    if monkeypatch is not None:
        real = R.denoise

        def recording(components, scheduler, latents, *args, **kwargs):
            out = real(components, scheduler, latents, *args, **kwargs)
            calls.append((latents.clone(), out.clone()))
            return out

        monkeypatch.setattr(R, "denoise", recording)
    h, w = resolve_size(components, job.video.height, job.video.width)
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=h, width=w,
                     output_stem=tmp_path / "out", progress=False)
    return R.run(job, components, ctx), calls


@pytest.mark.parametrize("frames", [3, 9])
def test_streamed_mp4_has_exactly_the_requested_frames(tiny, tmp_path, frames):
    from vgen.video import read_video

    c = tiny("tiny-random-unet3d")
    job = make_job(PROMPT, **SMALL, **{"video.frames": frames})
    video, _ = run_streaming(c, job, tmp_path)
    assert video.path == tmp_path / "out.mp4" and video.num_frames == frames
    assert read_video(video.path).frames.shape == (frames, 32, 32, 3)
    assert video.metadata["chunks"] == R.chunk_count(frames, 4, 2) and video.metadata["mode"] == "training-free"


def test_training_free_shares_noise_and_inpaints_the_overlap_exactly(tiny, tmp_path, monkeypatch):
    c = tiny("tiny-random-unet3d")
    job = make_job(PROMPT, **SMALL, **{"video.frames": 8, "streaming.mode": "training-free"})
    _, calls = run_streaming(c, job, tmp_path, monkeypatch)
    assert len(calls) == 3
    for (prev_in, prev_out), (cur_in, cur_out) in zip(calls, calls[1:]):
        assert torch.equal(cur_in[:, :, :2], prev_in[:, :, 2:])  # the re-covered frames start from the same noise
        assert torch.equal(cur_out[:, :, :2], prev_out[:, :, 2:])  # and end as the previous chunk's frames
        assert not torch.equal(cur_in[:, :, 2:], prev_in[:, :, 2:])


def test_inpaint_hook_noises_the_known_frames_to_the_next_timestep(tiny):
    from vgen.core.schedulers import prepare_scheduler

    c = tiny("tiny-random-unet3d")
    sched = prepare_scheduler("ddim", c.scheduler, 4, c.device)
    g = torch.Generator().manual_seed(0)
    known, noise = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    mem = R.Memory(anchor=None, pixels=None, latents=known, noise=noise)
    hook = R.inpaint_overlap(sched, list(sched.timesteps), mem, 2)
    x = torch.randn(1, 4, 5, 3, 3, generator=g)
    for i in range(4):
        out = hook(i, sched.timesteps[i], x)
        if i < 3:  # closed form of DDPM noising: sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·ε at the next timestep
            a = sched.alphas_cumprod[sched.timesteps[i + 1]]
            torch.testing.assert_close(out[:, :, :2], a.sqrt() * known + (1 - a).sqrt() * noise)
        else:
            assert torch.equal(out[:, :, :2], known)
        assert torch.equal(out[:, :, 2:], x[:, :, 2:])


def test_independent_chunks_share_nothing(tiny, tmp_path, monkeypatch):
    c = tiny("tiny-random-unet3d")
    job = make_job(PROMPT, **SMALL, **{"video.frames": 6, "streaming.mode": "independent"})
    video, calls = run_streaming(c, job, tmp_path, monkeypatch)
    assert video.metadata["mode"] == "independent"
    assert not torch.allclose(calls[1][0][:, :, :2], calls[0][0][:, :, 2:])


# ---------------------------------------------------------------------------------------------- trained


@pytest.fixture(scope="module")
def zero_streaming_model(tmp_path_factory):
    """tiny-random-unet3d saved to a folder with fresh (zero-initialised) CAM + APM weights."""
    from vgen.config import ModelConfig
    from vgen.methods.streaming.apm import APM, anchor_encoder
    from vgen.methods.streaming.cam import CAM, save_streaming
    from vgen.models import load_components, save_components

    base = load_components(ModelConfig(id="tiny-random-unet3d"), "cpu", "float32")
    folder = save_components(base, tmp_path_factory.mktemp("models") / "tiny-streaming")
    torch.manual_seed(0)
    cam = CAM.from_unet(base.unet, base.vae_scale_factor, head_dim=8)
    apm = APM.from_unet(base.unet, base.tokenizer.model_max_length, anchor_encoder("vae", vae=base.vae), tokens=4)
    save_streaming(folder, cam, apm)
    return folder


def _load(folder):
    from vgen.config import ModelConfig
    from vgen.models import load_components

    return load_components(ModelConfig(id=str(folder)), "cpu", "float32")


def test_zero_initialised_memories_start_as_the_base_model(zero_streaming_model, tmp_path, monkeypatch):
    """Chunk 1 is plain sampling; with ε(τ,a) = ε(τ,∅) (α = 0) the three-pass guidance equals two-pass CFG."""
    from vgen.core.prompts import encode_prompt
    from vgen.core.sampler import denoise, initial_latents, latent_shape
    from vgen.core.schedulers import prepare_scheduler

    c = _load(zero_streaming_model)
    job = make_job(PROMPT, **SMALL, **{"video.frames": 6, "streaming.mode": "trained"})
    video, two = run_streaming(c, job, tmp_path, monkeypatch)
    assert video.metadata["mode"] == "trained" and video.metadata["guidance"]["anchor"] == 7.5
    assert video.metadata["unet_passes_per_step"] == {"first_chunk": 2, "later_chunks": 2, "cam_encoder": True}
    assert video.metadata["anchor_encoder"]["kind"] == "vae" and "stand-in" in video.metadata["anchor_encoder"]["note"]
    # chunk 1 = vanilla sampling of `chunk` frames from the same seed
    g = torch.Generator().manual_seed(0)
    sched = prepare_scheduler("ddim", c.scheduler, 2, c.device)
    x = initial_latents(c, latent_shape(c, 4, 32, 32), g, sched)
    ref = denoise(c, sched, x, encode_prompt(c, PROMPT, "", 7.5), 7.5, progress=False)
    torch.testing.assert_close(two[0][1], ref)
    monkeypatch.undo()
    job3 = make_job(PROMPT, **SMALL, **{"video.frames": 6, "streaming.anchor_guidance": 3.0, "streaming.mode": "trained"})
    (tmp_path / "b").mkdir()
    v3, three = run_streaming(c, job3, tmp_path / "b", monkeypatch)
    assert v3.metadata["unet_passes_per_step"]["later_chunks"] == 3
    for (_, a), (_, b) in zip(two, three):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dc_lock", [False, True])
def test_trained_inpaint_with_inert_memories_is_the_training_free_mode(zero_streaming_model, tmp_path, monkeypatch,
                                                                         dc_lock):
    """streaming.trained_inpaint holds the re-covering frames as the training-free mode does: with zero-initialised
    CAM/APM (no effect on the UNet) the two modes give the same chunks, and every chunk after the first re-covers
    the previous chunk's last latents exactly."""
    c = _load(zero_streaming_model)
    job = make_job(PROMPT, **SMALL, **{"video.frames": 8, "streaming.mode": "trained", "streaming.trained_inpaint": True,
                                       "streaming.trained_dc_lock": dc_lock})
    video, held = run_streaming(c, job, tmp_path, monkeypatch)
    monkeypatch.undo()
    assert video.metadata["trained_inpaint"] is True and video.metadata["mode"] == "trained"
    (tmp_path / "b").mkdir()
    free = make_job(PROMPT, **SMALL, **{"video.frames": 8, "streaming.mode": "training-free", "streaming.dc_lock": dc_lock})
    video_free, reference = run_streaming(c, free, tmp_path / "b", monkeypatch)
    assert video_free.metadata["trained_inpaint"] is None
    assert len(held) == len(reference) == 3
    for (_, a), (_, b) in zip(held, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for (_, before), (_, after) in zip(held, held[1:]):
        torch.testing.assert_close(after[:, :, :2], before[:, :, -2:])


def test_a_trained_anchor_weight_changes_the_three_pass_result(zero_streaming_model, tmp_path, monkeypatch):
    c = _load(zero_streaming_model)
    weights = R.streaming_weights(c)
    with torch.no_grad():
        for mixer in weights.apm.mixers.values():  # α off zero and strong anchor columns: the anchor reaches the UNet
            mixer.alpha.fill_(3.0)
            mixer.mix.weight[:, mixer.text_len :] = 1.0
    job = make_job(PROMPT, **SMALL, **{"video.frames": 6, "streaming.mode": "trained"})
    _, two = run_streaming(c, job, tmp_path, monkeypatch)
    monkeypatch.undo()
    (tmp_path / "b").mkdir()
    job3 = make_job(PROMPT, **SMALL, **{"video.frames": 6, "streaming.anchor_guidance": 3.0, "streaming.mode": "trained"})
    _, three = run_streaming(c, job3, tmp_path / "b", monkeypatch)
    torch.testing.assert_close(two[0][1], three[0][1])  # chunk 1 has no memories
    assert (two[1][1] - three[1][1]).abs().max() > 1e-3


def test_auto_uses_memories_only_when_their_seam_check_passed(zero_streaming_model, tmp_path):
    """Issue 30 item 4: a passed check vouches for the memories only at every setting it recorded (steps, guidance,
    eta, scheduler, chunk, cond_frames, anchor guidance, the memory options); one that recorded none (the older
    format) vouches for nothing."""
    import json as _json
    import shutil

    from vgen.methods.streaming.cam import load_seam_check

    c = _load(zero_streaming_model)
    assert load_seam_check(zero_streaming_model) is None  # never measured
    job = make_job(PROMPT, **{"method": "streaming", "sampler.steps": 20, "sampler.guidance": 5.0, "sampler.eta": 1.0,
                              "streaming.trained_dc_lock": True, "streaming.trained_inpaint": True,
                              "streaming.cam_scale": 0.5})
    settings = R.check_settings(job)
    assert R.resolve_mode("auto", c, settings) == "training-free" and R.resolve_mode("trained", c) == "trained"

    def with_check(name: str, check: dict):
        folder = tmp_path / name
        shutil.copytree(zero_streaming_model, folder)
        cfg = folder / "streaming" / "config.json"
        data = _json.loads(cfg.read_text())
        data["seam_check"] = check
        cfg.write_text(_json.dumps(data))
        return _load(folder)

    recorded = {"sampler.steps": 20, "sampler.guidance": 5.0, "sampler.eta": 1.0, "sampler.scheduler": "ddim",
                "streaming.chunk": 16, "streaming.cond_frames": 8, "streaming.anchor_guidance": 5.0,
                "streaming.trained_dc_lock": True, "streaming.trained_inpaint": True, "streaming.cam_scale": 0.5}
    assert settings == recorded  # the job's values, anchor guidance resolved to the text guidance
    assert R.resolve_mode("auto", with_check("failed", {"passed": False, "settings": recorded}), settings) == "training-free"
    passed = with_check("passed", {"passed": True, "settings": recorded})
    assert R.resolve_mode("auto", passed, settings) == "trained"
    # the old format (memory options only, no settings): measured at unknown steps, so trusted nowhere
    old = with_check("old", {"passed": True, "trained_dc_lock": True, "trained_inpaint": True, "cam_scale": 0.5})
    assert R.resolve_mode("auto", old, settings) == "training-free"
    # any one setting away from the check: not trusted (forcing trained still works)
    for key, value in [("sampler.steps", 10), ("sampler.guidance", 7.5), ("sampler.eta", 0.0),
                       ("sampler.scheduler", "euler"), ("streaming.chunk", 12), ("streaming.cond_frames", 4),
                       ("streaming.anchor_guidance", 3.0), ("streaming.trained_dc_lock", False),
                       ("streaming.trained_inpaint", False), ("streaming.cam_scale", 1.0)]:
        other = make_job(PROMPT, **{"method": "streaming", "sampler.steps": 20, "sampler.guidance": 5.0,
                                    "sampler.eta": 1.0, "streaming.trained_dc_lock": True,
                                    "streaming.trained_inpaint": True, "streaming.cam_scale": 0.5, key: value})
        assert R.resolve_mode("auto", passed, R.check_settings(other)) == "training-free", key
        assert R.check_mismatch({"settings": recorded}, R.check_settings(other))[0].startswith(key)
        assert R.resolve_mode("trained", passed, R.check_settings(other)) == "trained"


def test_trained_dc_lock_moves_only_each_frames_mean_to_the_known_frames(tiny):
    """streaming.trained_dc_lock's hook, by hand: frame j < cond gets known frame j's re-noised per-channel mean,
    later frames the last known frame's; what is left after removing the means is untouched."""
    from vgen.core.schedulers import prepare_scheduler

    c = tiny("tiny-random-unet3d")
    sched = prepare_scheduler("ddim", c.scheduler, 4, c.device)
    g = torch.Generator().manual_seed(1)
    known, noise = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
    mem = R.Memory(anchor=torch.zeros(1, 3, 32, 32), pixels=None, latents=known, noise=noise)
    x = torch.randn(1, 4, 5, 4, 4, generator=g) - 2.0
    ts = list(sched.timesteps)
    a = sched.alphas_cumprod[int(ts[1])]
    renoised = a.sqrt() * known + (1 - a).sqrt() * noise  # the known frames at the level after step 0
    means = lambda y: y.mean(dim=(-2, -1))  # noqa: E731
    locked = R.lock_overlap_dc(sched, ts, mem, 2)(0, ts[0], x.clone())
    expected = torch.cat([means(renoised), means(renoised)[:, :, 1:].expand(1, 4, 3)], dim=2)
    torch.testing.assert_close(means(locked), expected)
    torch.testing.assert_close(locked - means(locked)[..., None, None], x - means(x)[..., None, None])
    last = R.lock_overlap_dc(sched, ts, mem, 2)(len(ts) - 1, ts[-1], x.clone())  # after the last step: clean
    torch.testing.assert_close(means(last)[:, :, :2], means(known))


def test_dc_lock_gives_new_frames_the_last_known_frames_mean(tiny):
    """The anchor-aware re-noising hook: overlap exact, new frames shifted to the known frame's spatial mean only."""
    from vgen.core.schedulers import prepare_scheduler

    c = tiny("tiny-random-unet3d")
    sched = prepare_scheduler("ddim", c.scheduler, 4, c.device)
    g = torch.Generator().manual_seed(0)
    known, noise = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
    mem = R.Memory(anchor=torch.zeros(1, 3, 32, 32), pixels=None, latents=known, noise=noise)
    x = torch.randn(1, 4, 5, 4, 4, generator=g) + 3.0
    ts = list(sched.timesteps)
    plain = R.inpaint_overlap(sched, ts, mem, 2)(0, ts[0], x)
    locked = R.inpaint_overlap(sched, ts, mem, 2, dc_lock=True)(0, ts[0], x)
    torch.testing.assert_close(locked[:, :, :2], plain[:, :, :2])  # the overlap as before
    target = plain[:, :, 1:2].mean(dim=(-2, -1), keepdim=True)  # last known frame, re-noised
    torch.testing.assert_close(locked[:, :, 2:].mean(dim=(-2, -1), keepdim=True), target.expand(1, 4, 3, 1, 1))
    resid = lambda y: y - y.mean(dim=(-2, -1), keepdim=True)  # noqa: E731
    torch.testing.assert_close(resid(locked[:, :, 2:]), resid(x[:, :, 2:]))  # only the mean moved


def test_trained_mode_without_weights_is_a_one_line_error(tmp_path):
    from conftest import vgen_in_process

    r = vgen_in_process("generate", PROMPT, "--method", "streaming", "--model", "tiny-random-unet3d", "--steps", "1",
                        "--frames", "4", "--out", tmp_path, "streaming.mode=trained")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "training-free" in r.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_refinement_through_the_runner_upscales_and_keeps_the_frame_count(tiny, tmp_path):
    from vgen.video import read_video

    c = tiny("tiny-random-unet3d")
    job = make_job(PROMPT, **SMALL, **{"video.frames": 7, "streaming.refine": True, "streaming.upscale": 2,
                                       "streaming.refine_chunk": 4, "streaming.refine_overlap": 2})
    video, _ = run_streaming(c, job, tmp_path)
    assert read_video(video.path).frames.shape == (7, 64, 64, 3) and video.size == (64, 64)
    assert video.metadata["refine"]["upscale"] == 2


def test_training_step_reduces_the_loss_on_a_fixed_batch():
    """A few optimiser steps on one batch must fit it better (the memories learn; the base stays frozen)."""
    from vgen.methods.streaming.train import StreamingTrainConfig, StreamingTrainer

    trainer = StreamingTrainer(StreamingTrainConfig(model="tiny-random-unet3d", stage="cam+apm", batch=2, chunk=4,
                                                    cond_frames=2, lr=1e-2, head_dim=8, anchor_tokens=4))
    base = {k: v.clone() for k, v in trainer.base.unet.state_dict().items()}
    batch = trainer.batch()
    assert batch["chunk"].shape == (2, 4, 3, 32, 32) and batch["cond"].shape == (2, 2, 3, 32, 32)
    torch.manual_seed(0)
    before = float(trainer.loss(batch).detach())
    for _ in range(10):
        torch.manual_seed(0)  # the same noise and timesteps each time
        loss = trainer.loss(batch)
        trainer.opt.zero_grad()
        loss.backward()
        trainer.opt.step()
    torch.manual_seed(0)
    after = float(trainer.loss(batch).detach())
    assert after < before
    assert all(torch.equal(v, trainer.base.unet.state_dict()[k]) for k, v in base.items())


def test_streaming_training_resumes_bit_identically(tmp_path):
    from vgen.methods.streaming.train import StreamingTrainConfig, StreamingTrainer

    def cfg():
        return StreamingTrainConfig(model="tiny-random-unet3d", stage="cam+apm", batch=1, chunk=4, cond_frames=2,
                                    lr=1e-3, head_dim=8, anchor_tokens=4, out=str(tmp_path))

    straight = StreamingTrainer(cfg())
    losses = [straight.step() for _ in range(3)]
    first = StreamingTrainer(cfg())
    first.step()
    first.save()
    resumed = StreamingTrainer(cfg())
    resumed.load(tmp_path / "last.pt")
    assert resumed.step_count == 1
    assert [resumed.step() for _ in range(2)] == losses[1:]
    for name, module in straight.modules.items():
        for (k, a), b in zip(module.state_dict().items(), resumed.modules[name].state_dict().values()):
            assert torch.equal(a, b), k


def recover_errors(components, prompt: str, seed: int, steps: int = 8):
    """Mean squared pixel error (0-1 scale) of a chunk's first F_cond frames against F_cond rendered conditioning
    frames, with the shipped memories (trained) and without them (an independent chunk), same noise."""
    from vgen.core.prompts import encode_prompt
    from vgen.core.sampler import decode_latents, denoise, latent_shape
    from vgen.core.schedulers import prepare_scheduler
    from vgen.toyworld import parse_prompt, render_video, sample_scene

    weights = R.streaming_weights(components)
    clip = render_video(sample_scene(np.random.default_rng(seed), parse_prompt(prompt), 16), 16)
    cond = torch.from_numpy(clip[8:16]).float() / 255
    memory = R.Memory(anchor=R.to_model_pixels(torch.from_numpy(clip[:1]).float() / 255)[0],
                      pixels=R.to_model_pixels(cond), latents=None, noise=None)
    enc = encode_prompt(components, prompt, "", 5.0)
    errors = {}
    for mode in ("trained", "independent"):
        sched = prepare_scheduler("ddim", components.scheduler, steps, components.device)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(latent_shape(components, 16, 64, 64), generator=g) * sched.init_noise_sigma
        guide = R.cam_apm_guide(components, sched, enc, 5.0, 5.0, weights, memory) if mode == "trained" else None
        lat = denoise(components, sched, x, enc, 5.0, generator=g, eta=0.0, progress=False,
                      **({"guide": guide} if guide else {}))
        frames = decode_latents(components, lat[:, :, :8])[0]
        errors[mode] = float(((frames - cond) ** 2).mean())
    return errors


@pytest.mark.slow
def test_shipped_memories_re_cover_the_conditioning_frames_better_than_independent_chunks():
    """The floor the shipped CAM must clear: its chunk's first 8 frames are closer to the conditioning frames
    (rendered ground truth) than an independent chunk's, over three prompts."""
    trained, independent = _recover_means()
    assert trained < RECOVER_FLOOR * independent, (trained, independent)


@pytest.mark.slow
def test_working_memories_remove_a_fifth_of_the_re_cover_error():
    """What memories that work should reach (RECOVER_TARGET). The first toy weights re-covered only 5% better than
    independent chunks (0.0418 vs 0.0440) and this was a strict xfail; the 1200-step weights shipped since
    re-cover at 0.0282 vs 0.0440 (ratio 0.64; scripts/train_streaming.py, docs/streaming.md)."""
    trained, independent = _recover_means()
    assert trained < RECOVER_TARGET * independent, (trained, independent)


RECOVER_FLOOR = 1.0  # the shipped CAM must not re-cover worse than an independent chunk
RECOVER_TARGET = 0.8  # what memories that work should reach


_RECOVER: dict = {}


def _recover_means() -> tuple[float, float]:
    if not _RECOVER:
        from vgen.config import ModelConfig
        from vgen.models import load_components

        c = load_components(ModelConfig(id="toy"), "cpu", "float32")
        assert R.streaming_weights(c) is not None
        errs = [recover_errors(c, p, seed=i) for i, p in
                enumerate(["a blue circle moving right", "a red square moving up", "a green triangle"])]
        _RECOVER["means"] = (float(np.mean([e["trained"] for e in errs])), float(np.mean([e["independent"] for e in errs])))
    return _RECOVER["means"]
