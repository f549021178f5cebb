"""I4VGen (SPEC §3, arXiv 2406.02230): text -> anchor image -> a still video animated by score distillation ->
the video regenerated.

config.py     the `i4vgen:` config section and its checks (torch-free; vgen.config imports it)
runner.py     the method runner: candidates, NI-VSDS, regeneration (the paper's three stages)
attention.py  the exact one-key shortcut for temporal layers while the video model draws 1-frame videos
rewards.py    image rewards that pick the anchor (toy detector, CLIP, ImageReward; CLIP also for vgen.eval)
"""
