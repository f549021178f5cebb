"""A fuzz over every key of the job schema, generated from the dataclasses (issue 37).

The keys and their types are read from `JobConfig`'s dataclasses, so a key added to any section later is
fuzzed without touching this file. The oracle is the schema's own types, not vgen's checks:
- values no key of that type can take (NaN, ±inf, a number too big for a float, the wrong type, a list
  where a scalar goes, a mapping where a list goes, null for a key that is not Optional) must end in one
  `error:` line that names the key, exit 2, and write nothing: through `vgen config show`, and through
  `vgen generate` before any model loads;
- values of the right type (negative, zero, tiny, huge, empty) may be refused by a range check, but only
  in one line naming the key; if accepted, `config show` prints exactly that value;
- every key's resolved value, given back explicitly, resolves to itself.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import vgen_in_process
from vgen.config import METHOD_SECTIONS, JobConfig

MODEL = ["--model", "tiny-random-unet3d"]  # built in memory, carries no vgen.yaml: resolving reads no file


@dataclass(frozen=True)
class Leaf:
    key: str  # dotted
    kind: str  # float | int | bool | str | list | other
    optional: bool
    item: str = ""  # a list's item type

    @property
    def method(self) -> list[str]:
        """A method section's keys are set under that method (another method's key is refused)."""
        section = self.key.split(".", 1)[0]
        return ["--method", section] if section in METHOD_SECTIONS else []


def _leaf(key: str, annotation: typing.Any) -> Leaf:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)
    if optional and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0] if typing.get_args(annotation) else typing.Any
        return Leaf(key, "list", optional, getattr(item, "__name__", "other"))
    if annotation in (bool, int, float, str):
        return Leaf(key, annotation.__name__, optional)
    return Leaf(key, "other", optional)


def schema_leaves(cls: type = JobConfig, prefix: str = "") -> list[Leaf]:
    hints = typing.get_type_hints(cls)
    out: list[Leaf] = []
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            out += schema_leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(_leaf(prefix + f.name, hints[f.name]))
    return out


LEAVES = schema_leaves()

# Values no key of the type can take (YAML text, as after KEY=). Every key gets its type's CORE values
# (the non-finite numbers are vgen's own checks, so each float key gets all of them); the SHAPES (an empty
# list, a list where a scalar goes, a mapping, null for a key that is not Optional) are OmegaConf's typed merge,
# the same code for every key of a type: hypothesis draws (key, shape) pairs from the whole product.
CORE = {
    "float": ["nan", "inf", "-inf", "1e400", "abc"],
    "int": ["1.5", "inf"],
    "bool": ["maybe"],
    "str": ["[a]"],
    "list": ["{a: 1}"],
    "other": ["abc", "{a: .nan}"],
}
CORE_ITEMS = {"float": ["[.nan]", "[0.5, inf]", "[[0.5]]"], "int": ["[1.5]"], "str": ["[[a]]"]}
SHAPES = {
    "float": ["[]", "[1.5]", "{a: 1}", "true", "-.inf"],
    "int": ["[]", "[1]", "{a: 1}", "true", "nan", "-inf", "abc"],
    "bool": ["[]", "[true]", "{a: 1}"],
    "str": ["[]", "{a: 1}"],
    "list": ["[{a: 1}]"],
    "other": ["[1]"],
}
SHAPE_ITEMS = {"float": ["[-inf]", "[abc]", "[true]"], "int": ["[nan]", "[abc]", "[[1]]"], "str": ["[{a: 1}]"]}


def core_values(leaf: Leaf) -> list[str]:
    items = CORE_ITEMS.get(leaf.item, []) if leaf.kind == "list" else []
    return CORE[leaf.kind] + items


def shape_values(leaf: Leaf) -> list[str]:
    items = SHAPE_ITEMS.get(leaf.item, []) if leaf.kind == "list" else []
    return SHAPES[leaf.kind] + items + ([] if leaf.optional else ["null"])


def _shown(stdout: str, key: str):
    node = yaml.safe_load(stdout)
    for part in key.split("."):
        node = node[part]
    return node


def _same(shown, text: str) -> bool:
    """The value `config show` printed is the one given (YAML text), numbers compared as numbers."""
    given_value = yaml.safe_load(text) if text != "''" else ""
    if isinstance(given_value, str) and isinstance(shown, str):
        return shown == given_value
    if isinstance(shown, (int, float)) and not isinstance(shown, bool):
        return float(shown) == float(given_value)
    if isinstance(shown, list) and isinstance(given_value, list):
        return len(shown) == len(given_value) and all(_same(s, yaml.safe_dump(g)) for s, g in zip(shown, given_value))
    return shown == given_value


def _one_line_error(result, key: str) -> str:
    """'' when the result is one `error:` line naming the key, exit 2, nothing on stdout; else what is wrong."""
    lines = result.stderr.splitlines()
    if result.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error:") or result.stdout:
        return f"exit {result.returncode}, stderr {result.stderr!r}"
    if key.split(".")[-1] not in lines[0]:
        return f"the error does not name {key}: {lines[0]!r}"
    return ""


def show(leaf: Leaf, text: str):
    return vgen_in_process("config", "show", *MODEL, *leaf.method, f"{leaf.key}={text}")


@pytest.fixture
def no_model_loads(monkeypatch):
    """generate must refuse before any model loads: loading one is a test failure (exit 1, not 2)."""
    import vgen.jobs

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a config that should have been refused")

    monkeypatch.setattr(vgen.jobs.ModelCache, "get", refuse)


def _generate(leaf: Leaf, text: str, folder: Path):
    return vgen_in_process("generate", "a cat", *MODEL, *leaf.method, "--steps", "1", "--frames", "2",
                           "--out", folder / "out", f"{leaf.key}={text}", cwd=folder)


@pytest.mark.parametrize("leaf", LEAVES, ids=[leaf.key for leaf in LEAVES])
def test_every_key_refuses_values_it_cannot_take(leaf, tmp_path, no_model_loads):
    """Each key's core bad values through `config show`; the first through `generate` too (same line)."""
    problems = []
    for i, text in enumerate(core_values(leaf)):
        shown = show(leaf, text)
        if why := _one_line_error(shown, leaf.key):
            problems.append(f"config show {leaf.key}={text}: {why}")
        if i == 0:
            made = _generate(leaf, text, tmp_path)
            if made.returncode != 2 or made.stderr != shown.stderr:
                problems.append(f"generate {leaf.key}={text}: exit {made.returncode} {made.stderr!r}, config show {shown.stderr!r}")
    assert not problems, "\n".join(problems)
    assert sorted(p.name for p in Path(tmp_path).rglob("*")) == []  # no file, no output folder


