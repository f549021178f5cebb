"""Make docs/toy_example.gif: four prompts side by side from the shipped `toy` model (seed 0, 20 DDIM steps).

    .venv/bin/python scripts/readme_example.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PROMPTS = ["a green circle moving up", "a red square moving left", "a yellow triangle",
           "a blue diamond and a purple circle"]


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vgen.config import build_job
    from vgen.jobs import ModelCache, run_job
    from vgen.video import Video, read_video, write_gif

    out = Path("outputs/readme_example")
    cache = ModelCache()
    clips = []
    for prompt in PROMPTS:
        job = build_job(flags={"prompt": prompt, "video.frames": 8, "sampler.steps": 20, "sampler.guidance": 5.0,
                               "output.dir": str(out), "output.overwrite": True})
        clips.append(read_video(run_job(job, cache, progress=False).path).frames)
    pad = np.full((8, 64, 4, 3), 255, np.uint8)
    row = np.concatenate([np.concatenate([c, pad], axis=2) for c in clips], axis=2)[:, :, :-4]
    big = row.repeat(2, axis=1).repeat(2, axis=2)  # nearest 2x, so 64-px frames are visible
    path = write_gif(Video(big, fps=4), Path("docs/toy_example.gif"))
    print(path, " | ".join(PROMPTS))


if __name__ == "__main__":
    main()
