"""One video split over N processes (context parallelism, `vgen generate --nproc N`) against one process.

    .venv/bin/python scripts/bench_context_parallel.py [--model tiny-random-wan] [--nproc 1 2] [--frames 9]
        [--height 32] [--width 32] [--steps 10] [--device cpu] [--threads 1] [--out outputs/bench_cp]

Each run is the real console script into a fresh folder; "wall" includes what a user waits for (interpreter and
torch start-up, the launcher's rendezvous, the model load on every rank), "gen" is the sidecar's generate_s on
rank 0 (prompt encoding, the denoising loop, the decode: the text encoder and the VAE run on every rank, only the
transformer is split). Speed-up = the 1-process time / the N-process time. The frames of every run are compared
with the 1-process run (max grey-level difference). On a CPU, the processes are gloo peers on the same cores:
the numbers say what the split costs there and are NOT representative of GPUs (NCCL over NVLink, one GPU each).
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
PROMPT = "a red circle moving left"


def run_one(args, nproc: int, folder: Path) -> dict:
    shutil.rmtree(folder, ignore_errors=True)
    mp4 = folder / "video.mp4"
    cmd = [sys.executable, "-m", "vgen.cli", "generate", PROMPT, "--model", args.model,
           "--frames", str(args.frames), "--height", str(args.height), "--width", str(args.width),
           "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype, "--out", str(mp4),
           f"runtime.context_parallel={args.kind}"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "VGEN_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"nproc": nproc, "error": last[:200]}
    side = json.loads(mp4.with_suffix(".json").read_text())
    return {"nproc": nproc, "wall_s": wall, "gen_s": side["timings"]["generate_s"], "load_s": side["timings"]["load_s"],
            "mp4": str(mp4), "split": side.get("context_parallel", {}).get("kind", "-")}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random-wan")
    ap.add_argument("--nproc", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--kind", default="ulysses", help="runtime.context_parallel for the split runs")
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1, help="threads per process (OMP_NUM_THREADS)")
    ap.add_argument("--out", default="outputs/bench_cp")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from vgen.video import read_video

    out = Path(args.out)
    print(f"{args.model}, {args.frames} frames {args.height}x{args.width}, {args.steps} steps, {args.device} "
          f"{args.dtype}, {args.threads} thread(s) per process, split: {args.kind}", flush=True)
    rows = []
    for n in sorted(set([1] + list(args.nproc))):
        rows.append(run_one(args, n, out / f"nproc{n}"))
        print(f"  {n} process(es): " + (rows[-1].get("error") or f"wall {rows[-1]['wall_s']:.1f}s, "
              f"gen {rows[-1]['gen_s']:.2f}s"), flush=True)
    base = rows[0]
    if "error" in base:
        return rows
    ref = read_video(base["mp4"]).frames.astype(int)
    print(f"\n{'processes':>9} {'wall s':>8} {'gen s':>8} {'speed-up (gen)':>15} {'max diff':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['nproc']:>9} error: {r['error']}")
            continue
        r["speedup_gen"] = base["gen_s"] / r["gen_s"]
        r["max_diff"] = int(abs(read_video(r["mp4"]).frames.astype(int) - ref).max())
        print(f"{r['nproc']:>9} {r['wall_s']:>8.1f} {r['gen_s']:>8.2f} {r['speedup_gen']:>14.2f}x {r['max_diff']:>9}")
    if args.device == "cpu":
        print("CPU processes over gloo share this machine's cores: not representative of GPUs (NCCL, one GPU each).")
    return rows


if __name__ == "__main__":
    main()
