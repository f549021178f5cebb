"""Captions, parser, vocabulary and the held-out split."""

import hashlib
import itertools
import re

import numpy as np
import pytest

from vgen.toyworld import (
    COLOURS, MOTIONS, SHAPES, ObjectSpec, all_single_specs, caption, eval_prompts, is_held_out,
    parse_prompt, sample_specs, vocabulary,
)
from vgen.toyworld.captions import TEMPLATES


def test_canonical_form_by_hand():
    specs = [ObjectSpec("red", "circle", "left"), ObjectSpec("blue", "square", "up"),
             ObjectSpec("orange", "diamond", "still")]
    assert caption(specs) == ("a red circle moving left and a blue square moving up "
                              "and an orange diamond staying still")
    assert caption(specs, template=1) == ("a red circle that moves left and a blue square that moves up "
                                          "and an orange diamond that stays still")
    assert caption(specs, with_motion=False) == "a red circle and a blue square and an orange diamond"


def test_round_trip_every_single_object_and_template():
    singles = all_single_specs()
    assert len(singles) == len(set(singles)) == 6 * 4 * 5
    for spec, t in itertools.product(singles, range(len(TEMPLATES))):
        assert parse_prompt(caption([spec], t)) == [spec]
        assert parse_prompt(caption([spec], t, with_motion=False)) == [ObjectSpec(spec.colour, spec.shape, None)]


def test_round_trip_multi_object():
    rng = np.random.default_rng(0)
    for _ in range(300):
        specs = sample_specs(rng, int(rng.integers(2, 4)))
        for t in range(len(TEMPLATES)):
            assert parse_prompt(caption(specs, t)) == specs


def test_parser_is_tolerant_of_case_spacing_punctuation():
    expected = [ObjectSpec("orange", "triangle", "down"), ObjectSpec("green", "square", "still")]
    for text in ["  An ORANGE triangle moving down,   and a green square staying still.  ",
                 "an orange triangle going down; a Green Square that stays still!",
                 "an orange triangle that moves down, a green square standing still"]:
        assert parse_prompt(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("   ,. ", "empty"),
    ("a cat and a dog playing", "'cat'"),
    ("a red circle moving sideways", "'sideways'"),
    ("two red circles", "'two'"),
    ("red circle moving left", "start with"),
    ("a red circle and", "motion"),
    ("a red and blue circle", "cannot read"),
    ("a circle moving left", "cannot read"),
    ("a red circle moving", "motion"),
    ("a red circle and a red square", "own colour"),
])
def test_parser_rejects_text_outside_the_world(text, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(text)


def test_vocabulary_is_exactly_the_words_captions_use():
    used = set()
    for spec, t in itertools.product(all_single_specs(), range(len(TEMPLATES))):
        used |= set(caption([spec, ObjectSpec("blue" if spec.colour != "blue" else "red", "circle")], t).split())
        used |= set(caption([spec], t, with_motion=False).split())
    assert sorted(used) == vocabulary()
    assert set(COLOURS) | set(SHAPES) | set(MOTIONS) <= set(vocabulary())
    assert all(re.fullmatch("[a-z]+", w) for w in vocabulary())


def test_held_out_rule_is_a_stable_sha256_of_the_sorted_caption():
    specs = [ObjectSpec("blue", "square", "up"), ObjectSpec("red", "circle", "left")]
    key = "a red circle moving left and a blue square moving up"  # sorted by colour order
    expected = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 1000 < 150
    assert is_held_out(specs) == expected == is_held_out(specs[::-1])


def test_held_out_fraction_and_singles():
    assert not any(is_held_out([s]) for s in all_single_specs())
    rng = np.random.default_rng(1)
    for n in (2, 3):
        frac = np.mean([is_held_out(sample_specs(rng, n)) for _ in range(3000)])
        assert 0.12 < frac < 0.18, (n, frac)


def test_eval_prompts_are_deterministic_held_out_and_distinct():
    for n_objects in (2, 3):
        a = eval_prompts(n_objects, 50, seed=3)
        assert a == eval_prompts(n_objects, 50, seed=3)
        assert a != eval_prompts(n_objects, 50, seed=4)
        assert len(a) == 50
        specs = [parse_prompt(p) for p in a]
        assert all(len(s) == n_objects and is_held_out(s) for s in specs)
        keys = {frozenset(s) for s in specs}
        assert len(keys) == 50


def test_eval_prompts_single_objects():
    every = eval_prompts(1)
    assert len(every) == 120 and len(set(every)) == 120
    assert every == eval_prompts(1, seed=0) and every != eval_prompts(1, seed=1)
    assert set(every) == {caption([s]) for s in all_single_specs()}
    long = eval_prompts(1, 250, seed=0)
    assert long[:120] == every and len(long) == 250 and set(long) == set(every)
    with pytest.raises(ValueError):
        eval_prompts(4, 5)
