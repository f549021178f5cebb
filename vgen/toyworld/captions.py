"""Captions of the toy world, their parser, and the held-out split used for evaluation.

Every caption is lowercase words separated by single spaces (no punctuation), so the text
encoder's tokenizer can be built from vocabulary() alone.
"""

from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np

from .scene import COLOURS, MOTIONS, SHAPES, ObjectSpec, sample_specs

# Motion phrases per template: (phrase for a direction, phrase for "still"). Template 0 is canonical.
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("moving {d}", "staying still"),
    ("that moves {d}", "that stays still"),
    ("going {d}", "standing still"),
)
JOINER = "and"
HELD_OUT_PER_MILLE = 150  # ~15% of multi-object compositions are held out

_DIRECTIONS = tuple(m for m in MOTIONS if m != "still")
_ARTICLES = ("a", "an")


def _article(colour: str) -> str:
    return "an" if colour[0] in "aeiou" else "a"


def _motion_phrase(motion: str | None, template: int) -> str:
    if motion is None:
        return ""
    move, still = TEMPLATES[template]
    return still if motion == "still" else move.format(d=motion)


def object_phrase(spec: ObjectSpec, template: int = 0, with_motion: bool = True) -> str:
    """'a red circle moving left'; without motion (or motion None) just 'a red circle'."""
    words = [_article(spec.colour), spec.colour, spec.shape]
    if with_motion and spec.motion is not None:
        words.append(_motion_phrase(spec.motion, template))
    return " ".join(words)


def caption(specs: list[ObjectSpec], template: int = 0, with_motion: bool = True) -> str:
    """Canonical caption (template 0): 'a red circle moving left and a blue square staying still'."""
    if not specs:
        raise ValueError("a caption needs at least one object")
    return f" {JOINER} ".join(object_phrase(s, template, with_motion) for s in specs)


def paraphrase(specs: list[ObjectSpec], rng: np.random.Generator, with_motion: bool = True) -> str:
    """A caption in a randomly chosen template, for training variety."""
    return caption(specs, int(rng.integers(len(TEMPLATES))), with_motion)


def _motion_table() -> dict[tuple[str, ...], str | None]:
    table: dict[tuple[str, ...], str | None] = {(): None}
    for t in range(len(TEMPLATES)):
        for m in MOTIONS:
            table[tuple(_motion_phrase(m, t).split())] = m
    return table


_MOTION_TABLE = _motion_table()


def vocabulary() -> list[str]:
    """Every word any caption can contain, sorted."""
    words = set(_ARTICLES) | set(COLOURS) | set(SHAPES) | {JOINER}
    for phrase in _MOTION_TABLE:
        words.update(phrase)
    return sorted(words)


_VOCAB = frozenset(vocabulary())
_GRAMMAR = "'<a|an> <colour> <shape> [motion]' joined by 'and'"


def parse_prompt(text: str) -> list[ObjectSpec]:
    """Invert caption() for every template; case, spacing and punctuation do not matter.

    Raises ValueError naming the first thing that is outside the toy world.
    """
    words = re.findall(r"\w+", text.lower())
    if not words:
        raise ValueError("empty prompt: describe objects like 'a red circle moving left'")
    unknown = [w for w in words if w not in _VOCAB]
    if unknown:
        raise ValueError(
            f"word {unknown[0]!r} is outside the toy world; colours: {', '.join(COLOURS)}; "
            f"shapes: {', '.join(SHAPES)}; motions: {', '.join(MOTIONS)}"
        )
    if words[0] not in _ARTICLES:
        raise ValueError(f"prompt must start with 'a' or 'an', got {words[0]!r}; expected {_GRAMMAR}")
    chunks: list[list[str]] = []
    for w in words:  # articles start objects; an 'and' (or a comma) before one is a joiner
        if w in _ARTICLES:
            if chunks and chunks[-1][-1] == JOINER:
                chunks[-1].pop()
            chunks.append([w])
        else:
            chunks[-1].append(w)
    specs = [_parse_object(c) for c in chunks]
    colours = [s.colour for s in specs]
    if len(set(colours)) != len(colours):
        raise ValueError(f"each object needs its own colour (the detector tracks by colour): {text!r}")
    return specs


def _parse_object(chunk: list[str]) -> ObjectSpec:
    phrase = " ".join(chunk)
    if len(chunk) < 3 or chunk[1] not in COLOURS or chunk[2] not in SHAPES:
        raise ValueError(f"cannot read {phrase!r}; expected {_GRAMMAR}")
    motion = tuple(chunk[3:])
    if motion not in _MOTION_TABLE:
        raise ValueError(f"cannot read the motion in {phrase!r}; e.g. 'moving left' or 'staying still'")
    return ObjectSpec(chunk[1], chunk[2], _MOTION_TABLE[motion])


def split_key(specs: list[ObjectSpec]) -> str:
    """Order-free identity of a composition: canonical caption of the specs sorted by colour."""
    order = list(COLOURS)
    return caption(sorted(specs, key=lambda s: order.index(s.colour)))


def is_held_out(specs: list[ObjectSpec]) -> bool:
    """Stable (sha256) ~15% split of multi-object compositions; single objects are never held out."""
    if len(specs) < 2:
        return False
    digest = hashlib.sha256(split_key(specs).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < HELD_OUT_PER_MILLE


def all_single_specs() -> list[ObjectSpec]:
    """The 6 x 4 x 5 single objects in a fixed (colour, shape, motion) order."""
    return [ObjectSpec(c, s, m) for c, s, m in itertools.product(COLOURS, SHAPES, MOTIONS)]


def eval_prompts(n_objects: int, n: int | None = None, seed: int = 0) -> list[str]:
    """Deterministic evaluation prompts (canonical captions).

    n_objects=1: every single object in a seeded order (n defaults to all 120; more cycles
    through fresh seeded orders). n_objects=2/3: n (default 64) distinct held-out compositions.
    """
    rng = np.random.default_rng(seed)
    if n_objects == 1:
        singles = all_single_specs()
        n = len(singles) if n is None else n
        out: list[str] = []
        while len(out) < n:
            out += [caption([singles[i]]) for i in rng.permutation(len(singles))]
        return out[:n]
    if n_objects not in (2, 3):
        raise ValueError(f"eval_prompts supports 1, 2 or 3 objects, got {n_objects}")
    n = 64 if n is None else n
    seen: set[str] = set()
    out = []
    for _ in range(200 * n + 1000):
        if len(out) >= n:
            break
        specs = sample_specs(rng, n_objects)
        key = split_key(specs)
        if key not in seen and is_held_out(specs):
            seen.add(key)
            out.append(caption(specs))
    if len(out) < n:
        raise ValueError(f"could not draw {n} distinct held-out {n_objects}-object prompts")
    return out
