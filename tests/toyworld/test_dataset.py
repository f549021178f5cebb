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
