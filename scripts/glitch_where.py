"""Where do single-frame object jumps happen in long toy videos: in the first chunk (the model alone), at seams, or
inside later chunks (where the memories act)?

    .venv/bin/python scripts/glitch_where.py outputs/seam30/videos [--factor 3]

Reads every mp4 + sidecar of a scripts/compare_streaming.py --out folder (names "<row>-<mode>"), detects the
prompted objects (vgen.eval.seams.toy_detections), and per frame pair takes one object's largest matched move. A
pair is a glitch when that move is over --factor x the video's median step (the seam measure's `jump.over`).
Per mode it prints the share of pairs that are glitches among: first-chunk pairs, seam pairs, pairs inside later
chunks (a vanilla clip is all "first chunk"). Pooled over the videos; the counts are printed beside the shares.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pair_kinds(n: int, sidecar: dict) -> list[str]:
    """'first' | 'seam' | 'later' for every pair (i, i+1) of an n-frame video."""
    from vgen.eval.seams import layout_from_sidecar

    layout = layout_from_sidecar(sidecar)
    if layout is None:
        return ["first"] * (n - 1)
    bounds = set(layout.boundaries(n))
    return ["seam" if i + 1 in bounds else "first" if i + 1 < layout.chunk else "later" for i in range(n - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--factor", type=float, default=3.0)
    args = ap.parse_args()

    import numpy as np

    from vgen.eval.seams import FLOORS, matched_distances, object_steps, toy_detections
    from vgen.toyworld import detect_video, parse_prompt
    from vgen.video import read_video

    counts: dict[str, dict[str, list[int]]] = {}
    for side_path in sorted(Path(args.folder).glob("*.json")):
        sidecar = json.loads(side_path.read_text())
        mode = side_path.stem.split("-", 1)[1]
        frames = read_video(side_path.with_suffix(".mp4")).frames
        objects = toy_detections(detect_video(frames), {s.colour for s in parse_prompt(sidecar["prompt"])})
        steps = object_steps(objects)
        if steps is None or not np.isfinite(steps).any():
            continue
        base = max(float(np.nanmedian(steps)), FLOORS["object"])
        kinds = pair_kinds(len(frames), sidecar)
        for i, kind in enumerate(kinds):
            d = matched_distances(objects[i], objects[i + 1])
            if not d.size:
                continue
            hit = counts.setdefault(mode, {}).setdefault(kind, [0, 0])
            hit[0] += int(d.max() > args.factor * base)
            hit[1] += 1
    print(f"pairs whose largest object move is over {args.factor:g}x the video's median step (glitches / pairs)")
    print(f"{'mode':<18} {'first chunk':>18} {'seams':>18} {'later chunks':>18}")
    for mode, by_kind in sorted(counts.items()):
        cells = []
        for kind in ("first", "seam", "later"):
            g, n = by_kind.get(kind, [0, 0])
            cells.append(f"{g / n:6.1%} ({g:>3}/{n:>4})" if n else f"{'-':>18}")
        print(f"{mode:<18} " + " ".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
