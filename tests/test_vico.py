"""Vico: the recording processor, key tokens, score and loss, the update schedule, and the runner."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_job, run_vanilla
from vgen.config import VicoConfig
from vgen.methods.vico.config import check
from vgen.methods.vico.recorder import AttentionRecorder, RecordSpec, RecordingAttnProcessor, graph_layers, record_attention
from vgen.core.sampler import predict_noise

PROMPT = "a red circle and a blue square moving left"
SMALL = {"sampler.steps": 2, "video.frames": 3, "video.height": 16, "video.width": 16}
# thresholds no loss is below: every planned step updates (the tiny random models' losses start below 0.95)
ALWAYS = {"vico.thresholds": [0.0, 0.0, 0.0], "vico.threshold": 0.0}


def run_vico(components, job):
    from vgen.core.sampler import resolve_size
    from vgen.jobs import RunContext
    from vgen.methods.vico.runner import run

    h, w = resolve_size(components, job.video.height, job.video.width)
    logs = []
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=h, width=w,
                     output_stem=Path("unused"), progress=False, log=logs.append)
    return run(job, components, ctx), logs


# ---------------------------------------------------------------------------------------------- recorder


@pytest.mark.parametrize("cross", [True, False])
def test_recorded_probabilities_are_the_head_averaged_softmax(cross):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=12, cross_attention_dim=6 if cross else None, heads=3, dim_head=5)
    x = torch.randn(2, 7, 12, requires_grad=True)
    ctx = torch.randn(2, 4, 6) if cross else None
    recorder = AttentionRecorder([RecordSpec("l", "u", "cross", 1)])
    attn.set_processor(RecordingAttnProcessor(recorder, "l"))
    recorder.active = True
    out = attn(x, encoder_hidden_states=ctx)
    kv = ctx if cross else x
    q = attn.to_q(x).view(2, 7, 3, 5).transpose(1, 2)
    k = attn.to_k(kv).view(2, -1, 3, 5).transpose(1, 2)
    manual = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(5), dim=-1).mean(1)
    torch.testing.assert_close(recorder.probs["l"], manual)
    attn.set_processor(AttnProcessor2_0())
    torch.testing.assert_close(out, attn(x, encoder_hidden_states=ctx), atol=1e-5, rtol=1e-5)
    recorder.probs["l"][..., 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # autograd reaches the input through the probabilities


@pytest.mark.parametrize("name", ["tiny-random-unet3d", "tiny-random-motion"])
def test_recording_keeps_the_unet_output_and_gives_flow_blocks(tiny, name):
    c = tiny(name)
    torch.manual_seed(1)
    x, e, t = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 77, 32), torch.tensor(500)
    with torch.no_grad():
        reference = predict_noise(c, x, t, e)
        with record_attention(c.unet, "full") as recorder:
            recorder.active = True
            recorded = predict_noise(c, x, t, e)
            blocks = recorder.blocks(frames=3, batch_index=1)
    torch.testing.assert_close(recorded, reference, atol=1e-5, rtol=1e-4)
    assert len(blocks) == 3  # down 0 (one unit), up 1 (two units): the coarsest outer cross-attention level
    for cross, spatial, temporals in blocks:
        assert cross.shape == (3, 64, 77) and spatial.shape == (3, 64, 64)
        assert len(temporals) == 2 and all(T.shape == (64, 3, 3) for T in temporals)
        for m in (cross, spatial, *temporals):
            torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
    assert {s.role for s in graph_layers(c.unet)} == {"cross", "temporal"}


def test_temporal_recording_is_per_position(tiny):
    """T[p] of the recorder is the attention of the frames at position p (diffusers folds (B, h, w))."""
    c = tiny("tiny-random-unet3d")
    seen = {}
    layer = graph_layers(c.unet)[1]
    module = c.unet.get_submodule(layer.name.removesuffix(".processor"))

    def grab(m, args, kwargs):
        seen.setdefault("h", args[0] if args else kwargs["hidden_states"])

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    torch.manual_seed(2)
    x, e, t = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 77, 32), torch.tensor(500)
    try:
        with torch.no_grad(), record_attention(c.unet) as recorder:
            recorder.active = True
            predict_noise(c, x, t, e)
            T = recorder.blocks(3, batch_index=1)[0][2][0]
    finally:
        handle.remove()
    h = seen["h"]  # [B*P, F, C]
    heads = module.heads
    q = module.to_q(h).view(h.shape[0], 3, heads, -1).transpose(1, 2)
    k = module.to_k(h).view(h.shape[0], 3, heads, -1).transpose(1, 2)
    manual = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1).mean(1)
    torch.testing.assert_close(T, manual.reshape(2, 64, 3, 3)[1])


@pytest.mark.parametrize("masked", [False, True])
def test_recorded_attention_matches_autograd_in_chunks(masked):
    """The chunked kernel with recomputing backward gives autograd's values and gradients."""
    from vgen.core.attention import recorded_attention

    torch.manual_seed(3)
    B, H, N, K, d, cols = 5, 3, 7, 9, 4, 6
    q, k, v = (torch.randn(B, H, n, d, dtype=torch.float64, requires_grad=True) for n in (N, K, K))
    mask = torch.randn(B, H, 1, K, dtype=torch.float64) if masked else None
    w_out, w_mean = torch.randn(B, H, N, d, dtype=torch.float64), torch.randn(B, N, cols, dtype=torch.float64)
    probs = torch.softmax(q @ k.transpose(-1, -2) * 0.5 + (0 if mask is None else mask), dim=-1)
    ref = ((probs @ v) * w_out).sum() + (probs[..., :cols].mean(1) * w_mean).sum()
    expected = torch.autograd.grad(ref, (q, k, v), retain_graph=True)
    out, mean = recorded_attention(q, k, v, mask, 0.5, cols, budget=2 * H * N * K)  # 3 chunks of the batch
    torch.testing.assert_close(mean, probs[..., :cols].mean(1))
    torch.testing.assert_close(out, probs @ v)
    got = torch.autograd.grad((out * w_out).sum() + (mean * w_mean).sum(), (q, k, v))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    # only the recorded maps reach the loss (the layer that ends the pass): gradients through them alone
    expected = torch.autograd.grad((probs[..., :cols].mean(1) * w_mean).sum(), (q, k))
    _, mean = recorded_attention(q, k, v, mask, 0.5, cols, budget=2 * H * N * K)
    for g, e in zip(torch.autograd.grad((mean * w_mean).sum(), (q, k)), expected):
        torch.testing.assert_close(g, e)


