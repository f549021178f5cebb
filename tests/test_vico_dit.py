"""Vico on Wan (tiny-random-wan): the recorded maps against a naive computation from each block's own layers,
lr 0 against vanilla, one update against a hand-written autograd of the flow objective, the update count."""

import copy
from pathlib import Path

import pytest
import torch

from conftest import make_job, run_vanilla

PROMPT = "a red circle and a blue square"
SMALL = {"method": "vico", "model.id": "tiny-random-wan", "sampler.steps": 4, "sampler.scheduler": "model",
         "sampler.guidance": 5.0, "video.frames": 9, "video.height": 32, "video.width": 32,
         "vico.words": ["circle", "square"]}


# ---------------------------------------------------------------------------------------------- naive references


def naive_rope(x, cos, sin):
    """RoPE as a complex rotation of consecutive channel pairs: x [B, N, H, d], cos/sin [1, N, 1, d] (each
    pair's angle repeated twice, as Wan's rotary embedding gives them)."""
    z = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
    rot = torch.polar(torch.ones_like(cos[..., 0::2]).double(), torch.atan2(sin[..., 0::2], cos[..., 0::2]).double())
    return torch.view_as_real(z * rot).flatten(-2)


def naive_probs(attn, hidden, context=None, rotary=None):
    """softmax(q k^T / sqrt(d)) [B, H, N, K] in float64, from the attention module's own layers."""
    context = hidden if context is None else context
    q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))
    k = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))
    if rotary is not None:
        q, k = naive_rope(q, *rotary), naive_rope(k, *rotary)
    q, k = q.double().transpose(1, 2), k.double().transpose(1, 2)
    return (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)


@pytest.fixture(scope="module")
def wan():
    from vgen.config import ModelConfig
    from vgen.models import load_components

    return load_components(ModelConfig(id="tiny-random-wan"), "cpu", "float32")


def run_vico(components, job):
    from vgen.core.sampler import resolve_size
    from vgen.jobs import RunContext
    from vgen.methods.vico.runner import run

    h, w = resolve_size(components, job.video.height, job.video.width)
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=h, width=w,
                     output_stem=Path("unused"), progress=False)
    return run(job, components, ctx)


def recorded_pass(components, cfg, latents, t, embeds):
    """One recording forward of the transformer: (recorder probabilities, each attention module's inputs)."""
    from vgen.methods.vico.dit import record_dit_attention

    inputs, handles = {}, []
    for name, module in components.unet.named_modules():
        if name.endswith(("attn1", "attn2")):
            def hook(mod, args, name=name):
                inputs[name] = (mod, args)
            handles.append(module.register_forward_pre_hook(hook))
    try:
        with record_dit_attention(components, cfg) as recorder:
            recorder.grid(tuple(latents.shape))
            recorder.active = True
            with torch.no_grad():
                components.family.predict(components, latents, t, embeds)
            probs = dict(recorder.probs)
    finally:
        for h in handles:
            h.remove()
    return probs, inputs, recorder


def inputs_of(wan, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, 3, 4, 4, generator=g)  # 3 latent frames of 2x2 tokens
    embeds = wan.family.encode_text(wan, [PROMPT]).hidden
    return latents, torch.tensor(700), embeds


# ---------------------------------------------------------------------------------------------- recording


def test_recorded_cross_attention_and_temporal_slices_equal_the_naive_softmax(wan):
    from vgen.methods.vico.config import VicoConfig

    latents, t, embeds = inputs_of(wan)
    probs, inputs, _ = recorded_pass(wan, VicoConfig(), latents, t, embeds)
    assert sorted(probs) == ["blocks.0.attn2.processor", "blocks.1.attn1.processor", "blocks.1.attn2.processor"]
    F, P = 3, 4
    for b in (0, 1):
        attn, (hidden, context, *_) = inputs[f"blocks.{b}.attn2"]
        ref = naive_probs(attn, hidden, context).mean(1)  # [1, N, 512] head mean
        got = probs[f"blocks.{b}.attn2.processor"]
        assert got.shape == (1, F * P, got.shape[-1])
        torch.testing.assert_close(got.double(), ref[..., : got.shape[-1]], rtol=1e-5, atol=1e-6)
    attn, (hidden, _, _, rotary) = inputs["blocks.1.attn1"]
    full = naive_probs(attn, hidden, rotary=rotary).mean(1)[0]  # [N, N], tokens frame-major
    got = probs["blocks.1.attn1.processor"][0]  # [P, F, F]
    for p in range(P):
        for f in range(F):
            for g in range(F):
                assert abs(float(got[p, f, g]) - float(full[f * P + p, g * P + p])) < 1e-6
    assert bool((got.sum(-1) < 1).all())  # sub-stochastic: the rest goes to other positions


