"""Measured peak memory of vanilla sampling against vgen.sizes.estimate_peak (the table in docs/sizes.md).

Each case runs in a fresh process: the model is built, one 1-frame step warms the libraries up, then the
peak-RSS mark is reset (Linux /proc/self/clear_refs 5) and one sampling step at the case's size runs through
the vanilla runner (encode, denoise, decode, uint8). Measured = VmHWM - RSS before the step: what the run adds
to the resident model, which the estimate's run part (all but the weights) predicts. glibc keeps freed memory
unless told otherwise, so the children run with MALLOC_MMAP_THRESHOLD_ fixed at 128 KiB: every large tensor
is its own mapping, returned on free, and the peak is the peak of live tensors.

    python scripts/measure_peak_memory.py                # tiny models (a few minutes on 2 cores)
    python scripts/measure_peak_memory.py --set bench    # zeroscope-quarter at 320x512 (longer)
    python scripts/measure_peak_memory.py --set all
    python scripts/measure_peak_memory.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = [  # (model, frames, height, width, guidance)
    ("tiny-random-unet3d", 8, 32, 32, 7.5),
    ("tiny-random-unet3d", 64, 32, 32, 7.5),
    ("tiny-random-unet3d", 256, 32, 32, 7.5),
    ("tiny-random-unet3d", 256, 32, 32, 1.0),
    ("tiny-random-unet3d", 16, 128, 128, 7.5),
    ("tiny-random-unet3d", 64, 64, 64, 7.5),
    ("tiny-random-motion", 32, 64, 64, 7.5),
    ("tiny-random-unet2d", 128, 64, 64, 7.5),
]
BENCH = [
    ("zeroscope-quarter", 8, 320, 512, 7.5),
    ("zeroscope-quarter", 24, 320, 512, 7.5),
]


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(case: dict) -> dict:
    import torch

    from vgen.config import ModelConfig, build_job
    from vgen.core.sampler import resolve_size
    from vgen.jobs import RunContext
    from vgen.methods.vanilla.runner import run
    from vgen.models import load_components

    torch.set_num_threads(int(os.environ.get("MEASURE_THREADS", "2")))
    components = load_components(ModelConfig(id=case["model"]), "cpu", "float32")

    def job(frames, height, width):
        return build_job(flags={"prompt": "a red circle moving left", "model.id": case["model"], "video.frames": frames,
                                "video.height": height, "video.width": width, "sampler.steps": 1,
                                "sampler.guidance": case["guidance"]}, presets=False)

    def sample(j):
        h, w = resolve_size(components, j.video.height, j.video.width)
        ctx = RunContext(generator=torch.Generator("cpu").manual_seed(0), height=h, width=w,
                         output_stem=Path("unused"), progress=False)
        return run(j, components, ctx)

    sample(job(1, None, None))  # warm-up: thread pools, kernels' caches
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    t0 = time.perf_counter()
    sample(job(case["frames"], case["height"], case["width"]))
    return {"measured": _status("VmHWM") - before, "seconds": time.perf_counter() - t0, "resident": before}


def measure(case: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", HF_HUB_OFFLINE="1", VGEN_PROGRESS="0",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def row_line(row: dict) -> str:
    """One table row: the measurement beside the estimate (recomputed, so --from shows the current formula)."""
    from vgen.sizes import BUILTIN_SHAPES, estimate_peak, human

    est = estimate_peak(BUILTIN_SHAPES[row["model"]], row["frames"], row["height"], row["width"], guided=row["guidance"] > 1)
    run_part = est.total - est.weights
    where = max(("unet", est.unet), ("decode", est.decode), ("frames", est.frames), key=lambda kv: kv[1])[0]
    return (f"{row['model']:<20}{row['frames']:>7}{str(row['height']) + 'x' + str(row['width']):>10}"
            f"{'yes' if row['guidance'] > 1 else 'no':>5}{human(row['measured']):>12}{human(run_part):>12}"
            f"{run_part / row['measured']:>9.2f}  {where}")


HEADER = (f"{'model':<20}{'frames':>7}{'size':>10}{'cfg':>5}{'measured':>12}{'estimate':>12}{'est/meas':>9}  peak in"
          "   (run part: all but the weights; 1 step, float32, CPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("tiny", "bench", "all"), default="tiny",
                        help="tiny models, the benchmark-size model (zeroscope-quarter), or both")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--from", dest="source", help="print the table of rows measured before (a --json file)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(HEADER)
    if args.source:
        for row in json.loads(Path(args.source).read_text()):
            print(row_line(row))
        return
    rows = []
    cases = {"tiny": TINY, "bench": BENCH, "all": TINY + BENCH}[args.set]
    for model, frames, height, width, guidance in cases:
        case = {"model": model, "frames": frames, "height": height, "width": width, "guidance": guidance}
        got = measure(case)
        rows.append({**case, "measured": got["measured"], "seconds": round(got["seconds"], 2)})
        print(row_line(rows[-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
