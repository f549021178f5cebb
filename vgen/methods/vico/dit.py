"""Vico's attention graph on a DiT (Wan): what to record in each transformer block and how it becomes flow blocks.

A Wan block is self-attention over all N = F·h·w tokens (RoPE), then cross-attention to the text, then the FFN.
Per block b the recorder keeps, head-averaged:
    C_b [F, P, J]  the cross-attention probabilities to the prompt's tokens (P = h·w, J = the prompt's length);
    T_b [P, F, F]  the same-position slice of the self-attention's full softmax: T_b[p, f, g] is the probability
                   that token (f, p) gives token (g, p) among all N keys (``vgen.core.attention_slices``,
                   computed from the scores and each row's logsumexp, never the N x N matrix). It is
                   sub-stochastic (the rest of each row goes to other positions); vico.dit_slice normalised
                   rescales each row to a distribution over frames, as a UNet's temporal attention is.
The text reaches the video in block b's cross-attention; the next temporal mixing those tokens see is the
self-attention of the blocks after it. So Vico's unit (cross -> temporal 1 -> temporal 2 on a UNet) is here
    unit b = (C_b, [T_{b+1}, ..., T_{b+k}])   with k = vico.dit_temporal (2, as a UNet unit has two temporal layers),
cut short at the last block, and its flow is ``st_flow`` in vico.order (official: (R_{b+2} ⊗ R_{b+1}) ⊗ C_b).
Units are averaged (``st_flow_blocks``) as on UNets. Which cross-attentions count: vico.dit_blocks (empty: all).

vico.graph=full (the paper's graph): every block, tokens pooled spatially in vico.dit_pool x dit_pool cells per
frame (M nodes), the video one "frame" of M nodes for ``full_graph_flow``:
    X_b = max(C̃_b, S̃_b ⊗ X_{b-1}),   S̃_b[I, J] = mean_{i ∈ I} Σ_{j ∈ J} P_b[i, j],   C̃_b[I, j] = mean_{i ∈ I} C_b[i, j]
with P_b block b's self-attention (it runs before block b's cross-attention), computed query tile by query tile
from the scores and each row's logsumexp, each tile recomputed in backward (``pooled_attention``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch.utils.checkpoint import checkpoint

from vgen.core.attention import attention_processors, recorded_attention
from vgen.errors import ConfigError
from vgen.methods.vico.recorder import AttentionRecorder, RecordSpec

SLICES = ("raw", "normalised")


def dit_specs(sites: list, blocks: list[int], temporal: int, graph: str = "default") -> list[RecordSpec]:
    """The sites the graph needs: the chosen blocks' cross-attention and the self-attention of the `temporal`
    blocks after each (unit = the cross-attention's block index); graph full: every site but block 0's
    self-attention (no flow reaches it yet)."""
    n = 1 + max((s.block for s in sites), default=-1)
    if graph == "full":
        return [RecordSpec(s.key, str(s.block), s.role, 1) for s in sites if s.role == "cross" or s.block > 0]
    chosen = sorted(set(blocks)) if blocks else list(range(n))
    bad = [b for b in chosen if not 0 <= b < n]
    if bad:
        raise ConfigError(f"vico.dit_blocks {bad} are outside the model's blocks 0..{n - 1}")
    selves = {c for b in chosen for c in range(b + 1, min(b + 1 + temporal, n))}
    specs = []
    for s in sites:
        if (s.role == "cross" and s.block in chosen) or (s.role == "self" and s.block in selves):
            specs.append(RecordSpec(s.key, str(s.block), s.role, 1))
    return specs


class DitRecorder(AttentionRecorder):
    """AttentionRecorder for DiT blocks: cross-attention maps [B, N, J] and same-position slices [B, P, F, F]."""

    def __init__(self, specs: list[RecordSpec], components: Any, temporal: int, slices: str = "raw",
                 stop_when_complete: bool = False, tokens: Optional[int] = None, graph: str = "default", pool: int = 1):
        super().__init__(specs, stop_when_complete, tokens)
        self.components, self.temporal, self.slices = components, temporal, slices
        self.graph, self.pool = graph, pool
        self.family = components.family
        self.frames = 1  # token frames of the pass being recorded (set by ``grid``)
        self.cells: Optional[torch.Tensor] = None  # graph full: each token's pooled cell [N]

    def grid(self, latent_shape: tuple) -> tuple[int, int, int]:
        """(frames, h, w) of the flow's maps: the token grid, pooled for graph full."""
        f, h, w = self.family.token_grid(self.components, latent_shape)
        self.frames = f
        if self.graph != "full":
            return f, h, w
        if h % self.pool or w % self.pool:
            raise ConfigError(f"vico.dit_pool={self.pool} does not divide the {h}x{w} token grid")
        y, x = torch.arange(h)[:, None] // self.pool, torch.arange(w)[None, :] // self.pool
        hp, wp = h // self.pool, w // self.pool
        cell = (y * wp + x).flatten()
        self.cells = (torch.arange(f)[:, None] * hp * wp + cell[None, :]).flatten()
        return f, hp, wp

    @contextmanager
    def lean(self, model: torch.nn.Module, levels: Optional[int] = None) -> Iterator[None]:
        """Gradient checkpointing per transformer block: one input per block is kept for backward and the
        block is recomputed there (the recorded maps stay connected: non-reentrant checkpoint, replayed with
        the recorder's contexts so the recompute runs the same ops)."""
        from vgen.methods.vico.checkpointing import checkpointed_modules

        with checkpointed_modules(self.family.blocks(model), self.checkpoint_contexts):
            yield

    def blocks(self, frames: int, batch_index: int = 0) -> list[tuple]:
        """Flow blocks (C_b [F, P, J], None, [T_{b+1}, ...]) for each recorded cross-attention, in block order."""
        if self.graph == "full":
            return self._full_blocks(batch_index)
        cross, temporal = {}, {}
        for name, p in self.probs.items():
            spec = self.specs[name]
            b = int(spec.unit)
            if spec.role == "cross":  # [B, F·P, J], frame-major tokens
                cross[b] = p[batch_index].reshape(self.frames, -1, p.shape[-1])
            else:  # [B, P, F, F]
                t = p[batch_index]
                if self.slices == "normalised":
                    t = t / t.sum(dim=-1, keepdim=True)
                temporal[b] = t
        return [(c, None, [temporal[k] for k in range(b + 1, b + 1 + self.temporal) if k in temporal])
                for b, c in sorted(cross.items())]

    def _full_blocks(self, batch_index: int) -> list[tuple]:
        """(C̃_b [1, M, J], S̃_b [1, M, M] or None, []) per block in order: the video as one frame of M nodes."""
        cross, spatial = {}, {}
        for name, p in self.probs.items():
            spec = self.specs[name]
            if spec.role == "cross":  # [B, N, J] -> mean over each cell's tokens
                cross[int(spec.unit)] = pool_rows(p[batch_index], self.cells)[None]
            else:  # already pooled [B, M, M]
                spatial[int(spec.unit)] = p[batch_index][None]
        return [(c, spatial.get(b), []) for b, c in sorted(cross.items())]

    def factory(self, layer: Any):
        if layer.name not in self.specs:
            return None
        return DitRecordingProcessor(self, layer.name, self.specs[layer.name].role, layer.module.processor)


class DitRecordingProcessor:
    """A DiT attention site's processor that, while its recorder is active, also keeps the site's probabilities
    (with autograd): cross-attention through ``recorded_attention`` (output and head-mean probabilities of the
    prompt's tokens), self-attention through the site's own processor plus ``same_position_attention`` of its
    q and k. Inactive, the site's own processor runs unchanged."""

    def __init__(self, recorder: DitRecorder, name: str, role: str, fallback: Any):
        self.recorder, self.name, self.role, self.fallback = recorder, name, role, fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kwargs):
        rec = self.recorder
        if not rec.active:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        if attention_mask is not None:
            raise ValueError("Vico's DiT recorder does not take attention masks")
        family = rec.family
        q, k, v = family.attention_qkv(attn, hidden_states, encoder_hidden_states, rotary_emb)
        scale = q.shape[-1] ** -0.5
        if self.role == "cross":
            out, probs = recorded_attention(q, k, v, None, scale, rec.columns(self.name))
            if not rec.replaying:
                rec.keep(self.name, probs)
            return family.attention_output(attn, out, hidden_states)
        from vgen.core.attention_slices import same_position_attention

        out = self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        if rec.graph == "full":
            edges = pooled_attention(q, k, rec.cells, scale)
        else:
            edges = same_position_attention(q, k, rec.frames, scale, mean_heads=True)
        if not rec.replaying:
            rec.keep(self.name, edges)
        return out


