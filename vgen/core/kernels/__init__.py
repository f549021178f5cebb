"""GPU core kernels: Triton versions of the attention-flow products, of the recorded attention (output plus the probabilities of the first keys), of the
same-position slices of a full self-attention and of the AR(1) scan along frames.

The torch versions in vgen/core/flow.py, attention.py, attention_slices.py and scan.py stay the references
and the fallbacks; their public functions dispatch here through ``dispatch.use_triton``
(``runtime.kernels`` / env ``VGEN_KERNELS``: auto | torch | triton). The ``triton_*`` modules import
triton, so they are imported only when a Triton path runs.
"""

from vgen.core.kernels.dispatch import KERNELS, configure, interpreting, use_kernels, use_triton

__all__ = ["KERNELS", "configure", "interpreting", "use_kernels", "use_triton"]
