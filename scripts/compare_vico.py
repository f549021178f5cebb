"""Does Vico make multi-object prompts come true? Base vs Vico all-objects-present rate on the toy world.

    .venv/bin/python scripts/compare_vico.py [--model toy] [--n 100] [--offset K] [--objects 2 3] [--steps 20]
        [--frames 8] [--scheduler ddim] [--variant NAME=KEY=VALUE,KEY=VALUE ...] [--json out.json] [--resume]

On toy-wan (make eval-vico-wan): --model <toy-wan folder> --frames 17 --scheduler model (its UniPC flow).

Held-out 2- and 3-object compositions (vgen.toyworld.eval_prompts) are generated with the vanilla runner
and with Vico under each variant, from the same seed per prompt, and scored by the exact toy-world detector
(score_video): all-present rate (every prompted object detected) and fraction of objects present.
Variants default to: vico (vico.lr=1e-2, the toy's setting, with the public code's defaults) and vico-earlier
(the same lr with vgen's choices before issue 31: the other product order, no mid block, the fraction
schedule); key tokens are automatic (the public code's rule: nouns, verbs, left/right/top/bottom) unless a
variant sets vico.select. With --json and --resume, finished prompts are read back and skipped.
--offset K skips the first K prompts of each object count's sequence (the sequence does not depend on --n):
choose settings on --offset 0, report on prompts past the ones they were chosen on (docs/vico.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_VARIANTS = ["vico-earlier=vico.lr=1e-2,vico.order=sequential,vico.units=outer,vico.schedule=fraction",
                    "vico=vico.lr=1e-2"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, keys = text.partition("=")
    if not name or not keys:
        raise SystemExit(f"compare_vico: --variant '{text}' is not NAME=KEY=VALUE[,KEY=VALUE]")
    return name, [k for k in keys.split(",") if k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--n", type=int, default=100, help="prompts per object count")
    ap.add_argument("--offset", type=int, default=0, help="skip each sequence's first prompts (tuning ones)")
    ap.add_argument("--objects", type=int, nargs="*", default=[2, 3])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--scheduler", default="ddim", help="sampler.scheduler (toy-wan: model, its UniPC flow)")
    ap.add_argument("--draws", type=int, default=1000, help="paired bootstrap draws for the 95%% intervals")
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
    if args.offset < 0:
        ap.error("--offset must be >= 0")
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
                               "sampler.scheduler": args.scheduler, "video.frames": args.frames,
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
               "seconds": seconds, "extra_objects": list(score.extra_objects),
               "objects": [{k: o.to_dict()[k] for k in ("colour", "shape", "present", "presence", "colour_ok",
                                                         "shape_ok", "detected_colour", "detected_shape")}
                           for o in score.objects]}
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

    prompts = {n_obj: eval_prompts(n_obj, args.offset + args.n, seed=args.seed)[args.offset:] for n_obj in args.objects}
    for k in range(args.n):  # object counts interleaved: a partial run covers each of them
        for n_obj in args.objects:
            prompt, seed = prompts[n_obj][k], args.seed + args.offset + k
            row = done.get((prompt, seed)) or {"prompt": prompt, "objects": n_obj, "seed": seed}
            for name, (method, overrides) in runs.items():
                if name not in row:
                    row[name] = generate(prompt, seed, method, overrides)
            records.append(row)
            save()
            print(f"[{n_obj} obj {k + 1}/{args.n}] " + " ".join(f"{name} {row[name]['all_present']!s:>5}" for name in runs)
                  + f"  {prompt}", flush=True)

    from vgen.eval.stats import sign_test_p

    print(f"\nmodel={args.model} {args.scheduler} {args.steps} steps, {args.frames} frames, guidance {args.guidance}; "
          f"prompts {args.offset}..{args.offset + args.n - 1} of each sequence (--seed {args.seed}); "
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
    print(f"vs base, all present, difference in points with its 95% interval (paired bootstrap over prompts, "
          f"{args.draws} draws; an interval holding 0 is within what the seeds alone could do):")
    for name in names[1:]:
        cells = []
        for n_obj in [*args.objects, None]:
            rows = [r for r in records if n_obj is None or r["objects"] == n_obj]
            v, lo, hi = paired_interval([r[name]["all_present"] for r in rows], [r["base"]["all_present"] for r in rows],
                                        args.draws)
            cells.append(f"{'all' if n_obj is None else f'{n_obj} obj'} {v:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        print(f"  {name}: " + "; ".join(cells))
    failure_report(records, names)


def paired_interval(mine: list, base: list, draws: int = 1000, seed: int = 0, level: float = 0.95) -> tuple:
    """(difference of means in points, low, high): the interval from a paired bootstrap over prompts (each draw
    resamples prompt indices with replacement and takes both runs of those prompts)."""
    import numpy as np

    a, b = np.asarray(mine, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if not len(a):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (draws, len(a)))
    diffs = 100 * (a[idx].mean(1) - b[idx].mean(1))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return float(100 * (a.mean() - b.mean())), float(low), float(high)


def noun_labels(objects: list[dict]) -> list[str]:
    """Key-token label of each prompted object's noun (its shape word; "square#2" for the second square), as
    vgen.methods.vico.keys labels automatic key tokens."""
    seen: dict[str, int] = {}
    labels = []
    for o in objects:
        seen[o["shape"]] = seen.get(o["shape"], 0) + 1
        labels.append(o["shape"] if seen[o["shape"]] == 1 else f"{o['shape']}#{seen[o['shape']]}")
    return labels


def failure_report(records: list[dict], names: list[str]) -> None:
    """What the base model's misses are, and whether Vico's weakest key token (step 0) names the missing object."""
    rows = [r for r in records if "objects" in r["base"] and not r["base"]["all_present"]]
    if not rows:
        return
    missing = [(r, k) for r in rows for k, o in enumerate(r["base"]["objects"]) if not o["present"]]
    swapped = sum(bool(r["base"]["extra_objects"]) for r, _ in missing)
    print(f"\nbase misses: {len(rows)} prompts, {len(missing)} objects absent; a colour not in the prompt was drawn "
          f"instead in {swapped} of them (extra_objects)")
    for name in names[1:]:
        hits = weakest_verb = total = fixed = 0
        for r, k in missing:
            info = r[name].get("info") or {}
            before = info.get("scores_before") or {}
            if not before:
                continue
            total += 1
            weakest = min(before, key=lambda t: before[t] if before[t] is not None else math.inf)
            hits += weakest == noun_labels(r["base"]["objects"])[k]
            weakest_verb += weakest.split("#")[0] in ("moving", "staying")
            fixed += bool(r[name].get("objects") and r[name]["objects"][k]["present"])
        print(f"{name}: of {total} absent objects, the weakest key token at step 0 was that object's noun in {hits}, "
              f"a motion verb in {weakest_verb}; Vico's video has the object in {fixed}")


if __name__ == "__main__":
    main()
