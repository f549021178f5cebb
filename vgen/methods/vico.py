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

Key tokens: nouns and verbs of the prompt (a part-of-speech tagger, core.tagging) plus left/right/top/bottom.

Memory: the gradient pass keeps one input per UNet layer and recomputes the layer in backward
(``checkpointed``, vico.checkpoint); the recorded layers keep no probability tensor for backward
(``core.attention.recorded_attention``); cross-attention maps keep only the prompt's tokens; the flow
product is the tiled one. Together they hold the pass near one CFG step's memory, for the price of
one extra batch-1 forward.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.checkpoint import checkpoint

from vgen.config import JobConfig, VicoConfig
from vgen.core.attention import AttentionRecorder, RecordingComplete, record_attention
from vgen.core.flow import full_graph_flow, st_flow_blocks
from vgen.core.prompts import PromptEmbeds, encode_prompt, prompt_length, token_spans, word_span_at
from vgen.core.sampler import decode_latents, denoise, initial_latents, latent_shape, predict_noise, to_uint8
from vgen.core.schedulers import prepare_scheduler
from vgen.errors import ConfigError
from vgen.jobs import RunContext
from vgen.models import Components
from vgen.video import Video

# The official key finder (utils.find_keywords of the public code): Penn Treebank noun and verb tags, the
# four direction words whatever their tag, never "view" or "is".
OFFICIAL_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS", "VB", "VBD", "VBG", "VBN", "VBP", "VBZ"})
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
DIRECTION_WORDS = frozenset({"left", "right", "top", "bottom"})
NEVER_KEY = frozenset({"view", "is"})


@dataclass(frozen=True)
class KeyToken:
    label: str  # the word, "word#2" for its second occurrence, or "#<index>" for an explicit index
    indices: tuple[int, ...]  # positions in the encoded prompt (start token = 0)


def key_words(prompt: str, select: str = "official", stop_words: frozenset = frozenset()) -> list[tuple[str, int]]:
    """(word, character offset) of the prompt's automatic key words, one per occurrence.

    official: nouns and verbs by part of speech, plus left/right/top/bottom, minus view/is (the public code);
    nouns: nouns only (ours: keeps motion verbs, which describe how a thing moves, out of the competition).
    """
    from vgen.core.tagging import pos_tags

    tags = OFFICIAL_TAGS if select == "official" else NOUN_TAGS
    extra = DIRECTION_WORDS if select == "official" else frozenset()
    out = []
    for w in pos_tags(prompt):
        word = w.text.lower()
        if word in NEVER_KEY or word in stop_words or not any(ch.isalnum() for ch in word):
            continue
        if w.tag in tags or word in extra:
            out.append((w.text, w.start))
    return out


def select_key_tokens(tokenizer, prompt: str, cfg: VicoConfig) -> list[KeyToken]:
    """Key tokens from explicit indices, else from words (each word's every occurrence, as one span), else
    automatic (``key_words``: one key token per occurrence, a word split into several tokens as its span)."""
    n = prompt_length(tokenizer, prompt)
    if cfg.tokens:
        bad = [i for i in cfg.tokens if not 1 <= i <= n - 2]
        if bad:
            raise ConfigError(f"vico.tokens {bad} are outside the prompt's tokens 1..{n - 2}")
        return [KeyToken(f"#{i}", (i,)) for i in dict.fromkeys(cfg.tokens)]
    words = [w.strip() for item in cfg.words for w in str(item).split(",") if w.strip()]
    if words:
        keys = []
        for word in dict.fromkeys(words):
            try:
                span = token_spans(tokenizer, prompt, [word])[word]
            except ValueError:
                raise ConfigError(f"vico.words: '{word}' is not in the prompt '{prompt}'") from None
            span = tuple(i for i in span if i <= n - 2)  # drop what truncation cut off
            if span:
                keys.append(KeyToken(word, span))
        return keys
    stop = frozenset(w.lower() for w in cfg.stop_words)
    keys, seen, count = [], set(), {}
    for word, start in key_words(prompt, cfg.select, stop):
        span = tuple(i for i in word_span_at(tokenizer, prompt, start, word) if i <= n - 2)
        if not span or span in seen:
            continue
        seen.add(span)
        count[word.lower()] = count.get(word.lower(), 0) + 1
        label = word.lower() if count[word.lower()] == 1 else f"{word.lower()}#{count[word.lower()]}"
        keys.append(KeyToken(label, span))
    return keys


