"""Vico's key tokens: explicit indices, words mapped to their token spans, or the public code's automatic key
words (nouns and verbs by part of speech, plus left/right/top/bottom)."""

from __future__ import annotations

from dataclasses import dataclass

from vgen.core.prompts import leading_tokens, prompt_length, token_spans, word_span_at
from vgen.errors import ConfigError
from vgen.methods.vico.config import VicoConfig

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
    from vgen.methods.vico.tagging import pos_tags

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
    lead = leading_tokens(tokenizer)  # CLIP's start token: the first word is token 1; T5/UMT5: token 0
    if cfg.tokens:
        bad = [i for i in cfg.tokens if not lead <= i <= n - 2]
        if bad:
            raise ConfigError(f"vico.tokens {bad} are outside the prompt's tokens {lead}..{n - 2}")
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
