"""Model families: one module per family (unet3d, motion, unet2d, wan, ltx) behind one interface (family.py).

The sampler core asks a model's family what it needs (text encoding, the model call and what it predicts,
latent layout and normalisation, decoding, attention sites); nothing outside this package asks which family
a model is.
"""

from vgen.models.components import Components, resolve_device, resolve_dtype
from vgen.models.hub import hub_reachable, read_json
from vgen.models.loading import detect_kind, load_components, save_components
from vgen.models.registry import ASSETS, builtin_names, get_family

__all__ = [
    "ASSETS", "Components", "builtin_names", "detect_kind", "get_family", "hub_reachable", "load_components",
    "read_json", "resolve_device", "resolve_dtype", "save_components",
]
