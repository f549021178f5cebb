"""Vico: compositional video by equalising attention flow (SPEC.md section 1, arXiv 2407.06182).

Algorithm (per denoising step i of N, before the usual CFG step), as the public code (Adamdad/vico) does it:
    if i < 25 (absolute: every step when N <= 25):
        x <- the float32 master latent (ours; the public code's is in the model's dtype: vico.latent model)
        Adam(x, lr = lr0 * sqrt(linspace(1, 0.5, N))[i], eps 1e-7)
        repeat (10 times at most at steps 0, 10, 20 with thresholds 0.95/0.5/0.2; once at other steps, 0.2):
            record cross + temporal attention of one positive-prompt forward pass (with autograd): every
                cross-attention at the recorded resolution (down, mid and up blocks) with its temporal layers
            flow   = ST-Flow of the recorded graph, (R2 ⊗ R1) ⊗ C per unit, units averaged   [F, P, J]
            A_k    = max over (f, h, w) of Smooth3x3x3(softmax_j(100 * flow[real tokens]))[key token k]
            loss   = max_k relu(1 - A_k)        (raise the weakest key token)
            stop if loss < threshold            (checked before the update: a step may make none)
            x <- Adam step on d loss / d x
    x_{i-1} <- scheduler step with the CFG noise prediction at x

Key tokens: nouns and verbs of the prompt (a part-of-speech tagger, tagging.py; keys.py) plus left/right/top/bottom.

Memory: the gradient pass keeps one input per UNet layer and recomputes the layer in backward
(``checkpointed``, vico.checkpoint); the recorded layers keep no probability tensor for backward
(``vgen.core.attention.recorded_attention``); cross-attention maps keep only the prompt's tokens; the flow
product is the tiled one. Together they hold the pass near one CFG step's memory, for the price of
one extra batch-1 forward.
"""

from __future__ import annotations

from typing import ContextManager

import torch

from vgen.config import JobConfig
from vgen.core.prompts import prompt_length
from vgen.core.sampler import decode_latents, denoise, to_uint8
from vgen.methods.context import RunContext
from vgen.methods.start import start_video
from vgen.methods.vico.guide import VicoGuide, fmt_score
from vgen.methods.vico.keys import select_key_tokens
from vgen.methods.vico.dit import record_dit_attention
from vgen.methods.vico.recorder import record_attention
from vgen.models import Components
from vgen.video import Video


def prepare(job: JobConfig, components: Components, ctx: RunContext):
    """Everything a Vico run starts from: prompt embeddings, scheduler, x_T and the key tokens."""
    start = start_video(job, components, ctx)
    keys = select_key_tokens(components.tokenizer, job.prompt, job.vico)
    return start.prompt, start.scheduler, start.latents, keys


def recording(components: Components, cfg) -> ContextManager:
    """The recorder of Vico's graph for this model: a UNet's cross + temporal layers, or a DiT's blocks (its
    family's attention sites belong to transformer blocks) with their same-position slices."""
    if any(site.block is not None for site in components.family.attention_sites(components)):
        return record_dit_attention(components, cfg, stop_when_complete=True)
    return record_attention(components.unet, cfg.graph, stop_when_complete=True, units=cfg.units)


def run(job: JobConfig, components: Components, ctx: RunContext) -> Video:
    s, cfg = job.sampler, job.vico
    prompt, scheduler, latents, keys = prepare(job, components, ctx)
    meta: dict = {"key_tokens": {k.label: list(k.indices) for k in keys}}
    if len(keys) < 2:
        message = f"vico: {len(keys)} key token(s) in '{job.prompt}' (need 2); sampled without Vico"
        ctx.log(message)
        meta["skipped"] = message
        latents = denoise(components, scheduler, latents, prompt, s.guidance, generator=ctx.generator,
                          eta=s.eta, progress=ctx.progress, guidance_2=s.guidance_2)
    else:
        n_tokens = prompt_length(components.tokenizer, job.prompt)
        master = torch.float32 if cfg.latent == "float32" else None  # model: x_T stays in the model's dtype
        with recording(components, cfg) as recorder:
            guide = VicoGuide(cfg, components, scheduler, prompt, keys, n_tokens, recorder, s.steps, ctx.log)
            latents = denoise(components, scheduler, latents, prompt, s.guidance, generator=ctx.generator,
                              eta=s.eta, progress=ctx.progress, pre_step=guide, description="denoising (vico)",
                              master_dtype=master, guidance_2=s.guidance_2)
        weakest = guide.weakest()
        updates = sum(r["updates"] for r in guide.history)
        if updates == 0:
            ctx.log("vico: no latent update was made: every loss was already below its threshold")
        elif weakest and not weakest["moved"]:
            ctx.log(f"vico: warning: the weakest key token '{weakest['token']}' did not move "
                    f"({fmt_score(weakest['before'])} -> {fmt_score(weakest['after'])}); Vico changed little here "
                    f"(a larger vico.lr may help on this model)")
        meta.update(
            graph=cfg.graph,
            update_steps=sorted(guide.plan),
            steps=guide.history,
            scores_before=guide.history[0]["scores"] if guide.history else {},
            scores_after=guide.scores_after,
            nonfinite_skipped={"count": len(guide.skipped), "steps": guide.skipped},
            updates=updates,
            weakest=weakest,
            select=cfg.select if not (cfg.tokens or cfg.words) else ("tokens" if cfg.tokens else "words"),
        )
    frames = decode_latents(components, latents, job.memory.decode_chunk)[0]
    return Video(to_uint8(frames), fps=job.video.fps, metadata={"vico": meta})
