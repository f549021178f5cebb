"""Components: one loaded model (its parts on one device and dtype) and the family that knows how to use it."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from vgen.errors import ConfigError

OFFLOADABLE = ("text_encoder", "vae", "unet", "unet_2")


@dataclass
class Components:
    """Everything the sampler needs from one model, on one device and dtype.

    `unet` is the denoiser whatever its architecture (a UNet, or a DiT such as Wan's transformer);
    `unet_2` is a second expert (Wan 2.2's low-noise transformer), None for one-expert models.
    """

    kind: str  # the family name: unet3d | motion | unet2d | wan | ltx
    name: str
    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: Any  # the model's own scheduler: the config every named scheduler starts from
    device: torch.device
    dtype: torch.dtype
    cpu_offload: bool = False  # every component offloaded (see `offload` for some of them)
    extras: dict = field(default_factory=dict)  # method-specific weights that ship with a model
    folder: Optional[Path] = None  # the local diffusers folder it was loaded from (None: hub or built in memory)
    scheduler_source: str = "model"  # model: its folder's scheduler | animatediff: the family's (Family.default_schedule)
    unet_2: Optional[torch.nn.Module] = None
    config: dict = field(default_factory=dict)  # model_index.json settings a family reads (boundary_ratio, ...)
    offload: tuple[str, ...] = ()  # components kept on the CPU and moved to the device only while they run
    loras: list = field(default_factory=list)  # LoRAs applied (path, scale, sha), for the sidecar

    def __post_init__(self) -> None:
        unknown = [name for name in self.offload if name not in OFFLOADABLE]
        if unknown:
            raise ConfigError(f"memory.offload: unknown component '{unknown[0]}'; choose from {', '.join(OFFLOADABLE)}")

    @property
    def family(self):
        from vgen.models.registry import get_family

        return get_family(self.kind)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    @property
    def vae_scale_factor(self) -> int:
        return self.family.spatial_factor(self)

    @property
    def latent_channels(self) -> int:
        return self.family.latent_channels(self)

    @property
    def native_size(self) -> tuple[int, int]:
        """(height, width) in pixels the model was built for."""
        return self.family.native_size(self)

    def offloaded(self, module: torch.nn.Module) -> bool:
        if self.cpu_offload:
            return True
        names = {id(m): name for name, m in self.family.modules(self).items()}
        return names.get(id(module)) in self.offload

    @contextmanager
    def placed(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Run `module` on the device; an offloaded module goes back to the CPU afterwards."""
        if not self.offloaded(module):
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but torch sees no CUDA device; use --device cpu")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but it is not available; use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, family: Any = None) -> torch.dtype:
    """float16 on CUDA by default (bfloat16 for families that ask for it, e.g. Wan), float32 elsewhere."""
    if name == "auto":
        if device.type == "cuda":
            return getattr(family, "cuda_dtype", torch.float16)
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
