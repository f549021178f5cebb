"""Run jobs: check the output folder, load the model, call the method's runner, write files + sidecar.

A batch is a list of jobs; one failing job never stops the others, and models are loaded once per
batch and reused by every job that asks for the same one.
"""

from __future__ import annotations

import json
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from vgen.config import METHOD_SECTIONS, JobConfig, ModelConfig, config_sources, output_path, to_dict
from vgen.errors import ConfigError, VgenError
from vgen.methods.context import RunContext  # noqa: F401  (runners' context; jobs builds it)
from vgen.video import Video, WrittenVideo, check_writable, read_video, write_gif, write_json, write_mp4, write_pngs


@dataclass
class JobResult:
    job: JobConfig
    status: str  # "done" | "skipped" | "failed"
    path: Optional[Path] = None
    seconds: float = 0.0
    error: str = ""
    files: list[Path] = field(default_factory=list)
    note: str = ""  # why a job re-ran over an existing output, or why it was skipped


def sidecar_path(mp4: Path) -> Path:
    return mp4.with_suffix(".json")


def is_complete(job: JobConfig) -> bool:
    """Both the mp4 and its sidecar exist (the sidecar is written last)."""
    mp4 = output_path(job)
    return mp4.is_file() and sidecar_path(mp4).is_file()


