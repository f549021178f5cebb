"""GPU core kernels: Triton versions of the attention-flow products and of Vico's recorded attention.

The torch versions in vgen/core/flow.py and vgen/core/attention.py stay the references and the fallbacks;
their public functions dispatch here through ``dispatch.use_triton`` (``runtime.kernels`` / env
``VGEN_KERNELS``: auto | torch | triton). ``triton_bottleneck`` and ``triton_attention`` import triton,
so they are imported only when a Triton path runs.
"""

from vgen.core.kernels.dispatch import KERNELS, configure, interpreting, use_kernels, use_triton

__all__ = ["KERNELS", "configure", "interpreting", "use_kernels", "use_triton"]
