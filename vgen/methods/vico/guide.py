"""VicoGuide: the sampler's pre_step hook that measures the key tokens' flow on one positive-prompt forward pass
and updates the latent (Adam on a float32 master copy)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable, Optional

import torch

from vgen.core.prompts import PromptEmbeds, leading_tokens
from vgen.core.sampler import predict_noise
from vgen.methods.vico.config import VicoConfig
from vgen.methods.vico.flow import full_graph_flow, st_flow_blocks
from vgen.methods.vico.keys import KeyToken
from vgen.methods.vico.recorder import AttentionRecorder, RecordingComplete
from vgen.methods.vico.schedule import lr_schedule, update_plan
from vgen.methods.vico.scores import token_maps, token_scores, vico_loss
from vgen.models import Components


def attention_flow(blocks: list, cfg: VicoConfig, tiled: Optional[bool] = None) -> torch.Tensor:
    """[F, P, J] flow of the recorded graph (flow.py kernels; ``tiled`` as in ``flow.bottleneck``)."""
    if cfg.graph == "full":
        return full_graph_flow(blocks, cfg.flow, cfg.tau, cfg.residual, tiled, cfg.order)
    return st_flow_blocks(blocks, cfg.flow, cfg.tau, cfg.residual, tiled, cfg.order)


class VicoGuide:
    """Measures key-token flow on one positive-prompt forward pass and updates latents (the pre_step hook)."""

    def __init__(self, cfg: VicoConfig, components: Components, scheduler: Any, prompt: PromptEmbeds,
                 keys: list[KeyToken], n_tokens: int, recorder: AttentionRecorder, steps: int,
                 log: Callable[[str], None] = lambda m: None):
        self.cfg, self.c, self.scheduler, self.prompt = cfg, components, scheduler, prompt
        self.keys, self.n_tokens, self.recorder, self.log = keys, n_tokens, recorder, log
        # flow never mixes text tokens (products and joins are per column): the padding columns of the
        # cross-attention maps would only cost time and memory
        recorder.tokens = n_tokens
        self.plan, self.steps = update_plan(cfg, steps), steps
        self.lrs = lr_schedule(cfg.lr, steps)
        self.lead = leading_tokens(components.tokenizer)  # tokens before the prompt's first: CLIP 1, T5/UMT5 0
        self.history: list[dict] = []
        # key-token scores once the updates are over: one no-grad measurement at the first step after them,
        # or right after the last update where the updates run to the last step (the public schedule with
        # 25 steps or fewer)
        self.last_update = max(self.plan) if self.plan else None
        self.after_step = self.last_update + 1 if self.plan else None
        self.scores_after: dict[str, float] = {}
        self.skipped: list[int] = []

    def measure(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, scores [K], maps [K, F, h, w]) at latent x [1, C, F, H, W]; differentiable in x."""
        f, h, w = self.recorder.grid(tuple(x.shape))
        blocks = self.record(x, t)
        # the tiled product keeps O(P*F*J) for backward instead of every P*F*F*J term, and needs fewer
        # transcendentals (2-3x faster than the plain broadcast at these sizes)
        flow = attention_flow(blocks, self.cfg, tiled=True)
        flow = flow.reshape(f, h * w, flow.shape[-1])  # a DiT's full graph is one "frame" of F·h·w nodes
        del blocks
        maps = token_maps(flow, self.keys, self.n_tokens, h, w, self.cfg.scale, self.cfg.sigma, self.cfg.smoothing,
                          self.lead)
        scores = token_scores(maps)
        return vico_loss(scores, self.cfg.objective), scores, maps

    def record(self, x: torch.Tensor, t) -> list:
        """The graph's recorded maps as flow blocks from one positive-prompt forward pass (stopped after
        the last needed layer), checkpointed layer by layer when it keeps a graph and cfg.checkpoint."""
        lean = self.cfg.checkpoint and torch.is_grad_enabled()
        self.recorder.clear()
        self.recorder.active = True
        try:
            model = self.c.family.denoiser_at(self.c, t)
            with self.recorder.lean(model, self.cfg.checkpoint_levels) if lean else nullcontext():
                model_in = self.scheduler.scale_model_input(x.to(self.c.dtype), t)
                predict_noise(self.c, model_in, t, self.prompt.cond[:1])
        except RecordingComplete:
            pass
        finally:
            self.recorder.active = False
        blocks = self.recorder.blocks(x.shape[2])
        self.recorder.clear()
        if not blocks:
            raise RuntimeError("Vico recorded no cross-attention: the model has no layer for its graph")
        return blocks

    def named(self, scores: torch.Tensor) -> dict[str, Optional[float]]:
        return {k.label: finite_or_none(round(float(s), 6)) for k, s in zip(self.keys, scores.detach())}

    def __call__(self, i: int, t, latents: torch.Tensor) -> torch.Tensor:
        """pre_step hook: the latent update of step i (public code's order). Each iteration measures the
        loss first and stops once it is below the step's threshold, so a step may make no update; otherwise
        one Adam step. vico.latent float32 (ours): Adam steps a float32 copy and the sampler keeps a float32
        master latent, so a 1e-4 step survives a half-precision model; model (public code): Adam steps the
        latent in the model's dtype, where such a step may round away."""
        if i == self.after_step:
            with torch.no_grad():
                self.scores_after = self.named(self.measure(latents, t)[1])
        if i not in self.plan:
            return latents
        iterations, threshold = self.plan[i]
        dtype = torch.float32 if self.cfg.latent == "float32" else self.c.dtype
        x = latents.detach().to(dtype).clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.lrs[i], eps=self.cfg.adam_eps)
        record = {"step": i, "t": int(t), "lr": self.lrs[i], "threshold": threshold, "losses": [], "updates": 0}
        with torch.enable_grad():
            for _ in range(iterations):
                loss, scores, _ = self.measure(x, t)
                value = loss.item()
                record["losses"].append(finite_or_none(value))
                record.setdefault("scores", self.named(scores))
                if math.isfinite(value) and value < threshold:
                    break
                opt.zero_grad()
                loss.backward()
                del loss, scores  # drop the spent graph before the next pass builds one
                previous = x.detach().clone()
                ok = math.isfinite(value) and bool(torch.isfinite(x.grad).all())
                if ok:
                    opt.step()
                    ok = bool(torch.isfinite(x).all())
                if not ok:
                    with torch.no_grad():
                        x.copy_(previous)
                    self.skipped.append(i)
                    record["skipped"] = True
                    self.log(f"vico: non-finite update at step {i} skipped")
                    break
                record["updates"] += 1
        self.history.append(record)
        out = latents if record["updates"] == 0 else x.detach().to(latents.dtype)
        if i == self.last_update and self.after_step >= self.steps:
            with torch.no_grad():
                self.scores_after = self.named(self.measure(out, t)[1])
        return out

    def weakest(self) -> dict:
        """The weakest key token before the updates, its score before and after, and whether it moved
        (rose by at least MOVED_BY): a run whose weakest token did not move got nothing from Vico."""
        before = self.history[0]["scores"] if self.history else {}
        if not before or not self.scores_after:
            return {}
        token = min(before, key=lambda k: before[k] if before[k] is not None else math.inf)
        b, a = before[token], self.scores_after.get(token)
        moved = b is not None and a is not None and a - b >= MOVED_BY
        return {"token": token, "before": b, "after": a, "moved": bool(moved)}


# A weakest-token score that rose by less than this (scores are in [0, 1]) counts as not moved.
MOVED_BY = 1e-3


def fmt_score(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3g}"


def finite_or_none(value: float) -> Optional[float]:
    """Strict JSON has no NaN or infinity: a non-finite number is recorded as null."""
    return value if math.isfinite(value) else None
