"""Vico: compositional video by equalising attention flow (SPEC.md section 1, arXiv 2407.06182).

runner.py         the method runner (prepare, run): the algorithm box
guide.py          the pre_step hook: measure the key tokens' flow, update the latent
keys.py           key tokens (indices, words, or nouns and verbs by part of speech; tagging.py)
scores.py         flow -> smoothed key-token maps -> scores A_k -> loss
schedule.py       which steps update, with which learning rate
recorder.py       attention recording processors and the layers the graph needs (UNets)
dit.py            the same on DiTs (Wan): cross-attention and the same-position slice of the 3-D self-attention
flow.py           the flow graphs (ST-Flow, full graph, baselines, exact max-flow) over core.flow's products
checkpointing.py  activation checkpointing of a UNet's layers during the gradient pass
config.py         the vico.* config section and its checks
"""
