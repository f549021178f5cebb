"""How often do Vico's automatic key words agree with the public code's rule? Prints a table and the misses.

    .venv/bin/python scripts/key_tokens_agreement.py

The public code (Adamdad/vico, utils.find_keywords) keeps the words NLTK's perceptron tagger marks as nouns or
verbs (NN, NNS, NNP, NNPS, VB*), plus left/right/top/bottom, never "view"/"is". NLTK's tagger data cannot be
installed offline (it is downloaded from GitHub at run time, not from PyPI), so the reference here is that
rule applied to Penn Treebank tags assigned by hand (PTB guidelines), on prompts of real scenes (VBench /
T2V-CompBench style) and of the toy world. vgen's tagger is spaCy's en_core_web_sm (vgen/methods/vico/tagging.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# prompt -> the key words the rule picks with correct tags (each occurrence listed)
REFERENCE = [
    ("A Retriever is driving a Porsche car.", "Retriever driving Porsche car"),
    ("a cat and a dog playing in the garden", "cat dog playing garden"),
    ("a panda eating bamboo on a rock", "panda eating bamboo rock"),
    ("an astronaut riding a horse on the moon", "astronaut riding horse moon"),
    ("a teddy bear and a cup on a table", "teddy bear cup table"),
    ("two dogs run across the field", "dogs run field"),
    ("a bird flying over the ocean at sunset", "bird flying ocean sunset"),
    ("a person and a bicycle", "person bicycle"),
    ("a car and a motorcycle on the street", "car motorcycle street"),
    ("a bear and a zebra", "bear zebra"),
    ("a giraffe and a bench", "giraffe bench"),
    ("a cow and an elephant in the grass", "cow elephant grass"),
    ("a clock on the left of a vase", "clock left vase"),
    ("a horse on the right of a sheep", "horse right sheep"),
    ("a laptop on top of a desk", "laptop top desk"),
    ("a kite flying above a boat", "kite flying boat"),
    ("a man is walking his dog in the park", "man walking dog park"),
    ("a chef cooks pasta in a kitchen", "chef cooks pasta kitchen"),
    ("a squirrel holds an acorn", "squirrel holds acorn"),
    ("a red apple and a green pear", "apple pear"),
    ("a panda is DJing in a club, wearing sunglasses", "panda DJing club wearing sunglasses"),
    ("a view of the mountains with a river", "mountains river"),
    ("a robot dances on the stage", "robot dances stage"),
    ("fireworks explode over the city", "fireworks explode city"),
    ("a boy throws a ball to a girl", "boy throws ball girl"),
    ("a red circle moving left and a blue square moving up", "circle moving left square moving"),
    ("a red circle and a blue square", "circle square"),
    ("a green diamond staying still", "diamond staying"),
    ("a purple square moving down and a yellow circle moving right", "square moving circle moving right"),
    ("an orange triangle moving left and a green square staying still and a red diamond moving up",
     "triangle moving left square staying diamond moving"),
    ("a blue circle moving right", "circle moving right"),
    ("a yellow diamond and a purple triangle and an orange circle", "diamond triangle circle"),
]


def main() -> None:
    from vgen.methods.vico.keys import key_words

    exact, hits, chosen, wanted = 0, 0, 0, 0
    misses = []
    for prompt, ref in REFERENCE:
        got = [w for w, _ in key_words(prompt)]
        expected = ref.split()
        exact += got == expected
        common = sum(min(got.count(w), expected.count(w)) for w in set(expected))
        hits, chosen, wanted = hits + common, chosen + len(got), wanted + len(expected)
        if got != expected:
            misses.append((prompt, expected, got))
    n = len(REFERENCE)
    print(f"key words of {n} prompts: spaCy en_core_web_sm + the public code's rule vs the rule on hand-assigned PTB tags")
    print("| prompts | same choice | word precision | word recall |")
    print("|---|---|---|---|")
    print(f"| {n} | {exact}/{n} ({exact / n:.0%}) | {hits / chosen:.1%} | {hits / wanted:.1%} |")
    for prompt, expected, got in misses:
        print(f"  differs: {prompt!r}: reference {expected}, tagger {got}")


if __name__ == "__main__":
    main()
