"""Score a toy model on held-out prompts with the vanilla sampler and the exact detector.

Numbers, not eyeballs: single-object colour+shape and motion rates, t2i colour+shape rate, and
2/3-object all-present rates. Prompts are batched through the same sampler pieces vanilla uses
(encode_prompt, prepare_scheduler, denoise with CFG, decode); each sample has its own seeded noise,
so a row is reproducible on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .captions import eval_prompts
from .detector import score_image, score_video


@dataclass
class EvalTable:
    """Rows of (metric, rate, n) plus the per-prompt records they came from."""

    rows: list[tuple[str, float, int]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    def add(self, name: str, hits: Sequence[bool]) -> None:
        self.rows.append((name, float(np.mean(hits)) if len(hits) else float("nan"), len(hits)))

    def as_dict(self) -> dict[str, float]:
        return {name: rate for name, rate, _ in self.rows}

    def render(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [6])
        lines = [f"{'metric':<{width}}  {'rate':>6}  {'n':>4}"]
        lines += [f"{name:<{width}}  {rate:>6.1%}  {n:>4}" for name, rate, n in self.rows]
        return "\n".join(lines)


def vanilla_defaults(model_id) -> tuple[int, int, float]:
    """(frames, steps, guidance) of the model's vgen.yaml vanilla section; else 8 (17 on Wan folders), 20, 5."""
    from vgen.model_settings import folder_info, local_folder, model_settings

    folder = local_folder(model_id) if model_id else None
    frames = 17 if folder is not None and folder_info(folder)[0] == "wan" else 8
    section, _ = model_settings(model_id, "vanilla") if model_id else (None, None)
    sampler = section.get("sampler", {}) if section is not None else {}
    video = section.get("video", {}) if section is not None else {}
    return int(video.get("frames", frames)), int(sampler.get("steps", 20)), float(sampler.get("guidance", 5.0))


def _components(model, dtype=torch.float32):
    from vgen.config import ModelConfig
    from vgen.models import Components, load_components

    if isinstance(model, Components):
        return model
    return load_components(ModelConfig(id=str(model)), device="cpu", dtype=dtype)


@torch.no_grad()
def generate(components, prompts: Sequence[str], seeds: Sequence[int], frames: int, steps: int, guidance: float,
             scheduler: str = "auto", batch: int = 8, progress: bool = False) -> np.ndarray:
    """uint8 [N, F, H, W, 3]: prompt i from noise seeded with seeds[i], `batch` prompts per sampler call.
    scheduler "auto" is the family's default (DDIM on the UNet toys, the folder's own UniPC flow sampler on Wan);
    noise is drawn in the dtype latents live in (float32 on Wan, as WanPipeline)."""
    from vgen.core.noise import iid_noise
    from vgen.core.prompts import PromptEmbeds, encode_prompt
    from vgen.core.sampler import decode_latents, denoise, latent_dtype, latent_shape, to_uint8
    from vgen.core.schedulers import prepare_scheduler

    h, w = components.native_size
    out = []
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start : start + batch])
        embeds = [encode_prompt(components, p, "", guidance) for p in chunk]
        prompt = PromptEmbeds(
            cond=torch.cat([e.cond for e in embeds]),
            uncond=torch.cat([e.uncond for e in embeds]) if embeds[0].guided else None,
        )
        shape = latent_shape(components, frames, h, w)
        sched = prepare_scheduler(scheduler, components.scheduler, steps, components.device, components.family, shape)
        noise = [iid_noise(shape, torch.Generator().manual_seed(int(s)), components.device, latent_dtype(components))
                 for s in seeds[start : start + batch]]
        latents = torch.cat(noise) * sched.init_noise_sigma
        latents = denoise(components, sched, latents, prompt, guidance, progress=progress)
        out.append(to_uint8(decode_latents(components, latents)))
    return np.concatenate(out)


def evaluate(
    model="toy",
    image_model: Optional[object] = "toy-t2i",
    n_single: int = 48,
    n_multi: int = 24,
    n_image: int = 48,
    seed: int = 0,
    frames: int = 8,
    steps: int = 20,
    guidance: float = 5.0,
    batch: int = 8,
    progress: bool = False,
) -> EvalTable:
    """Run the toy evaluation; `model` / `image_model` are built-in names, folders or Components.

    Prompts come from eval_prompts (held-out multi-object compositions); seeds are seed + index.
    image_model=None skips the t2i row.
    """
    table = EvalTable()
    comp = _components(model) if (n_single or n_multi) else None

    def run(prompts, judge):
        seeds = [seed + i for i in range(len(prompts))]
        vids = generate(comp, prompts, seeds, frames, steps, guidance, batch=batch, progress=progress)
        scores = [judge(v, p) for v, p in zip(vids, prompts)]
        for p, s, sc in zip(prompts, seeds, scores):
            table.records.append({"prompt": p, "seed": s, "score": sc.to_dict()})
        return scores

    if n_single:
        scores = run(eval_prompts(1, n_single, seed), score_video)
        objs = [s.objects[0] for s in scores]
        table.add("single colour+shape", [o.present and o.colour_ok and o.shape_ok for o in objs])
        table.add("single colour", [o.present and o.colour_ok for o in objs])
        table.add("single motion", [bool(o.motion_ok) for o in objs])
        table.add("single all correct", [s.all_correct for s in scores])
        # random colour noise makes every colour "present"; unprompted objects expose that
        table.add("single no extra objects", [not s.extra_objects for s in scores])
    for k in (2, 3):
        if n_multi:
            scores = run(eval_prompts(k, n_multi, seed), score_video)
            table.add(f"{k}-object all present", [s.all_present for s in scores])
            table.add(f"{k}-object fraction present", [s.fraction_present for s in scores])
            table.add(f"{k}-object all correct", [s.all_correct for s in scores])
    if image_model is not None and n_image:
        comp = _components(image_model)
        prompts = eval_prompts(1, n_image, seed + 1)
        seeds = [seed + i for i in range(len(prompts))]
        imgs = generate(comp, prompts, seeds, 1, steps, guidance, batch=2 * batch, progress=progress)
        scores = [score_image(v[0], p) for v, p in zip(imgs, prompts)]
        table.add("t2i colour+shape", [s.objects[0].present and s.objects[0].colour_ok and s.objects[0].shape_ok
                                       for s in scores])
    return table
