"""Does I4VGen make prompts come true, and what motion does it cost? Vanilla vs I4VGen on the toy world.

    .venv/bin/python scripts/compare_i4vgen.py [--model toy] [--prompts 102] [--objects 1 2 3] [--steps 20]
        [--frames 8] [--guidance 5] [--variant "i4vgen.vsds_guidance=1" --variant "i4vgen.t_regen=0.78 ..."]
        [--out runs/compare_i4vgen] [--threads 1] [--shard I/N] [--report] [--json out.json] [key=value ...]

On a Wan model (toy-wan): --model <folder> --frames 17 --scheduler auto (the model's own UniPC flow scheduler;
DDIM does not run on Wan), as `make eval-i4vgen-wan` runs it. The oracle variants need a UNet toy (its VAE).

Resumable: every finished (prompt, method) is appended to <out>/records.jsonl; a re-run with the same settings
skips those and only runs the rest (other settings: a clear error, pick another --out). --shard I/N runs only
prompts i with i % N == I, into <out>/records.shardIofN.jsonl, so N processes (one per core) share one --out;
every process, and --report, reads all the record files. Prompts run interleaved
over the object counts, so a partial run is still balanced; the table is printed from whatever is done.

--prompts prompts in all, split evenly over --objects: held-out compositions and single objects from
vgen.toyworld.eval_prompts (deterministic for --seed; --offset K skips the sequence's first K, so settings tuned
on one run can be checked on prompts they were not tuned on); prompt i gets seed --seed + i under every method. Each
prompt is sampled by the vanilla runner and the i4vgen runner (anchor candidates drawn by the video model on single
frames by default, picked by the reward; NI-VSDS; regeneration), in turn, in this process, models
loaded once. key=value overrides go to every job (i4vgen.* keys only matter to I4VGen, e.g.
i4vgen.candidates=8); each --variant "k=v k=v" is one more I4VGen method (i4vgen+1, +2, ...) on top of them.
Oracle variants (toy world only) measure what the later stages could make of a perfect start: `oracle=anchor` gives
I4VGen the toy world's own scene for the prompt (laid out as in training, drawn from the prompt's seed) as its only
candidate, so NI-VSDS and the regeneration start from an anchor with every object right; `oracle=clip` also gives
the regeneration that scene's whole moving clip in place of NI-VSDS's video. If even these miss a target, no better
reward, candidate count or NI-VSDS setting can reach it; only the regeneration (or the model) is left.

Columns, from the exact toy detector (score_video) per video, pooled per method and object count:
  obj c+s      prompted objects found in the right colour and shape (pooled over objects)
  all present  videos with every prompted object found;  all correct: and each right in colour, shape, motion
  motion ok    prompted objects moving in the prompted direction (a missing object counts as wrong)
  disp px      mean net displacement |last - first centroid| of the detected prompted objects over the clip, in
               px of the generated frame (the paper trades motion for fidelity); moving px: only objects the
               prompt says move (the toy world moves them 2-3.5 px/frame at 64 px)
  max step     mean over detected prompted objects of their largest move between two consecutive frames (px): a
               jump (a teleport, or a held frame the others do not fit) raises it above vanilla's
  anchor       mean reward of the chosen anchor image (graded toy reward: ~1 = every object right, no extras)
  ties         mean number of other candidates tying with the chosen one (0: the reward chose)
  vs vanilla   per method, motion ok and disp px as a ratio to vanilla's (the target: within 15%, >= 0.85)
The displacement read three ways (the "motion" table), over the found prompted objects:
  world px     the toy world's own mean net displacement for the same objects (scenes laid out as in training;
               0 for a still object): what a model true to its training world would show
  jumps        share of tracks with a frame-to-frame step over twice the world's top speed (7 px at 64 px): a
               teleport or an identity swap, which raises disp px without being motion
  smooth px    disp px over the tracks without a jump
  along px     signed net move along the prompted direction, objects the prompt says move (negative: backwards)
None of these is comparable with the paper's dynamic degree (RAFT flow on real video, a share of moving videos).
Times are the runners' wall time (scoring excluded), summed per method, and their ratio to vanilla.
Against vanilla, same prompts and seeds: how many prompts each method turned all present / all correct and how many
it lost, with the exact sign (McNemar) test's p; and a 95% interval per difference or ratio from a paired bootstrap
over prompts (--draws): an interval that holds 0 (a ratio's: 1) is within what the seeds alone could do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ----------------------------------------------------------------------------------------------
# what to run


def split_counts(total: int, objects: list[int]) -> dict[int, int]:
    """`total` prompts over the object counts, as evenly as possible (earlier counts take the remainder)."""
    base, extra = divmod(total, len(objects))
    return {k: base + (i < extra) for i, k in enumerate(objects)}


def choose_prompts(total: int, objects: list[int], seed: int, offset: int = 0) -> list[tuple[int, str]]:
    """(object count, prompt) pairs, deterministic for the seed, interleaved over the object counts. The sequence
    does not depend on `total` (a longer run extends a shorter one), so `offset` skips the first prompts of it."""
    from vgen.toyworld import eval_prompts

    groups = [[(k, p) for p in eval_prompts(k, n, seed=seed)] for k, n in split_counts(offset + total, objects).items() if n]
    out = []
    for i in range(max(len(g) for g in groups)):
        out += [g[i] for g in groups if i < len(g)]
    return out[offset:]


ORACLES = ("anchor", "clip")


def method_overrides(variants: list[str]) -> dict[str, tuple[str, list[str], str | None]]:
    """label -> (runner, extra overrides, oracle): vanilla, i4vgen, then i4vgen+1, +2, ... one per variant. A
    variant's `oracle=anchor|clip` is the script's, not a job key (see oracle_start)."""
    out = {"vanilla": ("vanilla", [], None), "i4vgen": ("i4vgen", [], None)}
    for n, v in enumerate(variants, 1):
        tokens = v.split()
        oracles = [t.partition("=")[2] for t in tokens if t.startswith("oracle=")]
        if len(oracles) > 1 or any(o not in ORACLES for o in oracles):
            raise SystemExit(f"compare_i4vgen: a variant takes at most one oracle=, one of {', '.join(ORACLES)}; "
                             f"got '{v}'")
        out[f"i4vgen+{n}"] = ("i4vgen", [t for t in tokens if not t.startswith("oracle=")],
                              oracles[0] if oracles else None)
    return out


def build_jobs(args, prompts) -> dict[str, list]:
    """Every job up front, so a bad override fails before any sampling."""
    from vgen.config import build_job

    jobs = {}
    for label, (method, extra, _) in method_overrides(args.variants).items():
        jobs[label] = [
            build_job(
                flags={"prompt": prompt, "method": method, "model.id": args.model, "seed": args.seed + args.offset + i,
                       "sampler.steps": args.steps, "sampler.guidance": args.guidance,
                       "sampler.scheduler": args.scheduler, "video.frames": args.frames,
                       "runtime.device": args.device, "runtime.dtype": args.dtype, "i4vgen.save_candidates": False},
                overrides=[*args.overrides, *extra],
            )
            for i, (_, prompt) in enumerate(prompts)
        ]
    return jobs


# ----------------------------------------------------------------------------------------------
# running and scoring


def run_one(job, cache, stem: Path, oracle: str | None = None):
    """(video, seconds) from the job's runner in this process; a second model comes through the cache. With
    `oracle`, I4VGen starts from the toy world's own scene for the prompt (oracle_start)."""
    import torch

    from vgen.core.sampler import resolve_size
    from vgen.jobs import RunContext
    from vgen.methods import load_runner

    components = cache.get(job)
    h, w = resolve_size(components, job.video.height, job.video.width)
    ctx = RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=h, width=w, output_stem=stem,
                     progress=False, load_model=lambda cfg: cache.get(job, cfg))
    start_from = contextlib.nullcontext()
    if oracle:
        key = (job.model.id, job.prompt, job.seed, job.video.frames, h, w)
        if key not in WORLD_STARTS:  # one inversion per prompt, shared by every oracle variant
            clip = oracle_clip(job.prompt, job.seed, job.video.frames, h, w)
            WORLD_STARTS.clear()
            WORLD_STARTS[key] = clip, oracle_latents(components, clip)
        start_from = oracle_start(oracle, *WORLD_STARTS[key], oracle_frame(job))
    sync = torch.cuda.synchronize if components.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with start_from:
        video = load_runner(job.method)(job, components, ctx)
    sync()
    return video, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# oracle rows: what I4VGen's later stages make of a perfect start


