"""Training batches: shapes, held-out exclusion, and captions that match the pixels."""

import numpy as np

from vgen.toyworld import (
    is_held_out, parse_prompt, sample_image_batch, sample_training_batch, sample_training_specs, score_image,
    score_video,
)


def test_training_specs_never_held_out_and_follow_weights():
    rng = np.random.default_rng(0)
    specs = [sample_training_specs(rng) for _ in range(3000)]
    assert not any(is_held_out(s) for s in specs)
    counts = np.bincount([len(s) for s in specs], minlength=4)[1:] / len(specs)
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.04)
    only_three = [sample_training_specs(rng, (0, 0, 1)) for _ in range(50)]
    assert all(len(s) == 3 for s in only_three)


def test_training_batch_matches_its_captions():
    rng = np.random.default_rng(1)
    captions, videos = sample_training_batch(rng, 12, 10)
    assert videos.shape == (12, 10, 64, 64, 3) and videos.dtype == np.uint8
    for text, video in zip(captions, videos):
        specs = parse_prompt(text)
        assert not is_held_out(specs)
        assert score_video(video, specs).all_correct, text
    again = sample_training_batch(np.random.default_rng(1), 12, 10)
    assert again[0] == captions and np.array_equal(again[1], videos)


def test_image_batch_has_both_caption_forms():
    rng = np.random.default_rng(2)
    captions, images = sample_image_batch(rng, 24)
    assert images.shape == (24, 64, 64, 3) and images.dtype == np.uint8
    with_motion = [any(s.motion for s in parse_prompt(c)) for c in captions]
    assert 0 < sum(with_motion) < len(captions)
    for text, image in zip(captions, images):
        assert score_image(image, text).all_correct, text


def test_bouncing_training_clips_keep_short_clip_speeds():
    """32-frame clips of the toy's layout crawl (speed capped so the path fits); bouncing ones move at the
    8-frame clips' speed, or in a given range, and the detector still reads every object in frame 0."""
    import pytest

    from vgen.toyworld import sample_scene
    from vgen.toyworld.scene import SPEED_RANGE

    rng = np.random.default_rng(3)
    slow, fast, wide = [], [], []
    for _ in range(60):
        specs = sample_training_specs(rng, (0.5, 0.5, 0.0))  # three bouncing objects may find no layout (the batch redraws)
        slow += [o.speed for o in sample_scene(rng, specs, 32).objects if o.speed]
        fast += [o.speed for o in sample_scene(rng, specs, 32, bounce=True).objects if o.speed]
        wide += [o.speed for o in sample_scene(rng, specs, 32, bounce=True, speed_range=(4.0, 6.0)).objects if o.speed]
    assert max(slow) < 1.6  # (62 - side) / 31 px/frame at most: a quarter of the short clips' speed
    assert min(fast) >= SPEED_RANGE[0] and max(fast) <= SPEED_RANGE[1]
    assert min(wide) >= 4.0 and max(wide) <= 6.0
    captions, videos = sample_training_batch(np.random.default_rng(4), 6, 32, bounce=True, speed_range=(2.0, 6.0))
    for text, video in zip(captions, videos):
        specs = parse_prompt(text)
        assert score_image(video[0], specs).all_present, text
    with pytest.raises(ValueError, match="bounce"):
        sample_training_batch(rng, 1, 32, speed_range=(2.0, 6.0))
