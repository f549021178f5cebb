"""StreamingT2V on Wan (training-free, in latent time; methods/streaming/latent.py) on tiny-random-wan."""

import gc

import numpy as np
import pytest
import torch

from conftest import make_job, run_vanilla
from vgen.core.sampler import decode_latents, to_uint8

PROMPT = "a red circle moving left"
MODEL = "tiny-random-wan"


def _job(**keys):
    return make_job(PROMPT, **{"model.id": MODEL, "method": "streaming", "sampler.steps": 3, "sampler.guidance": 5.0,
                               "seed": 7, **keys})


def _stream(c, job, observe=None, mode="training-free"):
    from vgen.core.prompts import encode_prompt
    from vgen.methods.streaming.latent import plan, stream_latents

    latent_plan = plan(c, c.family.video_frames(c, job.video.frames), job.streaming.chunk, job.streaming.cond_frames)
    prompt = encode_prompt(c, job.prompt, job.negative, job.sampler.guidance)
    made = stream_latents(c, job, prompt, latent_plan, torch.Generator("cpu").manual_seed(job.seed), 32, 32, mode,
                          progress=False, observe=observe)
    return latent_plan, made


def test_one_chunk_equals_vanilla_and_the_wan_pipeline(tiny):
    """A video no longer than a chunk is one window: the same noise, loop and decode as vanilla, which WanPipeline
    makes too (the vanilla runner's equality with WanPipeline is test_dit's; here both are checked)."""
    c = tiny(MODEL)
    job = _job(**{"video.frames": 9, "streaming.chunk": 17})
    latent_plan, made = _stream(c, job)
    assert latent_plan.spans == [(0, 3)]
    ours = to_uint8(decode_latents(c, made)[0])
    assert np.array_equal(ours, run_vanilla(c, job))
    pipe = c.family.pipeline(c)
    theirs = pipe(PROMPT, num_frames=9, height=32, width=32, num_inference_steps=3, guidance_scale=5.0,
                  generator=torch.Generator("cpu").manual_seed(7), output_type="latent").frames
    assert torch.equal(made, theirs.float())


def test_overlap_is_held_to_the_previous_chunk_at_every_step(tiny):
    """Chunk 2 re-covers latent frames 2..3 of chunk 1: after step i they are (1 - σ)·x0 + σ·ε by hand, with x0 chunk
    1's final latents, ε the noise they were drawn from (the seed's first draw) and σ the scheduler's next sigma;
    after the last step they are exactly chunk 1's."""
    from vgen.core.schedulers import prepare_scheduler

    c = tiny(MODEL)
    job = _job(**{"video.frames": 21, "streaming.chunk": 13, "streaming.cond_frames": 8})  # 6 latents, windows of 4
    seen = {}
    latent_plan, made = _stream(c, job, observe=lambda k, i, x: seen.setdefault((k, i), x.clone()))
    assert latent_plan.spans == [(0, 4), (2, 6)] and made.shape[2] == 6
    x0 = made[:, :, 2:4]
    eps = torch.randn((1, 16, 6, 4, 4), generator=torch.Generator("cpu").manual_seed(7))[:, :, 2:4]
    sigmas = prepare_scheduler("model", c.scheduler, 3, "cpu").sigmas
    for i in range(3):
        held = seen[(1, i)][:, :, :2]
        if i < 2:
            s = float(sigmas[i + 1])
            torch.testing.assert_close(held, (1 - s) * x0 + s * eps, rtol=0, atol=1e-6)
        else:
            assert torch.equal(held, x0)
    assert not torch.equal(seen[(1, 2)][:, :, 2:], seen[(0, 2)][:, :, 2:])  # the new frames are chunk 2's own


def test_independent_chunks_hold_nothing(tiny):
    """The baseline: later chunks start from fresh noise and their re-covering frames are dropped."""
    c = tiny(MODEL)
    job = _job(**{"video.frames": 21, "streaming.chunk": 13, "streaming.cond_frames": 8})
    seen = {}
    _stream(c, job, observe=lambda k, i, x: seen.setdefault((k, i), x.clone()), mode="independent")
    _, made = _stream(c, job)
    assert not torch.allclose(seen[(1, 2)][:, :, :2], made[:, :, 2:4])


def test_runner_decodes_the_whole_latent_once(tiny, monkeypatch, tmp_path):
    """All chunks' latents go through one streamed decode (the decoder's equality with vae.decode is test_dit's
    test_streamed_wan_decode_equals_vae_decode): 4(T - 1) + 1 frames from T latent frames."""
    from vgen.methods.context import RunContext
    from vgen.methods.streaming import latent, runner

    c = tiny(MODEL)
    calls = []
    real = latent.iter_decoded

    def recording(components, latents, *args):
        calls.append(latents.shape[2])
        yield from real(components, latents, *args)

    monkeypatch.setattr(latent, "iter_decoded", recording)
    job = _job(**{"video.frames": 29, "streaming.chunk": 13, "streaming.cond_frames": 4, "sampler.steps": 2})
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(7), height=32, width=32,
                     output_stem=tmp_path / "v", progress=False)
    video = runner.run(job, c, ctx)
    assert calls == [8] and video.num_frames == 29 and video.metadata["chunks"] == 3
    assert video.metadata["spans"] == [[0, 4], [3, 7], [4, 8]]
    # the new frames of chunks 2 and 3 begin at latents 4 and 7, i.e. frames 4·3 + 1 = 13 and 4·6 + 1 = 25
    from vgen.eval.seams import layout_from_sidecar

    assert layout_from_sidecar({"method_info": video.metadata}).boundaries(29) == [13, 25]