def smoothing_kernel3d(sigma: float, kind: str = "official", size: int = 3) -> torch.Tensor:
    """Normalised size^3 kernel over (frames, height, width), a product of one weight per axis offset d.

    official: exp(-(d / (2σ))²) (the public code's GaussianSmoothing: with σ 0.5 an effective σ of 0.71 and
    a centre weight of 0.19); textbook: exp(-d² / (2σ²)) (σ 0.5: centre 0.49).
    """
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-((d / (2 * sigma)) ** 2)) if kind == "official" else torch.exp(-(d**2) / (2 * sigma**2))
    k = g[:, None, None] * g[None, :, None] * g[None, None, :]
    return (k / k.sum()).float()


def smooth_maps(maps: torch.Tensor, sigma: float, kind: str = "official") -> torch.Tensor:
    """Smooth [K, F, h, w] maps with the 3x3x3 kernel. Borders: reflect (public code), or replicate for the
    textbook kernel and along any axis of length 1 (reflection needs two samples)."""
    if sigma <= 0:
        return maps
    x = maps[:, None]
    mode = "reflect" if kind == "official" and min(maps.shape[1:]) >= 2 else "replicate"
    x = torch.nn.functional.pad(x, (1, 1, 1, 1, 1, 1), mode=mode)
    return torch.nn.functional.conv3d(x, smoothing_kernel3d(sigma, kind).to(maps)[None, None])[:, 0]


def token_maps(flow: torch.Tensor, keys: list[KeyToken], n_tokens: int, h: int, w: int,
               scale: float = 100.0, sigma: float = 0.5, smoothing: str = "official") -> torch.Tensor:
    """Each key token's smoothed map [K, F, h, w]: softmax over the real tokens of scale*flow, the key's
    span summed (a multi-token word holds its span's share), then the 3x3x3 smoothing."""
    F = flow.shape[0]
    probs = (flow[..., 1 : n_tokens - 1].float() * scale).softmax(dim=-1)  # real tokens only
    maps = torch.stack([probs[..., [i - 1 for i in k.indices]].sum(-1) for k in keys])  # [K, F, P]
    return smooth_maps(maps.reshape(len(keys), F, h, w), sigma, smoothing)


def token_scores(maps: torch.Tensor) -> torch.Tensor:
    """A_k = max of key token k's smoothed map."""
    return maps.flatten(1).amax(dim=1)


def vico_loss(scores: torch.Tensor, objective: str = "hinge") -> torch.Tensor:
    """hinge (public code): max_k relu(1 - A_k); min (paper): -min_k A_k. Both raise the weakest token."""
    if objective == "min":
        return -scores.min()
    return torch.relu(1 - scores).max()


def lr_schedule(lr: float, steps: int) -> list[float]:
    """lr * sqrt(linspace(1, 0.5, steps)): smaller steps as the latent gets cleaner."""
    return (lr * torch.linspace(1.0, 0.5, steps, dtype=torch.float64).sqrt()).tolist()


def iterative_steps(cfg: VicoConfig, steps: int) -> list[int]:
    """The steps with iterative refinement. schedule absolute (public code): vico.iterative_steps as given
    (0, 10, 20: with 20 steps the refinements are at 0 and 10). schedule fraction (ours): vico.iterative_at
    scaled to the step count (0, 0.2, 0.4 -> 0, 10, 20 of 50; 0, 2, 4 of 10), so none vanishes."""
    if cfg.schedule == "absolute":
        return [int(i) for i in cfg.iterative_steps]
    return [min(int(round(f * steps)), steps - 1) for f in cfg.iterative_at]


def updates_at(cfg: VicoConfig, i: int, steps: int) -> bool:
    """Whether step i may update the latent: i < vico.update_until (absolute, public code: every step of
    a run of 25 steps or fewer) or i < vico.fraction * steps (fraction, ours)."""
    return i < cfg.update_until if cfg.schedule == "absolute" else i < cfg.fraction * steps


