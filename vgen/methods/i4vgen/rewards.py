"""Image rewards for picking an anchor image (I4VGen): higher is better, one score per image.

A reward is ``score(images uint8 [N, H, W, 3], prompt) -> float64 [N]``, built once by `load_reward`
(weights load at build time, so a missing model fails before any sampling).
- toy: a graded reading of the image by the toy-world detector against the prompt (exact, no weights): how well
  each prompted object's colour and shape match, minus extra objects and fragments, so candidates rank.
- clip: cosine similarity of CLIP image and text embeddings, x100 (the usual "CLIP score").
- imagereward: ImageReward (the I4VGen paper's choice) when its package and weights are installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from vgen.errors import ConfigError, ModelLoadError, VgenError

Reward = Callable[[np.ndarray, str], np.ndarray]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_IMAGEREWARD = "ImageReward-v1.0"
EXTRA_OBJECT_PENALTY = 0.05  # per object of an unprompted colour
FRAGMENT_PENALTY = 0.05  # per further blob of a prompted colour (a second copy, or a piece of a broken one)
TIE_BREAK = 1e-3  # weight of the prompted colours' pixel coverage, which separates otherwise equal images
# Per prompted object, graded: (present + SHAPE_WEIGHT * shape + colour) / (2 + SHAPE_WEIGHT). The shape weighs twice
# the colour so that a right shape in a wrong colour ranks above a right colour in a wrong shape.
SHAPE_WEIGHT = 2.0
# ... then (graded + CORRECT_WEIGHT * right) / (1 + CORRECT_WEIGHT), right = the detector calls both colour and shape
# right. Without it, and with penalties of 0.25 and 0.15, presence dominated: of 8 candidates the reward chose one
# with every object present but wrong in colour or shape over one that had them right (48 two/three-object prompts:
# the chosen anchors' per-object colour+shape 50.0%, the best candidate's 68.3%; with the verdict at 0.5 and both
# penalties at 0.05, 67.5%, every object present in 93.8%).
CORRECT_WEIGHT = 0.5


def shape_fit(features, shape: str) -> float:
    """How well moment features fit `shape`, in [0, 1]: d_other / (d_shape + d_other) with d the squared distance
    to the prompted prototype and to the nearest other one; above 0.5 exactly when the detector calls it `shape`."""
    from vgen.toyworld.segment import SHAPE_PROTOTYPES

    f = np.asarray(features, dtype=np.float64)
    dist = {k: float(np.sum((f - np.asarray(p)) ** 2)) for k, p in SHAPE_PROTOTYPES.items()}
    own, other = dist[shape], min(d for k, d in dist.items() if k != shape)
    return 0.5 if own + other == 0 else other / (own + other)


def colour_pixels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into COLOURS of each pixel's world colour or -1, chroma) as the detector classifies them."""
    from vgen.toyworld.segment import classify_pixels

    strong, _, chroma = classify_pixels(image)
    return strong, chroma


def colour_purity(strong: np.ndarray, chroma: np.ndarray, colour: str) -> float:
    """Mean chroma / 255 of the pixels the detector gives to `colour`: 1 for a clean flat colour, lower when faded."""
    from vgen.toyworld import COLOURS

    mask = strong == list(COLOURS).index(colour)
    return float(chroma[mask].mean() / 255.0) if mask.any() else 0.0


@dataclass(frozen=True)
class ToyReading:
    """The parts of the graded toy reward for one image (see toy_score)."""

    objects: tuple[float, ...]  # per prompted object, graded, in [0, 1]
    right: tuple[bool, ...]  # per prompted object: the detector calls its colour and shape right
    extra_objects: int
    fragments: int
    coverage: float  # fraction of pixels in a prompted colour (tie-break)

    @property
    def score(self) -> float:
        parts = [(g + CORRECT_WEIGHT * r) / (1.0 + CORRECT_WEIGHT) for g, r in zip(self.objects, self.right)]
        base = float(np.mean(parts)) if parts else 0.0
        return (base - EXTRA_OBJECT_PENALTY * self.extra_objects - FRAGMENT_PENALTY * self.fragments
                + TIE_BREAK * self.coverage)