def _live_tensor_bytes(exclude: set) -> int:
    storages = {}
    for obj in gc.get_objects():
        if torch.is_tensor(obj) and not isinstance(obj, torch.nn.Parameter) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            if storage.data_ptr() not in exclude:
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def test_transformer_stage_memory_does_not_grow_with_chunks(tiny, monkeypatch):
    """The transformer sees one window at a time, and what is alive while it runs grows with the video only by the
    whole-video noise and latent (2 x 4 bytes x 16 channels x 4 x 4 per latent frame)."""
    from vgen.methods.streaming import latent

    c = tiny(MODEL)
    fixed = {t.untyped_storage().data_ptr() for m in (c.unet, c.vae, c.text_encoder) for t in (*m.parameters(), *m.buffers())}

    def peak(frames):
        inputs, live = [], []

        def hook(module, args, kwargs):
            inputs.append(kwargs["hidden_states"].shape[2])
            live.append(_live_tensor_bytes(fixed))

        handle = c.unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            job = _job(**{"video.frames": frames, "streaming.chunk": 13, "streaming.cond_frames": 4, "sampler.steps": 2})
            plan, _ = _stream(c, job)
        finally:
            handle.remove()
        return plan, max(inputs), max(live)

    short_plan, short_in, short_live = peak(25)  # 7 latents: two windows
    long_plan, long_in, long_live = peak(61)  # 16 latents: five windows
    assert len(short_plan.spans) == 2 and len(long_plan.spans) == 5
    assert short_in == long_in == 4
    per_latent = 2 * 4 * 16 * 4 * 4
    assert long_live - short_live <= (long_plan.latents - short_plan.latents) * per_latent


@pytest.mark.parametrize("keys,expected", [
    ({"streaming.mode": "trained"}, "no CAM/APM weights exist for wan models: use streaming.mode=training-free"),
    ({"streaming.cond_frames": 3}, "streaming.cond_frames=3 holds no whole latent frame of 'tiny-random-wan' (4 frames per latent frame); use 4 or more"),
    ({"streaming.refine": True, "streaming.upscale": 2}, "streaming.upscale refines through pixels"),
])
def test_wan_user_errors_are_one_line(tmp_path, keys, expected):
    from conftest import vgen_in_process

    args = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in keys.items()]
    r = vgen_in_process("generate", PROMPT, "--model", MODEL, "--method", "streaming", "--steps", "1", "--frames", "41",
                        "--out", tmp_path / "v.mp4", *args)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip() and not line.startswith("streaming:")]
    assert r.returncode != 0 and len(lines) == 1 and expected in lines[0], r.stderr
    assert not (tmp_path / "v.mp4").exists()


def test_refinement_blends_latent_windows(tiny, tmp_path):
    """Stage 3 on Wan: windows of refine_chunk frames in latent time (24 -> 6, overlap 8 -> 2) over the whole latent."""
    from vgen.methods.context import RunContext
    from vgen.methods.streaming import runner

    c = tiny(MODEL)
    job = _job(**{"video.frames": 41, "streaming.chunk": 17, "streaming.cond_frames": 4, "sampler.steps": 2,
                  "streaming.refine": True, "streaming.refine_strength": 0.5})
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(7), height=32, width=32,
                     output_stem=tmp_path / "v", progress=False)
    video = runner.run(job, c, ctx)
    assert video.num_frames == 41 and video.metadata["refine"]["windows"] == 3  # 11 latents: [0, 6), [4, 10), [5, 11)
    assert (video.metadata["refine"]["chunk_latents"], video.metadata["refine"]["overlap_latents"]) == (6, 2)


def test_chunk_left_at_its_default_is_the_models_trained_length(tmp_path):
    """streaming.chunk unset: the model's trained_frames (a folder's vgen.yaml, or a known hub id's); set: as set."""
    from vgen.config import build_job
    from vgen.methods.streaming.latent import chunk_frames
    from vgen.sizes import trained_frames_of

    base = {"prompt": PROMPT, "method": "streaming", "model.id": MODEL}
    assert chunk_frames(build_job(flags=base), 17) == 17
    assert chunk_frames(build_job(flags={**base, "streaming.chunk": 9}), 17) == 9
    assert chunk_frames(build_job(flags=base), None) == 16  # unknown: the paper's 16
    assert trained_frames_of("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") == 81
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "vgen.yaml").write_text("trained_frames: 17\n")
    assert trained_frames_of(str(tmp_path)) == 17


@pytest.mark.parametrize("name", ["tiny-random-wan", "tiny-random-ltx", "tiny-random-unet3d"])
def test_decoded_frames_inverts_the_frame_rule(tiny, name):
    """n latent frames decode to the frames the family's rule maps back to n (Wan 4k+1, LTX 8k+1, UNets 1:1)."""
    c = tiny(name)
    for n in range(1, 7):
        frames = c.family.decoded_frames(c, n)
        assert c.family.video_frames(c, frames) == frames and c.family.latent_frames(c, frames) == n
    assert tiny("tiny-random-wan").family.decoded_frames(tiny("tiny-random-wan"), 61) == 241