def _vico_gradient(c, checkpoint: bool, graph: str = "default", levels=None, unit=None):
    """(loss, d loss / d latent, how often a layer inside ``unit`` (default: the first checkpointed one)
    ran) of one Vico pass."""
    from vgen.core.prompts import prompt_length
    from vgen.jobs import RunContext
    from vgen.methods.vico.guide import VicoGuide
    from vgen.methods.vico.checkpointing import checkpoint_units
    from vgen.methods.vico.runner import prepare

    job = make_job(PROMPT, **{"method": "vico", **SMALL, "sampler.steps": 10, "vico.graph": graph,
                              "vico.checkpoint": checkpoint, "vico.checkpoint_levels": levels})
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(0), height=job.video.height,
                     width=job.video.width, output_stem=Path("unused"))
    prompt, scheduler, latents, keys = prepare(job, c, ctx)
    unit = unit if unit is not None else checkpoint_units(c.unet)[0]
    runs = []
    handle = next(unit.children()).register_forward_hook(lambda *a: runs.append(1))
    try:
        with record_attention(c.unet, graph, stop_when_complete=True) as recorder:
            guide = VicoGuide(job.vico, c, scheduler, prompt, keys, prompt_length(c.tokenizer, PROMPT), recorder, 10)
            x = latents.detach().float().clone().requires_grad_(True)
            with torch.enable_grad():
                loss, _, _ = guide.measure(x, scheduler.timesteps[2])
                loss.backward()
    finally:
        handle.remove()
    assert all("forward" not in m.__dict__ for m in checkpoint_units(c.unet))  # the UNet is restored
    return loss.detach(), x.grad, len(runs)


@pytest.mark.parametrize("graph", ["default", "full"])
@pytest.mark.parametrize("name", ["tiny-random-unet3d", "tiny-random-motion"])
def test_checkpointed_gradient_equals_the_stored_one(tiny, name, graph):
    """Recomputing the layers in backward (vico.checkpoint) changes no bit of the latent's gradient; the
    recorded maps stay in the graph (the gradient is not zero) and the layers really are recomputed."""
    c = tiny(name)
    loss, grad, runs = _vico_gradient(c, checkpoint=False, graph=graph)
    loss_ck, grad_ck, runs_ck = _vico_gradient(c, checkpoint=True, graph=graph)
    assert (runs, runs_ck) == (1, 2)
    assert grad.abs().max() > 0
    torch.testing.assert_close(loss_ck, loss, rtol=0, atol=0)
    torch.testing.assert_close(grad_ck, grad, rtol=1e-6, atol=1e-12)


