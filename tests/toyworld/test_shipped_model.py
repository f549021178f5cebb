"""The shipped toy model loads and draws a prompted object the detector recognises.

Seeded and deterministic on CPU (same seed, device and dtype -> same frames), so the floor is a
measured outcome of the shipped weights, not a statistical claim; retraining must re-measure it.
"""

from __future__ import annotations

import pytest
import torch

from vgen.models import ASSETS

PROMPT = "a green circle moving up"  # measured with the shipped weights (joint step 4200); see FLOOR
SEED = 0
STEPS = 10
FRAMES = 8
GUIDANCE = 5.0
FLOOR = {"present": True, "colour_ok": True, "shape_ok": True}  # achieved on PROMPT / SEED; motion is not (yet)

pytestmark = pytest.mark.skipif(
    not (ASSETS / "toy" / "model_index.json").is_file(),
    reason="vgen/assets/toy is not installed (train with scripts/train_toy.py and export)",
)


def test_toy_loads_in_float32_from_float16_weights():
    from vgen.config import ModelConfig
    from vgen.models import load_components

    comp = load_components(ModelConfig(id="toy"), device="cpu", dtype="float32")
    assert comp.kind == "unet3d"
    assert comp.native_size == (64, 64)
    assert all(p.dtype == torch.float32 for p in comp.unet.parameters())


def test_toy_draws_the_prompted_object():
    from vgen.toyworld import score_video
    from vgen.toyworld.evaluate import generate
    from vgen.config import ModelConfig
    from vgen.models import load_components

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest on a shared CPU
    try:
        comp = load_components(ModelConfig(id="toy"), device="cpu", dtype="float32")
        video = generate(comp, [PROMPT], [SEED], FRAMES, STEPS, GUIDANCE)[0]
    finally:
        torch.set_num_threads(threads)
    obj = score_video(video, PROMPT).objects[0]
    for key, want in FLOOR.items():
        assert getattr(obj, key) == want, f"{key}: {obj.to_dict()}"