def toy_reading(image: np.ndarray, prompt: str) -> ToyReading:
    """Graded reading of one image against a toy prompt, from the exact detector.

    Per prompted object (matched as the detector matches it): present (1/0), shape = half for the detector's
    verdict plus half its fit (shape_fit), colour = half for the right colour plus half its purity. Then a penalty
    per object of an unprompted colour (not one standing in for a prompted object) and per extra blob of a prompted colour, and a tie-break by coverage.
    """
    from vgen.toyworld import detect_video, score_video

    from vgen.toyworld import COLOURS

    det = detect_video(image[None])
    strong, chroma = colour_pixels(image)
    score = score_video(det, prompt, judge_motion=False)
    parts, right = [], []
    for o in score.objects:
        right.append(bool(o.present and o.colour_ok and o.shape_ok))
        if not o.present:
            parts.append(0.0)
            continue
        seen = det.tracks[o.detected_colour].observations[0]
        fit = shape_fit(seen.features, o.spec.shape)
        shape = 0.5 * (seen.shape == o.spec.shape) + 0.5 * fit
        colour = 0.5 + 0.5 * colour_purity(strong, chroma, o.spec.colour) if o.colour_ok else 0.0
        parts.append((1.0 + SHAPE_WEIGHT * shape + colour) / (2.0 + SHAPE_WEIGHT))
    prompted = {o.spec.colour for o in score.objects}
    stand_ins = {o.detected_colour for o in score.objects if o.present and not o.colour_ok}  # scored above already
    extra = [c for c in score.extra_objects if c not in stand_ins]
    fragments = sum(max(len([b for b in det.frames[0] if b.colour == c]) - 1, 0) for c in prompted)
    coverage = float(np.isin(strong, [list(COLOURS).index(c) for c in prompted]).mean())
    return ToyReading(tuple(parts), tuple(right), len(extra), fragments, coverage)


def toy_score(image: np.ndarray, prompt: str) -> float:
    """The graded toy reward of one image (toy_reading(...).score): about 1 for a clean, fully right image,
    ordered right > wrong colour > wrong shape > missing per object, lowered by extra objects and fragments."""
    return toy_reading(image, prompt).score


def toy_reward() -> Reward:
    from vgen.toyworld import parse_prompt

    def score(images: np.ndarray, prompt: str) -> np.ndarray:
        try:
            parse_prompt(prompt)
        except ValueError as err:
            raise ConfigError(
                f"i4vgen.reward=toy needs a toy-world prompt ({err}); use i4vgen.reward=clip for other prompts"
            ) from None
        return np.array([toy_score(image, prompt) for image in images], dtype=np.float64)

    return score


def clip_reward(model_id: Optional[str] = None, device: str = "cpu") -> Reward:
    """CLIP score with transformers' CLIPModel + CLIPProcessor from a hub id or a local folder."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    source = model_id or DEFAULT_CLIP
    try:
        model = CLIPModel.from_pretrained(source).to(device).eval()
        processor = CLIPProcessor.from_pretrained(source)
    except OSError as err:
        where = "folder" if Path(source).expanduser().is_dir() else "hub id"
        raise ModelLoadError(
            f"cannot load the CLIP reward model ({where} '{source}'): {str(err).splitlines()[0]}; "
            "set i4vgen.reward_model to a local CLIPModel folder"
        ) from None

    @torch.no_grad()
    def score(images: np.ndarray, prompt: str) -> np.ndarray:
        inputs = processor(text=[prompt], images=list(images), return_tensors="pt", padding=True)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"])
        text_embeds = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        image_embeds = _features(image_embeds)
        text_embeds = _features(text_embeds)
        cos = torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
        return (100 * cos).cpu().double().numpy()

    return score


def _features(out):
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    return out


def imagereward_reward(model_id: Optional[str] = None, device: str = "cpu") -> Reward:
    try:
        import ImageReward as image_reward  # the `image-reward` package
    except ImportError:
        raise VgenError(
            "i4vgen.reward=imagereward needs the `image-reward` package and its weights, which are not installed; "
            "use i4vgen.reward=clip or toy"
        ) from None
    try:
        model = image_reward.load(model_id or DEFAULT_IMAGEREWARD, device=device)
    except Exception as err:  # its loader downloads and raises many kinds of errors
        raise ModelLoadError(f"cannot load ImageReward weights '{model_id or DEFAULT_IMAGEREWARD}': {err}") from None

    def score(images: np.ndarray, prompt: str) -> np.ndarray:
        from PIL import Image

        values = model.score(prompt, [Image.fromarray(image) for image in images])
        return np.atleast_1d(np.asarray(values, dtype=np.float64))

    return score


@lru_cache(maxsize=4)
def load_reward(name: str, model_id: Optional[str] = None, device: str = "cpu") -> Reward:
    """The reward function, built once per (name, weights, device): a batch loads CLIP once."""
    if name == "toy":
        return toy_reward()
    if name == "clip":
        return clip_reward(model_id, device)
    if name == "imagereward":
        return imagereward_reward(model_id, device)
    raise ConfigError(f"unknown reward '{name}'; choose one of: toy, clip, imagereward")