def pool_rows(x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [M, K]: the mean of each cell's rows."""
    m = int(cells.max()) + 1
    cells = cells.to(x.device)
    total = torch.zeros(m, x.shape[-1], dtype=x.dtype, device=x.device).index_add(0, cells, x)
    count = torch.bincount(cells, minlength=m).to(x.dtype)
    return total / count[:, None]


# query rows per tile of the pooled attention: one tile holds [B, heads, rows, N] scores
POOL_TILE_BUDGET = 1 << 22


def pooled_attention(q: torch.Tensor, k: torch.Tensor, cells: torch.Tensor, scale: float) -> torch.Tensor:
    """Head-mean of the full softmax(scale·q k^T) pooled into cells: [B, M, M] with
    out[I, J] = mean_{i ∈ I} Σ_{j ∈ J} P[i, j] (rows stay distributions). Query tile by query tile from each row's
    logsumexp (``row_logsumexp``); each tile is recomputed in backward, so memory is one tile plus O(N·d + M²)."""
    from vgen.core.attention_slices import row_logsumexp

    B, H, N, _ = q.shape
    m = int(cells.max()) + 1
    cells = cells.to(q.device)
    acc = torch.promote_types(q.dtype, torch.float32)
    lse = row_logsumexp(q, k, scale)
    rows = max(1, POOL_TILE_BUDGET // max(1, B * H * N))
    out = torch.zeros(B, m, m, dtype=acc, device=q.device)
    for r0 in range(0, N, rows):
        r1 = min(r0 + rows, N)
        tile = checkpoint(_pooled_tile, q[:, :, r0:r1], k, lse[:, :, r0:r1], cells, m, scale,
                          use_reentrant=False, preserve_rng_state=False)  # [B, rows, M]
        out = out.index_add(1, cells[r0:r1], tile)
    count = torch.bincount(cells, minlength=m).to(acc)
    return out / count[None, :, None]


def _pooled_tile(q, k, lse, cells, m: int, scale: float) -> torch.Tensor:
    """Probabilities of a tile of query rows, summed over each cell's keys and averaged over heads: [B, rows, M]."""
    acc = torch.promote_types(q.dtype, torch.float32)
    p = torch.exp(torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale - lse[..., None].to(acc))
    return p.new_zeros(*p.shape[:-1], m).index_add(-1, cells, p).mean(dim=1)


@contextmanager
def record_dit_attention(components: Any, cfg: Any, stop_when_complete: bool = False,
                         tokens: Optional[int] = None) -> Iterator[DitRecorder]:
    """Install recording processors on the sites of Vico's DiT graph on every expert for the length of the
    block; the recorder starts inactive."""
    if cfg.dit_slice not in SLICES:
        raise ConfigError(f"config key 'vico.dit_slice' is '{cfg.dit_slice}'; choose one of: {', '.join(SLICES)}")
    sites = components.family.attention_sites(components)
    specs = dit_specs(sites, list(cfg.dit_blocks), int(cfg.dit_temporal), cfg.graph)
    recorder = DitRecorder(specs, components, int(cfg.dit_temporal), cfg.dit_slice, stop_when_complete, tokens,
                           cfg.graph, int(cfg.dit_pool))
    experts = [m for m in (components.unet, components.unet_2) if m is not None]
    with _installed(experts, recorder):
        yield recorder


@contextmanager
def _installed(models: list, recorder: DitRecorder) -> Iterator[None]:
    if not models:
        yield
        return
    with attention_processors(models[0], recorder.factory), _installed(models[1:], recorder):
        yield
