"""A new user's first hour (issue 18), through the console script's main() (in-process: same argv, exit code and output): one test per numbered item.

1 defaults that work per method   2 configs/vanilla.yaml   3 outputs that never collide   4 sidecars that
re-run   5 unknown prompt words   7 discoverability   8 list overrides / unused sections   9 paper presets
"""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import vgen_in_process

ROOT = Path(__file__).parents[1]
TINY = ["--model", "tiny-random-unet3d", "--steps", "2", "--frames", "3"]


def vgen(*args, cwd=None, env=None, timeout=600):
    return vgen_in_process(*args, cwd=cwd, env=env)


def one_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def sidecar(mp4: Path) -> dict:
    return json.loads(mp4.with_suffix(".json").read_text())


def frames(mp4: Path) -> np.ndarray:
    from vgen.video import read_video

    return read_video(mp4).frames


# 1 -------------------------------------------------------------------------------------------------

def test_1_zs2_on_the_default_model_uses_its_image_sibling(tmp_path):
    r = vgen("generate", "a red circle moving left", "--method", "zs2", "--steps", "2", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr  # every word is in the toy world
    side = sidecar(Path(r.stdout.splitlines()[0]))
    assert side["model"] == {"id": "toy-t2i", "kind": "unet2d"}
    assert side["config_sources"]["model.id"] == "model:toy"
    # issue 30 item 7: naming the default model changes nothing (the same output, skipped), and says which model ran
    named = vgen("generate", "a red circle moving left", "--model", "toy", "--method", "zs2", "--steps", "2",
                 "--out", tmp_path, "--skip-existing")
    assert named.returncode == 0, named.stderr
    assert named.stdout.splitlines()[0] == r.stdout.splitlines()[0] and "skipped" in named.stderr
    fresh = vgen("generate", "a red circle moving left", "--model", "toy", "--method", "zs2", "--steps", "2",
                 "--out", tmp_path / "named")
    assert fresh.returncode == 0 and "model: toy-t2i (named by toy's settings for zs2)" in fresh.stderr


def test_1_streaming_and_vico_get_settings_that_work_on_the_toy():
    r = vgen("config", "show", "-m", "streaming")
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert shown["video"]["frames"] > shown["streaming"]["chunk"]  # several chunks: it streams
    assert shown["sampler"]["eta"] == 1.0 and re.search(r"eta: 1.0 +# method", r.stdout)  # the paper's eta
    assert re.search(r"frames: 64 +# model:toy", r.stdout)
    shown = yaml.safe_load(vgen("config", "show", "-m", "vico").stdout)
    assert shown["vico"]["lr"] == 0.01 and shown["sampler"]["steps"] == 20 and shown["sampler"]["guidance"] == 5.0


# 2 -------------------------------------------------------------------------------------------------

def test_2_vanilla_yaml_lists_every_common_key_and_runs_on_the_toy(tmp_path):
    from vgen.config import METHOD_SECTIONS, JobConfig, dataclass_keys
    from vgen.jobs import _flat

    listed = set(_flat(yaml.safe_load((ROOT / "configs" / "vanilla.yaml").read_text())))
    expected = {k for k in dataclass_keys(JobConfig) if k.split(".")[0] not in METHOD_SECTIONS}
    assert expected - listed == set()
    r = vgen("generate", "a red circle", "--config", ROOT / "configs" / "vanilla.yaml", "--steps", "8", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    from vgen.toyworld import score_video

    assert score_video(frames(Path(r.stdout.splitlines()[0])), "a red circle").objects[0].colour_ok  # not noise


# 3 -------------------------------------------------------------------------------------------------

def test_3_outputs_never_collide_or_get_replaced_silently(tmp_path):
    a = vgen("generate", "a cat", *TINY, "--out", tmp_path)
    b = vgen("generate", "a cat", "--method", "vico", *TINY, "--out", tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert sorted(re.sub(r"-[0-9a-f]{8}$", "", p.stem) for p in tmp_path.glob("*.mp4")) == ["a-cat-vanilla-0", "a-cat-vico-0"]
    mp4 = Path(a.stdout.splitlines()[0])
    stamp = mp4.stat().st_mtime_ns
    one_error(vgen("generate", "a cat", *TINY, "--out", tmp_path), "already exists", "--overwrite")
    assert mp4.stat().st_mtime_ns == stamp
    r = vgen("generate", "a cat", *TINY, "--out", tmp_path, "--skip-existing")
    assert r.returncode == 0 and "skipped" in r.stderr and mp4.stat().st_mtime_ns == stamp
    # another setting makes another output: a new name is filled, the first stays
    r = vgen("generate", "a cat", *TINY, "--out", tmp_path, "--skip-existing", "sampler.eta=0.5")
    assert r.returncode == 0 and Path(r.stdout.splitlines()[0]) != mp4 and mp4.stat().st_mtime_ns == stamp
    assert sidecar(Path(r.stdout.splitlines()[0]))["config"]["sampler"]["eta"] == 0.5
    # under one explicit name, a changed setting re-runs saying why
    named = tmp_path / "named.mp4"
    assert vgen("generate", "a cat", *TINY, "--out", named).returncode == 0
    r = vgen("generate", "a cat", *TINY, "--out", named, "--skip-existing", "sampler.eta=0.5")
    assert r.returncode == 0 and "sampler.eta 0.0 -> 0.5" in r.stderr and sidecar(named)["config"]["sampler"]["eta"] == 0.5
    r = vgen("generate", "a cat", *TINY, "--out", named, "--overwrite")
    assert r.returncode == 0 and sidecar(named)["config"]["sampler"]["eta"] == 0.0


def test_3_skip_existing_never_replaces_another_prompts_or_models_output(tmp_path):
    """Issue 30 item 2: two prompts sharing 60 characters give two outputs, and --skip-existing only skips or
    fills a name: under one explicit name, another prompt's or model's video is an error, not a replacement."""
    long = "a red circle moving left and a blue square moving up and a green triangle "
    first = vgen("generate", long + "moving down", *TINY, "--out", tmp_path)
    second = vgen("generate", long + "staying still", *TINY, "--out", tmp_path, "--skip-existing")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert {sidecar(p)["prompt"] for p in tmp_path.glob("*.mp4")} == {long + "moving down", long + "staying still"}
    named = tmp_path / "mine.mp4"
    assert vgen("generate", "a cat", *TINY, "--out", named).returncode == 0
    stamp = named.stat().st_mtime_ns
    one_error(vgen("generate", "a dog", *TINY, "--out", named, "--skip-existing"), "another prompt", "--overwrite")
    one_error(vgen("generate", "a cat", *TINY[2:], "--model", "tiny-random-motion", "--out", named, "--skip-existing"),
              "another model")
    assert named.stat().st_mtime_ns == stamp and sidecar(named)["prompt"] == "a cat"


def test_3_batch_skip_existing_reruns_changed_jobs_and_says_why(tmp_path):
    out = tmp_path / "out"
    batch = tmp_path / "b.yaml"
    batch.write_text(f"defaults: {{model: {{id: tiny-random-unet3d}}, sampler: {{steps: 2}}, video: {{frames: 2}}, "
                     f"output: {{dir: {out}}}}}\njobs:\n  - a cat\n  - a dog\n")
    assert vgen("batch", batch).returncode == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    r = vgen("batch", batch, "--skip-existing", "sampler.eta=0.5")  # a changed setting: both run, to new names
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("done:") == 2
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4") if p.name in stamps} == stamps
    assert len(list(out.glob("*.mp4"))) == 4
    r = vgen("batch", batch, "--skip-existing", "sampler.eta=0.5")  # resumed: nothing left to run
    assert r.returncode == 0 and r.stderr.count("skipped:") == 2


# 4 -------------------------------------------------------------------------------------------------

def test_4_a_sidecar_reruns_exactly_and_fingerprints_its_weights(tmp_path, monkeypatch):
    from vgen import fingerprint

    monkeypatch.setattr(fingerprint, "_memory", {})  # a fresh process: no hashes in memory yet
    env = {"VGEN_CACHE_DIR": str(tmp_path / "cache")}
    r = vgen("generate", "a red circle moving left", "--steps", "3", "--frames", "3", "--seed", "7",
             "zs2.momentum=0.5", "--method", "zs2", "--out", tmp_path / "a", env=env)
    assert r.returncode == 0, r.stderr
    first = Path(r.stdout.splitlines()[0])
    side = sidecar(first)
    assert set(side["config"]) & {"vico", "i4vgen", "streaming"} == set() and "zs2" in side["config"]
    unet = ROOT / "vgen" / "assets" / "toy-t2i" / "unet" / "diffusion_pytorch_model.safetensors"
    assert side["weights"]["toy-t2i/unet/diffusion_pytorch_model.safetensors"] == hashlib.sha256(unet.read_bytes()).hexdigest()[:12]
    assert len(side["weights"]) == 3  # text encoder, VAE, UNet
    cache = json.loads((tmp_path / "cache" / "weight-hashes.json").read_text())
    assert any(k.startswith(str(unet.resolve())) for k in cache)

    r = vgen("generate", "--config", first.with_suffix(".json"), "--out", tmp_path / "b", env=env)
    assert r.returncode == 0, r.stderr
    again = Path(r.stdout.splitlines()[0])
    assert again.name == first.name and again.parent == tmp_path / "b"
    assert np.array_equal(frames(first), frames(again))
    assert sidecar(again)["config"] == {**side["config"], "output": {**side["config"]["output"], "dir": str(tmp_path / "b")}}

    # a batch job pointing at the sidecar re-runs it too (the job's own keys go over it)
    (tmp_path / "batch.yaml").write_text(yaml.safe_dump({"jobs": [{"config": str(first.with_suffix(".json")),
                                                                     "output": {"dir": str(tmp_path / "c")}}]}))
    r = vgen("batch", tmp_path / "batch.yaml", env=env)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(frames(first), frames(tmp_path / "c" / first.name))


def test_4_weight_hashes_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    from vgen import fingerprint

    monkeypatch.setenv("VGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_memory", {})
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x" * 1000)
    assert fingerprint.file_hash(weights) == hashlib.sha256(b"x" * 1000).hexdigest()[:12]
    key = next(iter(json.loads(fingerprint.cache_file().read_text())))
    fingerprint.cache_file().write_text(json.dumps({key: "from-cache"}))
    monkeypatch.setattr(fingerprint, "_memory", {})
    assert fingerprint.file_hash(weights) == "from-cache"  # a later process does not re-hash the file
    weights.write_bytes(b"y" * 1001)  # size and mtime change: hashed again
    assert fingerprint.file_hash(weights) == hashlib.sha256(b"y" * 1001).hexdigest()[:12]


# 5 -------------------------------------------------------------------------------------------------

def test_5_unknown_prompt_words_warn_in_one_line(tmp_path):
    r = vgen("generate", "a cat and a dog playing", "--steps", "2", "--frames", "2", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and all(w in warnings[0] for w in ("cat", "dog", "playing")), r.stderr
    assert "and" not in warnings[0].split("word(s)")[1]
    assert sidecar(Path(r.stdout.splitlines()[0]))["unknown_words"] == ["cat", "dog", "playing"]
    # (toy-world prompts get no warning: test_1_zs2... checks its stderr)


def test_5_the_toy_tokenizer_knows_exactly_the_toy_vocabulary():
    from transformers import CLIPTokenizer

    from vgen.jobs import unknown_words
    from vgen.toyworld import vocabulary

    tokenizer = CLIPTokenizer.from_pretrained(ROOT / "vgen" / "assets" / "toy" / "tokenizer")
    text = "a cat and a dog playing on the beach, a red circle moving left, an orange square staying still downwards"
    words = list(dict.fromkeys(re.findall(r"[a-z]+", text)))
    assert unknown_words(tokenizer, text) == [w for w in words if w not in set(vocabulary())]


# 7 -------------------------------------------------------------------------------------------------

def test_7_version_methods_models_and_help():
    from vgen import __version__
    from vgen.methods import METHODS

    r = vgen("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"vgen {__version__}"
    r = vgen("methods")
    for info in METHODS.values():
        assert info.config in r.stdout and (ROOT / info.config).is_file()
        assert all(knob in r.stdout for knob in info.knobs)
    for paper in ("2407.06182", "2407.21475", "2406.02230", "2403.14773"):
        assert paper in r.stdout
    r = vgen("generate", "--help")
    assert "[default: 25" in r.stdout and "METHOD.KEY=VALUE" in r.stdout and "vico.lr" in r.stdout
    usage = r.stdout.splitlines()[0]
    assert "PROMPT" in usage and "{" not in usage and "<str>" not in r.stdout


def test_7_models_lists_kind_and_native_size(tiny):
    from vgen.config import ModelConfig
    from vgen.models import load_components

    rows = {line.split()[0]: line.split()[1:3] for line in vgen("models").stdout.splitlines()[1:-1]}
    for name in ("tiny-random-unet3d", "tiny-random-motion", "tiny-random-unet2d"):
        c = tiny(name)
        assert rows[name] == [c.kind, f"{c.native_size[0]}x{c.native_size[1]}"]
    for name in ("toy", "toy-t2i"):
        c = load_components(ModelConfig(id=name), "cpu", "float32")
        assert rows[name] == [c.kind, f"{c.native_size[0]}x{c.native_size[1]}"]


# 8 -------------------------------------------------------------------------------------------------

def test_8_list_overrides_and_unused_sections(tmp_path):
    r = vgen("config", "show", "-m", "vico", "vico.words=cat,dog")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["vico"]["words"] == ["cat", "dog"]
    one_error(vgen("generate", "a cat", *TINY, "--out", tmp_path, "vico.lr=1e-2"), "vico.lr", "method vanilla", "--method vico")
    assert not list(tmp_path.glob("*.mp4"))


# 9 -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["vico", "zs2", "i4vgen", "streaming"])
def test_9_paper_presets_name_model_size_and_sampling(method):
    from vgen.config import build_job, config_sources

    path = ROOT / "configs" / f"{method}-paper.yaml"
    job = build_job(str(path), {"prompt": "a cat"})
    sources = config_sources(job)
    for key in ("model.id", "video.height", "video.width", "video.frames", "sampler.steps", "sampler.guidance",
                "sampler.scheduler"):
        assert sources[key] == str(path), key
    assert job.method == method and job.model.id.count("/") == 1  # a hub id
    if method == "i4vgen":
        assert job.i4vgen.reward == "imagereward" and sources["i4vgen.reward_model"] == str(path)
    assert (ROOT / "configs" / f"{method}-toy.yaml").is_file()


def test_9_configs_cite_what_the_repository_has():
    for path in (ROOT / "configs").rglob("*.yaml"):
        assert "SPEC.md" not in path.read_text(), path
