"""StreamingT2V stage 3: randomized blending (methods/streaming/blend.py) and `vgen refine`.

References are built from core pieces (guided_noise, scheduler.step, denoise), never from blend.py.
"""

import copy
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import vgen_in_process

MODEL = "tiny-random-unet3d"
LATENT = (1, 4, 0, 8, 8)  # frames filled in per test; 8x8 latents = 16x16 pixels on the tiny VAE


def latents_of(frames, seed=0):
    shape = (*LATENT[:2], frames, *LATENT[3:])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def prompt_for(components, guidance=7.5):
    from vgen.core.prompts import encode_prompt

    return encode_prompt(components, "a red circle moving left", "", guidance)


def scheduler_for(components, name="ddim", steps=3):
    from vgen.core.schedulers import prepare_scheduler

    return prepare_scheduler(name, components.scheduler, steps, components.device)


# ---------------------------------------------------------------------------------------------- chunk layout


def test_chunk_spans_known_layouts():
    from vgen.methods.streaming.blend import chunk_spans

    assert chunk_spans(11, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10), (7, 11)]
    assert chunk_spans(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert chunk_spans(4, 4, 2) == [(0, 4)]
    assert chunk_spans(3, 24, 8) == [(0, 3)]
    assert chunk_spans(40, 24, 8) == [(0, 24), (16, 40)]
    assert chunk_spans(41, 24, 8) == [(0, 24), (16, 40), (17, 41)]
    with pytest.raises(ValueError):
        chunk_spans(10, 4, 4)


def test_chunk_spans_cover_every_frame():
    from vgen.methods.streaming.blend import chunk_spans

    for chunk in range(1, 13):
        for overlap in range(chunk):
            for frames in range(1, 61):
                spans = chunk_spans(frames, chunk, overlap)
                assert spans[0][0] == 0 and spans[-1][1] == frames
                assert all(stop - start == min(chunk, frames) for start, stop in spans)
                covered = set().union(*(range(a, b) for a, b in spans))
                assert covered == set(range(frames)), (frames, chunk, overlap)
                for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
                    assert a0 < a1 and b0 < b1  # every chunk adds new frames
                    assert b0 - a1 >= overlap  # consecutive chunks overlap by at least `overlap`
                for (a0, _), (a1, _) in zip(spans[:-1], spans[1:-1]):
                    assert a1 - a0 == chunk - overlap  # all but the last chunk at a fixed stride


# ---------------------------------------------------------------------------------------------- reference


def chunk_outputs(components, schedulers, latents, t, prompt, guidance, spans):
    """Each chunk's own guided prediction and step, from core pieces only."""
    from vgen.core.sampler import guided_noise

    outs = []
    for (start, stop), scheduler in zip(spans, schedulers):
        x = latents[:, :, start:stop]
        eps = guided_noise(components, scheduler, x, t, prompt, guidance)
        outs.append(scheduler.step(eps, t, x).prev_sample)
    return outs


def reference(components, scheduler, latents, prompt, guidance, spans, owner):
    """Every frame taken from chunk owner(covering chunk indices) at every step (deterministic scheduler)."""
    schedulers = [copy.deepcopy(scheduler) for _ in spans]
    for t in scheduler.timesteps:
        outs = chunk_outputs(components, schedulers, latents, t, prompt, guidance, spans)
        new = torch.empty_like(latents)
        for f in range(latents.shape[2]):
            k = owner([i for i, (a, b) in enumerate(spans) if a <= f < b])
            new[:, :, f] = outs[k][:, :, f - spans[k][0]]
        latents = new
    return latents


@pytest.mark.parametrize(
    "frames,f_thr,owner",
    [
        (10, 0, max),  # f_thr = 0: every overlap frame from the new (latest) chunk
        (10, 2, min),  # f_thr = overlap: every overlap frame from the previous chunk
        (11, 0, max),
        (11, lambda length: length, min),  # the last overlap is 3 frames here
    ],
    ids=["new", "previous", "new-uneven", "previous-uneven"],
)
def test_fixed_threshold_equals_reference(tiny, frames, f_thr, owner):
    from vgen.methods.streaming.blend import blend_denoise

    c = tiny(MODEL)
    prompt, x = prompt_for(c), latents_of(frames)
    scheduler = scheduler_for(c, "ddim", 3)
    spans = [(0, 4), (2, 6), (4, 8), (6, 10)] + ([(7, 11)] if frames == 11 else [])
    expected = reference(c, scheduler, x, prompt, 7.5, spans, owner)
    got = blend_denoise(c, scheduler, x, prompt, 7.5, chunk=4, overlap=2, f_thr=f_thr, progress=False)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_random_threshold_splits_each_overlap_into_previous_then_new(tiny):
    """One step: every overlap is a prefix of the previous chunk's frames and a suffix of the new chunk's."""
    from vgen.methods.streaming.blend import blend_denoise

    c = tiny(MODEL)
    prompt, x = prompt_for(c), latents_of(10)
    spans = [(0, 4), (2, 6), (4, 8), (6, 10)]
    seen = set()
    for seed in range(6):
        scheduler = scheduler_for(c, "ddim", 1)
        outs = chunk_outputs(c, [copy.deepcopy(scheduler) for _ in spans], x, scheduler.timesteps[0], prompt, 7.5, spans)
        g = torch.Generator().manual_seed(seed)
        got = blend_denoise(c, scheduler, x, prompt, 7.5, chunk=4, overlap=2, generator=g, progress=False)
        for k in range(1, len(spans)):
            start, prev_stop = spans[k][0], spans[k - 1][1]
            prev = outs[k - 1][:, :, start - spans[k - 1][0] :]
            new = outs[k][:, :, : prev_stop - start]
            matches = [f for f in range(prev_stop - start + 1)
                       if torch.equal(got[:, :, start : start + f], prev[:, :, :f])
                       and torch.equal(got[:, :, start + f : prev_stop], new[:, :, f:])]
            assert matches, f"overlap {k} is not previous-then-new"
            seen.add(matches[0])
        assert torch.equal(got[:, :, :2], outs[0][:, :, :2]) and torch.equal(got[:, :, 8:], outs[3][:, :, 2:])
    assert len(seen) > 1  # the seam moves


# ---------------------------------------------------------------------------------------------- SDEdit, noise


@pytest.mark.parametrize("name,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0), ("euler-a", 0.0), ("dpm++", 0.0)])
def test_one_chunk_equals_plain_sdedit(tiny, name, eta):
    from vgen.core.noise import iid_noise
    from vgen.core.sampler import denoise, strength_timesteps
    from vgen.methods.streaming.blend import RefineSettings, refine_latents

    c = tiny(MODEL)
    prompt, clean = prompt_for(c), latents_of(5)
    settings = RefineSettings(strength=0.6, steps=5, scheduler=name, guidance=7.5, chunk=8, overlap=2, eta=eta)
    got = refine_latents(c, clean, prompt, settings, torch.Generator().manual_seed(3), progress=False)

    g = torch.Generator().manual_seed(3)
    scheduler = scheduler_for(c, name, 5)
    timesteps = strength_timesteps(scheduler, 0.6)
    noisy = scheduler.add_noise(clean, iid_noise(clean.shape, g, c.device, c.dtype), timesteps[0].reshape(1))
    expected = denoise(c, scheduler, noisy, prompt, 7.5, timesteps=timesteps, generator=g, eta=eta, progress=False)
    assert torch.equal(got, expected)


class FrameLocalUNet(torch.nn.Module):
    """A stand-in 'model' that treats every latent element on its own: chunking cannot change its output."""

    config = SimpleNamespace(in_channels=4)

    def forward(self, sample, t, encoder_hidden_states=None, **kwargs):
        return SimpleNamespace(sample=sample * (0.3 + 0.01 * sample) + 0.001 * float(t))


@pytest.mark.parametrize(
    "name,eta", [("ddim", 1.0), ("ddpm", 0.0), ("euler-a", 0.0), ("euler", 0.0), ("dpm++", 0.0), ("unipc", 0.0), ("pndm", 0.0)]
)
def test_frame_local_model_blending_equals_whole_video(tiny, name, eta):
    """With a frame-local model, chunks agree on overlaps iff their step noise (and history) is shared:
    then any blend is the whole-video denoise, stochastic and multistep schedulers included."""
    from vgen.core.sampler import denoise
    from vgen.methods.streaming.blend import blend_denoise

    c = dataclasses.replace(tiny(MODEL), unet=FrameLocalUNet())
    prompt, x = prompt_for(c), latents_of(11) * 5
    expected = denoise(c, scheduler_for(c, name, 6), x, prompt, 7.5, generator=torch.Generator().manual_seed(1), eta=eta, progress=False)
    # the shared noise is drawn before the first f_thr of a step, so a fixed f_thr keeps the generators in step
    got = blend_denoise(c, scheduler_for(c, name, 6), x, prompt, 7.5, chunk=4, overlap=2,
                        generator=torch.Generator().manual_seed(1), eta=eta, f_thr=1, progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    if name in ("ddim", "ddpm", "euler-a"):  # stochastic: the equality above is about the step noise
        other = denoise(c, scheduler_for(c, name, 6), x, prompt, 7.5, generator=torch.Generator().manual_seed(2), eta=eta, progress=False)
        assert not torch.allclose(other, expected)


def test_overlap_frames_of_two_chunks_get_the_same_step_noise(tiny, monkeypatch):
    from diffusers import DDIMScheduler

    from vgen.methods.streaming.blend import blend_denoise

    step = DDIMScheduler.step
    noise_parts = []

    def recording_step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False,
                       generator=None, variance_noise=None, return_dict=True):
        out = step(self, model_output, timestep, sample, eta, use_clipped_model_output, generator, variance_noise)
        quiet = step(self, model_output, timestep, sample, eta, use_clipped_model_output, variance_noise=torch.zeros_like(sample))
        noise_parts.append(out.prev_sample - quiet.prev_sample)  # std_t * (this chunk's step noise)
        return out

    monkeypatch.setattr(DDIMScheduler, "step", recording_step)
    c = tiny(MODEL)
    blend_denoise(c, scheduler_for(c, "ddim", 3), latents_of(6), prompt_for(c), 7.5, chunk=4, overlap=2,
                  generator=torch.Generator().manual_seed(0), eta=1.0, progress=False)
    assert len(noise_parts) == 3 * 2  # steps x chunks [(0, 4), (2, 6)]
    for first, second in zip(noise_parts[0::2], noise_parts[1::2]):
        assert first.abs().max() > 0
        torch.testing.assert_close(first[:, :, 2:4], second[:, :, 0:2], rtol=0, atol=1e-6)


def test_same_seed_same_output_and_frame_count(tiny):
    from vgen.methods.streaming.blend import RefineSettings, refine_latents

    c = tiny(MODEL)
    prompt, clean = prompt_for(c), latents_of(9)
    settings = RefineSettings(strength=0.5, steps=4, chunk=4, overlap=2, eta=1.0)
    run = lambda seed: refine_latents(c, clean, prompt, settings, torch.Generator().manual_seed(seed), progress=False)  # noqa: E731
    a, b, other = run(7), run(7), run(8)
    assert a.shape == clean.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, other)


# ---------------------------------------------------------------------------------------------- vgen refine


def write_clip(folder, frames=6, size=16, prompt="a red circle moving left", name="clip.mp4"):
    from vgen.video import Video, write_json, write_gif, write_mp4

    pixels = np.random.default_rng(0).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    path = folder / name
    (write_gif if name.endswith(".gif") else write_mp4)(Video(pixels, fps=4), path)
    if prompt:
        write_json({"prompt": prompt}, path.with_suffix(".json"))
    return path


TINY_REFINE = ["--model", MODEL, "--chunk", "4", "--overlap", "2", "--steps", "3"]


def test_refine_end_to_end_writes_mp4_and_sidecar(tmp_path):
    from vgen.video import read_video

    clip = write_clip(tmp_path)
    r = vgen_in_process("refine", clip, *TINY_REFINE, "--upscale", "2", "--seed", "5")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "clip-refined.mp4"
    assert r.stdout.strip() == str(out)
    assert read_video(out).frames.shape == (6, 32, 32, 3)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["prompt"] == "a red circle moving left" and side["seed"] == 5 and side["method"] == "refine"
    assert side["video"] == {"frames": 6, "height": 32, "width": 32, "fps": 4}
    assert side["method_info"]["chunks"] == 2 and side["method_info"]["upscale"] == 2
    assert side["config"]["streaming"]["refine_overlap"] == 2
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def run_cli(args, capsys):
    from vgen.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr()


def text_file(folder):
    path = folder / "text.mp4"
    path.write_text("hello")
    return path


ERRORS = {
    "missing": (lambda d: [d / "nope.mp4"], "not found"),
    "not-a-video": (lambda d: [text_file(d), "--prompt", "a cat"], "cannot read video"),
    "no-prompt": (lambda d: [write_clip(d, prompt="")], "pass --prompt"),
    "one-frame": (lambda d: [write_clip(d, frames=1, name="still.gif")], "at least 2 frames"),
    "odd-size": (lambda d: [write_clip(d, size=15, name="odd.gif")], "not a multiple of 2"),
    "unknown-model": (lambda d: [write_clip(d), "--model", "./no/such/model"], "does not exist"),
    "image-model": (lambda d: [write_clip(d), "--model", "tiny-random-unet2d"], "needs a video model"),
    "bad-overlap": (lambda d: [write_clip(d), "--overlap", "4"], "refine_overlap"),
    "out-is-input": (lambda d: [write_clip(d), "--out", d / "clip.mp4"], "is the input video"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_refine_user_errors_are_one_line(tmp_path, capsys, case):
    make_args, message = ERRORS[case]
    args = make_args(tmp_path)  # options given here come last and so override TINY_REFINE's
    before = sorted(p.name for p in tmp_path.iterdir())
    code, captured = run_cli(["refine", *TINY_REFINE, *args], capsys)
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing half-written
