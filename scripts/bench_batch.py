"""Jobs per minute of one toy batch: 2 processes x 1 thread (`vgen batch --nproc 2`) vs 1 process x 2 threads.

    .venv/bin/python scripts/bench_batch.py [--jobs 8] [--frames 8] [--steps 10] [--out outputs/bench_batch]

Both runs are the real console script on the same batch file (the toy model, one prompt x seed per job), each into
a fresh folder, so the wall clock includes what a user waits for: interpreter and torch start-up, the launcher's
rendezvous, one model load per process, every job, the summary. "gen" is the sum of the jobs' own total_s from
their sidecars (work inside the jobs only). Jobs per minute = jobs / wall minutes. On a CPU the two runs' frames
differ in the last bits (thread count changes the reduction order), so only the time is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "a red circle moving left",
    "a blue square moving up",
    "a green triangle moving right",
    "a yellow diamond moving down",
    "a purple circle staying still",
    "an orange square moving left",
    "a red triangle moving up and a blue circle moving down",
    "a green square moving right and a yellow circle moving left",
]


def write_batch(folder: Path, jobs: int, frames: int, steps: int) -> Path:
    lines = [
        "defaults:",
        "  model: {id: toy}",
        f"  sampler: {{steps: {steps}}}",
        f"  video: {{frames: {frames}}}",
        "jobs:",
    ]
    for i in range(jobs):
        lines.append(f"  - {{prompt: {PROMPTS[i % len(PROMPTS)]}, seed: {i // len(PROMPTS)}}}")
    path = folder / "batch.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(batch: Path, out: Path, threads: int, nproc: int) -> tuple[float, float]:
    """(wall seconds, sum of the jobs' sidecar total_s)."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "VGEN_PROGRESS": "0",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "vgen.cli", "batch", str(batch), "--out", str(out)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"bench_batch: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    gen = sum(json.loads(p.read_text())["timings"]["total_s"] for p in out.glob("*.json"))
    return wall, gen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_batch")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    batch = write_batch(args.out, args.jobs, args.frames, args.steps)
    print(f"vgen batch: {args.jobs} toy jobs ({args.frames} frames, {args.steps} steps, vanilla), CPU, "
          f"{os.cpu_count()} cores visible; wall = the whole command (start-up, model loads, jobs)")
    print(f"{'layout':<26} {'wall s':>8} {'jobs/min':>9} {'gen s (sum)':>12}")
    for label, threads, nproc in [("2 processes x 1 thread", 1, 2), ("1 process x 2 threads", 2, 1)]:
        wall, gen = run(batch, args.out / label.replace(" ", "_"), threads, nproc)
        print(f"{label:<26} {wall:>8.1f} {args.jobs / (wall / 60):>9.2f} {gen:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
