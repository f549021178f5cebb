"""StreamingT2V's memories (CAM, APM) on a UNet3DConditionModel, against independent references:
diffusers' own forward, hooks on the base UNet's modules, and hand-written einsum attention."""

import math

import pytest
import torch
import torch.nn.functional as F

from vgen.errors import ModelLoadError
from vgen.methods.streaming.apm import APM, TokenMixer, anchor_encoder, apm_layers, grey_anchor
from vgen.methods.streaming.cam import CAM, TemporalCrossAttention, frame_positions, load_streaming, save_streaming
from vgen.methods.streaming.unet_forward import streaming_unet_forward, unet3d_forward

FRAMES, FCOND = 6, 3  # small and not powers of two, so a wrong reshape cannot hide


def _build(name):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name == "tiny":
            from vgen.tiny import tiny_unet3d

            parts = tiny_unet3d()
            unet, vae, text_len, size = parts["unet"], parts["vae"], 77, 8
        else:  # the shipped toy model's shape at a small width: 8x8 latents, VAE factor 8, 32 text tokens
            from vgen.toyworld.train import MAX_TOKENS, build_unet3d, build_vae

            unet, vae, text_len, size = build_unet3d(width=16), build_vae(), MAX_TOKENS, 8
    unet.requires_grad_(False).eval()
    vae.requires_grad_(False).eval()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return dict(unet=unet, vae=vae, text_len=text_len, size=size, factor=factor)


@pytest.fixture(scope="module", params=["tiny", "toy"])
def model(request):
    return _build(request.param)


@pytest.fixture(scope="module")
def tiny_model():
    return _build("tiny")


def inputs(m, batch, seed=0, frames=FRAMES, size=None):
    g = torch.Generator().manual_seed(seed)
    size = size or m["size"]
    pixels = size * m["factor"]
    dim = m["unet"].config.cross_attention_dim
    return dict(
        latents=torch.randn(batch, 4, frames, size, size, generator=g),
        t=torch.tensor(437),
        text=torch.randn(batch, m["text_len"], dim, generator=g),
        cond=torch.rand(batch, FCOND, 3, pixels, pixels, generator=g) * 2 - 1,
        anchor=torch.rand(batch, 3, pixels, pixels, generator=g) * 2 - 1,
    )


def fresh(m):
    cam = CAM.from_unet(m["unet"], m["factor"], head_dim=8).eval()
    apm = APM.from_unet(m["unet"], m["text_len"], anchor_encoder("vae", vae=m["vae"])).eval()
    return cam, apm