def test_checkpoint_units_by_level(tiny):
    """levels=N keeps the layers of the N finest resolutions: on the two-level tiny UNet3D, level 0 is
    transformer_in, down block 0 and up block 1 (the last, at full size); up block 0's upsampler counts at
    its input's level, 1."""
    from vgen.methods.vico.checkpointing import checkpoint_units

    u = tiny("tiny-random-unet3d").unet
    layers = lambda block: [m for name in ("resnets", "temp_convs", "attentions", "temp_attentions", "upsamplers")
                            for m in (getattr(block, name, None) or [])]
    level0 = [u.transformer_in, *layers(u.down_blocks[0]), *layers(u.up_blocks[1])]
    level1 = [*layers(u.down_blocks[1]), *layers(u.mid_block), *layers(u.up_blocks[0])]
    assert u.up_blocks[0].upsamplers and len(level1) > 4
    assert {id(m) for m in checkpoint_units(u, 1)} == {id(m) for m in level0}
    assert {id(m) for m in checkpoint_units(u)} == {id(m) for m in level0 + level1}
    assert {id(m) for m in checkpoint_units(u, 2)} == {id(m) for m in checkpoint_units(u)}


@pytest.mark.parametrize("name", ["tiny-random-unet3d", "tiny-random-motion"])
def test_checkpointing_the_finest_level_only(tiny, name):
    """vico.checkpoint_levels=1 recomputes the full-resolution layers and stores the coarse ones (a mid-block
    resnet runs once), with the same gradient as storing everything."""
    c = tiny(name)
    fine = c.unet.down_blocks[0].resnets[0]
    coarse = c.unet.mid_block.resnets[0]
    loss, grad, _ = _vico_gradient(c, checkpoint=False)
    loss_ck, grad_ck, fine_runs = _vico_gradient(c, checkpoint=True, levels=1, unit=fine)
    _, _, coarse_runs = _vico_gradient(c, checkpoint=True, levels=1, unit=coarse)
    assert (fine_runs, coarse_runs) == (2, 1)
    torch.testing.assert_close(loss_ck, loss, rtol=0, atol=0)
    torch.testing.assert_close(grad_ck, grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", ["tiny-random-unet3d", "tiny-random-motion"])
def test_vico_video_is_the_same_with_and_without_checkpointing(tiny, name):
    c = tiny(name)
    keys = {"method": "vico", "model.id": name, "vico.lr": 0.05, **SMALL, **ALWAYS, "sampler.steps": 4}
    video, _ = run_vico(c, make_job(PROMPT, **keys))
    plain, _ = run_vico(c, make_job(PROMPT, **keys, **{"vico.checkpoint": False}))
    assert video.metadata["vico"]["steps"] == plain.metadata["vico"]["steps"]
    assert video.metadata["vico"]["steps"][0]["updates"] >= 1
    np.testing.assert_array_equal(video.frames, plain.frames)


def test_units_official_include_the_mid_block_at_the_recorded_resolution(tiny):
    """The toy (8x8 latent, two CrossAttn levels) records at 4x4, where down block 1, the mid block and up
    block 0 (two attentions) sit: four units officially, three without the mid block. On the tiny UNet3D
    (ModelScope's layout: the mid block one level below the recorded one) the two rules pick the same."""
    from vgen.config import ModelConfig
    from vgen.models import load_components

    toy = load_components(ModelConfig(id="toy"), "cpu", "float32").unet
    units = lambda unet, rule: sorted({s.unit for s in graph_layers(unet, units=rule)})  # noqa: E731
    assert units(toy, "official") == ["down_blocks.1/0", "mid_block/0", "up_blocks.0/0", "up_blocks.0/1"]
    assert units(toy, "outer") == ["down_blocks.1/0", "up_blocks.0/0", "up_blocks.0/1"]
    layers = graph_layers(toy)
    mid = [s for s in layers if s.unit == "mid_block/0"]
    assert sorted(s.role for s in mid) == ["cross", "temporal", "temporal"] and {s.factor for s in layers} == {2}
    unet3d = tiny("tiny-random-unet3d").unet
    assert units(unet3d, "official") == units(unet3d, "outer") == ["down_blocks.0/0", "up_blocks.1/0", "up_blocks.1/1"]


# ---------------------------------------------------------------------------------------------- key tokens


def test_key_tokens_from_indices_words_and_automatic(tiny):
    from vgen.errors import ConfigError
    from vgen.methods.vico.keys import select_key_tokens

    tok = tiny("tiny-random-unet3d").tokenizer
    keys = select_key_tokens(tok, PROMPT, VicoConfig(tokens=[3, 7]))
    assert [(k.label, k.indices) for k in keys] == [("#3", (3,)), ("#7", (7,))]
    keys = select_key_tokens(tok, PROMPT, VicoConfig(words=["circle,square"]))
    assert [(k.label, k.indices) for k in keys] == [("circle", (3,)), ("square", (7,))]
    # official: nouns, verbs and the direction words; colour adjectives are not key tokens
    keys = select_key_tokens(tok, PROMPT, VicoConfig())
    assert [(k.label, k.indices) for k in keys] == [("circle", (3,)), ("square", (7,)), ("moving", (8,)), ("left", (9,))]
    two = "a red circle moving left and a blue square moving up"
    assert [k.label for k in select_key_tokens(tok, two, VicoConfig(select="nouns"))] == ["circle", "square"]
    keys = select_key_tokens(tok, PROMPT, VicoConfig(stop_words=["moving", "left"]))
    assert [k.label for k in keys] == ["circle", "square"]
    # "zebra" is not in the tiny vocabulary: it splits into several tokens and counts as their span
    keys = select_key_tokens(tok, "a cat and a zebra", VicoConfig(words=["cat", "zebra"]))
    assert keys[0].indices == (2,) and len(keys[1].indices) > 1 and keys[1].indices[0] == 5
    assert select_key_tokens(tok, "a cat and a zebra", VicoConfig()) == keys  # the tagger finds the same nouns
    with pytest.raises(ConfigError):
        select_key_tokens(tok, PROMPT, VicoConfig(words=["dog"]))
    with pytest.raises(ConfigError):
        select_key_tokens(tok, PROMPT, VicoConfig(tokens=[0]))


def test_automatic_key_tokens_one_per_occurrence(tiny):
    """Each occurrence of a key word is its own key token (the public code's word indices), labelled apart."""
    from vgen.methods.vico.keys import select_key_tokens

    tok = tiny("tiny-random-unet3d").tokenizer
    prompt = "a red circle moving left and a blue square moving up"
    keys = select_key_tokens(tok, prompt, VicoConfig())
    assert [(k.label, k.indices) for k in keys] == [
        ("circle", (3,)), ("moving", (4,)), ("left", (5,)), ("square", (9,)), ("moving#2", (10,))]
    # explicit words: one key per word, its occurrences as one span
    assert [(k.label, k.indices) for k in select_key_tokens(tok, prompt, VicoConfig(words=["moving"]))] == [
        ("moving", (4, 10))]


# Prompts of real scenes and of the toy world, with the key words the public code's rule picks when each
# word has its Penn Treebank tag (hand-tagged by the PTB guidelines: nouns NN*, verbs VB*, plus
# left/right/top/bottom, never "view"/"is"). The tagger must agree on these.
KEY_WORDS = [
    ("A Retriever is driving a Porsche car.", ["Retriever", "driving", "Porsche", "car"]),
    ("a cat and a dog playing in the garden", ["cat", "dog", "playing", "garden"]),
    ("a panda eating bamboo on a rock", ["panda", "eating", "bamboo", "rock"]),
    ("an astronaut riding a horse on the moon", ["astronaut", "riding", "horse", "moon"]),
    ("a red circle moving left and a blue square moving up", ["circle", "moving", "left", "square", "moving"]),
    ("a green diamond staying still", ["diamond", "staying"]),
    ("a yellow car and a red bus", ["car", "bus"]),
    ("a teddy bear and a cup on a table", ["teddy", "bear", "cup", "table"]),
    ("two dogs run across the field", ["dogs", "run", "field"]),
    ("a bird flying over the ocean at sunset", ["bird", "flying", "ocean", "sunset"]),
]


@pytest.mark.parametrize("prompt, expected", KEY_WORDS)
def test_automatic_key_words_follow_the_official_rule(prompt, expected):
    from vgen.methods.vico.keys import key_words

    assert [w for w, _ in key_words(prompt)] == expected
    assert all(prompt[s : s + len(w)] == w for w, s in key_words(prompt))


def test_words_match_at_word_boundaries_only(tiny):
    """'ing' is not a word of 'a panda djing' even though 'djing' ends with its tokens."""
    from vgen.core.prompts import token_spans

    tok = tiny("tiny-random-unet3d").tokenizer
    prompt = "a panda djing and ing"
    ids = tok(prompt)["input_ids"]
    ing = tok("ing", add_special_tokens=False)["input_ids"]
    inside = [i for i in range(len(ids)) if ids[i : i + len(ing)] == ing]
    assert len(inside) == 2  # as a subsequence it occurs inside "djing" and as its own word
    assert token_spans(tok, prompt, ["ing"])["ing"] == list(range(inside[1], inside[1] + len(ing)))
    with pytest.raises(ValueError):
        token_spans(tok, "a panda djing", ["ing"])


# ---------------------------------------------------------------------------------------------- score, loss, schedule


def test_score_and_loss_on_a_hand_made_flow():
    from vgen.methods.vico.keys import KeyToken
    from vgen.methods.vico.scores import token_maps, token_scores, vico_loss

    F, h, w, J = 2, 5, 5, 77
    flow = torch.zeros(F, h * w, J)
    flow[:, :, 0] = 5.0  # start token and padding must not count
    flow[:, :, 20:] = 5.0
    flow[1, 12, 1] = 0.1  # token 1 strong at frame 1, centre (2, 2)
    n_tokens = 5  # start, 3 real tokens, end
    keys = [KeyToken("one", (1,)), KeyToken("two", (2,)), KeyToken("two-three", (2, 3))]
    maps = token_maps(flow, keys, n_tokens, h, w, scale=100.0, sigma=0.0)
    p = math.exp(10) / (math.exp(10) + 2)  # softmax over the 3 real tokens of 100*flow
    assert maps.shape == (3, F, h, w)
    torch.testing.assert_close(maps[0, 1, 2, 2], torch.tensor(p))
    torch.testing.assert_close(maps[0, 0, 0, 0], torch.tensor(1 / 3))
    torch.testing.assert_close(maps[2, 0, 0, 0], torch.tensor(2 / 3))  # a span holds the sum of its tokens
    scores = token_scores(maps)
    torch.testing.assert_close(scores, torch.tensor([p, 1 / 3, 2 / 3]))
    torch.testing.assert_close(vico_loss(scores), torch.tensor(2 / 3))  # 1 - weakest
    torch.testing.assert_close(vico_loss(scores, "min"), torch.tensor(-1 / 3))
    # the 3x3x3 smoothing spreads the peak: A drops below the raw peak but stays above the background
    smooth = token_scores(token_maps(flow, keys, n_tokens, h, w, sigma=0.5))
    assert 1 / 3 < smooth[0] < p
    torch.testing.assert_close(smooth[1:], scores[1:])  # far from the peak their maps are flat


def test_official_smoothing_kernel_by_hand():
    """The public code's kernel: per axis exp(-(d / (2σ))²), σ 0.5 -> weights (e^-1, 1, e^-1), normalised;
    the 3D kernel is their product (centre 1 / (1 + 2/e)³ = 0.191). The textbook Gaussian (σ 0.5) gives
    per-axis weights (e^-2, 1, e^-2) (centre 0.49)."""
    from vgen.methods.vico.scores import smoothing_kernel3d

    e = math.exp(-1)
    axis = torch.tensor([e, 1.0, e]) / (1 + 2 * e)
    expected = axis[:, None, None] * axis[None, :, None] * axis[None, None, :]
    k = smoothing_kernel3d(0.5)
    torch.testing.assert_close(k, expected)
    assert k[1, 1, 1].item() == pytest.approx(0.1913, abs=1e-4) and k.sum().item() == pytest.approx(1.0)
    t = smoothing_kernel3d(0.5, "textbook")
    assert t[1, 1, 1].item() == pytest.approx((1 / (1 + 2 * math.exp(-2))) ** 3, rel=1e-6)  # 0.487


def test_official_smoothing_reflects_at_the_borders():
    """A one-hot map at a corner: reflect padding mirrors the neighbour (not the corner itself) across the
    border, so the smoothed corner value is sum over axes of the mirrored weights, by hand."""
    from vgen.methods.vico.scores import smooth_maps

    e = math.exp(-1)
    a = torch.tensor([e, 1.0, e]) / (1 + 2 * e)  # per-axis weights at offsets -1, 0, +1
    maps = torch.zeros(1, 3, 3, 3)
    maps[0, 0, 0, 0] = 1.0
    out = smooth_maps(maps, 0.5)
    # at the corner (0,0,0) each axis sees the value at 0 through the centre weight only (reflect pads
    # index -1 with index 1, which is 0 here): a[1]^3; at (1,0,0): a[0] along frames, a[1] along the others
    torch.testing.assert_close(out[0, 0, 0, 0], a[1] ** 3)
    torch.testing.assert_close(out[0, 1, 0, 0], a[0] * a[1] ** 2)
    # replicate padding would repeat the corner: (a[0] + a[1])^3 there
    rep = smooth_maps(maps, 0.5, "textbook")
    b = torch.tensor([math.exp(-2), 1.0, math.exp(-2)]) / (1 + 2 * math.exp(-2))
    torch.testing.assert_close(rep[0, 0, 0, 0], (b[0] + b[1]) ** 3)
    # a map of one frame cannot be reflected along frames: replicate there, no error
    assert smooth_maps(torch.rand(2, 1, 4, 4), 0.5).shape == (2, 1, 4, 4)


def test_lr_schedule_and_update_plan():
    from vgen.methods.vico.schedule import lr_schedule, update_plan

    lrs = lr_schedule(1e-4, 50)
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-4 * math.sqrt(0.5))
    assert lrs[10] == pytest.approx(1e-4 * math.sqrt(1 - 0.5 * 10 / 49))
    plan = update_plan(VicoConfig(), 50)  # the public code's {0: 0.95, 10: 0.5, 20: 0.2}, 0.2 elsewhere, i < 25
    assert sorted(plan) == list(range(25))
    assert plan[0] == (10, 0.95) and plan[10] == (10, 0.5) and plan[20] == (10, 0.2) and plan[5] == (1, 0.2)
    # absolute (public code): with 20 steps every step updates, refinements at 0 and 10 (20 is past the end)
    plan = update_plan(VicoConfig(), 20)
    assert sorted(plan) == list(range(20))
    assert {i for i, (n, _) in plan.items() if n > 1} == {0, 10} and plan[10] == (10, 0.5) and plan[19] == (1, 0.2)
    assert sorted(update_plan(VicoConfig(), 30)) == list(range(25))
    assert sorted(update_plan(VicoConfig(update_until=3), 10)) == [0, 1, 2]
    # fraction (ours): scaled with the step count, so none of the refinements vanishes
    fraction = VicoConfig(schedule="fraction")
    assert update_plan(fraction, 50) == update_plan(VicoConfig(), 50)  # the two agree at 50 steps
    plan = update_plan(fraction, 20)
    assert sorted(plan) == list(range(10)) and {i for i, (n, _) in plan.items() if n > 1} == {0, 4, 8}
    plan = update_plan(fraction, 10)
    assert sorted(plan) == [0, 1, 2, 3, 4] and plan[0] == (10, 0.95) and plan[2] == (10, 0.5) and plan[4] == (10, 0.2)
    assert sorted(update_plan(fraction, 5)) == [0, 1, 2]
    assert update_plan(VicoConfig(schedule="fraction", fraction=0.0), 10) == {}


