"""Train the toy models: `train_toy.py vae`, then `joint` (or `t2v` / `t2i`), then `export`.

    python scripts/train_toy.py vae --steps 3000 --out runs/toy/vae
    python scripts/train_toy.py joint --steps 20000 --out runs/toy/joint --resume
    python scripts/train_toy.py export --ckpt runs/toy/joint/last.pt --vae runs/toy/vae/last.pt

The Wan-architecture toy (`toy-wan`; stages vae, t2v, export):

    python scripts/train_toy.py --family wan vae --steps 1500 --batch 4 --out runs/toy-wan/vae --resume
    python scripts/train_toy.py --family wan t2v --steps 4000 --out runs/toy-wan/t2v --resume
    python scripts/train_toy.py --family wan export --ckpt runs/toy-wan/t2v/last.pt --assets vgen/assets
"""

from __future__ import annotations

import argparse

from vgen.toyworld.train import STAGES, TrainConfig, export, train


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("unet", "wan"), default="unet",
                    help="unet: the UNet3D/UNet2D toy (toy, toy-t2i); wan: the Wan-architecture toy (toy-wan)")
    ap.add_argument("stage", choices=tuple(dict.fromkeys(STAGES + ("decoder", "export"))))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=None, help="clip frames (unet: 8; wan: 17, 4k+1)")
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--dit-dim", type=int, default=128, help="wan: transformer width (32 per head)")
    ap.add_argument("--dit-layers", type=int, default=4, help="wan: transformer blocks")
    ap.add_argument("--vae-base", type=int, default=16, help="wan: AutoencoderKLWan base_dim")
    ap.add_argument("--vae-crop", type=int, default=32, help="wan vae: train on random crops of this side")
    ap.add_argument("--width", type=int, default=64, help="UNet base channels")
    ap.add_argument("--out", default=None, help="checkpoint folder (default runs/toy/<stage>)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/last.pt if it exists")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=None, help="steps between checkpoints (unet: 200; wan: 100)")
    ap.add_argument("--vae", default=None, help="vae checkpoint (default runs/toy/vae/last.pt)")
    ap.add_argument("--text-from", default=None, help="t2i: frozen text encoder from this checkpoint")
    ap.add_argument("--ckpt", default=None, help="export: the t2v/t2i/joint checkpoint")
    ap.add_argument("--assets", default="vgen/assets", help="export: destination (toy/, toy-t2i/)")
    ap.add_argument("--loss-weight", choices=("eps", "v"), default="eps",
                    help="v: weight the epsilon MSE by 1/alpha_bar_t (v-prediction loss; teaches layout and motion)")
    ap.add_argument("--max-weight", type=float, default=20.0, help="cap of the v weight")
    ap.add_argument("--objects", default="0.5,0.3,0.2", help="t2v clips: weights of 1, 2 and 3 objects")
    ap.add_argument("--motion-probe", type=float, default=0.0,
                    help="weight of the auxiliary motion heads (word + per-frame path) on the UNet3D mid block (0: off)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.family == "wan":
        return main_wan(a)
    a.frames, a.save_every = a.frames or 8, a.save_every or 200
    if a.stage not in STAGES + ("export",):
        raise SystemExit(f"error: stage {a.stage!r} is for --family wan")
    if a.stage == "export":
        for folder in export(a.ckpt or "runs/toy/joint/last.pt", a.vae or "runs/toy/vae/last.pt", a.assets):
            print(f"wrote {folder}")
        return
    cfg = TrainConfig(stage=a.stage, out=a.out or f"runs/toy/{a.stage}", steps=a.steps, batch=a.batch,
                      frames=a.frames, lr=a.lr, seed=a.seed, threads=a.threads, resume=a.resume, vae=a.vae,
                      text_from=a.text_from, save_every=a.save_every, width=a.width, progress=not a.no_progress,
                      loss_weight=a.loss_weight, max_weight=a.max_weight,
                      objects=tuple(float(w) for w in a.objects.split(",")), motion_probe=a.motion_probe)
    print(f"checkpoint: {train(cfg)}")


def main_wan(a) -> None:
    from vgen.toyworld.train_wan import WAN_STAGES, WanTrainConfig, export_wan, train_wan

    if a.stage == "export":
        folder = export_wan(a.ckpt or "runs/toy-wan/t2v/last.pt", a.vae, a.assets)
        print(f"wrote {folder}")
        return
    if a.stage not in WAN_STAGES:
        raise SystemExit(f"error: --family wan has the stages {', '.join(WAN_STAGES)}, export; got {a.stage!r}")
    cfg = WanTrainConfig(stage=a.stage, out=a.out or f"runs/toy-wan/{a.stage}", steps=a.steps, batch=a.batch,
                         frames=a.frames or 17, lr=a.lr, seed=a.seed, threads=a.threads, resume=a.resume, vae=a.vae,
                         save_every=a.save_every or 100, progress=not a.no_progress,
                         objects=tuple(float(w) for w in a.objects.split(",")), vae_base=a.vae_base, vae_crop=a.vae_crop,
                         dit_dim=a.dit_dim, dit_layers=a.dit_layers)
    try:
        print(f"checkpoint: {train_wan(cfg)}")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
