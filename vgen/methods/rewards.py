"""Image rewards for picking an anchor image (I4VGen): higher is better, one score per image.

A reward is ``score(images uint8 [N, H, W, 3], prompt) -> float64 [N]``, built once by `load_reward`
(weights load at build time, so a missing model fails before any sampling).
- toy: the toy-world detector's reading of the image against the prompt (exact, no weights).
- clip: cosine similarity of CLIP image and text embeddings, x100 (the usual "CLIP score").
- imagereward: ImageReward (the I4VGen paper's choice) when its package and weights are installed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from vgen.errors import ConfigError, ModelLoadError, VgenError

Reward = Callable[[np.ndarray, str], np.ndarray]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_IMAGEREWARD = "ImageReward-v1.0"
EXTRA_OBJECT_PENALTY = 0.25


def toy_score(image: np.ndarray, prompt: str) -> float:
    """Mean over prompted objects of (present, colour right, shape right) / 3, minus 0.25 per unprompted object.

    A perfect image scores 1; the penalty prefers the clean image among equally correct ones.
    """
    from vgen.toyworld import score_image

    score = score_image(image[None], prompt)
    parts = [(o.present + o.colour_ok + o.shape_ok) / 3 for o in score.objects]
    return float(np.mean(parts)) - EXTRA_OBJECT_PENALTY * len(score.extra_objects)


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
