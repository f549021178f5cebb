"""Context parallelism: one video's token sequence split over a group of processes, by diffusers' own
implementation (`ContextParallelConfig`, `ModelMixin.enable_parallelism`, the model's `_cp_plan`).

`runtime.context_parallel` says how: `off`, `ulysses` or `ring` (over every process of the group), or degrees
per kind (`ulysses=2`, `ring=4`, `ulysses=2,ring=2`). The world is cut into groups of consecutive ranks of that
degree; every rank of a group runs the same job with the same seed in lockstep (the denoiser's attention
exchanges shards, its output is gathered, so every rank holds the same latents), and the group's first rank
writes the files. The parsing and the layout are pure; `enable` touches torch.distributed and the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from vgen.errors import ConfigError

KINDS = ("ulysses", "ring")
SPEC_HELP = "off, ulysses, ring, or degrees such as ulysses=2, ring=4, ulysses=2,ring=2"


@dataclass(frozen=True)
class Spec:
    """runtime.context_parallel parsed: a degree per kind, 0 meaning 'every process of the group'."""

    ulysses: int = 1
    ring: int = 1

    @property
    def off(self) -> bool:
        return self.ulysses == 1 and self.ring == 1


def parse(text: str) -> Spec:
    """'off' | 'ulysses' | 'ring' | 'ulysses=2' | 'ring=4' | 'ulysses=2,ring=2' -> Spec; ConfigError otherwise."""
    value = str(text).strip().lower().replace(" ", "")
    if value in ("off", "none", "", "false"):  # YAML reads a bare `off` as false
        return Spec()
    if value in KINDS:
        return Spec(**{value: 0})
    degrees: dict[str, int] = {}
    for part in value.split(","):
        match = re.fullmatch(r"(ulysses|ring)[=:](\d+)", part)
        if not match or match.group(1) in degrees or int(match.group(2)) < 1:
            raise ConfigError(f"config key 'runtime.context_parallel' is '{text}'; give {SPEC_HELP}")
        degrees[match.group(1)] = int(match.group(2))
    return Spec(**degrees)


@dataclass(frozen=True)
class Plan:
    """How one video is split: the degrees that multiply to the group size."""

    ulysses: int
    ring: int

    @property
    def degree(self) -> int:
        return self.ulysses * self.ring

    @property
    def kind(self) -> str:
        return "+".join(k for k in KINDS if getattr(self, k) > 1)

    def sidecar(self) -> dict:
        """What the sidecar records."""
        return {"kind": self.kind, "degree": self.degree, "ulysses": self.ulysses, "ring": self.ring}


def plan(spec: Spec, world_size: int, whole_world: bool = False) -> Optional[Plan]:
    """The plan for a world of `world_size` processes, None when no video is split.

    A bare kind takes every process; explicit degrees must divide the world (the groups). `whole_world`
    (`vgen generate`: one video) also asks the degree to be the world size, and splits with Ulysses when
    context_parallel is off and there are several processes.
    """
    if spec.off and whole_world and world_size > 1:
        spec = Spec(ulysses=0)
    if spec.off:
        return None
    ulysses, ring = spec.ulysses, spec.ring
    if ulysses == 0:
        ulysses = world_size // ring if world_size % ring == 0 else 0
    if ring == 0:
        ring = world_size // ulysses if world_size % ulysses == 0 else 0
    degree = ulysses * ring
    if degree == 1:
        return None
    if degree == 0 or world_size % degree:
        raise ConfigError(f"context parallelism of degree {max(degree, spec.ulysses * spec.ring)} does not divide the "
                          f"{world_size} processes; start a multiple of it (--nproc or torchrun)")
    if whole_world and degree != world_size:
        raise ConfigError(f"vgen generate splits one video over all {world_size} processes, but "
                          f"runtime.context_parallel asks for groups of {degree}; use vgen batch for several videos")
    return Plan(ulysses, ring)


@dataclass(frozen=True)
class Layout:
    """The world cut into groups of `degree` consecutive ranks; a group runs one job at a time."""

    world_size: int
    degree: int = 1

    @property
    def groups(self) -> int:
        return self.world_size // self.degree

    def group_of(self, rank: int) -> int:
        return rank // self.degree

    def leader(self, group: int) -> int:
        """The rank that writes the group's outputs."""
        return group * self.degree

    def writes(self, rank: int) -> bool:
        return rank % self.degree == 0


@dataclass(frozen=True)
class Group:
    """This rank's place in a context-parallel run: the layout, the split, and its rank."""

    layout: Layout
    plan: Plan
    rank: int

    @property
    def writes(self) -> bool:
        return self.layout.writes(self.rank)

    def sidecar(self) -> dict:
        group = self.layout.group_of(self.rank)
        return {**self.plan.sidecar(), "group": group, "groups": self.layout.groups,
                "ranks": list(range(self.layout.leader(group), self.layout.leader(group) + self.layout.degree))}


