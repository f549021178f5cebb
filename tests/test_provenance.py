"""Issue 30 item 6: the sidecar says which code, kernels and weights made the video; an old sidecar warns."""

import hashlib
import json
import subprocess
from pathlib import Path

from conftest import vgen_in_process

ROOT = Path(__file__).parents[1]
TINY = ["--model", "tiny-random-unet3d", "--steps", "1", "--frames", "2"]


def sidecar(r) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(Path(r.stdout.splitlines()[0]).with_suffix(".json").read_text())


def test_sidecar_records_version_commit_and_the_kernels_that_ran(tmp_path):
    from vgen import __version__

    side = sidecar(vgen_in_process("generate", "a cat", *TINY, "--out", tmp_path))
    assert side["vgen"]["version"] == __version__ == side["versions"]["vgen"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (the tests' usual case)
        assert side["vgen"]["commit"] == head.stdout.strip() and isinstance(side["vgen"]["dirty"], bool)
    assert side["kernels"] == {"asked": "auto", "env": None, "choice": "auto", "ran": []}  # vanilla calls none
    # Vico's attention flow runs the core kernels: on a CPU, their torch versions; the env's choice is recorded
    side = sidecar(vgen_in_process("generate", "a red circle and a blue square", *TINY, "--steps", "2", "--method",
                                   "vico", "vico.max_iterations=1", "--out", tmp_path, env={"VGEN_KERNELS": "torch"}))
    assert side["kernels"] == {"asked": "auto", "env": "torch", "choice": "torch", "ran": ["torch"]}


def test_rerunning_a_sidecar_of_another_version_warns_in_one_line(tmp_path):
    from vgen import __version__

    r = vgen_in_process("generate", "a cat", *TINY, "--out", tmp_path / "a")
    side_path = Path(r.stdout.splitlines()[0]).with_suffix(".json")
    same = vgen_in_process("generate", "--config", side_path, "--out", tmp_path / "b")
    assert same.returncode == 0 and "warning" not in same.stderr
    data = json.loads(side_path.read_text())
    data["vgen"]["version"] = "0.0.1"
    side_path.write_text(json.dumps(data))
    old = vgen_in_process("generate", "--config", side_path, "--out", tmp_path / "c")
    assert old.returncode == 0, old.stderr
    warnings = [line for line in old.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"made by vgen 0.0.1, this is vgen {__version__}" in warnings[0]
    del data["vgen"]  # a sidecar from before the field: its versions.vgen counts
    data["versions"]["vgen"] = "0.1.0"
    side_path.write_text(json.dumps(data))
    assert "made by vgen 0.1.0" in vgen_in_process("generate", "--config", side_path, "--out", tmp_path / "d").stderr


def test_a_motion_adapter_is_fingerprinted(tmp_path, tiny):
    """AnimateDiff on an SD base folder + a MotionAdapter folder: both folders' weight files are hashed."""
    from diffusers import MotionAdapter

    from vgen.models import save_components

    base = save_components(tiny("tiny-random-unet2d"), tmp_path / "sd")
    adapter = tmp_path / "adapter"
    MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                  motion_num_attention_heads=2, motion_max_seq_length=32).save_pretrained(adapter)
    side = sidecar(vgen_in_process("generate", "a cat", "--model", base, "--steps", "1", "--frames", "2",
                                   "model.kind=motion", f"model.motion_adapter={adapter}", "--out", tmp_path / "out",
                                   env={"VGEN_CACHE_DIR": str(tmp_path / "cache")}))
    weights = side["weights"]
    expected = {f"{adapter}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()[:12]
                for p in adapter.glob("*.safetensors")}
    assert expected and all(weights.get(k) == v for k, v in expected.items())
    unet = base / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights[f"{base}/unet/diffusion_pytorch_model.safetensors"] == hashlib.sha256(unet.read_bytes()).hexdigest()[:12]
