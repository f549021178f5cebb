"""A CLIP BPE tokenizer for a closed vocabulary, built offline.

Real checkpoints ship their tokenizer; the tiny test models and the toy world need one that can be
built from nothing. Every byte is a token (so any text encodes), and each vocabulary word gets merges
that turn it into a single token, like a real CLIP vocabulary does for common words.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def _byte_alphabet() -> tuple[str, ...]:
    """GPT-2/CLIP byte-to-unicode table: printable stand-ins for all 256 bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return tuple(chars)


def vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (specials, bytes, bytes + end-of-word, whole words) and left-to-right merges."""
    alphabet = _byte_alphabet()
    tokens = [BOS, EOS] + list(alphabet) + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    seen_tokens, seen_merges = set(tokens), set()
    for word in sorted({w.lower() for w in words if w and w.isascii() and w.isalpha()}):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in seen_merges:
                seen_merges.add((left, right))
                merges.append((left, right))
            left = left + right
            if left not in seen_tokens:
                seen_tokens.add(left)
                tokens.append(left)
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer(words: Iterable[str], model_max_length: int = 77):
    """A transformers CLIPTokenizer whose listed words are single tokens."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges(words)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=model_max_length,
    )


T5_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()"


def build_t5_tokenizer(words: Iterable[str], model_max_length: int = 512):
    """A transformers T5Tokenizer (SentencePiece unigram, as UMT5's and T5's) whose listed words are single
    "▁word" tokens; any other lower-case text spells out in characters. pad 0, eos 1, unk 2, no BOS."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in dict.fromkeys(w.lower() for w in words if w and w.isascii() and w.isalpha())]
    vocab += [(c, -5.0) for c in T5_CHARACTERS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
