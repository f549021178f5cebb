"""Evaluate the shipped toy models (or any folder) with the detector and print a table.

    python scripts/eval_toy.py                      # toy + toy-t2i
    python scripts/eval_toy.py --model DIR --image-model none --n-single 120
"""

from __future__ import annotations

import argparse
import json

import torch

from vgen.toyworld.evaluate import evaluate


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--image-model", default="toy-t2i", help="'none' skips the t2i row")
    ap.add_argument("--n-single", type=int, default=48)
    ap.add_argument("--n-multi", type=int, default=24)
    ap.add_argument("--n-image", type=int, default=48)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write per-prompt records here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    table = evaluate(a.model, None if a.image_model == "none" else a.image_model, n_single=a.n_single,
                     n_multi=a.n_multi, n_image=a.n_image, seed=a.seed, frames=a.frames, steps=a.steps,
                     guidance=a.guidance, progress=True)
    print(table.render())
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": table.rows, "records": table.records}, f, indent=1)


if __name__ == "__main__":
    main()
