"""The README's quick start, run as written on the default model (with `--steps 8` added to each new
generation and `--frames 24` to the streaming one, for time): every command succeeds and every video is
a picture of its prompt, not noise (the toy detector finds the prompted colours).

The commands run in one process through `vgen.cli.main`, the function the console script calls, so torch
is imported once rather than once per line (tests/test_first_hour.py covers the console script itself).
"""

import glob
import re
import shlex
from pathlib import Path

import pytest

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