def test_flow_blocks_chain_the_next_blocks_slices(wan):
    from vgen.methods.vico.config import VicoConfig

    latents, t, embeds = inputs_of(wan)
    probs, _, recorder = recorded_pass(wan, VicoConfig(dit_slice="normalised"), latents, t, embeds)
    blocks = recorder.blocks(3)
    assert len(blocks) == 2
    (c0, _, t0), (c1, _, t1) = blocks
    assert len(t0) == 1 and t1 == []  # block 0's cross-attention, then block 1's self-attention; block 1: none
    torch.testing.assert_close(c0, probs["blocks.0.attn2.processor"][0].reshape(3, 4, -1))
    s = probs["blocks.1.attn1.processor"][0]
    torch.testing.assert_close(t0[0], s / s.sum(-1, keepdim=True))
    torch.testing.assert_close(t0[0].sum(-1), torch.ones(4, 3))


# ---------------------------------------------------------------------------------------------- the method


def test_vico_with_lr_zero_equals_vanilla_on_wan(wan):
    vanilla = run_vanilla(wan, make_job(PROMPT, **{**SMALL, "method": "vanilla"}))
    video = run_vico(wan, make_job(PROMPT, **{**SMALL, "vico.lr": 0.0, "vico.threshold": 0.0,
                                              "vico.thresholds": [0.0, 0.0, 0.0]}))
    info = video.metadata["vico"]
    assert info["updates"] >= 4  # every step ran its update (of size 0)
    assert (video.frames == vanilla).all()


def test_one_update_equals_a_hand_written_adam_step_on_the_naive_flow(wan):
    """Step 0's latent change against: naive probabilities from a plain forward (processors record q/k of
    each site by hooks, softmax in full), the units, the plain soft max-min products, the key-token maps and
    the hinge loss, autograd, then one Adam step written out (bias-corrected: lr·g/(|g| + eps))."""
    from vgen.core.flow import soft_bottleneck_matmul, with_residual
    from vgen.core.prompts import encode_prompt
    from vgen.core.schedulers import prepare_scheduler
    from vgen.methods.vico.config import VicoConfig
    from vgen.methods.vico.guide import VicoGuide
    from vgen.methods.vico.keys import select_key_tokens
    from vgen.methods.vico.runner import recording
    from vgen.methods.vico.scores import smooth_maps

    cfg = VicoConfig(words=["circle", "square"], lr=0.01, max_iterations=1, thresholds=[0.0, 0.0, 0.0])
    prompt = encode_prompt(wan, PROMPT, "", 5.0)
    latents = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    scheduler = prepare_scheduler("model", wan.scheduler, 4, wan.device, wan.family, tuple(latents.shape))
    t = scheduler.timesteps[0]
    keys = select_key_tokens(wan.tokenizer, PROMPT, cfg)
    n = len(wan.tokenizer(PROMPT)["input_ids"])  # UMT5: the words, then </s>; no start token
    with recording(wan, cfg) as recorder:
        guide = VicoGuide(cfg, wan, scheduler, prompt, keys, n, recorder, 4)
        out = guide(0, t, latents.clone())
    assert guide.history[0]["updates"] == 1

    # the reference: a plain float64 forward whose attention modules are hooked for their inputs
    x = latents.clone().double().requires_grad_(True)
    model = copy.deepcopy(wan.unet).double()
    inputs = {}
    for name, module in model.named_modules():
        if name.endswith(("attn1", "attn2")):
            module.register_forward_pre_hook(lambda mod, args, name=name: inputs.__setitem__(name, (mod, args)))
    model(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=prompt.cond[:1].double(), return_dict=False)
    F, P = 3, 4
    C = []
    for b in (0, 1):
        attn, (hidden, context, *_) = inputs[f"blocks.{b}.attn2"]
        C.append(naive_probs(attn, hidden, context).mean(1)[0, :, :n].reshape(F, P, n))
    attn, (hidden, _, _, rotary) = inputs["blocks.1.attn1"]
    full = naive_probs(attn, hidden, rotary=rotary).mean(1)[0]
    idx = torch.arange(F) * P
    T = torch.stack([full[idx + p][:, idx + p] for p in range(P)])  # [P, F, F]
    flow0 = soft_bottleneck_matmul(with_residual(T), C[0].transpose(0, 1), 0.01).transpose(0, 1)  # unit 0
    flow = (flow0 + C[1]) / 2  # unit 1 is block 1's cross-attention alone (no block after it)
    probs = (flow[..., : n - 1] * 100).softmax(-1)  # UMT5: real tokens 0 .. n-2
    maps = torch.stack([probs[..., list(k.indices)].sum(-1) for k in keys]).reshape(len(keys), F, 2, 2)
    scores = smooth_maps(maps, 0.5).flatten(1).amax(1)
    loss = torch.relu(1 - scores).max()
    loss.backward()
    g = x.grad.float()
    expected = latents - 0.01 * g / (g.abs() + 1e-7)
    assert abs(float(loss.detach()) - guide.history[0]["losses"][0]) < 1e-5
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    assert float((out - latents).abs().max()) > 5e-3  # the update moved the latent by about lr


