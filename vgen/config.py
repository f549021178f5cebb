"""Job configuration: dataclass schemas merged and validated with OmegaConf.

The resolution order of one job is: schema defaults < the method's defaults < the model's settings for
that method (its folder's vgen.yaml) < ``--config`` file < CLI flags < ``key=value`` overrides. The model
is known only once model.id is resolved from all layers, so it is resolved first and its layer inserted
after. Where every value came from is kept (``config_sources``). Every mistake (unknown key, wrong type,
bad choice) becomes one ConfigError line that names the key and the valid choices. This module must stay
importable without torch.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from vgen.config_io import METHOD_SECTIONS, leaf_keys, load_yaml  # noqa: F401 (re-exported)
from vgen.config_io import above as _above, at_least as _at_least, choice as _choice
from vgen.errors import ConfigError
from vgen.methods.i4vgen.config import I4VGenConfig, check as check_i4vgen
from vgen.methods.streaming.config import STREAMING_MODES, StreamingConfig  # noqa: F401 (re-exported)
from vgen.methods.vico.config import VicoConfig, check as check_vico
from vgen.methods.zs2.config import ZS2Config

DEFAULT_MODEL = "toy"  # ships inside the package: a real video anywhere, offline

# which of these a model runs is its family's (vgen.models); "auto": the family's default (ddim on UNets, the
# model's own scheduler on DiTs, as their pipelines run), "model": the model's own
SCHEDULERS = ("ddim", "dpm++", "sde-dpm++", "euler", "euler-a", "ddpm", "unipc", "pndm", "model", "auto")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")
KERNELS = ("auto", "torch", "triton")  # = vgen.core.kernels.dispatch.KERNELS (kept torch-free here)
MODEL_KINDS = ("auto", "unet3d", "motion", "unet2d", "wan", "ltx")  # = vgen.models.registry.FAMILY_MODULES


@dataclass
class ModelConfig:
    id: str = DEFAULT_MODEL  # hub id, local diffusers folder, or built-in name
    kind: str = "auto"  # auto | unet3d | motion | unet2d | wan | ltx (the model family)
    motion_adapter: Optional[str] = None  # AnimateDiff: MotionAdapter id/folder for an SD 1.5 base
    revision: Optional[str] = None
    variant: Optional[str] = None  # e.g. "fp16" weight files
    lora: list[str] = field(default_factory=list)  # LoRA files "PATH[:SCALE]" (scale 1), applied in order


@dataclass
class SamplerConfig:
    steps: int = 25
    guidance: float = 7.5  # classifier-free guidance scale; <= 1 disables the unconditional pass
    scheduler: str = "auto"  # see SCHEDULERS; auto: ddim on UNet models, the model's own on DiTs (Wan, LTX)
    eta: float = 0.0  # DDIM/DDPM stochasticity
    guidance_2: Optional[float] = None  # Wan 2.2: guidance of the low-noise expert (None = sampler.guidance)
    # scheduler config keys set over the model's own (e.g. {beta_schedule: linear, steps_offset: 1}); the keys
    # of the scheduler class sampler.scheduler names; {} = the model's own schedule (AnimateDiff's for motion models)
    scheduler_config: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        for key, value in self.scheduler_config.items():
            check_scheduler_value(f"sampler.scheduler_config.{key}", value)


def check_scheduler_value(key: str, value: Any) -> None:
    """A scheduler config value is a finite number, a bool, a string, null or a list of finite numbers
    (trained_betas): a mapping or a NaN is a mistake here, not a schedule."""
    items = value if isinstance(value, (list, tuple, ListConfig)) else [value]
    for item in items:
        if isinstance(item, bool) or item is None or (isinstance(item, str) and not isinstance(value, (list, tuple, ListConfig))):
            continue
        if isinstance(item, (int, float)) and math.isfinite(item):
            continue
        shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        raise ConfigError(
            f"config key '{key}' is {shown!r}; a scheduler setting is a finite number, true/false, a string or a "
            "list of finite numbers"
        )


@dataclass
class VideoConfig:
    frames: int = 16
    height: Optional[int] = None  # None: the model's native size
    width: Optional[int] = None
    fps: int = 8


@dataclass
class OutputConfig:
    dir: str = "outputs"
    name: Optional[str] = None  # file stem; default "<prompt-slug>-<method>-<seed>-<hash of the config>"
    overwrite: bool = False  # replace an existing output (otherwise an existing file is an error)
    gif: bool = False
    save_frames: bool = False  # PNG per frame in "<stem>_frames/"


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (float16 on cuda, float32 on cpu) | float32 | float16 | bfloat16
    # core kernels (flow products, Vico's recorded attention): auto (Triton on CUDA when it imports, else
    # torch) | torch | triton (without CUDA only under TRITON_INTERPRET=1); env VGEN_KERNELS overrides
    kernels: str = "auto"
    # one video split over several processes (vgen generate --nproc N, torchrun; vgen batch: groups of this degree):
    # off | ulysses | ring (every process of the group) | ulysses=2 | ring=4 | ulysses=2,ring=2 (diffusers' CP)
    context_parallel: str = "off"


@dataclass
class MemoryConfig:
    decode_chunk: int = 8  # frames per VAE decode call
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False  # keep models on the CPU and move each to the device only while it runs
    offload: list[str] = field(default_factory=list)  # only these: text_encoder, vae, unet, unet_2 (Wan 2.2's 2nd expert)


@dataclass
class JobConfig:
    prompt: str = ""
    negative: str = ""
    method: str = "vanilla"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    zs2: ZS2Config = field(default_factory=ZS2Config)
    vico: VicoConfig = field(default_factory=VicoConfig)
    i4vgen: I4VGenConfig = field(default_factory=I4VGenConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)


# Sections that belong to one method only; `config show` hides the ones not in use.


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    """Built once: OmegaConf.structured walks every dataclass (~50 ms), and a job merges several layers onto it.
    Read-only because it is shared; OmegaConf.merge returns a new config and never writes it."""
    cfg = OmegaConf.structured(JobConfig)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _valid_keys(node: Any) -> list[str]:
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _parent_of(cfg: DictConfig, full_key: str) -> Any:
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    return OmegaConf.select(cfg, parent) if parent else cfg


def _explain(err: OmegaConfBaseException, base: DictConfig, source: str) -> ConfigError:
    """Turn OmegaConf's multi-line errors into one line naming the key and the choices."""
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    where = f" (in {source})" if source else ""
    if isinstance(err, ConfigKeyError) or "not in" in str(err):
        keys = _valid_keys(_parent_of(base, str(key)))
        return ConfigError(f"unknown config key '{key}'{where}; valid keys here: {', '.join(keys)}")
    if isinstance(err, ValidationError):
        expected = type(OmegaConf.select(base, str(key))).__name__ if OmegaConf.select(base, str(key)) is not None else "value"
        first = str(err).splitlines()[0]
        return ConfigError(f"bad value for config key '{key}'{where}: {first} (expected {expected})")
    return ConfigError(f"bad config{where}: {str(err).splitlines()[0]}")