def batch_plan(values: list[str], world_size: int) -> Optional[Plan]:
    """The one plan of a batch: every job must ask for the same runtime.context_parallel (the groups are fixed
    for the run)."""
    distinct = sorted(set(values))
    if len(distinct) > 1:
        raise ConfigError("runtime.context_parallel must be the same for every job of a batch; found "
                          + ", ".join(f"'{v}'" for v in distinct))
    return plan(parse(distinct[0]), world_size) if distinct else None


def refusal(method: Any) -> Optional[str]:
    """The one-line error for a method that cannot run under context parallelism, None if it can."""
    if method.context_parallel:
        return None
    why = method.no_context_parallel or "it has not been built for it"
    return f"method '{method.name}' does not run under context parallelism: {why}"


def sequence_length(components: Any, shape: tuple) -> int:
    """Video tokens the denoiser attends over for latents of `shape` [B, C, F, h, w] (after patchifying)."""
    config = components.unet.config
    patch = config.patch_size
    if isinstance(patch, int):  # LTX: (patch_size_t, patch_size, patch_size)
        patch = (getattr(config, "patch_size_t", 1) or 1, patch, patch)
    _, _, f, h, w = shape
    return (f // patch[0]) * (h // patch[1]) * (w // patch[2])


def check_video(components: Any, shape: tuple, p: Plan) -> None:
    """A video size that this split cannot run: one line, before any process waits for another."""
    tokens = sequence_length(components, shape)
    if tokens % p.degree:
        raise ConfigError(f"the video's {tokens} tokens do not split evenly over {p.degree} processes; "
                          "change --frames, --height or --width")


def check_model(components: Any, p: Plan) -> None:
    """A model or device that this split cannot run: one line, before any process waits for another."""
    model = components.unet
    refused = components.family.no_context_parallel
    if refused:
        raise ConfigError(f"context parallelism does not run on {components.family.name} models: {refused}")
    if getattr(model, "_cp_plan", None) is None:
        raise ConfigError(f"'{components.name}' ({type(model).__name__}) has no context-parallel plan in diffusers; "
                          "context parallelism runs on the DiT families (wan, ltx)")
    heads = getattr(model.config, "num_attention_heads", None)
    if p.ulysses > 1 and heads is not None and heads % p.ulysses:
        raise ConfigError(f"Ulysses of degree {p.ulysses} needs the attention heads ({heads}) divisible by it; "
                          "use a degree that divides them, or ring")
    check_device(p, components.device.type)


def check_device(p: Plan, device_type: str) -> None:
    """Ring attention merges partial results by their log-sum-exp, which only CUDA backends return."""
    if p.ring > 1 and device_type != "cuda":
        raise ConfigError("context_parallel ring needs an attention backend that returns the log-sum-exp "
                          "(flash, sage, _native_cudnn on CUDA); PyTorch's native attention on "
                          f"{device_type} does not: use runtime.context_parallel=ulysses")


# ----------------------------------------------------------------------------------------------
# torch.distributed and the model


_MESH: dict[tuple, Any] = {}


def mesh(layout: Layout, p: Plan, device_type: str):
    """The (group, ring, ulysses) device mesh over the tensor process group, built once per process."""
    from torch.distributed.device_mesh import init_device_mesh

    key = (layout, p, device_type)
    if key not in _MESH:
        _MESH[key] = init_device_mesh(device_type, (layout.groups, p.ring, p.ulysses),
                                      mesh_dim_names=("group", "ring", "ulysses"))
    return _MESH[key]


def enable(components: Any, layout: Layout, p: Plan) -> None:
    """Split every denoiser of `components` (Wan 2.2: both experts) over this rank's group."""
    import warnings
    from contextlib import nullcontext
    from unittest import mock

    import torch
    from diffusers import ContextParallelConfig
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    # diffusers' CP hooks call a torch collective that torch 2.13 deprecates; the warning is not for our users
    warnings.filterwarnings("ignore", message=r".*all_gather_tensor.* is deprecated", category=FutureWarning)
    device_type = components.device.type
    shared = mesh(layout, p, device_type)
    # diffusers 0.42.1 records the device as rank % torch.accelerator.device_count(), which divides by zero on a
    # machine without an accelerator; the device is only recorded, so on CPU it counts one.
    cpu_only = torch.accelerator.device_count() == 0
    with mock.patch.object(torch.accelerator, "device_count", lambda: 1) if cpu_only else nullcontext():
        for model in (components.unet, components.unet_2):
            if model is None:
                continue
            active, _ = _AttentionBackendRegistry.get_active_backend()
            if p.ring > 1 and active == AttentionBackendName.NATIVE:
                model.set_attention_backend("_native_cudnn")  # ring needs the LSE, which native SDPA does not return
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=p.ulysses, ring_degree=p.ring,
                                                                  mesh=shared))
