"""Sizes that cannot run (issue 37): frames beyond what a model was made for, and peak memory far beyond the
machine's, known from the model's config files before any model loads."""

import json
import sys
from pathlib import Path

import pytest

from conftest import vgen_in_process
from vgen.sizes import BUILTIN_SHAPES, REFUSE_FACTOR, ModelShape, estimate_peak, folder_shape, model_shape

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["tiny-random-unet3d", "tiny-random-motion", "tiny-random-unet2d"])
def test_builtin_shapes_are_the_built_models(tiny, name):
    c = tiny(name)
    shape = BUILTIN_SHAPES[name]
    params = sum(p.numel() for m in (c.unet, c.vae, c.text_encoder) for p in m.parameters())
    assert shape.kind == c.kind and shape.native == c.native_size and shape.vae_factor == c.vae_scale_factor
    assert shape.unet_channels == tuple(c.unet.config.block_out_channels)
    assert shape.layers_per_block == c.unet.config.layers_per_block
    assert shape.vae_channels == tuple(c.vae.config.block_out_channels) and shape.latent_channels == c.latent_channels
    assert shape.weight_bytes == 4 * params
    assert shape.max_frames == getattr(c.unet.config, "motion_max_seq_length", None)


def test_zeroscope_quarter_shape_is_its_builder():
    from vgen.tiny import zeroscope_quarter

    parts = zeroscope_quarter()
    shape = BUILTIN_SHAPES["zeroscope-quarter"]
    unet, vae = parts["unet"].config, parts["vae"].config
    assert shape.unet_channels == tuple(unet.block_out_channels) and shape.layers_per_block == unet.layers_per_block
    assert shape.vae_channels == tuple(vae.block_out_channels) and shape.native == (320, 512)
    assert shape.weight_bytes == 4 * sum(p.numel() for k in ("unet", "vae", "text_encoder") for p in parts[k].parameters())


def test_the_toy_folder_shape_from_its_files(tiny):
    from vgen.config import ModelConfig
    from vgen.models import load_components
    from vgen.model_settings import BUILTIN_FOLDERS

    toy = load_components(ModelConfig(id="toy"), "cpu", "float32")
    shape = folder_shape(BUILTIN_FOLDERS["toy"], "unet3d", "toy")
    assert shape.native == toy.native_size and shape.unet_channels == tuple(toy.unet.config.block_out_channels)
    assert shape.trained_frames == 8  # its vgen.yaml: the toy world's training clips (vgen/toyworld/train.py)
    from vgen.toyworld.train import TrainConfig

    assert TrainConfig().frames == 8


def test_estimate_scales_as_the_shapes_do():
    """Closed-form properties: activations are linear in frames and in pixels, halve without guidance."""
    shape = BUILTIN_SHAPES["tiny-random-unet3d"]
    a = estimate_peak(shape, 16, 64, 64)
    assert estimate_peak(shape, 32, 64, 64).unet == 2 * a.unet
    assert estimate_peak(shape, 16, 128, 128).unet == 4 * a.unet
    assert estimate_peak(shape, 16, 64, 64, guided=False).unet * 2 == a.unet
    assert estimate_peak(shape, 16, 64, 64, dtype_bytes=2).unet * 2 == a.unet
    assert estimate_peak(shape, 16, 64, 64).frames == 3 * 16 * 64 * 64 * 3 * 4  # float32 video, three copies


# Measured by scripts/measure_peak_memory.py (docs/sizes.md): peak RSS growth of one vanilla step in a fresh
# process, glibc returning freed tensors (MALLOC_MMAP_THRESHOLD_), CPU, float32. Re-measured live below (slow).
MEASURED = ROOT / "docs" / "sizes-measured.json"


def test_estimate_against_measured_peaks():
    rows = json.loads(MEASURED.read_text())
    assert {row["model"] for row in rows} == {"tiny-random-unet3d", "tiny-random-motion", "tiny-random-unet2d", "zeroscope-quarter"}
    for row in rows:
        est = estimate_peak(BUILTIN_SHAPES[row["model"]], row["frames"], row["height"], row["width"],
                            guided=row["guidance"] > 1)
        ratio = (est.total - est.weights) / row["measured"]
        assert 0.65 <= ratio <= 1.5, (row["model"], row["frames"], row["height"], ratio)
    assert REFUSE_FACTOR / 1.5 > 1  # a run refused at a 1.5x overestimate still needs more than the machine has


@pytest.mark.slow
def test_estimate_against_a_live_measurement():
    sys.path.insert(0, str(ROOT / "scripts"))
    from measure_peak_memory import measure

    case = {"model": "tiny-random-unet3d", "frames": 24, "height": 64, "width": 64, "guidance": 7.5}
    got = measure(case)["measured"]
    est = estimate_peak(BUILTIN_SHAPES[case["model"]], 24, 64, 64)
    assert 0.6 <= (est.total - est.weights) / got <= 1.6