def update_plan(cfg: VicoConfig, steps: int) -> dict[int, tuple[int, float]]:
    """step -> (max iterations, loss threshold) for the steps that may update the latent: refinement steps
    (vico.max_iterations, their own threshold), other update steps (one iteration, vico.threshold)."""
    iterative = dict(zip(iterative_steps(cfg, steps), cfg.thresholds))
    plan = {}
    for i in range(steps):
        if updates_at(cfg, i, steps):
            plan[i] = (cfg.max_iterations, float(iterative[i])) if i in iterative else (1, float(cfg.threshold))
    return plan


def attention_flow(blocks: list, cfg: VicoConfig, tiled: Optional[bool] = None) -> torch.Tensor:
    """[F, P, J] flow of the recorded graph (flow.py kernels; ``tiled`` as in ``flow.bottleneck``)."""
    if cfg.graph == "full":
        return full_graph_flow(blocks, cfg.flow, cfg.tau, cfg.residual, tiled, cfg.order)
    return st_flow_blocks(blocks, cfg.flow, cfg.tau, cfg.residual, tiled, cfg.order)


# ----------------------------------------------------------------------------------------------------------
# Memory-lean gradient pass: activation checkpointing of the UNet's layers

# The layer lists of diffusers' video UNet blocks (UNet3D and motion) whose members keep several
# activations for backward. Not the downsamplers: a strided conv keeps only its input, which the
# checkpoint would keep as well (recomputing it would buy nothing).
_LAYER_LISTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "motion_modules", "upsamplers")


def checkpoint_units(unet: torch.nn.Module, levels: Optional[int] = None) -> list[torch.nn.Module]:
    """The modules the gradient pass checkpoints one by one: UNet3D's transformer_in and every resnet,
    temporal conv, transformer, motion module and upsampler of the down, mid and up blocks; with
    ``levels``, only those of the ``levels`` finest resolutions (level 0 = the UNet input's; an upsampler
    counts at its input's level)."""
    n = len(unet.down_blocks)
    placed = [(0, unet.transformer_in)] if getattr(unet, "transformer_in", None) is not None else []
    blocks = [(i, b) for i, b in enumerate(unet.down_blocks)] + [(n - 1, unet.mid_block)]
    blocks += [(n - 1 - i, b) for i, b in enumerate(unet.up_blocks)]
    for level, block in blocks:
        for name in _LAYER_LISTS:
            placed.extend((level, m) for m in getattr(block, name, None) or [])
    return [m for level, m in placed if levels is None or level < levels]


def _checkpointed(forward: Callable, context_fn: Callable) -> Callable:
    """``forward`` that keeps only its inputs for backward and recomputes the rest there. Non-reentrant,
    so the forward builds the real graph: tensors taken out of it (recorded maps) stay connected and
    backward through them recomputes the saved tensors they need (early stop: no further)."""

    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, context_fn=context_fn, preserve_rng_state=False,
                          **kwargs)

    return run