def wake(cam=None, apm=None, seed=1):
    """Move the zero-initialised parameters (P_out, E_cond's last conv, α) away from zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if cam is not None:
            for merger in [*cam.skip_mergers, cam.mid_merger]:
                merger.p_out.weight.copy_(torch.randn(merger.p_out.weight.shape, generator=g) * 0.2)
            cam.e_cond.out.weight.copy_(torch.randn(cam.e_cond.out.weight.shape, generator=g) * 0.05)
        if apm is not None:
            for mixer in apm.mixers.values():
                mixer.alpha.fill_(1.0)


def conditioned(m, cam, apm, x):
    tokens = apm.anchor_tokens(x["anchor"]) if apm is not None else None
    return streaming_unet_forward(m["unet"], x["latents"], x["t"], x["text"], cam=cam, cond_pixels=x["cond"],
                                  apm=apm, anchor_tokens=tokens)


# ----------------------------------------------------------------------------------------------
# unet3d_forward


@pytest.mark.parametrize("batch", [1, 2])
def test_unet3d_forward_equals_diffusers(model, batch):
    x = inputs(model, batch)
    with torch.no_grad():
        ref = model["unet"](x["latents"], x["t"], encoder_hidden_states=x["text"]).sample
        out = unet3d_forward(model["unet"], x["latents"], x["t"], x["text"])
        hooked = unet3d_forward(model["unet"], x["latents"], 437, x["text"],
                                merge_skips=lambda s: s, merge_mid=lambda h: h)
    assert torch.equal(out, ref)
    assert torch.equal(hooked, ref)


def test_unet3d_forward_odd_size_and_batched_timesteps(tiny_model):
    """Latents not divisible by the upsampling factor (forwarded upsample sizes) and one t per video."""
    x = inputs(tiny_model, 2, size=5)
    t = torch.tensor([900, 20])
    with torch.no_grad():
        ref = tiny_model["unet"](x["latents"], t, encoder_hidden_states=x["text"]).sample
        out = unet3d_forward(tiny_model["unet"], x["latents"], t, x["text"])
    assert torch.equal(out, ref)


def test_hooks_see_every_skip_and_can_change_the_output(tiny_model):
    unet = tiny_model["unet"]
    x = inputs(tiny_model, 1)
    seen = {}

    def skips(s):
        seen["skips"] = [tuple(f.shape) for f in s]
        return s[:-1] + (s[-1] * 2,)

    with torch.no_grad():
        out = unet3d_forward(unet, x["latents"], x["t"], x["text"], merge_skips=skips)
        ref = unet(x["latents"], x["t"], encoder_hidden_states=x["text"]).sample
    # transformer_in's output, then per down block: layers_per_block resnets (+ downsampler)
    assert seen["skips"] == [(FRAMES, 32, 8, 8), (FRAMES, 32, 8, 8), (FRAMES, 32, 4, 4), (FRAMES, 64, 4, 4)]
    assert not torch.allclose(out, ref)
    with pytest.raises(ValueError, match="skip features"):
        unet3d_forward(unet, x["latents"], x["t"], x["text"], merge_skips=lambda s: s[:-1])


# ----------------------------------------------------------------------------------------------
# zero-initialised memories leave the base UNet unchanged; woken ones do not


@pytest.mark.parametrize("batch", [1, 2])
def test_fresh_cam_and_apm_are_the_identity(model, batch):
    cam, apm = fresh(model)
    x = inputs(model, batch)
    with torch.no_grad():
        ref = model["unet"](x["latents"], x["t"], encoder_hidden_states=x["text"]).sample
        both = conditioned(model, cam, apm, x)
        cam_only = conditioned(model, cam, None, x)
        assert torch.equal(both, ref)
        assert torch.equal(cam_only, ref)
        assert apm.anchor_tokens(x["anchor"]).abs().sum() > 0  # real, non-zero anchor tokens went in

        wake(cam=cam)
        assert (conditioned(model, cam, None, x) - ref).abs().max() > 1e-4
        _, apm_ = fresh(model)
        wake(apm=apm_)
        assert (conditioned(model, None, apm_, x) - ref).abs().max() > 1e-4
    assert not any(type(p).__name__ == "APMProcessor" for p in model["unet"].attn_processors.values())


def test_cond_frames_reach_the_output_once_woken(tiny_model):
    cam, _ = fresh(tiny_model)
    wake(cam=cam)
    x = inputs(tiny_model, 1)
    y = dict(x, cond=-x["cond"])
    with torch.no_grad():
        assert (conditioned(tiny_model, cam, None, x) - conditioned(tiny_model, cam, None, y)).abs().max() > 1e-5


def test_cfg_batch_is_per_video(model):
    """A batch of 2 (different text, anchors, timesteps; one set of cond frames) equals each video alone."""
    cam, apm = fresh(model)
    wake(cam, apm)
    x = inputs(model, 2)
    x["t"] = torch.tensor([700, 100])
    x["cond"] = x["cond"][:1]  # broadcast over the CFG batch
    with torch.no_grad():
        both = conditioned(model, cam, apm, x)
        for i in range(2):
            one = {k: (v[i : i + 1] if k not in ("cond",) else v) for k, v in x.items()}
            torch.testing.assert_close(both[i : i + 1], conditioned(model, cam, apm, one), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# CAM: the encoder copy


def test_encoder_copy_starts_equal_but_separate(tiny_model):
    unet = tiny_model["unet"]
    cam, _ = fresh(tiny_model)
    base = dict(unet.named_parameters())
    copied = dict(cam.encoder.named_parameters())
    assert copied and set(copied) <= set(base)
    for name, p in copied.items():
        assert torch.equal(p, base[name]) and p.data_ptr() != base[name].data_ptr()
        assert p.requires_grad and not base[name].requires_grad
    before = {k: v.clone() for k, v in unet.state_dict().items()}

    wake(cam=cam)
    opt = torch.optim.SGD(cam.parameters(), lr=0.1)
    x = inputs(tiny_model, 1)
    for _ in range(2):
        opt.zero_grad()
        conditioned(tiny_model, cam, None, x).square().mean().backward()
        opt.step()
    after = unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert any(not torch.equal(p, base[n]) for n, p in cam.encoder.named_parameters())


def test_cam_features_are_the_unet_encoder_on_the_first_frames(model):
    """With E_cond still zero, CAM's features = the base UNet's own skips and mid output on the chunk's first
    F_cond latents, read by forward hooks from a plain diffusers call."""
    unet = model["unet"]
    cam, _ = fresh(model)
    x = inputs(model, 2)
    first = x["latents"][:, :, :FCOND]
    got = []
    hooks = [unet.transformer_in.register_forward_hook(lambda m, i, o: got.append(o[0]))]
    hooks += [b.register_forward_hook(lambda m, i, o: got.extend(o[1])) for b in unet.down_blocks]
    hooks += [unet.mid_block.register_forward_hook(lambda m, i, o: got.append(o))]
    try:
        with torch.no_grad():
            unet(first, x["t"], encoder_hidden_states=x["text"])
            feats = cam.features(first, x["t"], x["text"], x["cond"])
    finally:
        for h in hooks:
            h.remove()
    assert len(got) == len(feats.skips) + 1 and feats.batch == 2
    for ref, out in zip(got, [*feats.skips, feats.mid]):
        assert torch.equal(out, ref)


def test_e_cond_lands_on_the_latent_grid(model):
    cam, _ = fresh(model)
    x = inputs(model, 1)
    with torch.no_grad():
        out = cam.e_cond(x["cond"][0])
    assert out.shape == (FCOND, model["unet"].config.block_out_channels[0], model["size"], model["size"])
    assert torch.equal(out, torch.zeros_like(out))  # last conv zero-initialised
    with pytest.raises(ValueError, match="cond_pixels"):
        cam.features(x["latents"][:, :, :FCOND], x["t"], x["text"], x["cond"][..., :-8, :])


# ----------------------------------------------------------------------------------------------
# CAM: the merger against a hand-written reference


def _group_norm(x, groups, weight, bias, eps):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + eps)
    return g.reshape(x.shape) * weight[None, :, None, None] + bias[None, :, None, None]


def test_merger_equals_einsum_reference():
    torch.manual_seed(0)
    b, f, fc, c, heads, groups, h, w = 2, 5, 3, 16, 4, 4, 2, 3
    merger = TemporalCrossAttention(c, heads, groups)
    with torch.no_grad():
        for p in merger.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    x = torch.randn(b * f, c, h, w)
    cond = torch.randn(b * fc, c, h, w)
    out = merger(x, cond, b)

    # reference: explicit (b, f, c, h, w) tensors, einsum over channels and frames
    gn = lambda t, norm: _group_norm(t, groups, norm.weight, norm.bias, norm.eps)  # noqa: E731
    xs = gn(x, merger.norm).reshape(b, f, c, h, w)
    cs = gn(cond, merger.cond_norm).reshape(b, fc, c, h, w)
    lin = lambda t, layer: torch.einsum("bfchw,oc->bfohw", t, layer.weight) + (  # noqa: E731
        layer.bias[None, None, :, None, None] if layer.bias is not None else 0)
    q_in = lin(xs, merger.p_in) + frame_positions(f, c)[None, :, :, None, None]
    k_in = cs + frame_positions(fc, c)[None, :, :, None, None]
    d = c // heads
    q = lin(q_in, merger.to_q).reshape(b, f, heads, d, h, w)
    k = lin(k_in, merger.to_k).reshape(b, fc, heads, d, h, w)
    v = lin(k_in, merger.to_v).reshape(b, fc, heads, d, h, w)
    scores = torch.einsum("bfndhw,bgndhw->bnhwfg", q, k) / math.sqrt(d)
    attn = torch.einsum("bnhwfg,bgndhw->bfndhw", scores.softmax(-1), v).reshape(b, f, c, h, w)
    ref = x.reshape(b, f, c, h, w) + lin(attn, merger.p_out)
    torch.testing.assert_close(out, ref.reshape(b * f, c, h, w), atol=1e-5, rtol=1e-5)
    # streaming.cam_scale: what the merger adds, scaled
    ref_half = x.reshape(b, f, c, h, w) + 0.5 * lin(attn, merger.p_out)
    torch.testing.assert_close(merger(x, cond, b, 0.5), ref_half.reshape(b * f, c, h, w), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merger(x, cond, b, 0.0), x)


def test_frame_positions():
    pos = frame_positions(4, 6)
    assert pos.shape == (4, 6)
    torch.testing.assert_close(pos[0], torch.tensor([0.0, 0, 0, 1, 1, 1]))
    torch.testing.assert_close(pos[2, 0], torch.tensor(math.sin(2.0)))


# ----------------------------------------------------------------------------------------------
# APM


def test_apm_only_on_spatial_cross_attention(model):
    names = [layer.name for layer in apm_layers(model["unet"])]
    every = list(model["unet"].attn_processors)
    assert names and all(".attentions." in n and n.endswith("attn2.processor") for n in names)
    cross = [n for n in every if "attn2" in n and "temp_attentions" not in n and "transformer_in" not in n]
    assert names == cross  # every spatial cross-attention, no temporal transformer
    _, apm = fresh(model)
    with apm.installed(model["unet"]), apm.installed(model["unet"]):  # re-entrant
        kinds = {n: type(p).__name__ for n, p in model["unet"].attn_processors.items()}
    assert {n for n, k in kinds.items() if k == "APMProcessor"} == set(names)
    assert "APMProcessor" not in {type(p).__name__ for p in model["unet"].attn_processors.values()}


def test_token_mixer_reference():
    torch.manual_seed(0)
    mixer = TokenMixer(text_len=5, anchor_len=3, dim=4)
    tokens = torch.randn(2, 8, 4)
    torch.testing.assert_close(mixer(tokens), tokens[:, :5])  # α = 0: the text, exactly
    assert torch.equal(mixer(tokens), tokens[:, :5])
    with torch.no_grad():
        mixer.alpha.fill_(0.7)
        mixer.norm.weight.normal_()
    mixed = torch.einsum("ot,ntd->nod", mixer.mix.weight, tokens) + mixer.mix.bias[None, :, None]
    mixed = F.layer_norm(mixed, (4,), mixer.norm.weight, mixer.norm.bias, mixer.norm.eps)
    ref = tokens[:, :5] + 0.7 * torch.sigmoid(torch.tensor(0.7)) * mixed
    torch.testing.assert_close(mixer(tokens), ref)
    with pytest.raises(ValueError, match="apm.append"):
        mixer(tokens[:, :5])


def test_apm_equals_base_unet_on_mixed_tokens(model):
    """With one shared mixer in every layer, the APM UNet = the base UNet given the mixed L tokens."""
    _, apm = fresh(model)
    wake(apm=apm)
    shared = next(iter(apm.mixers.values()))
    with torch.no_grad():
        shared.mix.weight.add_(torch.randn(shared.mix.weight.shape) * 0.1)
        for mixer in apm.mixers.values():
            mixer.load_state_dict(shared.state_dict())
    x = inputs(model, 2)
    with torch.no_grad():
        tokens = apm.anchor_tokens(x["anchor"])
        out = streaming_unet_forward(model["unet"], x["latents"], x["t"], x["text"], apm=apm, anchor_tokens=tokens)
        ref = model["unet"](x["latents"], x["t"], encoder_hidden_states=shared(apm.append(x["text"], tokens))).sample
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_apm_tokens_and_null_anchor(model):
    _, apm = fresh(model)
    x = inputs(model, 2)
    dim = model["unet"].config.cross_attention_dim
    with torch.no_grad():
        tokens = apm.anchor_tokens(x["anchor"])
        assert tokens.shape == (2, 16, dim)
        pixels = model["size"] * model["factor"]
        null = apm.null_tokens(1, pixels, pixels)
        assert torch.equal(null, apm.anchor_tokens(grey_anchor(1, pixels, pixels)))
        assert apm.append(x["text"], null).shape == (2, model["text_len"] + 16, dim)  # toy: 32 + 16, not 77 + 16
    assert not set(map(id, model["vae"].parameters())) & set(map(id, apm.parameters()))
    with pytest.raises(ValueError, match="text tokens"):
        apm.append(x["text"][:, :-1], tokens)


def test_clip_anchor_encoder(tmp_path, tiny_model):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=12)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    encoder = anchor_encoder("clip", source=str(tmp_path / "clip"))
    assert encoder.feat_dim == 12
    assert encoder(torch.zeros(2, 3, 16, 24)).shape == (2, 12)
    apm = APM.from_unet(tiny_model["unet"], 77, encoder)
    assert apm.anchor_tokens(torch.zeros(1, 3, 16, 16)).shape == (1, 16, 32)
    for missing in (str(tmp_path / "nowhere"), "no-such-org/no-such-clip"):
        with pytest.raises(ModelLoadError) as err:
            anchor_encoder("clip", source=missing)
        assert "\n" not in str(err.value) and "'vae'" in str(err.value)


# ----------------------------------------------------------------------------------------------
# training: gradients


def test_gradients_reach_cam_and_apm_only(tiny_model):
    cam, apm = fresh(tiny_model)
    wake(cam, apm)
    cam.train()
    x = inputs(tiny_model, 2)
    conditioned(tiny_model, cam, apm, x).square().mean().backward()
    groups = {
        "p_out": [m.p_out.weight for m in cam.skip_mergers],
        "to_v": [m.to_v.weight for m in cam.skip_mergers],
        "e_cond.out": [cam.e_cond.out.weight],
        "encoder": [cam.encoder.conv_in.weight, cam.encoder.down_blocks[0].resnets[0].conv1.weight],
        "alpha": [m.alpha for m in apm.mixers.values()],
        "mix": [m.mix.weight for m in apm.mixers.values()],
        "mlp": [apm.mlp[0].weight, apm.mlp[2].weight],
    }
    for name, params in groups.items():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
    assert all(p.grad is None for p in tiny_model["unet"].parameters())
    assert all(p.grad is None for p in tiny_model["vae"].parameters())


# ----------------------------------------------------------------------------------------------
# persistence


def test_save_load_round_trip(tmp_path, model):
    cam, apm = fresh(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in [*cam.parameters(), *apm.parameters()]:
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    x = inputs(model, 2)
    with torch.no_grad():
        before = conditioned(model, cam, apm, x)
    folder = save_streaming(tmp_path, cam, apm)
    assert sorted(p.name for p in folder.iterdir()) == ["apm.safetensors", "cam.safetensors", "config.json"]
    assert {p.stat().st_mode & 0o777 for p in folder.glob("*.safetensors")} == {0o644}  # others can read shipped weights
    loaded = load_streaming(tmp_path, model["unet"], vae=model["vae"])
    cam2, apm2 = loaded
    cam2.eval()
    with torch.no_grad():
        assert torch.equal(conditioned(model, cam2, apm2, x), before)
    assert cam2.config == cam.config and apm2.config == apm.config

    save_streaming(tmp_path / "cam-only", cam)
    assert load_streaming(tmp_path / "cam-only", model["unet"]).apm is None
    assert load_streaming(tmp_path / "no-weights", model["unet"]) is None


def test_load_rejects_another_unet_shape(tmp_path, tiny_model):
    cam, _ = fresh(tiny_model)
    save_streaming(tmp_path, cam)
    from vgen.toyworld.train import build_unet3d

    with pytest.raises(ModelLoadError, match="another UNet shape"):
        load_streaming(tmp_path, build_unet3d(width=16))


def test_load_names_a_missing_weights_file(tmp_path, tiny_model):
    cam, apm = fresh(tiny_model)
    folder = save_streaming(tmp_path, cam, apm)
    (folder / "apm.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="lists APM but apm.safetensors is missing"):
        load_streaming(tmp_path, tiny_model["unet"], vae=tiny_model["vae"])
    (folder / "cam.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="cam.safetensors is missing"):
        load_streaming(tmp_path, tiny_model["unet"], vae=tiny_model["vae"])


def test_frame_weighted_loss_is_the_plain_mean_at_one_and_weighs_new_frames_by_hand():
    from vgen.methods.streaming.train import frame_weighted_mse

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 6, 3, 3, generator=g), torch.randn(2, 4, 6, 3, 3, generator=g)
    torch.testing.assert_close(frame_weighted_mse(pred, target, 2, 1.0), F.mse_loss(pred, target))
    per_frame = ((pred - target) ** 2).mean(dim=(0, 1, 3, 4))  # 6 frames: 2 re-covering, 4 new at weight 4
    expected = (per_frame[:2].sum() + 4 * per_frame[2:].sum()) / (2 + 4 * 4)
    torch.testing.assert_close(frame_weighted_mse(pred, target, 2, 4.0), expected)