def oracle_clip(prompt: str, seed: int, frames: int, height: int, width: int):
    """The toy world's own clip for the prompt (a scene laid out as in training, drawn from `seed`), uint8
    [F, H, W, 3]: every prompted object present, right in colour and shape, moving the prompted way."""
    import numpy as np

    from vgen.toyworld import render_video
    from vgen.toyworld.captions import parse_prompt
    from vgen.toyworld.scene import sample_scene

    if height != width:
        raise SystemExit(f"compare_i4vgen: the oracle rows need square frames (the toy world's), got {height}x{width}")
    scene = sample_scene(np.random.default_rng(seed), parse_prompt(prompt), frames, width)
    return render_video(scene, frames)


INVERSION_STEPS = 50
WORLD_STARTS: dict = {}  # the last prompt's (clip, latents)


def oracle_latents(components, clip, steps: int = INVERSION_STEPS):
    """Latents [1, C, F, h, w] that decode to the clip. The VAE's encoding alone does not: the toy VAE's round trip
    of the world's own clips keeps every object but blurs a third of their shapes (diamonds and squares read as
    circles; colour+shape 69.6% of objects on the 102 held-out prompts), so the encoding is refined by `steps` Adam
    steps on the decoder's reconstruction error (98% right after 50 on 30 of them)."""
    import torch

    from vgen.core.sampler import encode_frames

    vae, scale = components.vae, components.vae.config.scaling_factor
    latents = (encode_frames(components, clip)[0].transpose(0, 1) / scale).float()
    target = torch.from_numpy(clip).to(latents.device).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    with torch.enable_grad(), components.placed(vae):
        latents.requires_grad_(True)
        optimizer = torch.optim.Adam([latents], lr=0.05)
        for _ in range(steps):
            loss = (vae.decode(latents.to(vae.dtype)).sample.float() - target).pow(2).mean()
            (latents.grad,) = torch.autograd.grad(loss, latents)  # the VAE's own weights get no .grad
            optimizer.step()
    return (latents.detach() * scale).transpose(0, 1).unsqueeze(0).to(components.dtype)