def test_schedule_keys_are_checked():
    from vgen.errors import ConfigError

    with pytest.raises(ConfigError, match="vico.schedule"):
        check(VicoConfig(schedule="relative"))
    with pytest.raises(ConfigError, match="vico.iterative_steps"):
        check(VicoConfig(iterative_steps=[0, 10]))  # three thresholds
    check(VicoConfig(schedule="fraction", iterative_steps=[0, 10]))  # the fraction schedule does not use them
    with pytest.raises(ConfigError, match="vico.latent"):
        check(VicoConfig(latent="float16"))


def _guide(c, job, steps):
    from vgen.core.prompts import prompt_length
    from vgen.jobs import RunContext
    from vgen.methods.vico.guide import VicoGuide
    from vgen.methods.vico.runner import prepare

    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=job.video.height,
                     width=job.video.width, output_stem=Path("unused"))
    prompt, scheduler, latents, keys = prepare(job, c, ctx)
    recorder_cm = record_attention(c.unet, job.vico.graph, stop_when_complete=True)
    recorder = recorder_cm.__enter__()
    guide = VicoGuide(job.vico, c, scheduler, prompt, keys, prompt_length(c.tokenizer, job.prompt), recorder, steps)
    return guide, scheduler, latents, recorder_cm


def test_threshold_is_checked_before_the_update(tiny):
    """A loss already below the step's threshold makes no update (public code's order): the latent comes
    back unchanged, one loss was measured, no Adam step was taken."""
    c = tiny("tiny-random-unet3d")
    job = make_job(PROMPT, **{"method": "vico", **SMALL, "sampler.steps": 10, "vico.thresholds": [1.5, 1.5, 1.5]})
    guide, scheduler, latents, cm = _guide(c, job, 10)
    try:
        out = guide(0, scheduler.timesteps[0], latents.float())
    finally:
        cm.__exit__(None, None, None)
    record = guide.history[0]
    assert record["updates"] == 0 and len(record["losses"]) == 1 and record["losses"][0] < 1.5
    assert torch.equal(out, latents.float())