def test_update_count_over_a_run_equals_the_schedule(wan):
    from vgen.methods.vico.config import VicoConfig
    from vgen.methods.vico.schedule import update_plan

    keys = {**SMALL, "sampler.steps": 5, "vico.iterative_steps": [0, 3], "vico.thresholds": [0.0, 0.0],
            "vico.threshold": 0.0, "vico.max_iterations": 2, "vico.update_until": 4}
    info = run_vico(wan, make_job(PROMPT, **keys)).metadata["vico"]
    plan = update_plan(VicoConfig(iterative_steps=[0, 3], thresholds=[0.0, 0.0], threshold=0.0, max_iterations=2,
                                  update_until=4), 5)
    assert plan == {0: (2, 0.0), 1: (1, 0.0), 2: (1, 0.0), 3: (2, 0.0)}
    assert info["updates"] == 2 + 1 + 1 + 2  # the hinge loss is never below 0: every iteration updates
    assert [r["step"] for r in info["steps"]] == [0, 1, 2, 3]
    assert [len(r["losses"]) for r in info["steps"]] == [2, 1, 1, 2]


# ---------------------------------------------------------------------------------------------- keys, config, CLI


def test_umt5_key_tokens_start_at_zero(wan):
    """UMT5 puts no start token: the first word is token 0 and the end token n-1 (hand-counted)."""
    from vgen.errors import ConfigError
    from vgen.methods.vico.config import VicoConfig
    from vgen.methods.vico.keys import select_key_tokens

    keys = select_key_tokens(wan.tokenizer, "circle and square", VicoConfig(words=["circle", "square"]))
    assert [(k.label, k.indices) for k in keys] == [("circle", (0,)), ("square", (2,))]
    assert [k.indices for k in select_key_tokens(wan.tokenizer, PROMPT, VicoConfig(tokens=[0, 6]))] == [(0,), (6,)]
    with pytest.raises(ConfigError, match=r"outside the prompt's tokens 0\.\.6"):
        select_key_tokens(wan.tokenizer, PROMPT, VicoConfig(tokens=[7]))  # </s>


def test_vico_on_wan_resolves_wan_defaults_and_runs_from_the_cli(tmp_path):
    import json

    from conftest import vgen_in_process
    from vgen.config import build_job

    job = build_job(flags={"method": "vico", "model.id": "tiny-random-wan", "prompt": PROMPT})
    assert (job.sampler.scheduler, job.sampler.guidance, job.sampler.steps) == ("model", 5.0, 50)
    assert build_job(flags={"method": "vico", "model.id": "tiny-random-unet3d", "prompt": PROMPT}).sampler.scheduler == "sde-dpm++"  # UNets: the paper's
    r = vgen_in_process("generate", PROMPT, "--model", "tiny-random-wan", "--method", "vico", "--frames", "5",
                        "--steps", "2", "--out", tmp_path / "v.mp4")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "v.json").read_text())
    assert info["method_info"]["vico"]["key_tokens"] == {"circle": [2], "square": [6]}
    r = vgen_in_process("explain", PROMPT, "--model", "tiny-random-wan", "--frames", "5", "--steps", "2", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.glob("*_flow_step0.png"))
    r = vgen_in_process("generate", PROMPT, "--model", "tiny-random-wan", "--method", "vico", "vico.graph=full",
                        "vico.dit_pool=3", "--frames", "5", "--steps", "2", "--out", tmp_path / "full.mp4")
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode != 0 and lines[-1] == "error: vico.dit_pool=3 does not divide the 2x2 token grid"
    assert not list(tmp_path.glob("full*"))
    r = vgen_in_process("generate", PROMPT, "--model", "tiny-random-wan", "--method", "vico", "vico.graph=full",
                        "--frames", "5", "--steps", "2", "--out", tmp_path / "full.mp4")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "full.json").read_text())["method_info"]["vico"]["graph"] == "full"


