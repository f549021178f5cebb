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