def test_bfloat16_latent_float32_keeps_a_small_update_model_dtype_rounds_it_away(tiny):
    """In bfloat16 the model runs in bfloat16. vico.latent float32 (ours, the default): the update is applied
    to a float32 copy, and the first Adam step moves every element (with a non-tiny gradient) by
    lr * g / (|g| + eps) ~ lr, a closed form. vico.latent model (the public code): Adam steps the bfloat16
    latent itself, whose spacing near 1 is 2^-7, so a 1e-4 step is lost on almost every element."""
    from vgen.config import ModelConfig
    from vgen.models import load_components

    c = load_components(ModelConfig(id="tiny-random-unet3d"), "cpu", "bfloat16")
    keys = {"method": "vico", **SMALL, **ALWAYS, "sampler.steps": 10, "vico.max_iterations": 1,
            "runtime.dtype": "bfloat16"}
    job = make_job(PROMPT, **keys)
    guide, scheduler, latents, cm = _guide(c, job, 10)
    x = latents.float()
    try:
        out = guide(0, scheduler.timesteps[0], x)
        # the gradient the update used, measured again at x
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            loss, _, _ = guide.measure(xg, scheduler.timesteps[0])
            loss.backward()
    finally:
        cm.__exit__(None, None, None)
    lr = guide.lrs[0]
    assert out.dtype == torch.float32 and guide.history[0]["updates"] == 1
    g = xg.grad
    expected = -lr * g / (g.abs() + job.vico.adam_eps)  # Adam's first step: m = g, v = g^2 (bias-corrected)
    torch.testing.assert_close(out - x, expected, rtol=1e-3, atol=2.5e-7)  # float32 rounding of x + step
    strong = g.abs() > 100 * job.vico.adam_eps  # these move by ~lr
    assert strong.float().mean() > 0.3 and ((out - x)[strong].abs() > 0.9 * lr).all()

    model = make_job(PROMPT, **keys, **{"vico.latent": "model"})
    guide, scheduler, latents, cm = _guide(c, model, 10)
    x16 = latents  # x_T in the model's dtype, as the public pipeline keeps it
    try:
        out16 = guide(0, scheduler.timesteps[0], x16)
    finally:
        cm.__exit__(None, None, None)
    assert x16.dtype == out16.dtype == torch.bfloat16 and guide.history[0]["updates"] == 1
    kept = (out16 != x16)[strong].float().mean()
    assert kept < 0.5  # most of the step rounds away in bfloat16
    # where it survives it is a whole bfloat16 spacing (>= 2^-8 * |x|), not the ~lr step
    moved = (out16.float() - x16.float())[strong & (out16 != x16)].abs()
    assert (moved >= x16.float().abs()[strong & (out16 != x16)] * 2**-9).all()


