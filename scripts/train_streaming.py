"""Train StreamingT2V's CAM, then CAM+APM, on the toy world with the base model frozen; export into the model.

    python scripts/train_streaming.py cam --steps 600 --lr 3e-4 --out runs/streaming/cam
    python scripts/train_streaming.py cam+apm --steps 600 --lr 3e-4 --init runs/streaming/cam/last.pt --out runs/streaming/apm
    python scripts/train_streaming.py export --ckpt runs/streaming/apm/last.pt --stage cam+apm   # -> vgen/assets/toy/streaming/
"""

from __future__ import annotations

import argparse

from vgen.methods.streaming.train import STAGES, StreamingTrainConfig, StreamingTrainer, train


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=STAGES + ("export",))
    ap.add_argument("--model", default="toy", help="base video model (frozen)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--out", default=None, help="checkpoint folder (default runs/streaming/<stage>)")
    ap.add_argument("--init", default=None, help="cam+apm: start CAM from this cam-stage checkpoint")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt", default=None, help="export: the checkpoint to export")
    ap.add_argument("--export-stage", default="cam+apm", choices=STAGES, help="export: the checkpoint's stage")
    ap.add_argument("--folder", default="vgen/assets/toy", help="export: the model folder to write streaming/ into")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.stage == "export":
        import torch

        trainer = StreamingTrainer(StreamingTrainConfig(model=a.model, stage=a.export_stage))
        state = torch.load(a.ckpt, map_location="cpu", weights_only=False)
        for name, module in trainer.modules.items():
            module.load_state_dict(state[name])
        print(f"wrote {trainer.export(a.folder)}")
        return
    name = a.stage.replace("+", "-")
    cfg = StreamingTrainConfig(model=a.model, stage=a.stage, out=a.out or f"runs/streaming/{name}", init=a.init,
                               steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, threads=a.threads,
                               resume=a.resume, progress=not a.no_progress)
    trainer = train(cfg)
    print(f"checkpoint: {cfg.out}/last.pt (step {trainer.step_count})")


if __name__ == "__main__":
    main()
