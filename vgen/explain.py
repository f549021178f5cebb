"""Show what Vico sees: each key token's attention-flow map over frames, before and after its latent update.

``explain`` follows a job's own trajectory (same seed, scheduler, key tokens) up to one denoising step,
measures the key tokens' smoothed flow maps there (the maps whose maxima are Vico's scores A_k), applies
Vico's update of that step (method "vico") and measures again, then renders a PNG grid: one row per key
token, one column per frame, the token's A_k in the legend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vgen.config import JobConfig, output_stem
from vgen.core.prompts import prompt_length
from vgen.core.sampler import denoise, resolve_size
from vgen.errors import ConfigError
from vgen.methods.context import RunContext
from vgen.methods.vico.guide import VicoGuide
from vgen.methods.vico.runner import prepare, recording
from vgen.models import Components

CELL = 64  # pixels per frame map
LABEL_W = 150


def _heat(x: np.ndarray) -> np.ndarray:
    """[h, w] in [0, 1] -> RGB uint8 on a black-red-yellow-white ramp."""
    x = np.clip(x, 0, 1)[..., None]
    rgb = np.concatenate([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def render_maps(panels: list[tuple[str, torch.Tensor, dict[str, float]]], path: Path) -> Path:
    """Panels of (title, maps [K, F, h, w], scores {label: A}) stacked vertically into one PNG. All panels
    share one colour scale (smallest .. largest value) so before and after compare directly."""
    font = ImageFont.load_default()
    vmin = min(float(m.min()) for _, m, _ in panels)
    vmax = max(float(m.max()) for _, m, _ in panels)
    span = (vmax - vmin) or 1.0
    K, F = panels[0][1].shape[:2]
    title_h, row_h = 22, CELL + 6
    width = LABEL_W + F * (CELL + 2)
    height = len(panels) * (title_h + K * row_h) + 18
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    y = 0
    for title, maps, scores in panels:
        draw.text((4, y + 5), title, fill="black", font=font)
        y += title_h
        for k, label in enumerate(scores):
            draw.text((4, y + CELL // 2 - 6), f"{label}: A={scores[label]:.4f}", fill="black", font=font)
            for f in range(F):
                tile = Image.fromarray(_heat((maps[k, f].detach().float().cpu().numpy() - vmin) / span))
                image.paste(tile.resize((CELL, CELL), Image.NEAREST), (LABEL_W + f * (CELL + 2), y))
            y += row_h
    draw.text((4, y + 2), f"colour scale {vmin:.4f} .. {vmax:.4f}; columns = frames", fill="gray", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def explain(job: JobConfig, components: Components, out_dir: str | Path, method: str = "vico",
            step: int = 0, generator: Optional[torch.Generator] = None) -> list[Path]:
    """Render key-token flow maps at denoising ``step`` of ``job``'s trajectory into ``out_dir``.

    method "vico": the trajectory with Vico's updates; the PNG shows the maps before and after the update
    of ``step`` (unchanged if ``step`` is not an update step). method "vanilla": the plain trajectory,
    maps only. Returns the written paths (``<stem>_flow_step<k>.png``).
    """
    if method not in ("vico", "vanilla"):
        raise ConfigError(f"explain: method must be 'vico' or 'vanilla', got '{method}'")
    from vgen.methods import get_method

    kinds = get_method("vico").kinds  # the maps are Vico's recorded attention flow
    if components.kind not in kinds:
        raise ConfigError(f"explain: flow maps are recorded on {'/'.join(kinds)} models; '{components.name}' is a "
                          f"{components.kind} model")
    s = job.sampler
    if not 0 <= step < s.steps:
        raise ConfigError(f"explain: step must be in [0, {s.steps - 1}], got {step}")
    height, width = resolve_size(components, job.video.height, job.video.width)
    ctx = RunContext(generator=generator or torch.Generator("cpu").manual_seed(job.seed), height=height,
                     width=width, output_stem=Path(out_dir) / output_stem(job), progress=False)
    prompt, scheduler, latents, keys = prepare(job, components, ctx)
    if len(keys) < 2 and method == "vico":
        raise ConfigError(f"explain: '{job.prompt}' has {len(keys)} key token(s); Vico needs 2")
    if not keys:
        raise ConfigError(f"explain: no key tokens in '{job.prompt}'")
    n_tokens = prompt_length(components.tokenizer, job.prompt)
    panels: list = []
    with recording(components, job.vico) as recorder:
        guide = VicoGuide(job.vico, components, scheduler, prompt, keys, n_tokens, recorder, s.steps)

        def hook(i, t, x):
            if i == step:
                _, scores, maps = guide.measure(x, t)
                panels.append((f"step {i} (t={int(t)}), {method}: before update", maps, guide.named(scores)))
            if method == "vico":
                x = guide(i, t, x)
            if i == step and method == "vico":
                _, scores, maps = guide.measure(x, t)
                panels.append((f"step {i} (t={int(t)}), vico: after update", maps, guide.named(scores)))
            return x

        denoise(components, scheduler, latents, prompt, s.guidance, timesteps=list(scheduler.timesteps)[: step + 1],
                generator=ctx.generator, eta=s.eta, pre_step=hook, progress=False, guidance_2=s.guidance_2)
    if method == "vanilla":
        panels[0] = (panels[0][0].replace(": before update", ""), *panels[0][1:])
    path = Path(out_dir) / f"{output_stem(job)}_flow_step{step}.png"
    return [render_maps(panels, path)]