def test_latent_model_runs_the_loop_in_the_model_dtype(tiny, monkeypatch):
    """vico.latent model keeps the sampler's latent in the model's dtype (no float32 master)."""
    import vgen.methods.vico.runner as vico
    from vgen.config import ModelConfig
    from vgen.models import load_components

    c = load_components(ModelConfig(id="tiny-random-unet3d"), "cpu", "bfloat16")
    seen = {}
    real = vico.decode_latents

    def decode(components, latents, chunk):
        seen[latents.dtype] = True
        return real(components, latents, chunk)

    monkeypatch.setattr(vico, "decode_latents", decode)
    for latent in ("float32", "model"):
        run_vico(c, make_job(PROMPT, **{"method": "vico", **SMALL, **ALWAYS, "runtime.dtype": "bfloat16",
                                        "vico.latent": latent}))
    assert set(seen) == {torch.float32, torch.bfloat16}


def test_update_lowers_the_loss_on_the_toy_model():
    """On the shipped toy model, at the first step, Vico's updates lower the measured loss (its own goal)."""
    from vgen.config import ModelConfig
    from vgen.models import load_components

    c = load_components(ModelConfig(id="toy"), "cpu", "float32")
    job = make_job("a red circle and a blue square", **{"method": "vico", "model.id": "toy", "sampler.steps": 20,
                                                         "video.frames": 4, "video.height": 64, "video.width": 64,
                                                         "vico.lr": 1e-2, **ALWAYS, "vico.max_iterations": 4})
    guide, scheduler, latents, cm = _guide(c, job, 20)
    t = scheduler.timesteps[0]
    try:
        with torch.no_grad():
            before = guide.measure(latents.float(), t)[0].item()
        out = guide(0, t, latents.float())
        with torch.no_grad():
            after = guide.measure(out, t)[0].item()
    finally:
        cm.__exit__(None, None, None)
    assert guide.history[0]["updates"] == 4
    # every update lowers it (the weakest score starts near 0 on the toy: ~2e-4 per update at this lr)
    losses = guide.history[0]["losses"] + [after]
    assert losses[0] == pytest.approx(before, abs=1e-6)
    assert all(b < a - 5e-5 for a, b in zip(losses, losses[1:])), losses


