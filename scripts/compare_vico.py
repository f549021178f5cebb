"""Does Vico make multi-object prompts come true? Base vs Vico all-objects-present rate on the toy world.

    .venv/bin/python scripts/compare_vico.py [--model toy] [--n 100] [--objects 2 3] [--steps 20]
        [--variant NAME=KEY=VALUE,KEY=VALUE ...] [--json out.json] [--resume]

Held-out 2- and 3-object compositions (vgen.toyworld.eval_prompts) are generated with the vanilla runner
and with Vico under each variant, from the same seed per prompt, and scored by the exact toy-world detector
(score_video): all-present rate (every prompted object detected) and fraction of objects present.
Variants default to: vico (vico.lr=1e-2, the toy's setting) and vico-paper-lr (vico.lr=1e-4, the public
code's); key tokens are automatic (the public code's rule: nouns, verbs, left/right/top/bottom) unless a
variant sets vico.select. With --json and --resume, finished prompts are read back and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_VARIANTS = ["vico=vico.lr=1e-2", "vico-paper-lr=vico.lr=1e-4"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, keys = text.partition("=")
    if not name or not keys:
        raise SystemExit(f"compare_vico: --variant '{text}' is not NAME=KEY=VALUE[,KEY=VALUE]")
    return name, [k for k in keys.split(",") if k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--n", type=int, default=100, help="prompts per object count")
    ap.add_argument("--objects", type=int, nargs="*", default=[2, 3])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", action="append", default=None, help="NAME=KEY=VALUE,KEY=VALUE (repeatable)")
    ap.add_argument("--json", default=None, help="write per-prompt records here")
    ap.add_argument("--resume", action="store_true", help="skip prompts already in --json")
    args = ap.parse_args()
    if args.model == "toy" and not (ROOT / "vgen" / "assets" / "toy").is_dir():
        sys.exit("compare_vico: the toy model is missing (vgen/assets/toy); train it first (scripts/train_toy.py) "
                 "or pass --model <folder>")
    variants = dict(parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS))

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from vgen.config import build_job
    from vgen.core.sampler import resolve_size
    from vgen.jobs import ModelCache, RunContext
    from vgen.methods import load_runner
    from vgen.toyworld import eval_prompts, score_video

    done: dict[tuple, dict] = {}
    if args.resume and args.json and Path(args.json).is_file():
        for row in json.loads(Path(args.json).read_text())["records"]:
            done[(row["prompt"], row["seed"])] = row
    cache = ModelCache()
    runs = {"base": ("vanilla", [])} | {name: ("vico", keys) for name, keys in variants.items()}
    records = []

    def generate(prompt: str, seed: int, method: str, overrides: list[str]) -> dict:
        job = build_job(flags={"prompt": prompt, "method": method, "model.id": args.model, "seed": seed,
                               "sampler.steps": args.steps, "sampler.guidance": args.guidance,
                               "sampler.scheduler": "ddim", "video.frames": args.frames,
                               "runtime.device": args.device}, overrides=overrides)
        components = cache.get(job)
        h, w = resolve_size(components, None, None)
        ctx = RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=h, width=w,
                         output_stem=Path("unused"), progress=False)
        t0 = time.perf_counter()
        video = load_runner(method)(job, components, ctx)
        seconds = time.perf_counter() - t0
        score = score_video(video.frames, prompt)
        out = {"all_present": bool(score.all_present), "fraction_present": float(score.fraction_present),
               "seconds": seconds}
        if method == "vico":
            info = video.metadata.get("vico", {})
            out["info"] = {k: info.get(k) for k in ("key_tokens", "scores_before", "scores_after", "weakest", "updates")}
        return out

    def save() -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(args.json).with_suffix(".tmp")
            tmp.write_text(json.dumps({"settings": vars(args) | {"variants": variants}, "records": records}, indent=1))
            tmp.replace(args.json)

    prompts = {n_obj: eval_prompts(n_obj, args.n, seed=args.seed) for n_obj in args.objects}
    for k in range(args.n):  # object counts interleaved: a partial run covers each of them
        for n_obj in args.objects:
            prompt, seed = prompts[n_obj][k], args.seed + k
            row = done.get((prompt, seed)) or {"prompt": prompt, "objects": n_obj, "seed": seed}
            for name, (method, overrides) in runs.items():
                if name not in row:
                    row[name] = generate(prompt, seed, method, overrides)
            records.append(row)
            save()
            print(f"[{n_obj} obj {k + 1}/{args.n}] " + " ".join(f"{name} {row[name]['all_present']!s:>5}" for name in runs)
                  + f"  {prompt}", flush=True)

    from vgen.eval.stats import sign_test_p

    print(f"\nmodel={args.model} DDIM {args.steps} steps, {args.frames} frames, guidance {args.guidance}; "
          f"same seed per prompt; variants: " + "; ".join(f"{n}: {' '.join(o)}" for n, o in variants.items()))
    names = list(runs)
    print("| objects | n | " + " | ".join(f"all present: {n}" for n in names) + " | "
          + " | ".join(f"objects present: {n}" for n in names) + " | " + " | ".join(f"s/video: {n}" for n in names) + " |")
    print("|" + "---|" * (2 + 3 * len(names)))
    for n_obj in args.objects:
        rows = [r for r in records if r["objects"] == n_obj]
        allp = [np.mean([r[n]["all_present"] for r in rows]) for n in names]
        frac = [np.mean([r[n]["fraction_present"] for r in rows]) for n in names]
        secs = [np.mean([r[n]["seconds"] for r in rows]) for n in names]
        print(f"| {n_obj} | {len(rows)} | " + " | ".join(f"{v:.1%}" for v in allp) + " | "
              + " | ".join(f"{v:.1%}" for v in frac) + " | " + " | ".join(f"{v:.2f}" for v in secs) + " |")
    for name in names[1:]:
        wins = sum(r[name]["all_present"] and not r["base"]["all_present"] for r in records)
        losses = sum(r["base"]["all_present"] and not r[name]["all_present"] for r in records)
        moved = [r[name]["info"]["weakest"].get("moved") for r in records if r[name].get("info", {}).get("weakest")]
        print(f"{name}: all-present gained on {wins} prompts, lost on {losses} (sign test p {sign_test_p(wins, losses):.2g}); "
              f"weakest key token moved in {sum(bool(m) for m in moved)}/{len(moved)} runs")


if __name__ == "__main__":
    main()
