"""Which implementation the core kernels run: ``runtime.kernels`` (env ``VGEN_KERNELS`` overrides it).

    auto    Triton on CUDA tensors when triton imports, else the torch references (the default)
    torch   always the torch references (vgen/core/flow.py, attention.py, attention_slices.py, scan.py)
    triton  always Triton; without CUDA only under TRITON_INTERPRET=1 (Triton's CPU interpreter: slow,
            for tests), else ``configure`` raises a one-line ConfigError naming both ways out

The choice is process-wide (``configure`` once per job, ``use_kernels`` for a block); each call still
checks its own tensors: the Triton path takes float16/bfloat16/float32 tensors on CUDA (or the CPU when
interpreting), anything else runs the torch reference. Importing this module imports neither torch nor
triton.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, Optional

from vgen.errors import ConfigError

KERNELS = ("auto", "torch", "triton")
ENV = "VGEN_KERNELS"
_configured: Optional[str] = None  # set by configure(); None: the env or "auto"
_ran: set[str] = set()  # the implementations core kernels ran since the last configure() ("torch", "triton")


def interpreting() -> bool:
    """Triton's interpreter is on (kernels run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@lru_cache(maxsize=1)
def triton_version() -> Optional[str]:
    """triton's version if it imports, else None."""
    try:
        import triton
    except Exception:  # ImportError, or a broken install
        return None
    return triton.__version__


def requested() -> tuple[str, str]:
    """(choice, where it came from): the env beats the configured value, which beats "auto"."""
    env = os.environ.get(ENV)
    if env:
        return env.strip().lower(), f"{ENV}={env}"
    if _configured is not None:
        return _configured, f"runtime.kernels={_configured}"
    return "auto", "the default"


def check(name: str, source: str, cuda: bool) -> None:
    """Raise ConfigError when ``name`` is no choice, or is "triton" and cannot run here."""
    if name not in KERNELS:
        raise ConfigError(f"kernels '{name}' (from {source}) is not one of: {', '.join(KERNELS)}")
    if name != "triton":
        return
    other = f"set {ENV}=auto (or torch)" if source.startswith(ENV) else "use runtime.kernels=auto (or torch)"
    if triton_version() is None:
        raise ConfigError(f"{source} asks for Triton kernels but triton does not import; "
                          f"pip install triton==3.9.0, or {other}")
    if not cuda and not interpreting():
        raise ConfigError(f"{source} asks for Triton kernels but there is no CUDA device; set TRITON_INTERPRET=1 "
                          f"to run them in Triton's CPU interpreter (slow), or {other}")


def configure(name: str = "auto", device=None) -> str:
    """Set the process-wide choice for a job on ``device`` (a torch.device or str; None: CUDA if torch sees
    one). Returns the effective choice ("auto" | "torch" | "triton"); raises ConfigError (see ``check``)."""
    global _configured
    _configured = name
    _ran.clear()
    choice, source = requested()
    if device is None:
        import torch

        cuda = torch.cuda.is_available()
    else:
        cuda = str(device).startswith("cuda")
    check(choice, source, cuda)
    return choice


@contextmanager
def use_kernels(name: str) -> Iterator[None]:
    """Run a block with ``name`` configured (tests and benchmarks; the env still overrides)."""
    global _configured
    saved = _configured
    _configured = name
    try:
        yield
    finally:
        _configured = saved


_TRITON_DTYPES = ("float16", "bfloat16", "float32")


def kernels_ran() -> list[str]:
    """The implementations ("torch", "triton") the core kernels ran since the last ``configure`` (for the
    sidecar: what the frames were computed with, not only what was asked)."""
    return sorted(_ran)


def use_triton(*tensors) -> bool:
    """Whether a core kernel called on ``tensors`` runs its Triton version (see the module docstring)."""
    chosen = _use_triton(*tensors)
    _ran.add("triton" if chosen else "torch")
    return chosen


def _use_triton(*tensors) -> bool:
    choice, source = requested()
    if choice == "torch":
        return False
    if any(str(t.dtype).removeprefix("torch.") not in _TRITON_DTYPES for t in tensors):
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if choice == "auto":
        return on_cuda and triton_version() is not None
    check(choice, source, on_cuda)
    return on_cuda or (interpreting() and not any(t.is_cuda for t in tensors))