# ---------------------------------------------------------------------------------------------- runner


def test_generate_vico_cli_on_unet3d(tmp_path):
    """`vgen generate --method vico`, in-process (a subprocess spends most of its time importing torch)."""
    from typer.testing import CliRunner

    from vgen.cli import app

    r = CliRunner().invoke(app, ["generate", PROMPT, "-m", "vico", "--model", "tiny-random-unet3d", "--steps", "2",
                                 "--frames", "3", "--height", "16", "--width", "16", "--out", str(tmp_path),
                                 "vico.max_iterations=2", "vico.thresholds=[0,0,0]"])
    assert r.exit_code == 0, r.output
    mp4 = next(tmp_path.glob("*.mp4"))
    info = json.loads(mp4.with_suffix(".json").read_text())["method_info"]["vico"]
    assert list(info["key_tokens"]) == ["circle", "square", "moving", "left"]
    assert info["update_steps"] == [0, 1] and info["steps"][0]["updates"] >= 1  # absolute schedule: i < 25
    assert set(info["scores_before"]) == set(info["scores_after"]) == {"circle", "square", "moving", "left"}
    assert info["nonfinite_skipped"] == {"count": 0, "steps": []}
    assert info["weakest"]["token"] in info["key_tokens"] and isinstance(info["weakest"]["moved"], bool)


