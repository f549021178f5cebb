"""Train StreamingT2V's CAM, then CAM+APM, on the toy world with the base model frozen; export into the model.

    python scripts/train_streaming.py cam --steps 600 --lr 3e-4 --out runs/streaming/cam
    python scripts/train_streaming.py cam+apm --steps 600 --lr 3e-4 --init runs/streaming/cam/last.pt --out runs/streaming/apm
    python scripts/train_streaming.py diagnose --init vgen/assets/toy          # why memories act or not (diagnose.py)
    python scripts/train_streaming.py export --ckpt runs/streaming/apm/last.pt --stage cam+apm   # -> vgen/assets/toy/streaming/
"""

from __future__ import annotations

import argparse

from vgen.methods.streaming.train import STAGES, StreamingTrainConfig, StreamingTrainer, train


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=STAGES + ("export", "diagnose"))
    ap.add_argument("--model", default="toy", help="base video model (frozen)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--lr-new", type=float, default=None, help="lr of the zero-initialised parts (default --lr)")
    ap.add_argument("--lr-alpha", type=float, default=None, help="lr of APM's alpha_l (default --lr-new)")
    ap.add_argument("--cond-roundtrip", action="store_true", help="E_cond reads VAE-decoded frames, as at inference")
    ap.add_argument("--cond-noise", type=float, default=0.0, help="max std of pixel noise on the conditioning frames")
    ap.add_argument("--clip-motion", default="slow", choices=("slow", "bounce"),
                    help="training clips: the toy's long-clip layout (slow) or the short clips' speed with bounces")
    ap.add_argument("--clip-speed", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                    help="with --clip-motion bounce: object speeds in px/frame at 64 px (default the toy's 2 3.5)")
    ap.add_argument("--new-frame-weight", type=float, default=1.0,
                    help="loss weight of the chunk's new frames against the re-covering ones (1 = plain mean)")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--out", default=None, help="checkpoint folder (default runs/streaming/<stage>)")
    ap.add_argument("--init", default=None,
                    help="start from this checkpoint (CAM, and APM when it has one) or a model folder's streaming/")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt", default=None, help="export: the checkpoint to export")
    ap.add_argument("--export-stage", default="cam+apm", choices=STAGES, help="export: the checkpoint's stage")
    ap.add_argument("--folder", default="vgen/assets/toy", help="export: the model folder to write streaming/ into")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.stage == "diagnose":
        import torch

        from vgen.methods.streaming.diagnose import diagnose

        torch.set_num_threads(a.threads)
        trainer = StreamingTrainer(StreamingTrainConfig(model=a.model, stage="cam+apm", init=a.init or a.ckpt,
                                                        batch=a.batch, seed=a.seed, cond_roundtrip=a.cond_roundtrip,
                                                        cond_noise=a.cond_noise))
        print(diagnose(trainer).render())
        return
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
                               steps=a.steps, batch=a.batch, lr=a.lr, lr_new=a.lr_new,
                               lr_alpha=a.lr_alpha, cond_roundtrip=a.cond_roundtrip, cond_noise=a.cond_noise,
                               clip_motion=a.clip_motion, clip_speed=a.clip_speed, new_frame_weight=a.new_frame_weight, save_every=a.save_every, seed=a.seed, threads=a.threads,
                               resume=a.resume, progress=not a.no_progress)
    trainer = train(cfg)
    print(f"checkpoint: {cfg.out}/last.pt (step {trainer.step_count})")


if __name__ == "__main__":
    main()
