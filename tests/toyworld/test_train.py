"""Fast checks of the toy trainers: a couple of steps give finite losses, and resume is exact."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from vgen.toyworld.train import Trainer, TrainConfig, export  # noqa: E402


def _cfg(tmp_path, stage, **kw):
    base = dict(stage=stage, out=str(tmp_path / stage), batch=2, frames=2, size=32, width=16, threads=1, progress=False,
                vae=str(tmp_path / "vae" / "last.pt"))
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add contention on a shared 2-core box
    tmp = tmp_path_factory.mktemp("toytrain")
    tr = Trainer(_cfg(tmp, "vae"))
    losses = tr.step()
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    tr.save()
    yield tmp
    torch.set_num_threads(threads)


def _params(trainer):
    return torch.cat([p.detach().flatten() for m in trainer.models.values() for p in m.parameters()])


def test_joint_steps_are_finite(vae_ckpt):
    tr = Trainer(_cfg(vae_ckpt, "joint"))
    for _ in range(2):
        losses = tr.step()
    assert set(losses) == {"t2v", "t2i"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_resume_reaches_the_same_state(vae_ckpt):
    cfg = _cfg(vae_ckpt, "t2v", seed=3)
    a = Trainer(cfg)
    a.step()
    path = a.save()
    a.step()
    a.step()
    b = Trainer(cfg)
    b.load(path)
    assert b.step_count == 1
    b.step()
    b.step()
    assert b.step_count == 3
    assert torch.equal(_params(a), _params(b))


def test_export_writes_loadable_float16_folders(vae_ckpt, tmp_path):
    from vgen.config import ModelConfig
    from vgen.models import load_components

    tr = Trainer(_cfg(vae_ckpt, "joint"))
    ckpt = tr.save()
    folders = export(ckpt, vae_ckpt / "vae" / "last.pt", tmp_path / "assets")
    assert [f.name for f in folders] == ["toy", "toy-t2i"]
    comp = load_components(ModelConfig(id=str(folders[0])), device="cpu", dtype="float32")
    assert comp.kind == "unet3d" and comp.native_size == (64, 64)
    assert next(comp.unet.parameters()).dtype == torch.float32
    assert load_components(ModelConfig(id=str(folders[1])), device="cpu").kind == "unet2d"


def test_v_weight_turns_the_epsilon_loss_into_the_v_prediction_loss():
    """Closed form: with x0_hat from eps_hat, |v_hat - v|^2 = |eps_hat - eps|^2 / alpha_bar_t, so the
    uncapped v weight (before its mean-1 normalisation) must reproduce diffusers' velocity targets."""
    from vgen.toyworld.train import timestep_weights, train_scheduler

    sched = train_scheduler()
    a = sched.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0, eps, eps_hat = (torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 100, 400, 700, 900, 999])
    xt = sched.add_noise(x0, eps, t)
    ab = a[t].double().view(-1, 1, 1, 1)
    x0_hat = (xt - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    v_hat = ab.sqrt() * eps_hat - (1 - ab).sqrt() * x0_hat
    v = sched.get_velocity(x0, eps, t)
    v_err = ((v_hat - v) ** 2).flatten(1).mean(1)
    eps_err = ((eps_hat - eps) ** 2).flatten(1).mean(1)
    uncapped = timestep_weights(a.double(), t, "v", cap=float("inf")) * (1 / a.double()).mean()
    torch.testing.assert_close(uncapped * eps_err, v_err)
    capped = timestep_weights(a, torch.arange(1000), "v", cap=20.0)
    assert abs(float(capped.mean()) - 1.0) < 1e-5 and float(capped.max() / capped.min()) <= 20.0 + 1e-3
    assert torch.equal(timestep_weights(a, t, "eps"), torch.ones(6))
    with pytest.raises(ValueError, match="loss_weight"):
        timestep_weights(a, t, "x0")


def test_v_weighted_joint_step_is_finite(vae_ckpt):
    tr = Trainer(_cfg(vae_ckpt, "joint", loss_weight="v"))
    losses = tr.step()
    assert set(losses) == {"t2v", "t2i"} and all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_motion_probe_trains_and_round_trips(vae_ckpt, tmp_path):
    """The auxiliary classifier picks single-object captions, its loss is finite and its gradient reaches
    the UNet3D, and its head and optimizer survive save/load (a checkpoint without one resumes fresh)."""
    cfg = _cfg(vae_ckpt, "joint", motion_probe=1.0, out=str(tmp_path / "probe"), batch=4)
    tr = Trainer(cfg)
    caps = ["a red circle moving left", "a blue square staying still and a red circle moving up",
            "a green triangle going down", "", "a red square"]
    assert tr.probe.targets(caps) == ([0, 2], [0, 3])
    unet = tr.models["unet3d"]
    lat = torch.randn(2, 4, cfg.frames, 4, 4)
    loss = tr._probe_loss(lat, [caps[0], caps[2]], [0, 3])
    loss.backward()
    assert torch.isfinite(loss) and unet.conv_in.weight.grad.abs().sum() > 0
    assert tr.text_encoder.get_input_embeddings().weight.grad.abs().sum() > 0
    losses = tr.step()
    assert {"t2v", "t2i"} <= set(losses) and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    tr.save()
    again = Trainer(cfg)
    again.load(tmp_path / "probe" / "last.pt")
    assert torch.equal(again.probe.head.weight, tr.probe.head.weight)
    plain = Trainer(_cfg(vae_ckpt, "joint", out=str(tmp_path / "plain")))
    plain.save()
    fresh = Trainer(cfg)
    fresh.load(tmp_path / "plain" / "last.pt")
    assert fresh.probe is not None


def test_motion_probe_path_targets_are_the_direction_times_a_centred_ramp(vae_ckpt, tmp_path):
    from vgen.toyworld.scene import MOTIONS

    tr = Trainer(_cfg(vae_ckpt, "joint", motion_probe=1.0, out=str(tmp_path / "p"), frames=5))
    got = tr.probe.path_targets([MOTIONS.index(m) for m in ("left", "down", "still")])
    ramp = [-0.5, -0.25, 0.0, 0.25, 0.5]
    expected = torch.tensor([[[-r, 0.0] for r in ramp], [[0.0, r] for r in ramp], [[0.0, 0.0]] * 5])
    torch.testing.assert_close(got, expected)