SHAPE_CASES = [(leaf, text) for leaf in LEAVES for text in shape_values(leaf)]


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(SHAPE_CASES), through_generate=st.booleans())
def test_values_of_the_wrong_shape(case, through_generate):
    """(key, shape) pairs drawn from every key x its type's wrong shapes, through config show or generate."""
    import tempfile
    from unittest import mock

    import vgen.jobs

    leaf, text = case
    if not through_generate:
        assert _one_line_error(show(leaf, text), leaf.key) == ""
        return
    with tempfile.TemporaryDirectory() as folder, mock.patch.object(vgen.jobs.ModelCache, "get", side_effect=AssertionError("model loaded")):
        assert _one_line_error(_generate(leaf, text, Path(folder)), leaf.key) == ""
        assert list(Path(folder).iterdir()) == []


NUMERIC = [leaf for leaf in LEAVES if leaf.kind in ("float", "int")]


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_numbers_drawn_at_random(data):
    """Any number for any numeric key: a non-finite one is refused; a finite one (negative, zero, tiny, huge)
    resolves to itself or is refused in one line naming the key (an int key takes only whole numbers)."""
    leaf = data.draw(st.sampled_from(NUMERIC), label="key")
    value = data.draw(st.floats() | st.integers(-(2**70), 2**70) | st.sampled_from([-1, 0, 1, 1e-300, 1e308]), label="value")
    text = repr(value)
    r = show(leaf, text)
    finite = not isinstance(value, float) or math.isfinite(value)
    if finite and r.returncode == 0:
        assert _same(_shown(r.stdout, leaf.key), text)
    else:
        assert _one_line_error(r, leaf.key) == "", (leaf.key, text)


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


@pytest.mark.parametrize("method", ["vanilla", *METHOD_SECTIONS])
def test_every_resolved_value_given_back_resolves_to_itself(method):
    """The valid side: every key's resolved value, all set explicitly at once, resolves to the same config."""
    args = [*MODEL, "--method", method, "--no-sources"]
    first = vgen_in_process("config", "show", *args)
    assert first.returncode == 0, first.stderr
    resolved = yaml.safe_load(first.stdout)
    keys = [leaf.key for leaf in LEAVES if leaf.key.split(".")[0] in resolved]
    assert keys == [leaf.key for leaf in LEAVES if leaf.key.split(".")[0] not in METHOD_SECTIONS or leaf.key.startswith(f"{method}.")]
    again = vgen_in_process("config", "show", *args, *(f"{key}={_flow(_shown(first.stdout, key))}" for key in keys))
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load(again.stdout) == resolved


def test_the_fuzz_covers_every_section():
    """The walk reaches every section and scalar of the schema (a guard against the walk itself going wrong)."""
    assert {leaf.key.split(".")[0] for leaf in LEAVES} == {f.name for f in fields(JobConfig)}
    assert {"float", "int", "bool", "str", "list"} <= {leaf.kind for leaf in LEAVES}
    assert len(LEAVES) == len({leaf.key for leaf in LEAVES})