def test_vico_runs_on_motion_and_changes_the_video(tiny):
    c = tiny("tiny-random-motion")
    job = make_job(PROMPT, **{"method": "vico", "model.id": "tiny-random-motion", "vico.lr": 0.05, **SMALL, **ALWAYS})
    video, _ = run_vico(c, job)
    base = run_vanilla(c, make_job(PROMPT, **{"model.id": "tiny-random-motion", **SMALL}))
    info = video.metadata["vico"]
    assert video.frames.shape == base.shape and info["steps"][0]["updates"] >= 1
    assert not np.array_equal(video.frames, base)


def test_fewer_than_two_key_tokens_is_vanilla_exactly(tiny):
    c = tiny("tiny-random-unet3d")
    job = make_job("a red circle", **{"method": "vico", **SMALL})
    video, logs = run_vico(c, job)
    assert "need 2" in video.metadata["vico"]["skipped"] and any("need 2" in m for m in logs)
    np.testing.assert_array_equal(video.frames, run_vanilla(c, make_job("a red circle", **SMALL)))


def test_a_weakest_token_that_does_not_move_is_reported(tiny):
    """With lr 0 the updates change nothing: the run says so in one line and in the sidecar."""
    c = tiny("tiny-random-unet3d")
    video, logs = run_vico(c, make_job(PROMPT, **{"method": "vico", **SMALL, **ALWAYS, "vico.lr": 0.0}))
    info = video.metadata["vico"]
    assert info["updates"] >= 1 and info["weakest"]["moved"] is False
    assert any("did not move" in m and info["weakest"]["token"] in m for m in logs)
    video, logs = run_vico(c, make_job(PROMPT, **{"method": "vico", **SMALL, **ALWAYS, "vico.lr": 0.05}))
    assert video.metadata["vico"]["weakest"]["moved"] is True and not any("did not move" in m for m in logs)


def test_non_finite_update_is_skipped_and_recorded(tiny, monkeypatch):
    import vgen.methods.vico.guide as vico

    calls = {"n": 0}
    real = vico.token_scores

    def poisoned(maps):
        calls["n"] += 1
        scores = real(maps)
        return scores * float("nan") if calls["n"] == 1 else scores

    monkeypatch.setattr(vico, "token_scores", poisoned)
    c = tiny("tiny-random-unet3d")
    job = make_job(PROMPT, **{"method": "vico", **SMALL, **ALWAYS, "sampler.steps": 4})
    video, logs = run_vico(c, job)
    info = video.metadata["vico"]
    assert info["nonfinite_skipped"] == {"count": 1, "steps": [0]}
    assert info["steps"][0]["losses"] == [None]  # strict JSON: the NaN loss is recorded as null
    assert info["steps"][0]["skipped"] and info["steps"][1]["updates"] >= 1
    assert np.isfinite(video.frames).all() and any("skipped" in m for m in logs)


def test_explain_writes_before_after_grid(tiny, tmp_path):
    from PIL import Image

    from vgen.explain import explain

    job = make_job(PROMPT, **{"method": "vico", **SMALL})
    paths = explain(job, tiny("tiny-random-unet3d"), tmp_path, "vico", step=0)
    image = Image.open(paths[0])
    assert paths[0].name.endswith("_flow_step0.png") and image.size[0] > 150 + 3 * 64