def merge(base: DictConfig, update: Any, source: str = "") -> DictConfig:
    """Merge a dict/DictConfig into the structured config, with one-line errors."""
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        raise _explain(err, base, source) from None


REPEATABLE_KEYS = ("model.lora",)  # key=value given several times collects a list


def parse_overrides(items: Iterable[str]) -> DictConfig:
    """``key=value`` strings (values parsed as YAML scalars) to a nested config."""
    items = list(items or [])
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. sampler.steps=30)")
    repeated: dict[str, list[str]] = {}  # model.lora=A model.lora=B -> [A, B]
    single = []
    for item in items:
        key, _, value = item.partition("=")
        if key.strip() in REPEATABLE_KEYS and not value.strip().startswith("["):
            repeated.setdefault(key.strip(), []).append(value.strip())
        else:
            single.append(item)
    try:
        parsed = OmegaConf.from_dotlist(single)
        for key, values in repeated.items():
            OmegaConf.update(parsed, key, values, force_add=True)
        return parsed
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad override: {str(err).splitlines()[0]}") from None


def flags_to_config(flags: dict[str, Any]) -> DictConfig:
    """Dotted flag keys (``video.frames``) with non-None values to a nested config."""
    out = OmegaConf.create({})
    for key, value in flags.items():
        if value is not None:
            OmegaConf.update(out, key, value, merge=True)
    return out


