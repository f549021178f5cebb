"""The toy world: coloured shapes that move, their captions, a renderer and an exact detector.

It stands in for real data and checkpoints on machines without network access, and turns
every method's claim into a measurable number. Pure numpy; no torch import.
"""

from .captions import (
    all_single_specs,
    caption,
    eval_prompts,
    is_held_out,
    paraphrase,
    parse_prompt,
    vocabulary,
)
from .dataset import sample_image_batch, sample_training_batch, sample_training_specs
from .detector import (
    ObjectScore,
    Track,
    VideoDetection,
    VideoScore,
    detect_video,
    estimate_motion,
    read_video,
    score_image,
    score_video,
)
from .render import render_image, render_video
from .scene import (
    COLOURS,
    MOTIONS,
    SHAPES,
    BackgroundSpec,
    ObjectLayout,
    ObjectSpec,
    Scene,
    sample_scene,
    sample_specs,
)
from .segment import FrameObject, detect_frame

__all__ = [
    "COLOURS", "MOTIONS", "SHAPES", "BackgroundSpec", "FrameObject", "ObjectLayout", "ObjectScore",
    "ObjectSpec", "Scene", "Track", "VideoDetection", "VideoScore", "all_single_specs", "caption",
    "detect_frame", "detect_video", "estimate_motion", "eval_prompts", "is_held_out", "paraphrase",
    "parse_prompt", "read_video", "render_image", "render_video", "sample_image_batch", "sample_scene",
    "sample_specs", "sample_training_batch", "sample_training_specs", "score_image", "score_video",
    "vocabulary",
]