def oracle_frame(job) -> int:
    """The clip's frame that stands in for the anchor image: the one the regeneration holds, else the middle."""
    from vgen.methods.i4vgen.runner import hold_frame

    held = hold_frame(job.i4vgen.regen_hold, job.video.frames)
    return job.video.frames // 2 if held is None else held


@contextlib.contextmanager
def oracle_start(kind: str, clip, latents, frame: int):
    """While the runner runs, I4VGen's earlier stages are replaced by the toy world's own answer (`latents`: the
    clip's, from oracle_latents, in the video model's latent space): `anchor` makes the clip's frame `frame` the
    only candidate (a perfect anchor image; NI-VSDS and the regeneration as configured), `clip` also makes the
    whole clip NI-VSDS's output (a perfect animated video; only the regeneration runs). An upper bound for what a
    better anchor, or a better NI-VSDS, could give; the rows' times leave out what was skipped (and the inversion)."""
    import vgen.methods.i4vgen.runner as I

    saved = I.sample_candidates, I.ni_vsds

    def one_candidate(image, prompt, negative, n, **kwargs):  # the video model's latents, as its own candidates are
        return latents[:, :, frame : frame + 1], clip[frame : frame + 1]

    def animated(components, video, *args, **kwargs):
        return latents.to(video.dtype)

    I.sample_candidates = one_candidate
    if kind == "clip":
        I.ni_vsds = animated
    try:
        yield
    finally:
        I.sample_candidates, I.ni_vsds = saved


def preload(jobs: dict[str, list], cache) -> None:
    """Load every model (the image companion too) before timing, so no method's time includes a load."""
    from vgen.methods.i4vgen.runner import candidate_source, image_model_config

    for runs in jobs.values():
        cache.get(runs[0])
        if runs[0].method == "i4vgen" and candidate_source(runs[0]) == "image":
            cache.get(runs[0], image_model_config(runs[0]))


def observed(trajectory):
    """The frames where the object was seen, as an [n, 2] array (missing frames are NaN, or None in stored records)."""
    import numpy as np

    points = np.array([[np.nan if v is None else v for v in p] for p in trajectory], dtype=np.float64)
    return points[~np.isnan(points).any(axis=1)]


def displacement(trajectory) -> float | None:
    """Net |last - first| of the observed centroids (px); None with fewer than two observations."""
    import numpy as np

    points = observed(trajectory)
    return float(np.hypot(*(points[-1] - points[0]))) if len(points) >= 2 else None


def largest_step(trajectory) -> float | None:
    """The largest centroid move between consecutive frames (px; None with fewer than two observed frames in a
    row): a jump, e.g. a held frame the others do not fit, shows here."""
    import numpy as np

    points = np.array(trajectory, dtype=np.float64)
    steps = np.hypot(*(points[1:] - points[:-1]).T)
    steps = steps[~np.isnan(steps)]
    return float(steps.max()) if len(steps) else None


def jump_limit(frame_px: int) -> float:
    """A frame-to-frame move larger than this (px) is not toy-world motion: twice the world's top speed (3.5 px/frame
    at 64 px), scaled to the frame. A track with such a step teleported or swapped identity."""
    from vgen.toyworld.scene import REFERENCE_SIZE, SPEED_RANGE

    return 2 * SPEED_RANGE[1] * frame_px / REFERENCE_SIZE