# Where a value came from, in `config_sources` and `vgen config show`.
DEFAULT, METHOD, FLAG, OVERRIDE = "default", "method", "flag", "override"


@dataclass
class Layer:
    """One partial config in the merge order: what it sets, where errors point, what provenance it records."""

    update: Any
    source: str  # named in error messages, e.g. "overrides" or a file path
    label: str  # recorded per key: default | method | model:<id> | <config path> | flag | override


def _as_layer(item: Any) -> Layer:
    if isinstance(item, Layer):
        return item
    update, source, *label = item  # (update, source) or (update, source, label)
    return Layer(update, source, label[0] if label else source)


def _coerce_lists(update: Any, base: DictConfig, source: str = "") -> Any:
    """A string for a list-valued key ("cat,dog", as the configs document) becomes the list [cat, dog].
    A mapping where a list goes, or anything but a mapping where a section goes, is refused here, naming
    the key: OmegaConf's own errors for those name no key, or are not its errors at all (a TypeError)."""
    if not isinstance(update, (DictConfig, dict)):
        return update
    node = OmegaConf.to_container(update) if isinstance(update, DictConfig) else dict(update)
    where = f" (in {source})" if source else ""

    def walk(part: dict, schema_node: Any, prefix: str) -> None:
        for key, value in part.items():
            sub = schema_node._get_node(key) if isinstance(schema_node, DictConfig) and key in schema_node else None
            if isinstance(value, dict) and isinstance(sub, DictConfig):
                walk(value, sub, f"{prefix}{key}.")
            elif isinstance(value, str) and isinstance(sub, ListConfig):
                part[key] = [item.strip() for item in value.split(",") if item.strip()]
            elif isinstance(value, dict) and isinstance(sub, ListConfig):
                raise ConfigError(f"bad value for config key '{prefix}{key}'{where}: expected a list, got the mapping {value}")
            elif value is not None and not isinstance(value, dict) and isinstance(sub, DictConfig):
                keys = ", ".join(_valid_keys(sub))
                raise ConfigError(
                    f"bad value for config key '{prefix}{key}'{where}: it is a section of keys ({keys}), "
                    f"got {value!r}; set one as {prefix}{key}.KEY=VALUE"
                )

    walk(node, base, "")
    return node


def _merge_layers(layers: Iterable[Layer]) -> DictConfig:
    """The layers merged in order onto the schema. One OmegaConf.merge for all of them (each merge deep-copies
    the whole config); only when that fails, layer by layer, so the error names the layer that caused it."""
    layers = list(layers)
    base = _schema()
    updates = [_coerce_lists(layer.update, base, layer.source) for layer in layers]  # list keys are fixed by the schema
    try:
        cfg = OmegaConf.merge(base, *updates)
    except OmegaConfBaseException:
        cfg = base
        for layer, update in zip(layers, updates):  # the same merges one at a time: raises, naming the layer
            cfg = merge(cfg, update, layer.source)
        raise
    OmegaConf.set_readonly(cfg, False)
    return cfg


def method_layer(method: str, family: Optional[str] = None) -> Optional[Layer]:
    """The method's own defaults (the paper's setting where it differs from the schema's), with the ones it
    names for the model's family over them."""
    from vgen.methods import get_method

    info = get_method(method)
    defaults = {**info.defaults, **info.family_defaults.get(family or "", {})}
    if not defaults:
        return None
    return Layer(flags_to_config(dict(defaults)), f"method '{method}' defaults", METHOD)


def model_family_of(given: list[Layer]) -> Optional[str]:
    """The family of the model the given layers name (model.kind, else read from a built-in or a folder; None
    for a hub id)."""
    from vgen.model_settings import model_family

    model = _merge_layers(given).model
    return model.kind if model.kind != "auto" else model_family(model.id)


