"""Where does I4VGen lose what its anchor had? The toy detector on each stage of the same runs.

    .venv/bin/python scripts/probe_i4vgen_stages.py [--prompts 24] [--objects 2 3] [--seed 0] [key=value ...]

For held-out prompts (vgen.toyworld.eval_prompts, prompt i with seed --seed + i), runs the i4vgen runner as
`vgen generate` would on the toy (its carried settings, plus any key=value overrides) and scores, with the exact
toy detector, three stages of each run: the chosen anchor image, the NI-VSDS video (decoded before regeneration)
and the final video. Per stage: every prompted object present, and prompted objects present in the right colour
and shape (pooled). A stage that keeps what the one before had scores the same; where the rate falls is where
the method loses it. Vanilla on the same prompts and seeds is the reference row.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--objects", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="key=value for every I4VGen job")
    args = ap.parse_args()

    import torch

    import vgen.methods.i4vgen.runner as i4
    from vgen.config import build_job
    from vgen.core.sampler import decode_latents, resolve_size, to_uint8
    from vgen.jobs import ModelCache, RunContext
    from vgen.methods import load_runner
    from vgen.toyworld import eval_prompts, score_video

    per = -(-args.prompts // len(args.objects))
    prompts = [p for k in args.objects for p in eval_prompts(k, per, seed=args.seed)][: args.prompts]
    cache = ModelCache()
    captured: dict = {}
    original_vsds, original_regen = i4.ni_vsds, i4.regenerate

    def vsds(components, video, *a, **kw):
        captured["anchor"] = video[:, :, :1].clone()
        out = original_vsds(components, video, *a, **kw)
        captured["vsds"] = out.clone()
        return out

    i4.ni_vsds = vsds
    rows = {"vanilla": [], "anchor": [], "NI-VSDS video": [], "I4VGen video": []}
    for i, prompt in enumerate(prompts):
        for method in ("vanilla", "i4vgen"):
            job = build_job(flags={"prompt": prompt, "method": method, "model.id": "toy", "seed": args.seed + i,
                                   "i4vgen.save_candidates": False},
                            overrides=args.overrides if method == "i4vgen" else [])
            components = cache.get(job)
            h, w = resolve_size(components, job.video.height, job.video.width)
            ctx = RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=h, width=w,
                             output_stem=Path("/tmp/probe_i4vgen"), progress=False,
                             load_model=lambda cfg, job=job: cache.get(job, cfg))
            video = load_runner(method)(job, components, ctx)
            if method == "vanilla":
                rows["vanilla"].append(score_video(video.frames, prompt))
                continue
            for stage, key in (("anchor", "anchor"), ("NI-VSDS video", "vsds")):
                frames = to_uint8(decode_latents(components, captured[key].to(components.dtype))[0])
                rows[stage].append(score_video(frames, prompt))
            rows["I4VGen video"].append(score_video(video.frames, prompt))
        print(f"[{i + 1}/{len(prompts)}] {prompt}", flush=True)

    i4.ni_vsds = original_vsds
    print(f"\n{len(prompts)} prompts ({', '.join(map(str, args.objects))} objects), seeds {args.seed}..{args.seed + len(prompts) - 1}, "
          f"toy settings{' + ' + ' '.join(args.overrides) if args.overrides else ''}")
    print(f"{'stage':<16} {'all present':>11} {'obj c+s':>8} {'extra/video':>11} {'motion ok':>9} {'along px':>8}")
    for stage, scores in rows.items():
        objs = [o for s in scores for o in s.objects]
        present = sum(s.all_present for s in scores) / len(scores)
        cs = sum(o.present and o.colour_ok and o.shape_ok for o in objs) / len(objs)
        extra = sum(len(s.extra_objects) for s in scores) / len(scores)
        moving = [o for o in objs if o.spec.motion not in (None, "still")]
        ok = sum(bool(o.motion_ok) for o in moving) / len(moving) if moving and stage != "anchor" else float("nan")
        along = [a for o in moving if o.present and (a := along_prompt(o)) is not None]
        along = sum(along) / len(along) if along and stage != "anchor" else float("nan")
        print(f"{stage:<16} {present:>11.1%} {cs:>8.1%} {extra:>11.2f} {ok:>9.1%} {along:>8.1f}")
    print("anchor = the chosen candidate image (one frame); NI-VSDS video = the animated anchor before regeneration;\n"
          "motion ok: prompted moving objects moving the prompted way; along px: their net move from the first to the "
          "last frame they are seen in, along the prompted direction (present ones)")


def along_prompt(score) -> float | None:
    """Net displacement of a detected object along its prompted direction (px), first to last sighting."""
    import numpy as np

    from vgen.toyworld.scene import MOTION_VECTORS

    points = np.array(score.trajectory, dtype=np.float64)
    points = points[~np.isnan(points).any(axis=1)]
    if len(points) < 2:
        return None
    return float((points[-1] - points[0]) @ np.array(MOTION_VECTORS[score.spec.motion], dtype=np.float64))


if __name__ == "__main__":
    main()