def test_block_checkpointing_keeps_the_gradient(wan):
    """vico.checkpoint recomputes each Wan block in backward: the latent's gradient is the one without it."""
    from vgen.core.prompts import encode_prompt
    from vgen.core.schedulers import prepare_scheduler
    from vgen.methods.vico.config import VicoConfig
    from vgen.methods.vico.guide import VicoGuide
    from vgen.methods.vico.keys import select_key_tokens
    from vgen.methods.vico.runner import recording

    prompt = encode_prompt(wan, PROMPT, "", 5.0)
    latents = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    scheduler = prepare_scheduler("model", wan.scheduler, 4, wan.device, wan.family, tuple(latents.shape))
    grads, calls = [], []
    for checkpoint in (False, True):
        cfg = VicoConfig(words=["circle", "square"], checkpoint=checkpoint)
        keys = select_key_tokens(wan.tokenizer, PROMPT, cfg)
        with recording(wan, cfg) as recorder:
            guide = VicoGuide(cfg, wan, scheduler, prompt, keys, 8, recorder, 4)
            x = latents.clone().requires_grad_(True)
            blocks = wan.family.blocks(wan.unet)
            count = []
            hook = blocks[0].norm1.register_forward_hook(lambda *args: count.append(1))
            with torch.enable_grad():
                loss = guide.measure(x, scheduler.timesteps[1])[0]
                loss.backward()
            hook.remove()
            assert not any("forward" in b.__dict__ for b in blocks)  # the blocks' own forward is back
        grads.append(x.grad)
        calls.append(len(count))
    assert calls == [1, 2]  # checkpointed: block 0 ran again in backward
    assert float(grads[0].abs().max()) > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_pooled_attention_equals_the_pooled_full_softmax_and_its_gradient():
    """graph full on a DiT: the tiled pooled attention against the full softmax pooled by hand (float64)."""
    from vgen.methods.vico import dit

    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(1, 2, 12, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    cells = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3])  # 2 frames of 2x3 tokens, 1x2 cells... any grouping
    w = torch.randn(4, 4, generator=g, dtype=torch.float64)
    P = (q @ k.transpose(-1, -2) * 0.7).softmax(-1).mean(1)[0]  # [12, 12]
    ref = torch.stack([torch.stack([P[cells == i][:, cells == j].sum(1).mean() for j in range(4)]) for i in range(4)])
    (ref * w).sum().backward()
    ref_grads = q.grad.clone(), k.grad.clone()
    q.grad = k.grad = None
    old = dit.POOL_TILE_BUDGET
    dit.POOL_TILE_BUDGET = 2 * 12 * 5  # tiles of 5 query rows: 3 tiles, the last one short
    try:
        out = dit.pooled_attention(q, k, cells, 0.7)
    finally:
        dit.POOL_TILE_BUDGET = old
    torch.testing.assert_close(out[0], ref)
    torch.testing.assert_close(out[0].sum(-1), torch.ones(4, dtype=torch.float64))  # rows stay distributions
    (out[0] * w).sum().backward()
    torch.testing.assert_close(q.grad, ref_grads[0])
    torch.testing.assert_close(k.grad, ref_grads[1])


@pytest.mark.parametrize("pool", [1, 2])
def test_full_graph_on_wan_chains_pooled_blocks(wan, pool):
    """vico.graph=full: per block (C̃_b, S̃_b) from the recorded pass equal the naive pooled maps, and the flow is
    max(C̃_1, S̃_1 ⊗ C̃_0) (soft), the formula of DIT.md §3 written out."""
    from vgen.core.flow import soft_bottleneck_matmul, with_residual
    from vgen.methods.vico.config import VicoConfig
    from vgen.methods.vico.flow import full_graph_flow

    latents, t, embeds = inputs_of(wan)
    cfg = VicoConfig(graph="full", dit_pool=pool)
    probs, inputs, recorder = recorded_pass(wan, cfg, latents, t, embeds)
    assert recorder.grid(tuple(latents.shape)) == (3, 2 // pool, 2 // pool)
    blocks = recorder.blocks(3)
    cells = recorder.cells
    M = int(cells.max()) + 1
    assert M == 3 * 4 // pool**2
    pool_rows = lambda x: torch.stack([x[cells == i].mean(0) for i in range(M)])  # noqa: E731
    pool_both = lambda x: torch.stack([torch.stack([x[cells == i][:, cells == j].sum(1).mean() for j in range(M)])
                                       for i in range(M)])  # noqa: E731
    n = blocks[0][0].shape[-1]
    C = []
    for b in (0, 1):
        attn, (hidden, context, *_) = inputs[f"blocks.{b}.attn2"]
        C.append(pool_rows(naive_probs(attn, hidden, context).mean(1)[0, :, :n]))
        torch.testing.assert_close(blocks[b][0][0].double(), C[b], rtol=1e-5, atol=1e-6)
    attn, (hidden, _, _, rotary) = inputs["blocks.1.attn1"]
    S = pool_both(naive_probs(attn, hidden, rotary=rotary).mean(1)[0])
    assert blocks[0][1] is None
    torch.testing.assert_close(blocks[1][1][0].double(), S, rtol=1e-5, atol=1e-6)
    expected = 0.01 * torch.logaddexp(C[1] / 0.01, soft_bottleneck_matmul(with_residual(S), C[0], 0.01) / 0.01)
    torch.testing.assert_close(full_graph_flow(blocks)[0].double(), expected, rtol=1e-4, atol=1e-5)