def model_layers(method: str, before: list[Layer], after: list[Layer]) -> list[Layer]:
    """The settings the resolved model carries for `method`; a model may send the job to a sibling
    (the toy's zs2 section names toy-t2i), whose settings then apply too (at most a few hops)."""
    from vgen.model_settings import model_settings

    found: list[Layer] = []
    seen: list[str] = []
    model_id = _merge_layers(before + after).model.id
    while model_id not in seen and len(seen) < 4:
        seen.append(model_id)
        section, path = model_settings(model_id, method)
        if section is None:
            break
        found.append(Layer(section, f"{path} [{method}]", f"model:{model_id}"))
        sibling = OmegaConf.select(section, "model.id")
        if sibling is None:
            break
        model_id = str(sibling)
    return found


def sibling_layers(found: list[Layer]) -> list[Layer]:
    """The last model.id a model's settings send the job to, as a layer over every given one: the given layers
    named the model that sends it (the chain starts there), so `--model toy --method zs2` runs as
    `--method zs2` does (on toy-t2i), and naming a model never changes what its own settings do."""
    for layer in reversed(found):
        sibling = OmegaConf.select(layer.update, "model.id")
        if sibling is not None:
            return [Layer(OmegaConf.create({"model": {"id": str(sibling)}}), layer.source, layer.label)]
    return []


def resolve(
    layers: Iterable[Any] = (),
    presets: bool = True,
) -> JobConfig:
    """Merge layers ((update, source[, label]) or Layer) onto the schema, then validate.

    With `presets`, the method's defaults and the model's settings go under the given layers (a test
    that wants the bare schema passes presets=False).
    """
    given = [layer for layer in map(_as_layer, layers) if layer.update is not None]
    below: list[Layer] = []
    above: list[Layer] = []
    if presets:
        from vgen.methods import get_method

        method = _merge_layers(given).method
        get_method(method)
        below = [layer for layer in [method_layer(method, model_family_of(given))] if layer is not None]
        below += model_layers(method, below, given)
        above = sibling_layers(below)
    cfg = _merge_layers(below + given + above)
    try:
        job = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _explain(err, cfg, "") from None
    validate(job)
    sources = {key: DEFAULT for key in dataclass_keys(JobConfig)}
    for layer in below + given + above:
        for key in leaf_keys(layer.update):
            key = key if key in sources else _mapping_key(key, sources)
            if key in sources:
                sources[key] = layer.label
    job.__dict__["_sources"] = sources  # not a schema field: merges and to_dict never see it
    return job


def _mapping_key(key: str, sources: dict) -> str:
    """The schema key a dotted key lies inside (sampler.scheduler_config.beta_schedule -> sampler.scheduler_config)."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:end]) in sources:
            return ".".join(parts[:end])
    return key


def config_sources(job: JobConfig, only_method: bool = True) -> dict[str, str]:
    """Dotted key -> where its value came from (default, method, model:<id>, a config file, flag, override)."""
    sources = job.__dict__.get("_sources") or {key: DEFAULT for key in dataclass_keys(JobConfig)}
    if not only_method:
        return dict(sources)
    return {k: v for k, v in sources.items() if k.split(".", 1)[0] not in _other_sections(job.method)}


def _other_sections(method: str) -> list[str]:
    return [section for section in METHOD_SECTIONS if section != method]


def is_sidecar(loaded: DictConfig) -> bool:
    return isinstance(loaded.get("config"), DictConfig) and "versions" in loaded and "output" in loaded


def load_config_file(path: str | Path) -> DictConfig:
    """A YAML job config, or a sidecar JSON written beside an output: its resolved config, so the run
    repeats exactly (the destination is not part of it: the new run names its own file)."""
    loaded = load_yaml(path)
    if not is_sidecar(loaded):
        return loaded
    cfg = loaded.config
    if "output" in cfg:
        for key in ("dir", "name", "overwrite"):
            cfg.output.pop(key, None)
    return cfg


def check_method_sections(overrides: DictConfig, method: str) -> None:
    """A key=value for another method's section would be silently ignored: refuse it."""
    for section in overrides.keys():
        if section in METHOD_SECTIONS and section != method:
            key = leaf_keys(overrides[section], f"{section}.")
            shown = key[0] if key else section
            raise ConfigError(
                f"override '{shown}' is for method {section}, but this run uses method {method} "
                f"(add --method {section}, or drop the override)"
            )


