"""StreamingT2V: long videos chunk by chunk (SPEC §4).

cam.py     short-term memory: E_cond + UNet-encoder copy + temporal cross-attention into the skips
apm.py     long-term memory: anchor-image tokens mixed into every spatial cross-attention
blend.py   stage 3: randomized-blending refinement (also `vgen refine`)
runner.py  the method runner: first chunk, autoregressive chunks, optional refinement
train.py   CAM then CAM+APM training on the toy world
"""