def along_prompt(trajectory, motion: str) -> float | None:
    """Signed net move (px) of the observed centroids along the prompted direction: how far the object went the way
    the prompt says (negative: the other way); None for a still prompt or fewer than two observations."""
    import numpy as np

    from vgen.toyworld.scene import MOTION_VECTORS

    if motion not in MOTION_VECTORS or motion == "still":
        return None
    points = observed(trajectory)
    return float(np.dot(points[-1] - points[0], MOTION_VECTORS[motion])) if len(points) >= 2 else None


def world_displacement(prompt: str, frames: int, size: int, draws: int = 64, seed: int = 0) -> list[float]:
    """Per prompted object, the mean net displacement (px) the toy world itself gives it over `frames` frames at
    `size` px: the reference a model trained on that world should match (scenes laid out as in training)."""
    import numpy as np

    from vgen.toyworld.captions import parse_prompt
    from vgen.toyworld.scene import sample_scene

    specs = parse_prompt(prompt)
    rng = np.random.default_rng(seed)
    total = np.zeros(len(specs))
    for _ in range(draws):
        scene = sample_scene(rng, specs, frames, size)
        for k, layout in enumerate(scene.objects):
            path = layout.centres(frames)
            total[k] += np.hypot(*(path[-1] - path[0]))
    return [float(x) for x in total / draws]


def measure(frames, prompt: str) -> dict:
    """Per-video numbers from the toy detector."""
    from vgen.toyworld import score_video

    score = score_video(frames, prompt)
    objects = []
    for o in score.objects:
        objects.append({
            "spec": f"{o.spec.colour} {o.spec.shape} {o.spec.motion}",
            "colour_shape_ok": bool(o.present and o.colour_ok and o.shape_ok),
            "present": bool(o.present),
            "motion": o.motion,
            "motion_ok": o.motion_ok,
            "displacement_px": displacement(o.trajectory) if o.present else None,
            "largest_step_px": largest_step(o.trajectory) if o.present else None,
            "trajectory": [[None if v != v else round(float(v), 2) for v in p] for p in o.trajectory],  # strict JSON
            "prompted_moving": o.spec.motion not in (None, "still"),
        })
    return {"all_present": score.all_present, "all_correct": score.all_correct,
            "extra_objects": list(score.extra_objects), "objects": objects}


def anchor_info(video) -> dict | None:
    anchor = video.metadata.get("anchor")
    if not anchor:
        return None
    return {"chosen": anchor["chosen"], "reward": anchor["scores"][anchor["chosen"]], "scores": anchor["scores"],
            "ties": anchor.get("ties"), "spread": anchor.get("spread")}


# ----------------------------------------------------------------------------------------------
# tables


def object_motion(record: dict, world: list[float] | None = None) -> list[dict]:
    """Per found prompted object of a record: net displacement, whether a step jumped (jump_limit), the move along
    the prompted direction (None for still prompts) and the toy world's own displacement for it (when given).
    Computed from the stored trajectories, so earlier records read the same way."""
    limit = jump_limit(record.get("frame_px") or 64)
    out = []
    for k, o in enumerate(record["objects"]):
        if not o["present"] or o["displacement_px"] is None:
            continue
        step = o.get("largest_step_px")
        out.append({"disp": o["displacement_px"], "jump": step is not None and step > limit,
                    "along": along_prompt(o["trajectory"], o["spec"].split()[-1]),
                    "world": world[k] if world else None})
    return out


def record_parts(record: dict, world: list[float] | None = None) -> dict[str, tuple[float, int]]:
    """Per summary key, this record's (sum, count) of the values it adds to the pooled mean (None values skipped):
    a pooled mean over any set of records is the sum of their sums over the sum of their counts."""
    objs = record["objects"]
    moves = object_motion(record, world)
    anchor = record.get("anchor")
    values = {
        "obj_colour_shape": [o["colour_shape_ok"] for o in objs],
        "all_present": [record["all_present"]],
        "all_correct": [record["all_correct"]],
        "motion_ok": [o["motion_ok"] for o in objs],
        "disp_px": [o["displacement_px"] for o in objs],
        "disp_moving_px": [o["displacement_px"] for o in objs if o["prompted_moving"]],
        "largest_step_px": [o.get("largest_step_px") for o in objs],
        "jump_rate": [m["jump"] for m in moves],
        "smooth_disp_px": [m["disp"] for m in moves if not m["jump"]],
        "along_px": [m["along"] for m in moves],
        "world_px": [m["world"] for m in moves],
        "anchor_reward": [anchor["reward"]] if anchor else [],
        "anchor_ties": [anchor.get("ties")] if anchor else [],
    }
    parts = {}
    for key, vals in values.items():
        vals = [float(v) for v in vals if v is not None]
        parts[key] = (sum(vals), len(vals))
    return parts


