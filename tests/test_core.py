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


def test_decode_chunk_size_does_not_change_frames(tiny):
    c = tiny("tiny-random-unet3d")
    latents = torch.randn(2, 4, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    one = decode_latents(c, latents, chunk=1)
    all_ = decode_latents(c, latents, chunk=10)
    assert one.shape == (2, 5, 32, 32, 3)
    torch.testing.assert_close(one, all_, atol=1e-5, rtol=0)


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