def build_job(
    config_file: Optional[str] = None,
    flags: Optional[dict[str, Any]] = None,
    overrides: Iterable[str] = (),
    presets: bool = True,
    strict: bool = False,
) -> JobConfig:
    """One job from a config file (or sidecar), flags and key=value overrides (see the module docstring).

    `strict` (the CLI): a key=value for a method section this run does not use is an error, not ignored.
    """
    layers: list[Layer] = []
    if config_file:
        layers.append(Layer(load_config_file(config_file), str(config_file), str(config_file)))
    if flags:
        layers.append(Layer(flags_to_config(flags), "command-line flags", FLAG))
    parsed = parse_overrides(overrides)
    layers.append(Layer(parsed, "overrides", OVERRIDE))
    job = resolve(layers, presets=presets)
    if strict:
        check_method_sections(parsed, job.method)
    return job


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _list_item_type(annotation: Any) -> Optional[type]:
    """X of list[X] or Optional[list[X]]; None for any other annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list and typing.get_args(annotation):
        return typing.get_args(annotation)[0]
    return None


def split_lora_spec(spec: str) -> tuple[str, float]:
    """'PATH' or 'PATH:SCALE' -> (path, scale); a tail that is not a number belongs to the path."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def check_loras(specs: list[str]) -> None:
    """Each model.lora names an existing file with a finite scale, known before any model loads."""
    for spec in specs:
        path, scale = split_lora_spec(spec)
        if not Path(path).expanduser().exists():
            raise ConfigError(f"model.lora: '{path}' does not exist (give PATH or PATH:SCALE of a LoRA .safetensors)")
        if not math.isfinite(scale):
            raise ConfigError(f"model.lora: the scale of '{spec}' must be a finite number, got {scale}")


def check_list_items(node: Any, key: str = "") -> None:
    """The items of every list key are of the list's type: OmegaConf's merge lets a nested list ([[a]]) into
    a list[str] or list[float] key, which then fails deep in a method (or in `config show`) as a TypeError."""
    for f in fields(node):
        value, dotted = getattr(node, f.name), f"{key}.{f.name}" if key else f.name
        if is_dataclass(value):
            check_list_items(value, dotted)
            continue
        item_type = _list_item_type(_hints(type(node)).get(f.name))
        if item_type not in (int, float, str) or not isinstance(value, list):
            continue
        allowed = (int, float) if item_type is float else (item_type,)
        if any(isinstance(item, bool) or not isinstance(item, allowed) for item in value):
            raise ConfigError(f"config key '{dotted}' must be a list of {item_type.__name__}, got {value}")


def check_finite(node: Any, key: str = "") -> None:
    """Every number in the job is finite: NaN and ±inf pass range checks written as comparisons, make a
    video of noise, and turn into null in the strict-JSON sidecar. Walks values, not annotations, so a key
    added to any section (a float, a list of floats, a mapping such as a scheduler's config) is covered."""
    if is_dataclass(node):
        for f in fields(node):
            check_finite(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, dict):
        for name, value in node.items():
            check_finite(value, f"{key}.{name}")
    elif isinstance(node, (list, tuple)):
        for value in node:
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"config key '{key}' must hold finite numbers, got {list(node)}")
            check_finite(value, key)
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config key '{key}' must be a finite number, got {node}")