POOLED_KEYS = tuple(record_parts({"objects": [], "all_present": False, "all_correct": False}))


def summarize(records: list[dict], worlds: dict[int, list[float]] | None = None) -> dict:
    parts = [record_parts(r, (worlds or {}).get(r["index"])) for r in records]
    out = {"videos": len(records)}
    for key in POOLED_KEYS:
        total, count = sum(p[key][0] for p in parts), sum(p[key][1] for p in parts)
        out[key] = total / count if count else (None if key.startswith("anchor") else float("nan"))
    out["seconds"] = sum(r["seconds"] for r in records)
    return out


def summary_rows(records: list[dict], labels: list[str], objects: list[int],
                 worlds: dict[int, list[float]] | None = None) -> list[dict]:
    rows = []
    for label in labels:
        mine = [r for r in records if r["method"] == label]
        for k in ["all", *objects]:
            part = mine if k == "all" else [r for r in mine if r["objects_n"] == k]
            if part:
                rows.append({"method": label, "objects": k, **summarize(part, worlds)})
    return rows


def pct(x) -> str:
    return "-" if x is None or x != x else f"{x:.1%}"


def num(x, digits=1) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def print_rates(rows: list[dict]) -> None:
    w = max(len(r["method"]) for r in rows) + 2
    print(f"{'method':<{w}}{'objs':>4}{'n':>5}{'obj c+s':>9}{'all present':>12}{'all correct':>12}"
          f"{'motion ok':>10}{'disp px':>9}{'moving px':>10}{'max step':>9}{'anchor':>8}{'ties':>6}")
    for r in rows:
        print(f"{r['method']:<{w}}{r['objects']!s:>4}{r['videos']:>5}{pct(r['obj_colour_shape']):>9}"
              f"{pct(r['all_present']):>12}{pct(r['all_correct']):>12}{pct(r['motion_ok']):>10}"
              f"{num(r['disp_px']):>9}{num(r['disp_moving_px']):>10}{num(r['largest_step_px']):>9}"
              f"{num(r['anchor_reward'], 3):>8}"
              f"{num(r['anchor_ties'], 2):>6}")


def print_motion(rows: list[dict]) -> None:
    """The displacement read three ways, over the found prompted objects: against the toy world's own motion for
    the same objects, with the tracks that jump (a step > twice the world's top speed) set apart, and along the
    prompted direction (moving prompts only)."""
    w = max(len(r["method"]) for r in rows) + 2
    print(f"{'motion':<{w}}{'objs':>4}{'disp px':>9}{'world px':>9}{'jumps':>7}{'smooth px':>10}{'along px':>9}")
    for r in rows:
        print(f"{r['method']:<{w}}{r['objects']!s:>4}{num(r['disp_px']):>9}{num(r['world_px']):>9}"
              f"{pct(r['jump_rate']):>7}{num(r['smooth_disp_px']):>10}{num(r['along_px']):>9}")


def motion_verdicts(records: list[dict]) -> dict[str, int]:
    """Prompted moving objects by what the detector saw them do: the prompted way, still, sideways, backwards or
    not found. A frozen video shows as 'still'."""
    from vgen.toyworld.scene import MOTION_VECTORS

    counts = {"right way": 0, "still": 0, "sideways": 0, "backwards": 0, "missing": 0}
    for r in records:
        for o in r["objects"]:
            prompted = o["spec"].split()[-1]
            if prompted not in MOTION_VECTORS or prompted == "still":
                continue
            if not o["present"] or o["motion"] is None:
                counts["missing"] += 1
            elif o["motion"] == prompted:
                counts["right way"] += 1
            elif o["motion"] == "still":
                counts["still"] += 1
            else:
                backwards = tuple(-v for v in MOTION_VECTORS[prompted]) == MOTION_VECTORS[o["motion"]]
                counts["backwards" if backwards else "sideways"] += 1
    return counts


def print_verdicts(records: list[dict], labels: list[str], objects: list[int]) -> None:
    keys = list(motion_verdicts([]))
    w = max(len("moving prompts"), *(len(label) for label in labels)) + 1
    print(f"{'moving prompts':<{w + 1}}{'objs':>4}" + "".join(f"{k:>11}" for k in keys))
    for label in labels:
        mine = [r for r in records if r["method"] == label]
        for k in ["all", *objects]:
            part = mine if k == "all" else [r for r in mine if r["objects_n"] == k]
            counts = motion_verdicts(part)
            print(f"{label:<{w + 1}}{k!s:>4}" + "".join(f"{counts[key]:>11}" for key in keys))


def print_times(rows: list[dict]) -> None:
    totals = [r for r in rows if r["objects"] == "all"]
    base = totals[0]["seconds"]
    w = max(len(r["method"]) for r in totals) + 2
    print(f"{'method':<{w}}{'videos':>7}{'total s':>10}{'s / video':>11}{'x vanilla':>11}")
    for r in totals:
        print(f"{r['method']:<{w}}{r['videos']:>7}{r['seconds']:>10.1f}{r['seconds'] / r['videos']:>11.2f}"
              f"{r['seconds'] / base:>10.2f}x")


def print_ratios(rows: list[dict]) -> None:
    """Motion against vanilla's, per object count: the target is within 15% (ratio >= 0.85)."""
    base = {r["objects"]: r for r in rows if r["method"] == "vanilla"}
    w = max(len("vs vanilla"), *(len(r["method"]) for r in rows)) + 2
    print(f"{'vs vanilla':<{w}}{'objs':>4}{'motion ok':>10}{'disp px':>9}{'moving px':>10}{'smooth':>8}{'along':>7}"
          f"{'all corr':>9}{'all pres':>9}")
    for r in rows:
        b = base.get(r["objects"])
        if r["method"] == "vanilla" or b is None:
            continue
        ratio = lambda key: "-" if not b[key] or b[key] != b[key] or r[key] != r[key] else f"{r[key] / b[key]:.2f}"
        diff = lambda key: f"{100 * (r[key] - b[key]):+.1f}"
        print(f"{r['method']:<{w}}{r['objects']!s:>4}{ratio('motion_ok'):>10}{ratio('disp_px'):>9}"
              f"{ratio('disp_moving_px'):>10}{ratio('smooth_disp_px'):>8}{ratio('along_px'):>7}"
              f"{diff('all_correct'):>9}{diff('all_present'):>9}")


def print_legend(args) -> None:
    for label, (_, extra, oracle) in method_overrides(args.variants).items():
        if extra or oracle:
            start = {None: "", "anchor": ", from the toy world's own scene as the anchor (oracle; time leaves out the "
                     "candidates)", "clip": ", regenerating the toy world's own clip (oracle; time leaves out the "
                     "candidates and NI-VSDS)"}[oracle]
            print(f"{label} = i4vgen{' with ' + ' '.join(extra) if extra else ''}{start}")


def print_paired(records: list[dict], labels: list[str]) -> None:
    """Per prompt, against vanilla: how often all-correct / all-present flips each way, and the sign test's p
    (below 0.05: unlikely to be the seeds' luck)."""
    from vgen.eval.stats import sign_test_p

    base = {r["index"]: r for r in records if r["method"] == "vanilla"}
    for label in labels[1:]:
        mine = [r for r in records if r["method"] == label]
        parts = []
        for key in ("all_correct", "all_present"):
            won = sum(r[key] and not base[r["index"]][key] for r in mine)
            lost = sum(base[r["index"]][key] and not r[key] for r in mine)
            parts.append(f"{key.replace('_', '-')} +{won} / -{lost} (p {sign_test_p(won, lost):.2g})")
        print(f"{label} vs vanilla, same prompt and seed: {', '.join(parts)}")


# Against vanilla: (summary key, label, "diff" in points or "ratio"); the targets are read from these.
PAIRED_STATS = (("obj_colour_shape", "obj c+s", "diff"), ("all_present", "all pres", "diff"),
                ("all_correct", "all corr", "diff"), ("motion_ok", "motion ok", "ratio"),
                ("disp_px", "disp px", "ratio"), ("smooth_disp_px", "smooth", "ratio"))


def paired_intervals(records: list[dict], label: str, draws: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """Per PAIRED_STATS key: (value, low, high) of `label` against vanilla, the interval from a paired bootstrap over
    prompts (each draw resamples prompt indices with replacement and takes both methods' videos of those prompts).
    Differences in percentage points, ratios as method / vanilla."""
    import numpy as np

    base = {r["index"]: r for r in records if r["method"] == "vanilla"}
    mine = {r["index"]: r for r in records if r["method"] == label}
    index = sorted(set(base) & set(mine))
    keys = [key for key, _, _ in PAIRED_STATS]

    def table(by_index):  # [2, prompts, keys]: each prompt's (sum, count) per key
        parts = [record_parts(by_index[i]) for i in index]
        return np.array([[[p[k][j] for k in keys] for p in parts] for j in (0, 1)], dtype=np.float64)

    a, b = table(mine), table(base)
    kinds = np.array([kind == "diff" for _, _, kind in PAIRED_STATS])

    def compare(counts):  # counts: how often each prompt is drawn -> one value per key
        with np.errstate(invalid="ignore", divide="ignore"):
            ma = (counts @ a[0]) / (counts @ a[1])
            mb = (counts @ b[0]) / (counts @ b[1])
            return np.where(kinds, 100 * (ma - mb), np.where(mb > 0, ma / mb, np.nan))

    point = compare(np.ones(len(index)))
    rng = np.random.default_rng(seed)
    draws_counts = np.stack([np.bincount(rng.integers(0, len(index), len(index)), minlength=len(index))
                             for _ in range(draws)]).astype(np.float64)
    samples = np.stack([compare(c) for c in draws_counts])
    tail = 100 * (1 - level) / 2
    result = {}
    for j, key in enumerate(keys):
        values = samples[:, j][~np.isnan(samples[:, j])]
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
        result[key] = (float(point[j]), float(low), float(high))
    return result


def print_intervals(records: list[dict], labels: list[str], draws: int) -> dict[str, dict]:
    """Every method against vanilla with its 95% interval: a difference whose interval holds 0 (or a ratio whose
    interval holds 1) is within what the seeds alone could do."""
    print(f"vs vanilla, 95% interval (paired bootstrap over prompts, {draws} draws): differences in points, ratios x")
    w = max(len(label) for label in labels) + 2
    print(f"{'method':<{w}}" + "".join(f"{name:>22}" for _, name, _ in PAIRED_STATS))
    found = {}
    for label in labels[1:]:
        found[label] = intervals = paired_intervals(records, label, draws)
        cells = []
        for key, _, kind in PAIRED_STATS:
            v, lo, hi = intervals[key]
            cells.append(f"{v:+.1f} [{lo:+.1f}, {hi:+.1f}]" if kind == "diff" else f"{v:.2f} [{lo:.2f}, {hi:.2f}]")
        print(f"{label:<{w}}" + "".join(f"{c:>22}" for c in cells))
    return found


# ----------------------------------------------------------------------------------------------


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy", help="video model")
    ap.add_argument("--prompts", type=int, default=102, help="prompts in all, split evenly over --objects")
    ap.add_argument("--offset", type=int, default=0,
                    help="skip the sequence's first prompts: tune settings on --offset 0, report on --offset 102")
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--seed", type=int, default=0, help="prompt choice, and the first video seed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    ap.add_argument("--variant", "--variants", dest="variants", action="append", default=[], metavar='"K=V [K=V ...]"',
                    help="one more I4VGen method with these overrides (quoted, space-separated); repeat for more")
    ap.add_argument("--out", default=str(ROOT / "runs" / "compare_i4vgen"),
                    help="folder for settings.json and records.jsonl (resumed when it holds the same settings)")
    ap.add_argument("--shard", default="0/1", metavar="I/N", help="run prompts i with i %% N == I (N processes, one --out)")
    ap.add_argument("--report", action="store_true", help="only print the tables from what <out> holds; run nothing")
    ap.add_argument("--json", default=None, help="also write settings, the summary and per-video records here")
    ap.add_argument("--draws", type=int, default=1000, help="paired bootstrap draws for the 95%% intervals vs vanilla")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every job, e.g. i4vgen.warm_step_size=1")
    args = ap.parse_args()
    if args.prompts < 1:
        ap.error("--prompts must be >= 1")
    if args.offset < 0:
        ap.error("--offset must be >= 0")
    index, _, count = args.shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        ap.error(f"--shard must be I/N with 0 <= I < N, got '{args.shard}'")
    args.shard_index, args.shard_count = int(index), int(count)
    return args


def records_file(out: Path, args) -> Path:
    """Where this process appends: one file per shard, so concurrent shards never share a file."""
    if args.shard_count == 1:
        return out / "records.jsonl"
    return out / f"records.shard{args.shard_index}of{args.shard_count}.jsonl"


SETTING_KEYS = ("model", "prompts", "offset", "objects", "steps", "frames", "guidance", "scheduler", "seed", "device",
                "dtype", "variants", "overrides")


def load_done(out: Path, settings: dict) -> list[dict]:
    """Records already in <out>/records.jsonl for these settings; writes settings.json on a fresh start."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "settings.json"
    if saved.exists():
        old = {"offset": 0, **json.loads(saved.read_text())}  # runs from before --offset started at 0
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            sys.exit(f"compare_i4vgen: {out} holds a run with other settings ({', '.join(changed)}); use another --out")
    else:
        saved.write_text(json.dumps(settings, indent=1))
    records = []
    for path in sorted(out.glob("records*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut off by a kill: that run is redone
                pass
    return records


def main() -> None:
    args = parse_args()
    if args.model == "toy" and not (ROOT / "vgen" / "assets" / "toy").is_dir():
        sys.exit("compare_i4vgen: the toy model is missing (vgen/assets/toy); train it first (scripts/train_toy.py)")
    import torch

    torch.set_num_threads(args.threads)
    from vgen.errors import VgenError
    from vgen.jobs import ModelCache

    prompts = choose_prompts(args.prompts, args.objects, args.seed, args.offset)
    try:
        jobs = build_jobs(args, prompts)
    except VgenError as err:
        sys.exit(f"compare_i4vgen: {err}")
    labels = list(jobs)
    oracles = {label: oracle for label, (_, _, oracle) in method_overrides(args.variants).items()}
    out = Path(args.out)
    settings = {k: getattr(args, k) for k in SETTING_KEYS}
    records = load_done(out, settings)
    unique = {(r["method"], r["index"]): r for r in records}
    records, done = list(unique.values()), set(unique)
    print_legend(args)
    print(f"{len(done)} of {len(prompts) * len(labels)} videos already in {out}", flush=True)
    if args.report:
        report(args, records, labels)
        return
    cache = ModelCache()
    try:
        preload(jobs, cache)
    except VgenError as err:
        sys.exit(f"compare_i4vgen: {err}")
    frame_px = None
    with tempfile.TemporaryDirectory(prefix="compare_i4vgen-") as tmp, open(records_file(out, args), "a") as sink:
        for j, (n_obj, prompt) in enumerate(prompts):
            i = args.offset + j  # the prompt's place in the sequence: its record index, seed and shard
            if i % args.shard_count != args.shard_index:
                continue
            line = []
            for label in labels:  # interleaved, so machine load hits every method alike
                if (label, i) in done:
                    continue
                try:
                    video, seconds = run_one(jobs[label][j], cache, Path(tmp) / f"{i}-{len(line)}", oracles[label])
                except VgenError as err:
                    sys.exit(f"compare_i4vgen: {label}: {err}")
                frame_px = video.frames.shape[2]
                record = {"method": label, "index": i, "prompt": prompt, "objects_n": n_obj,
                          "seed": args.seed + i, "seconds": round(seconds, 4), **measure(video.frames, prompt),
                          "anchor": anchor_info(video), "frame_px": int(frame_px)}
                records.append(record)
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                ok = sum(o["colour_shape_ok"] for o in record["objects"])
                line.append(f"{label} {ok}/{n_obj}{' P'[record['all_present']]}{' C'[record['all_correct']]}")
            if line:
                print(f"[{i + 1:>3}/{len(prompts)}] " + "  ".join(line) + f"  {prompt}", flush=True)
    report(args, records, labels)


def report(args, records: list[dict], labels: list[str]) -> None:
    """The tables, over the prompts every method has finished."""
    complete = {i for i in {r["index"] for r in records} if all(any(r["index"] == i and r["method"] == m for r in records)
                                                               for m in labels)}
    records = [r for r in records if r["index"] in complete]
    if not records:
        print("no prompt finished by every method yet")
        return
    frame_px = records[0].get("frame_px") or 64
    worlds = {i: world_displacement(p, args.frames, frame_px, seed=args.seed + i)
              for i, p in sorted({(r["index"], r["prompt"]) for r in records})}
    rows = summary_rows(records, labels, args.objects, worlds)
    print(f"\nmodel={args.model} frames={args.frames} ({frame_px} px wide) steps={args.steps} {args.scheduler} "
          f"guidance={args.guidance} seed={args.seed} overrides={args.overrides} prompts done={len(complete)}"
          + (f" (from prompt {args.offset})" if args.offset else ""))
    print_rates(rows)
    print()
    print_motion(rows)
    print()
    print_verdicts(records, labels, args.objects)
    print()
    print_ratios(rows)
    print()
    print_times(rows)
    print_paired(records, labels)
    print()
    intervals = print_intervals(records, labels, args.draws)
    print_legend(args)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        strict = [{k: None if isinstance(v, float) and v != v else v for k, v in r.items()} for r in rows]  # NaN: none
        paired = {label: {key: [None if x != x else round(x, 6) for x in triple] for key, triple in found.items()}
                  for label, found in intervals.items()}
        Path(args.json).write_text(json.dumps({"settings": settings, "summary": strict, "vs_vanilla_95": paired,
                                               "videos": records}, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
