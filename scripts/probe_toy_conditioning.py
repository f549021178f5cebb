"""How much each prompt attribute (colour, shape, motion) changes the toy video model's prediction.

    python scripts/probe_toy_conditioning.py                    # the shipped toy model
    python scripts/probe_toy_conditioning.py --ckpt runs/toy/joint/last.pt --vae runs/toy/vae/step1200.pt

For each base prompt "a <colour> <shape> <motion>" one attribute is swapped for another value. Two
numbers per attribute, averaged over the swaps:
  text   |h(swapped) - h(base)| over the encoder's output states, over the same for a colour swap
         (how distinct the text encoder keeps the words; colour = 1 by construction)
  unet   |eps(swapped) - eps(base)| / |eps(base)| at the same noisy latent, for each --timesteps
A model whose motion column is far below colour and shape ignores motion words: its clips move in
whatever direction the noise suggests, which is what the eval_toy motion row then shows.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from vgen.toyworld.scene import COLOURS, MOTIONS, SHAPES

BASES = [("red", "circle", "left"), ("blue", "square", "up"), ("green", "triangle", "down"), ("yellow", "diamond", "right")]


def prompt(colour: str, shape: str, motion: str) -> str:
    phrase = "staying still" if motion == "still" else f"moving {motion}"
    return f"a {colour} {shape} {phrase}"


def swaps(base: tuple[str, str, str]) -> dict[str, list[tuple[str, str, str]]]:
    c, s, m = base
    return {
        "colour": [(x, s, m) for x in COLOURS if x != c],
        "shape": [(c, x, m) for x in SHAPES if x != s],
        "motion": [(c, s, x) for x in MOTIONS if x != m],
    }


@torch.no_grad()
def probe(tokenizer, text_encoder, unet, timesteps: list[int], frames: int, seed: int) -> dict[str, dict[str, float]]:
    def encode(prompts: list[str]) -> torch.Tensor:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        return text_encoder(ids)[0]

    size = unet.config.sample_size
    z = torch.randn(1, unet.config.in_channels, frames, size, size, generator=torch.Generator().manual_seed(seed))
    text: dict[str, list[float]] = {"colour": [], "shape": [], "motion": []}
    eps: dict[tuple[str, int], list[float]] = {}
    for base in BASES:
        groups = swaps(base)
        variants = [base] + list(itertools.chain.from_iterable(groups.values()))
        h = encode([prompt(*v) for v in variants])
        outs = {t: unet(z.expand(len(variants), -1, -1, -1, -1), t, encoder_hidden_states=h).sample for t in timesteps}
        i = 1
        for name, group in groups.items():
            for _ in group:
                text[name].append(float((h[i] - h[0]).norm()))
                for t in timesteps:
                    o = outs[t]
                    eps.setdefault((name, t), []).append(float((o[i] - o[0]).norm() / o[0].norm()))
                i += 1
    colour_text = sum(text["colour"]) / len(text["colour"])
    return {name: {"text": sum(v) / len(v) / colour_text,
                   **{f"unet t={t}": sum(eps[(name, t)]) / len(eps[(name, t)]) for t in timesteps}}
            for name, v in text.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy", help="a built-in name or folder of a unet3d model")
    ap.add_argument("--ckpt", default=None, help="a joint/t2v training checkpoint instead of --model")
    ap.add_argument("--vae", default="runs/toy/vae/last.pt", help="with --ckpt: the vae-stage checkpoint")
    ap.add_argument("--timesteps", default="900,600,300")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.ckpt:
        from vgen.toyworld.train import load_checkpoint_models

        m = load_checkpoint_models(a.ckpt, a.vae)
        tokenizer, text_encoder, unet = m["tokenizer"], m["text_encoder"], m["unet3d"]
    else:
        from vgen.config import ModelConfig
        from vgen.models import load_components

        c = load_components(ModelConfig(id=a.model), device="cpu", dtype=torch.float32)
        tokenizer, text_encoder, unet = c.tokenizer, c.text_encoder, c.unet
    timesteps = [int(t) for t in a.timesteps.split(",")]
    rows = probe(tokenizer, text_encoder, unet.eval(), timesteps, a.frames, a.seed)
    cols = list(next(iter(rows.values())))
    print(f"{'attribute':<10} " + " ".join(f"{c:>12}" for c in cols))
    for name, row in rows.items():
        print(f"{name:<10} " + " ".join(f"{row[c]:>12.4f}" for c in cols))


if __name__ == "__main__":
    main()
