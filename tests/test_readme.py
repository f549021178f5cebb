"""The README and docs say what the code does.

- The quick start runs as written on the default model (with `--steps 8` added to each new generation and
  `--frames 24` to the streaming one, for time): every command succeeds and every video is a picture of its
  prompt, not noise (the toy detector finds the prompted colours).
- `make demo` shows what it says: a clip the detector reads as right in colour, shape and motion, and ZS2
  steadier than per-frame sampling of the same image model on the same prompt.
- The paper-preset table says what the config files hold; every relative link in README.md and docs/ resolves,
  and every repository path they name exists.

Commands run in one process through `vgen.cli.main`, the function the console script calls, so torch is
imported once rather than once per line (tests/test_first_hour.py covers the console script itself).
"""

import glob
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).parents[1]
SMALL = ["--steps", "8"]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.startswith("vgen ")]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    from vgen.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    out, err = capsys.readouterr()
    return done.value.code, out, err


@pytest.mark.slow
def test_quick_start_runs_as_written_and_shows_the_prompts(tmp_path, monkeypatch, capsys):
    from vgen.toyworld import score_video
    from vgen.video import read_video

    monkeypatch.chdir(tmp_path)
    commands = quick_start_commands()
    methods = {m for line in commands for m in re.findall(r"--method (\w+)", line)}
    assert methods == {"vico", "zs2", "i4vgen", "streaming"}  # every method, on the default model
    made = {}
    for line in commands:
        argv = shlex.split(line)[1:]
        argv = [p for part in argv for p in (sorted(glob.glob(part)) if "*" in part else [part])]
        fresh = argv[0] == "generate" and "--config" not in argv
        if fresh:
            argv += SMALL + (["--frames", "24"] if "streaming" in argv else [])
        code, out, err = run(argv, capsys)
        assert code == 0, f"{line}: {err}"
        if argv[0] != "generate":
            continue
        mp4 = Path(out.splitlines()[0])
        video = read_video(mp4).frames
        if fresh:
            prompt = argv[1]
            score = score_video(video, prompt)
            found = [o.colour_ok for o in score.objects]
            assert all(found) if len(found) == 1 else any(found), f"{line}: no prompted colour in {mp4}"
            made[mp4.name] = video
        else:  # the re-run from a sidecar: the same frames as the first run
            assert (video == made[mp4.name]).all(), line
    assert len(made) == 5


def demo_commands() -> list[str]:
    """The vgen command lines of the Makefile's demo recipe, as the shell would split them."""
    recipe = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    return [line.strip().removeprefix("$(BIN)/vgen ") for line in recipe.splitlines()[1:] if "$(BIN)/vgen " in line]


def frame_change(video: np.ndarray) -> float:
    """Mean absolute change between consecutive frames, 0-1 (the ZS2 comparison's `frame change`)."""
    return float(np.abs(np.diff(video.astype(np.float64), axis=0)).mean() / 255)


@pytest.mark.slow
def test_make_demo_shows_a_clean_clip_and_zs2_steadier_than_per_frame(tmp_path, monkeypatch, capsys):
    from vgen.toyworld import score_video
    from vgen.video import read_video

    monkeypatch.chdir(tmp_path)
    commands = demo_commands()
    assert [c.split()[0] for c in commands] == ["generate", "generate", "generate", "eval"]
    for line in commands:
        code, out, err = run(shlex.split(line), capsys)
        assert code == 0, f"{line}: {err}"

    clip = read_video(tmp_path / "outputs/demo.mp4").frames
    score = score_video(clip, "a red circle moving right")
    (obj,) = score.objects
    assert obj.colour_ok and obj.shape_ok and obj.motion_ok and obj.drift == 0 and not score.extra_objects, score

    per_frame = read_video(tmp_path / "outputs/demo-per-frame.mp4").frames
    zs2 = read_video(tmp_path / "outputs/demo-zs2.mp4").frames
    for video in (per_frame, zs2):  # both draw the prompt; what differs is how steady it is
        (o,) = score_video(video, "a yellow diamond", judge_motion=False).objects
        assert o.present and o.colour_ok and o.shape_ok
    assert frame_change(zs2) < frame_change(per_frame) / 3, (frame_change(zs2), frame_change(per_frame))


SCHEDULER_NAMES = {"ddim": "DDIM", "dpm++": "DPM-Solver++", "sde-dpm++": "SDE DPM-Solver++", "ddpm": "DDPM"}


def paper_preset_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(configs/[\w-]+-paper\.yaml)` \|(.*)\|$", text, re.M)
    return {path: [cell.strip() for cell in cells.split("|")] for path, cells in rows}


def test_paper_preset_table_says_what_the_config_files_hold():
    rows = paper_preset_rows()
    assert set(rows) == {str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*-paper.yaml")}
    for path, (model, size, sampling, _method) in rows.items():
        cfg = yaml.safe_load((ROOT / path).read_text())
        ids = re.findall(r"`([^`]+)`", model)
        assert ids == [cfg["model"]["id"]] + ([cfg["model"]["motion_adapter"]] if cfg["model"].get("motion_adapter") else []), path
        v = cfg["video"]
        assert size == f"{v['frames']} x {v['height']}x{v['width']}", path
        s = cfg["sampler"]
        assert sampling.startswith(f"{SCHEDULER_NAMES[s['scheduler']]} {s['steps']},"), (path, sampling)
        assert f"guidance {s['guidance']:g}" in sampling, (path, sampling)
        assert ("eta" in sampling) == ("eta" in s), (path, sampling)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lowercase, punctuation dropped (but - and _), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                if anchor not in {github_anchor(h.replace("`", "")) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


# a path of another repository that docs cite, in a folder this one has too (github xiefan-guo/i4vgen)
OTHER_REPOSITORIES = {"scripts/animate_animatediff.py"}


def test_every_repository_path_the_readme_and_docs_name_exists():
    """`configs/...`, `scripts/...`, `vgen/...`, `tests/...`, `docs/...` in code spans and blocks exist when their
    folder does (files that move must be re-cited), and nothing outside the repository (`../...`) is cited."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        text = page.read_text()
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
        inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
        for code in blocks + inline:
            for token in code.split():
                path = token.strip("\"'(").rstrip(".,:;)").split("#")[0].split("::")[0]
                if path.startswith("../"):  # outside the repository: a reader of a clone does not have it
                    missing.append(f"{page.name}: {path}")
                elif (re.match(r"(configs|scripts|vgen|tests|docs)/", path) and not re.search(r"[<>*{}$]", path)
                      and path not in OTHER_REPOSITORIES):
                    # a path whose folder this repository lacks is another repository's (diffusers', AnimateDiff's)
                    if (ROOT / path.rstrip("/")).parent.is_dir() and not (ROOT / path).exists():
                        missing.append(f"{page.name}: {path}")
    assert not missing, missing