# Keys that say where a file goes or whether it may be replaced, not how its frames are made.
_NOT_COMPARED = ("output.dir", "output.name", "output.overwrite")


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_diff(previous: dict, job: JobConfig) -> list[str]:
    """'key old -> new' for each resolved value that differs from a sidecar's config (this method's keys)."""
    others = [s for s in METHOD_SECTIONS if s != job.method]
    keep = lambda key: key not in _NOT_COMPARED and key.split(".", 1)[0] not in others  # noqa: E731
    old = {k: v for k, v in _flat(previous).items() if keep(k)}
    new = {k: v for k, v in _flat(to_dict(job, only_method=True)).items() if keep(k)}
    missing = object()
    return [
        f"{key} {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]


def previous_output(job: JobConfig) -> tuple[bool, str]:
    """(True, "") when the job's mp4 and sidecar exist and the sidecar's resolved config is this job's;
    else (False, why not), the why empty when there is no output yet."""
    mp4 = output_path(job)
    side = sidecar_path(mp4)
    if not mp4.is_file():
        return False, ""
    if not side.is_file():
        return False, f"{mp4.name} has no sidecar {side.name}"
    try:
        previous = json.loads(side.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, f"sidecar {side.name} has no readable config"
    diff = settings_diff(previous, job)
    if diff:
        more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
        return False, f"settings differ from {side.name}: {'; '.join(diff[:3])}{more}"
    return True, ""


CLOSED_VOCABULARY = 10_000  # tokens; fewer: a closed vocabulary (the toy's) that knows exactly its words


def unknown_words(tokenizer: Any, prompt: str) -> list[str]:
    """Prompt words the model's tokenizer does not know. A closed vocabulary (the toy's few hundred
    tokens: each word of its world is one token) knows exactly the words it has a whole-word token for;
    an open one (CLIP's 49k BPE) spells rare words in pieces that still carry meaning, so there only a
    word spelled letter by letter counts as unknown."""
    vocab = tokenizer.get_vocab()
    closed = len(vocab) < CLOSED_VOCABULARY
    out = []
    for word in dict.fromkeys(re.findall(r"[a-z]+", prompt.lower())):
        if f"{word}</w>" in vocab:
            continue
        pieces = [p.replace("</w>", "") for p in tokenizer.tokenize(word)]
        if closed or (len(word) > 1 and all(len(piece) <= 1 for piece in pieces)):
            out.append(word)
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("vgen", "torch", "diffusers", "transformers", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


class ModelCache:
    """Components by (model, device, dtype, offload), so a batch loads each model once.

    `device` (a distributed rank's own GPU, e.g. "cuda:1") replaces the jobs' "auto" and "cuda"; with `parallel`
    (a vgen.context_parallel.Group) every model is split over the rank's group as it loads.
    """

    def __init__(self, device: Optional[str] = None, parallel: Any = None) -> None:
        self._cache: dict[tuple, Any] = {}
        self.device = device
        self.parallel = parallel

    def get(self, job: JobConfig, model: Optional[ModelConfig] = None):
        """The job's model (or `model`, e.g. a method's second model) on the job's device, dtype and memory options."""
        from vgen.models import load_components, resolve_device

        asked = job.runtime.device
        device = resolve_device(self.device if self.device and asked in ("auto", "cuda") else asked)
        dtype = job.runtime.dtype if job.runtime.dtype != "auto" else None  # auto: the family's (Wan: bfloat16 on CUDA)
        m = model or job.model
        key = (m.id, m.kind, m.motion_adapter, m.revision, m.variant, tuple(m.lora), str(device), str(dtype),
               job.memory.cpu_offload, tuple(job.memory.offload))
        if key not in self._cache:
            components = load_components(m, device, dtype or "auto", cpu_offload=job.memory.cpu_offload,
                                         offload=tuple(job.memory.offload))
            if m.lora:
                from vgen.models.lora import apply_loras

                apply_loras(components, list(m.lora))
            if job.memory.vae_slicing:
                components.vae.enable_slicing()
            if job.memory.vae_tiling:
                components.vae.enable_tiling()
            if self.parallel is not None:
                from vgen.context_parallel import check_model, enable

                check_model(components, self.parallel.plan)
                enable(components, self.parallel.layout, self.parallel.plan)
            self._cache[key] = components
        return self._cache[key]


def configure_kernels(job: JobConfig) -> str:
    """Set the core kernels for the job (``runtime.kernels``, env VGEN_KERNELS overrides); ConfigError if
    Triton is forced where it cannot run."""
    from vgen.core.kernels import configure
    from vgen.models import resolve_device

    return configure(job.runtime.kernels, resolve_device(job.runtime.device))


def _kind_hint(job: JobConfig) -> str:
    """The model the job's model recommends for this method, if it names one (the toy: toy-t2i for zs2)."""
    from vgen.model_settings import model_settings

    try:
        section, _ = model_settings(job.model.id, job.method)
    except VgenError:
        return ""
    suggested = section.get("model", {}).get("id") if section is not None else None
    return f"; '{job.model.id}' suggests --model {suggested} for {job.method}" if suggested else ""


def run_job(
    job: JobConfig,
    models: Optional[ModelCache] = None,
    progress: Optional[bool] = None,
    log: Callable[[str], None] = lambda message: None,
    skip_existing: bool = False,
    distributed: Optional[dict] = None,
) -> JobResult:
    """Generate one video and its files; raises VgenError for anything the user can fix.

    An existing output is never replaced silently: with `skip_existing` a job whose sidecar holds the same
    resolved config is skipped and any other re-runs (saying why); otherwise output.overwrite must be set.
    `distributed` ({rank, world_size}) goes into the sidecar of a job run by a launched batch. Under context
    parallelism (`models.parallel`), every rank of the group runs the job and only the group's first rank writes.
    """
    started = time.perf_counter()
    mp4 = output_path(job)
    same, why = previous_output(job)
    if skip_existing and same:
        return JobResult(job, "skipped", mp4, note="same settings as its sidecar")
    if mp4.is_file() and not (job.output.overwrite or skip_existing):
        raise ConfigError(
            f"'{mp4}' already exists; pass --overwrite to replace it, --skip-existing to keep it, "
            "or --out / --seed for another file"
        )
    if why:
        log(f"re-running {mp4.name}: {why}")

    import torch

    from vgen.core.sampler import resolve_size
    from vgen.methods import get_method, load_runner

    check_writable(mp4.parent)
    method = get_method(job.method)
    models = models or ModelCache()
    parallel = models.parallel
    if parallel is not None:
        from vgen.context_parallel import refusal

        refused = refusal(method)
        if refused:
            raise ConfigError(refused)

    t0 = time.perf_counter()
    configure_kernels(job)
    components = models.get(job)
    if components.kind not in method.kinds:
        raise ConfigError(
            f"method '{job.method}' runs on {'/'.join(method.kinds)} models, "
            f"but '{job.model.id}' is a {components.kind} model{_kind_hint(job)}"
        )
    unknown = unknown_words(components.tokenizer, job.prompt)
    if unknown:
        log(f"warning: '{job.model.id}' does not know the word(s) {', '.join(unknown)}; "
            "they reach the model as letters, not as a concept")
    height, width = resolve_size(components, job.video.height, job.video.width)
    if parallel is not None:
        from vgen.context_parallel import check_video
        from vgen.core.sampler import latent_shape

        check_video(components, latent_shape(components, components.family.video_frames(components, job.video.frames),
                                             height, width), parallel.plan)
    load_s = time.perf_counter() - t0
    loaded: list[tuple[Any, ModelConfig]] = [(components, job.model)]

    def load_model(cfg: ModelConfig):
        extra = models.get(job, cfg)
        loaded.append((extra, cfg))
        return extra

    t0 = time.perf_counter()
    ctx = RunContext(
        generator=torch.Generator("cpu").manual_seed(job.seed),
        height=height,
        width=width,
        output_stem=mp4.with_suffix(""),
        progress=progress,
        log=log,
        load_model=load_model,
    )
    video: Video | WrittenVideo = load_runner(job.method)(job, components, ctx)
    generate_s = time.perf_counter() - t0
    if parallel is not None and not parallel.writes:  # the group's first rank writes the files
        return JobResult(job, "done", mp4, time.perf_counter() - started, note=why)

    t0 = time.perf_counter()
    if isinstance(video, WrittenVideo):  # streamed by the runner; extras read it back
        files = [video.path]
        frames = read_video(video.path) if job.output.gif or job.output.save_frames else None
    else:
        files = [write_mp4(video, mp4)]
        frames = video
    if job.output.gif:
        files.append(write_gif(frames, mp4.with_suffix(".gif")))
    if job.output.save_frames:
        files.append(write_pngs(frames, mp4.with_name(f"{mp4.stem}_frames")))
    files += [Path(p) for p in video.metadata.pop("files", [])]
    write_s = time.perf_counter() - t0

    timings = {"load_s": load_s, "generate_s": generate_s, "write_s": write_s, "total_s": time.perf_counter() - started}
    from vgen.fingerprint import model_weight_hashes

    weights: dict[str, str] = {}
    for part, cfg in loaded:
        weights.update(model_weight_hashes(part, cfg))
    sidecar = build_sidecar(job, components, mp4, files[1:], video, timings, video.metadata, weights=weights,
                           distributed=distributed,
                           context_parallel=parallel.sidecar() if parallel is not None else None)
    if unknown:
        sidecar["unknown_words"] = unknown
    write_json(sidecar, sidecar_path(mp4))
    return JobResult(job, "done", mp4, time.perf_counter() - started, files=files, note=why)


def build_sidecar(job: JobConfig, components: Any, mp4: Path, files: list, video: Any, timings: dict,
                  method_info: dict, method: Optional[str] = None, weights: Optional[dict] = None,
                  distributed: Optional[dict] = None, context_parallel: Optional[dict] = None) -> dict:
    """The provenance JSON written beside every mp4: config, seed, model, device, sizes, timings, versions.

    `config` is the resolved config with only the method's own section: `vgen generate --config` on this
    file repeats the run; `config_sources` says where each value came from; `weights` fingerprints the
    weight files loaded (short sha256); `distributed` ({rank, world_size}) is recorded only for a video made
    by a launched (torchrun) run, and `context_parallel` (kind, degree, ulysses, ring, group, groups, ranks)
    only for one whose sequence was split over several processes.
    """
    return {
        "output": str(mp4),
        "files": [str(f) for f in files],
        "prompt": job.prompt,
        "method": method or job.method,
        "seed": job.seed,
        "model": {"id": job.model.id, "kind": components.kind,
                  **({"lora": list(components.loras)} if components.loras else {})},
        "device": str(components.device),
        "dtype": str(components.dtype).removeprefix("torch."),
        **({"distributed": dict(distributed)} if distributed is not None else {}),
        **({"context_parallel": dict(context_parallel)} if context_parallel is not None else {}),
        "video": {"frames": video.num_frames, "height": video.size[0], "width": video.size[1], "fps": video.fps},
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "method_info": method_info,
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "config": to_dict(job, only_method=True),
        "config_sources": config_sources(job),
        "weights": weights or {},
    }


def check_distinct_outputs(jobs: list[JobConfig]) -> None:
    """Two jobs of one batch must not write the same file."""
    seen: dict[Path, int] = {}
    for i, job in enumerate(jobs, 1):
        path = output_path(job).resolve()
        if path in seen:
            raise ConfigError(
                f"jobs {seen[path]} and {i} would both write '{output_path(job)}'; "
                "give them different seeds, output.name or output.dir"
            )
        seen[path] = i


def run_batch(
    jobs: list[JobConfig],
    skip_existing: bool = False,
    progress: Optional[bool] = None,
    on_result: Callable[[int, JobResult], None] = lambda i, r: None,
    world: Any = None,
    parallel: Any = None,
) -> list[JobResult]:
    """Run every job (or, in a launched run, this rank's share: `world` a vgen.distributed.World); a failure is
    recorded and the next job runs (Ctrl-C stops the batch). `on_result` gets each job's 1-based batch index.

    With `parallel` (a vgen.context_parallel.Group) the jobs go to groups of ranks, every rank of a group runs
    its group's jobs, and only the group's first rank writes and reports (`on_result`). An internal error in a
    split job stops the process (the launcher then stops the others): the group's ranks would no longer agree
    on which collective comes next.
    """
    from vgen.batch import jobs_of_group
    from vgen.context_parallel import Layout

    check_distinct_outputs(jobs)
    world_size, rank = (world.world_size, world.rank) if world is not None else (1, 0)
    layout = parallel.layout if parallel is not None else Layout(world_size)
    mine = jobs_of_group(len(jobs), layout.groups, layout.group_of(rank))
    writes = layout.writes(rank)
    if world is not None:
        from vgen.distributed import rank_device

        models, distributed = ModelCache(rank_device(world), parallel), world.sidecar()
    else:
        models, distributed = ModelCache(), None
    results = []
    for i in mine:
        job = jobs[i]
        if skip_existing and previous_output(job)[0]:
            result = JobResult(job, "skipped", output_path(job), note="same settings as its sidecar")
        else:
            started = time.perf_counter()
            try:
                result = run_job(job, models, progress, skip_existing=skip_existing, distributed=distributed)
            except VgenError as err:
                result = JobResult(job, "failed", seconds=time.perf_counter() - started, error=str(err))
            except Exception as err:  # an internal error in one job must not stop the batch
                if parallel is not None:
                    from vgen.distributed import RankLost, collective_error

                    raise RankLost(f"job {i + 1} stopped on rank {rank} ({collective_error(err)})") from err
                message = f"internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                result = JobResult(job, "failed", seconds=time.perf_counter() - started, error=message)
        results.append(result)
        if writes:
            on_result(i + 1, result)
    return results