@contextmanager
def checkpointed(unet: torch.nn.Module, recorder: AttentionRecorder, levels: Optional[int] = None) -> Iterator[None]:
    """Activation checkpointing of ``checkpoint_units`` for the length of the block (diffusers' UNet3D has
    none): a gradient pass stores one input per layer instead of every activation. Models are eval()
    (no dropout), so no RNG state is kept for the recompute."""
    units = checkpoint_units(unet, levels)
    previous = [m.__dict__.get("forward") for m in units]
    for m in units:
        m.forward = _checkpointed(m.forward, recorder.checkpoint_contexts)
    try:
        yield
    finally:
        for m, forward in zip(units, previous):
            if forward is None:
                del m.forward
            else:
                m.forward = forward


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
        self.plan = update_plan(cfg, steps)
        self.lrs = lr_schedule(cfg.lr, steps)
        self.factor = max((s.factor for s in recorder.specs.values()), default=1)
        self.history: list[dict] = []
        # key-token scores once the updates are over (first step after them: one no-grad measurement)
        self.after_step = max(self.plan) + 1 if self.plan else None
        self.scores_after: dict[str, float] = {}
        self.skipped: list[int] = []

    def measure(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, scores [K], maps [K, F, h, w]) at latent x [1, C, F, H, W]; differentiable in x."""
        f, H, W = x.shape[2:]
        h, w = H, W
        for _ in range(int(math.log2(self.factor))):
            h, w = -(-h // 2), -(-w // 2)
        blocks = self.record(x, t)
        # the tiled product keeps O(P*F*J) for backward instead of every P*F*F*J term, and needs fewer
        # transcendentals (2-3x faster than the plain broadcast at these sizes)
        flow = attention_flow(blocks, self.cfg, tiled=True)
        del blocks
        maps = token_maps(flow, self.keys, self.n_tokens, h, w, self.cfg.scale, self.cfg.sigma, self.cfg.smoothing)
        scores = token_scores(maps)
        return vico_loss(scores, self.cfg.objective), scores, maps

    def record(self, x: torch.Tensor, t) -> list:
        """The graph's recorded maps as flow blocks from one positive-prompt forward pass (stopped after
        the last needed layer), checkpointed layer by layer when it keeps a graph and cfg.checkpoint."""
        lean = self.cfg.checkpoint and torch.is_grad_enabled()
        self.recorder.clear()
        self.recorder.active = True
        try:
            with checkpointed(self.c.unet, self.recorder, self.cfg.checkpoint_levels) if lean else nullcontext():
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
        if record["updates"] == 0:
            return latents
        return x.detach().to(latents.dtype)

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


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3g}"


def finite_or_none(value: float) -> Optional[float]:
    """Strict JSON has no NaN or infinity: a non-finite number is recorded as null."""
    return value if math.isfinite(value) else None


def prepare(job: JobConfig, components: Components, ctx: RunContext):
    """Everything a Vico run starts from: prompt embeddings, scheduler, x_T and the key tokens."""
    s = job.sampler
    prompt = encode_prompt(components, job.prompt, job.negative, s.guidance)
    scheduler = prepare_scheduler(s.scheduler, components.scheduler, s.steps, components.device)
    shape = latent_shape(components, job.video.frames, ctx.height, ctx.width)
    latents = initial_latents(components, shape, ctx.generator, scheduler)
    keys = select_key_tokens(components.tokenizer, job.prompt, job.vico)
    return prompt, scheduler, latents, keys


def run(job: JobConfig, components: Components, ctx: RunContext) -> Video:
    s, cfg = job.sampler, job.vico
    prompt, scheduler, latents, keys = prepare(job, components, ctx)
    meta: dict = {"key_tokens": {k.label: list(k.indices) for k in keys}}
    if len(keys) < 2:
        message = f"vico: {len(keys)} key token(s) in '{job.prompt}' (need 2); sampled without Vico"
        ctx.log(message)
        meta["skipped"] = message
        latents = denoise(components, scheduler, latents, prompt, s.guidance, generator=ctx.generator,
                          eta=s.eta, progress=ctx.progress)
    else:
        n_tokens = prompt_length(components.tokenizer, job.prompt)
        master = torch.float32 if cfg.latent == "float32" else None  # model: x_T stays in the model's dtype
        with record_attention(components.unet, cfg.graph, stop_when_complete=True, units=cfg.units) as recorder:
            guide = VicoGuide(cfg, components, scheduler, prompt, keys, n_tokens, recorder, s.steps, ctx.log)
            latents = denoise(components, scheduler, latents, prompt, s.guidance, generator=ctx.generator,
                              eta=s.eta, progress=ctx.progress, pre_step=guide, description="denoising (vico)",
                              master_dtype=master)
        weakest = guide.weakest()
        updates = sum(r["updates"] for r in guide.history)
        if updates == 0:
            ctx.log("vico: no latent update was made: every loss was already below its threshold")
        elif weakest and not weakest["moved"]:
            ctx.log(f"vico: warning: the weakest key token '{weakest['token']}' did not move "
                    f"({_fmt(weakest['before'])} -> {_fmt(weakest['after'])}); Vico changed little here "
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
