"""The shipped toy model loads and draws a prompted object the detector recognises.

Seeded and deterministic on CPU (same seed, device and dtype -> same frames), so the floor is a
measured outcome of the shipped weights, not a statistical claim; retraining must re-measure it.
"""

from __future__ import annotations

import pytest
import torch

from vgen.models import ASSETS

PROMPTS = ["a green circle moving up", "a red square moving left", "a yellow triangle moving right", "a blue diamond",
           "a purple circle moving down", "an orange square"]
SEED = 0
STEPS = 10
FRAMES = 8
GUIDANCE = 5.0
# Measured with the shipped weights (joint step 13400), seed 0, 10 steps, one thread: colour and shape right on
# 5 of 6 videos (the red square comes out a circle) and 5 of 6 images (the blue diamond comes out a circle).
# The video floor keeps the 4 set at step 8000, one video of margin; motion is not judged here
# (scripts/eval_toy.py measures it: docs/toy-world.md).
FLOOR_T2V = 4
FLOOR_T2I = 5

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


def _colour_and_shape_right(model: str, frames: int) -> int:
    from vgen.config import ModelConfig
    from vgen.models import load_components
    from vgen.toyworld import score_video
    from vgen.toyworld.evaluate import generate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest on a shared CPU
    try:
        comp = load_components(ModelConfig(id=model), device="cpu", dtype="float32")
        videos = generate(comp, PROMPTS, [SEED] * len(PROMPTS), frames, STEPS, GUIDANCE)
    finally:
        torch.set_num_threads(threads)
    scores = [score_video(v, p, judge_motion=False).objects[0] for v, p in zip(videos, PROMPTS)]
    return sum(o.present and o.colour_ok and o.shape_ok for o in scores)


def test_toy_draws_the_prompted_objects():
    assert _colour_and_shape_right("toy", FRAMES) >= FLOOR_T2V


def test_toy_t2i_draws_the_prompted_objects():
    assert _colour_and_shape_right("toy-t2i", 1) >= FLOOR_T2I


# --- toy-wan: the toy world's Wan-architecture model (issue 34) -----------------------------------------------
TOY_WAN = ASSETS / "toy-wan"
WAN_PROMPTS = ["a green circle moving up", "a red square moving left"]
# Measured with the shipped weights (transformer step 5000), seed 0, 20 steps, 17 frames, one thread: the detector
# finds 5 of the 8 prompted colours of four held-out two-object prompts; the floor keeps one of margin. Shapes are
# not judged: toy-wan misses them (docs/toy-wan.md).
FLOOR_WAN_COLOURS = 4
toy_wan_installed = pytest.mark.skipif(not (TOY_WAN / "model_index.json").is_file(),
                                       reason="vgen/assets/toy-wan is not installed (docs/toy-wan.md)")


@toy_wan_installed
def test_toy_wan_loads_as_a_wan_pipeline_and_equals_vgen_vanilla():
    """The shipped folder is a diffusers WanPipeline folder: WanPipeline.from_pretrained loads it and draws the same
    frames as vgen's vanilla (same seed, float32), within one grey level."""
    import numpy as np
    from diffusers import WanPipeline

    from conftest import make_job, run_vanilla
    from vgen.config import ModelConfig
    from vgen.core.sampler import to_uint8
    from vgen.models import load_components

    from vgen.model_settings import folder_frames

    c = load_components(ModelConfig(id="toy-wan"), device="cpu", dtype="float32")
    assert c.kind == "wan" and c.native_size == (64, 64)
    # `vgen models` reads the frame rule from the JSON; the loaded VAE says the same
    assert folder_frames(TOY_WAN, "wan") == f"{c.vae.config.scale_factor_temporal}k+1" == "4k+1"
    job = make_job(WAN_PROMPTS[0], **{"model.id": "toy-wan", "sampler.steps": 4, "video.frames": 9, "seed": 3,
                                      "sampler.guidance": 5.0})
    ours = run_vanilla(c, job)
    pipe = WanPipeline.from_pretrained(TOY_WAN)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(WAN_PROMPTS[0], num_frames=9, height=64, width=64, num_inference_steps=4, guidance_scale=5.0,
               generator=torch.Generator("cpu").manual_seed(3), output_type="np")
    theirs = to_uint8(torch.from_numpy(np.asarray(out.frames[0])))
    assert ours.shape == theirs.shape == (9, 64, 64, 3)
    assert int(np.abs(ours.astype(int) - theirs.astype(int)).max()) <= 1


def _colours_found(model: str, prompts: list[str], frames: int, steps: int) -> int:
    from vgen.config import ModelConfig
    from vgen.models import load_components
    from vgen.toyworld import score_video
    from vgen.toyworld.evaluate import generate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        comp = load_components(ModelConfig(id=model), device="cpu", dtype="float32")
        videos = generate(comp, prompts, [SEED] * len(prompts), frames, steps, GUIDANCE)
    finally:
        torch.set_num_threads(threads)
    return sum(o.present and o.colour_ok for v, p in zip(videos, prompts)
               for o in score_video(v, p, judge_motion=False).objects)


@toy_wan_installed
def test_toy_wan_draws_the_prompted_colours_on_held_out_prompts():
    """Four held-out two-object compositions (eval_prompts), seed 0, 20 steps, 17 frames: prompted colours the
    detector finds, of 8."""
    from vgen.toyworld import eval_prompts

    assert _colours_found("toy-wan", eval_prompts(2, 4, 0), 17, 20) >= FLOOR_WAN_COLOURS
