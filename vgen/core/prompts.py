"""Text -> embeddings for classifier-free guidance, and token spans of words (for per-token methods)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vgen.models import Components


@dataclass
class PromptEmbeds:
    """Conditional and (with CFG) unconditional text embeddings, each [B, L, D]."""

    cond: torch.Tensor
    uncond: Optional[torch.Tensor] = None
    cond_mask: Optional[torch.Tensor] = None  # [B, L] real-token masks (families whose model takes one: LTX)
    uncond_mask: Optional[torch.Tensor] = None

    @property
    def guided(self) -> bool:
        return self.uncond is not None

    def cfg_batch(self) -> torch.Tensor:
        """The batch the UNet sees: [uncond, cond] (the order diffusers' pipelines use)."""
        return torch.cat([self.uncond, self.cond]) if self.guided else self.cond

    def cfg_mask(self) -> Optional[torch.Tensor]:
        """The masks of `cfg_batch` (None when the family passes none)."""
        if self.cond_mask is None:
            return None
        return torch.cat([self.uncond_mask, self.cond_mask]) if self.guided else self.cond_mask


def tokenize(tokenizer, texts: list[str]) -> dict:
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


def encode_text(components: Components, texts: list[str]) -> torch.Tensor:
    """Last hidden states of the text encoder, [len(texts), L, D] in the components' dtype."""
    return components.family.encode_text(components, texts).hidden


def encode_prompt(
    components: Components, prompt: str, negative: str = "", guidance: float = 7.5, batch: int = 1
) -> PromptEmbeds:
    """Embeddings for one prompt; the unconditional pass (negative prompt) only when guidance > 1.
    Families whose model takes a text mask (LTX) get the masks too."""
    family = components.family
    cond = family.encode_text(components, [prompt])
    uncond = family.encode_text(components, [negative or ""]) if guidance > 1.0 else None
    masked = getattr(family, "uses_text_mask", False)
    rep = lambda x: x.repeat(batch, *([1] * (x.dim() - 1)))  # noqa: E731
    return PromptEmbeds(
        cond=rep(cond.hidden),
        uncond=rep(uncond.hidden) if uncond is not None else None,
        cond_mask=rep(cond.mask.to(components.device)) if masked else None,
        uncond_mask=rep(uncond.mask.to(components.device)) if masked and uncond is not None else None,
    )


def word_starts(tokenizer, ids: list[int]) -> set[int]:
    """Positions of `ids` where a word begins, from the tokenizer's word markers: CLIP's BPE ends a word's
    last token with "</w>", SentencePiece starts a word with "▁", byte-level BPE with "Ġ". With no marker
    every position counts (the old subsequence match)."""
    pieces = tokenizer.convert_ids_to_tokens(ids)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if any(p.endswith("</w>") for p in pieces):
        return {i for i in range(1, len(ids)) if ids[i - 1] in special or pieces[i - 1].endswith("</w>")}
    if any(p.startswith(("▁", "Ġ")) for p in pieces):  # T5/UMT5 put no start token: a word may begin at 0
        return {i for i in range(len(ids)) if ids[i] not in special
                and (pieces[i].startswith(("▁", "Ġ")) or i == 0 or ids[i - 1] in special)}
    return set(range(1, len(ids)))


def token_spans(tokenizer, prompt: str, words: list[str]) -> dict[str, list[int]]:
    """Token positions (in the encoded prompt, start token = 0) of each word, matched at word boundaries.

    A word split into several tokens yields its whole span; a word that appears twice yields both; a word
    is never found inside another ("ing" is not in "djing"). Raises ValueError for a word not in the prompt.
    """
    ids = tokenize(tokenizer, [prompt])["input_ids"][0].tolist()
    starts = word_starts(tokenizer, ids)
    spans: dict[str, list[int]] = {}
    for word in words:
        piece = tokenizer(word, add_special_tokens=False)["input_ids"]
        found = [
            i + k
            for i in sorted(starts)
            if i + len(piece) <= len(ids) and ids[i : i + len(piece)] == piece
            for k in range(len(piece))
        ]
        if not piece or not found:
            raise ValueError(f"word '{word}' is not in the prompt '{prompt}'")
        spans[word] = found
    return spans


def word_span_at(tokenizer, prompt: str, start: int, word: str) -> list[int]:
    """Token positions of the one occurrence of `word` that begins at character `start` of the prompt.

    The tokens of the text before it are counted (word-level tokenizers are prefix-stable at a word
    boundary); the span is checked against the prompt's own tokens. [] when truncation cut it off or the
    tokenizer splits the text differently there.
    """
    ids = tokenize(tokenizer, [prompt])["input_ids"][0].tolist()
    before = tokenizer(prompt[:start], add_special_tokens=False)["input_ids"] if prompt[:start].strip() else []
    piece = tokenizer(word, add_special_tokens=False)["input_ids"]
    first = leading_tokens(tokenizer) + len(before)
    if piece and ids[first : first + len(piece)] == piece:
        return list(range(first, first + len(piece)))
    return []


def leading_tokens(tokenizer) -> int:
    """Special tokens the tokenizer puts before the text: 1 for CLIP's start token, 0 for T5 (no BOS)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    return 1 if bos is not None and ids and ids[0] == bos else 0


def prompt_length(tokenizer, prompt: str) -> int:
    """Number of real tokens, start and end tokens included (the rest is padding)."""
    return int(tokenize(tokenizer, [prompt])["attention_mask"][0].sum())