# ---- through the console script ----

FAST = ["--model", "tiny-random-unet3d", "--steps", "1"]


@pytest.fixture
def no_model_loads(monkeypatch):
    import vgen.jobs
    from vgen.errors import VgenError

    def refuse(*args, **kwargs):
        raise VgenError("a model would load now")

    monkeypatch.setattr(vgen.jobs.ModelCache, "get", refuse)


def test_frames_far_beyond_memory_are_refused_before_any_model_loads(tmp_path, monkeypatch, no_model_loads):
    import vgen.sizes

    monkeypatch.setattr(vgen.sizes, "host_memory", lambda: 16 * 2**30)  # the result must not depend on this machine
    r = vgen_in_process("generate", "a cat", *FAST, "--frames", "100000", "--out", tmp_path / "out")
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: this run needs about "), r.stderr
    assert "16.0 GiB of this machine's memory" in lines[0] and "--force" in lines[0] and "--method streaming" in lines[0]
    assert not (tmp_path / "out").exists()
    # on the toy (made for 8 frames) the refusal is the only line: no warning before it
    r = vgen_in_process("generate", "a cat", "--model", "toy", "--frames", "100000", "--out", tmp_path / "out")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "this run needs about" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
    # --force goes past the refusal, to the model load
    r = vgen_in_process("generate", "a cat", *FAST, "--frames", "100000", "--out", tmp_path / "out", "--force")
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == "error: a model would load now", r.stderr


def test_absurd_frames_are_refused_on_any_machine(tmp_path, no_model_loads):
    r = vgen_in_process("generate", "a cat", *FAST, "--frames", str(10**9), "--out", tmp_path / "out")
    assert r.returncode == 2 and "this run needs about" in r.stderr.splitlines()[-1], r.stderr


def test_a_run_that_fits_is_not_refused(tmp_path, no_model_loads):
    r = vgen_in_process("generate", "a cat", *FAST, "--frames", "16", "--out", tmp_path / "out")
    assert r.stderr.splitlines()[-1] == "error: a model would load now", r.stderr


def test_frames_beyond_what_the_model_was_made_for_warn(tmp_path):
    r = vgen_in_process("generate", "a red circle moving left", "--model", "toy", "--steps", "1", "--frames", "12",
                        "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'toy' was made for 8" in warnings[0] and "--method streaming" in warnings[0]
    r = vgen_in_process("generate", "a red circle moving left", "--model", "toy", "--steps", "1", "--frames", "8",
                        "--out", tmp_path / "b")
    assert r.returncode == 0 and "warning:" not in r.stderr


def test_streaming_does_not_warn_about_its_length(no_model_loads, tmp_path):
    r = vgen_in_process("generate", "a cat", "--model", "toy", "--method", "streaming", "--frames", "64",
                        "--out", tmp_path)
    assert "warning:" not in r.stderr and r.stderr.splitlines()[-1] == "error: a model would load now"


def test_animatediff_beyond_its_position_embedding_is_one_line(tmp_path, no_model_loads):
    """33 frames on a motion module with motion_max_seq_length 32 would fail inside diffusers (pe[:, :33] + x)."""
    r = vgen_in_process("generate", "a cat", "--model", "tiny-random-motion", "--steps", "1", "--frames", "33",
                        "--out", tmp_path / "out")
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "motion_max_seq_length" in lines[0] and "--method streaming" in lines[0]
    assert not (tmp_path / "out").exists()


def test_animatediff_position_limit_is_real(tiny):
    """The limit the refusal guards: diffusers' motion module cannot take 33 frames at once."""
    import torch

    c = tiny("tiny-random-motion")
    latents = torch.zeros(1, 4, 33, 8, 8)
    with pytest.raises(RuntimeError):
        c.unet(latents, 1, encoder_hidden_states=torch.zeros(33, 77, 32))


def test_frames_warning_for_a_hub_model_by_its_known_length():
    from vgen.config import build_job
    from vgen.sizes import frames_warning

    shape = ModelShape("unet3d", 4, 8, (320, 576), (320, 640, 1280, 1280), 2, (128, 256, 512, 512), trained_frames=24)
    job = build_job(flags={"prompt": "x", "model.id": "cerspense/zeroscope_v2_576w", "video.frames": 40})
    assert "made for 24" in frames_warning(job, shape)
    assert frames_warning(build_job(flags={"prompt": "x", "video.frames": 24}), shape) == ""


def test_model_shape_of_an_unreadable_model_is_none():
    from vgen.config import build_job

    assert model_shape(build_job(flags={"prompt": "x", "model.id": "nobody/no-such-model"})) is None