def validate(job: JobConfig) -> None:
    """Checks that need no model: choices, ranges, the prompt."""
    from vgen.methods import get_method

    if not job.prompt or not job.prompt.strip():
        raise ConfigError("the prompt is empty; give a text such as \"a red circle moving left\"")
    get_method(job.method)
    _choice("sampler.scheduler", job.sampler.scheduler, SCHEDULERS)
    _choice("runtime.dtype", job.runtime.dtype, DTYPES)
    _choice("runtime.kernels", job.runtime.kernels, KERNELS)
    _choice("model.kind", job.model.kind, MODEL_KINDS)
    from vgen.context_parallel import parse

    if not parse(job.runtime.context_parallel).off:
        from vgen.context_parallel import refusal

        refused = refusal(get_method(job.method))
        if refused:
            raise ConfigError(refused)
    device = job.runtime.device
    if not (device in DEVICES or re.fullmatch(r"cuda:\d+", device)):
        raise ConfigError(f"config key 'runtime.device' is '{device}'; choose one of: {', '.join(DEVICES)}, cuda:N")
    if not job.model.id.strip():
        raise ConfigError("config key 'model.id' is empty; give a hub id, a local folder or a built-in name")
    check_list_items(job)
    check_finite(job)
    check_loras(list(job.model.lora))
    _at_least("video.frames", job.video.frames, 1)
    _at_least("video.fps", job.video.fps, 1)
    _at_least("sampler.steps", job.sampler.steps, 1)
    _at_least("sampler.guidance", job.sampler.guidance, 0)
    _at_least("sampler.eta", job.sampler.eta, 0)
    job.sampler.check()
    _at_least("memory.decode_chunk", job.memory.decode_chunk, 1)
    for key in ("height", "width"):
        value = getattr(job.video, key)
        if value is not None:
            _at_least(f"video.{key}", value, 1)
    job.zs2.check()
    check_vico(job.vico)
    check_i4vgen(job.i4vgen)
    job.streaming.check()
    if not 0 <= job.seed < 2**63:
        raise ConfigError(f"config key 'seed' must be in [0, 2^63), got {job.seed}")


def to_dict(job: JobConfig, only_method: bool = False) -> dict:
    """The resolved config as plain data; with `only_method`, other methods' sections are left out."""
    data = OmegaConf.to_container(OmegaConf.structured(job), resolve=True)
    if only_method:
        for section in _other_sections(job.method):
            data.pop(section, None)
    return data


def _yaml_value(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def to_yaml(job: JobConfig, only_method: bool = True, sources: bool = False) -> str:
    """The resolved config as YAML; sections of methods not in use are left out. With `sources`, each
    value that is not the schema's default says where it came from in a trailing comment."""
    data = to_dict(job, only_method=only_method)
    if not sources:
        return OmegaConf.to_yaml(OmegaConf.create(data))
    origin = config_sources(job, only_method=False)
    lines: list[str] = []

    def emit(node: dict, prefix: str, indent: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and dotted not in origin:  # a section; a mapping-valued key is one value
                lines.append(f"{indent}{key}:")
                emit(value, dotted + ".", indent + "  ")
                continue
            line = f"{indent}{key}: {_yaml_value(value)}"
            label = origin.get(dotted, DEFAULT)
            lines.append(f"{line:<40} # {label}" if label != DEFAULT else line)

    emit(data, "", "")
    return "\n".join(lines) + "\n"


def slugify(text: str, max_len: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "video"


OUTPUT_HASH_CHARS = 8


def output_hash(job: JobConfig) -> str:
    """Short sha256 of everything that makes the output: the resolved config of the job's method (prompt,
    negative, model, seed, sampler, video, runtime, memory, the method's section), not where the files go
    (output.*). Two jobs with one default name make the same frames."""
    import hashlib
    import json

    data = to_dict(job, only_method=True)
    data.pop("output", None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:OUTPUT_HASH_CHARS]


def output_stem(job: JobConfig) -> str:
    """output.name, or "<prompt slug>-<method>-<seed>-<output_hash>" (the slug is cut, the hash is not)."""
    return job.output.name or f"{slugify(job.prompt)}-{job.method}-{job.seed}-{output_hash(job)}"


def output_path(job: JobConfig) -> Path:
    return Path(job.output.dir) / f"{output_stem(job)}.mp4"


def dataclass_keys(cls: type, prefix: str = "") -> list[str]:
    """All dotted keys of a dataclass schema (used in docs and error hints)."""
    keys: list[str] = []
    for f in fields(cls):
        typ = f.default_factory if f.default_factory is not None else None  # type: ignore[misc]
        if typ is not None and is_dataclass(typ):
            keys += dataclass_keys(typ, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys
