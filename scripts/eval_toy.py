"""Evaluate the shipped toy models (or any folder) with the detector and print a table.

    python scripts/eval_toy.py                      # toy + toy-t2i
    python scripts/eval_toy.py --model DIR --image-model none --n-single 120
    python scripts/eval_toy.py --ckpt runs/toy/joint/last.pt --vae runs/toy/vae/step1200.pt   # a training checkpoint
    python scripts/eval_toy.py --model toy-wan --image-model none          # the Wan toy (17 frames, its vgen.yaml)
    python scripts/eval_toy.py --ckpt runs/toy-wan/t2v/last.pt --image-model none   # a Wan toy training checkpoint

Frames, steps and guidance default to the model's own vanilla settings (its vgen.yaml), else 8 frames (17 on a
Wan model: 4k+1), 20 steps, guidance 5.
"""

from __future__ import annotations

import argparse
import json

import torch

from vgen.toyworld.evaluate import evaluate, vanilla_defaults


def motion_confusion(records: list[dict]) -> str:
    """Prompted (rows) vs detected (columns) motion of the single-object records, as a text table."""
    from vgen.toyworld.scene import MOTIONS

    singles = [r["score"]["objects"][0] for r in records if len(r["score"]["objects"]) == 1
               and r["score"]["objects"][0].get("prompted_motion")]
    cols = list(MOTIONS) + ["none"]
    lines = ["prompted \\ detected " + " ".join(f"{c:>6}" for c in cols)]
    for m in MOTIONS:
        row = [o.get("motion") or "none" for o in singles if o["prompted_motion"] == m]
        lines.append(f"{m:<20} " + " ".join(f"{row.count(c):>6}" for c in cols))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--image-model", default="toy-t2i", help="'none' skips the t2i row")
    ap.add_argument("--n-single", type=int, default=48)
    ap.add_argument("--n-multi", type=int, default=24)
    ap.add_argument("--n-image", type=int, default=48)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write per-prompt records here")
    ap.add_argument("--ckpt", default=None, help="evaluate this joint/t2v/t2i training checkpoint instead of --model")
    ap.add_argument("--vae", default=None,
                    help="with --ckpt: the vae-stage checkpoint (default runs/toy/vae/last.pt; a Wan t2v checkpoint "
                         "carries its own)")
    ap.add_argument("--wan-vae", default=None,
                    help="instead: the round trip of this Wan toy vae-stage checkpoint, judged by the detector")
    ap.add_argument("--n-clips", type=int, default=64, help="with --wan-vae: world clips (17 frames) to round-trip")
    ap.add_argument("--confusion", action="store_true", help="also print prompted vs detected single-object motion")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.wan_vae:
        from vgen.toyworld.train_wan import load_wan_vae, vae_round_trip

        rates = vae_round_trip(load_wan_vae(a.wan_vae), a.n_clips, frames=a.frames or 17)
        n = rates.pop("objects")
        print(f"VAE round trip of {a.n_clips} world clips ({n} objects), detector per object:")
        for name, rate in rates.items():
            print(f"{name:<26} {rate:>6.1%}")
        return
    model, image_model = a.model, None if a.image_model == "none" else a.image_model
    tmp = None
    if a.ckpt and torch.load(a.ckpt, map_location="cpu", weights_only=False).get("family") == "wan":
        import tempfile

        from vgen.toyworld.train_wan import export_wan

        tmp = tempfile.TemporaryDirectory()
        model, a.ckpt = str(export_wan(a.ckpt, a.vae, tmp.name)), None
    if a.ckpt:
        a.vae = a.vae or "runs/toy/vae/last.pt"
        from vgen.toyworld.train import components_from, load_checkpoint_models

        models = load_checkpoint_models(a.ckpt, a.vae)
        model = components_from(models, "unet3d") if "unet3d" in models else None
        image_model = components_from(load_checkpoint_models(a.ckpt, a.vae), "unet2d") if "unet2d" in models else None
        if model is None:
            a.n_single = a.n_multi = 0
    frames, steps, guidance = vanilla_defaults(model if isinstance(model, str) else None)
    a.frames, a.steps = a.frames or frames, a.steps or steps
    a.guidance = a.guidance if a.guidance is not None else guidance
    print(f"frames {a.frames}, steps {a.steps}, guidance {a.guidance}")
    table = evaluate(model, image_model, n_single=a.n_single,
                     n_multi=a.n_multi, n_image=a.n_image, seed=a.seed, frames=a.frames, steps=a.steps,
                     guidance=a.guidance, progress=True)
    print(table.render())
    if a.confusion:
        print(motion_confusion(table.records))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": table.rows, "records": table.records}, f, indent=1)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
