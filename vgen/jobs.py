"""Run jobs: check the output folder, load the model, call the method's runner, write files + sidecar.

A batch is a list of jobs; one failing job never stops the others, and models are loaded once per
batch and reused by every job that asks for the same one.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field, replace
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
    # an empty mapping (sampler.scheduler_config: {}) is as unset: a sidecar written before the key existed matches
    old = {k: v for k, v in _flat(previous).items() if keep(k) and v != {}}
    new = {k: v for k, v in _flat(to_dict(job, only_method=True)).items() if keep(k) and v != {}}
    missing = object()
    return [
        f"{key} {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]


def _read_sidecar(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("config"), dict) else None


def describes(sidecar: dict, mp4: Path) -> bool:
    """Whether the sidecar's recorded mp4 hash is that of `mp4` (sidecars from before the hash: True)."""
    from vgen.fileset import short_file_hash

    recorded = sidecar.get("output_sha256")
    if not recorded:
        return True
    try:
        return short_file_hash(mp4, len(recorded)) == recorded
    except OSError:
        return False


def previous_output(job: JobConfig) -> tuple[bool, str]:
    """(True, "") when the job's mp4 and sidecar exist, the sidecar describes that mp4 and its resolved config
    is this job's; else (False, why not), the why empty when there is no output yet."""
    mp4 = output_path(job)
    side = sidecar_path(mp4)
    if not mp4.is_file():
        return False, ""
    if not side.is_file():
        return False, f"{mp4.name} has no sidecar {side.name}"
    sidecar = _read_sidecar(side)
    if sidecar is None:
        return False, f"sidecar {side.name} has no readable config"
    if not describes(sidecar, mp4):
        return False, f"{mp4.name} is not the video {side.name} describes"
    diff = settings_diff(sidecar["config"], job)
    if diff:
        more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
        return False, f"settings differ from {side.name}: {'; '.join(diff[:3])}{more}"
    return True, ""


IDENTITY_KEYS = ("prompt", "negative", "method", "seed", "model.id", "model.kind", "model.motion_adapter",
                 "model.revision", "model.variant")  # an output made with other values is another output


def foreign_output(job: JobConfig) -> str:
    """What makes the job's existing output another job's (its sidecar's prompt, negative, method, seed or
    model differ: "another prompt ('a dog')"), or "" (no output, no readable sidecar, or this job's)."""
    side = sidecar_path(output_path(job))
    sidecar = _read_sidecar(side) if side.is_file() else None
    if sidecar is None:
        return ""
    old, new = _flat(sidecar["config"]), _flat(to_dict(job, only_method=True))
    for key in IDENTITY_KEYS:
        if old.get(key) != new.get(key):
            what = "model" if key.startswith("model.") else key
            return f"another {what} ({key} {old.get(key)!r}, this job {new.get(key)!r})"
    return ""


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
        if f"{word}</w>" in vocab or f"▁{word}" in vocab:  # CLIP's end-of-word, SentencePiece's word start
            continue
        pieces = [p.replace("</w>", "") for p in tokenizer.tokenize(word)]
        if closed or (len(word) > 1 and all(len(piece) <= 1 for piece in pieces)):
            out.append(word)
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from vgen.provenance import vgen_version

    out = {"python": platform.python_version(), "vgen": vgen_version()}  # the code that ran, not an install's metadata
    for package in ("torch", "diffusers", "transformers", "numpy", "accelerate", "peft"):
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
        """The job's model (or `model`, e.g. a method's second model) on the job's device, dtype and memory options.
        The job's own model comes with sampler.scheduler_config set over its scheduler (a view: the cached
        weights are shared, the scheduler is the job's)."""
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
        components = self._cache[key]
        if model is None and job.sampler.scheduler_config:
            from vgen.core.schedulers import with_scheduler_config

            overrides = dict(job.sampler.scheduler_config)
            components = replace(components, scheduler=with_scheduler_config(components.scheduler, job.sampler.scheduler,
                                                                              overrides, components.family))
        return components


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
    force: bool = False,
) -> JobResult:
    """Generate one video and its files; raises VgenError for anything the user can fix.

    An existing output is never replaced silently: with `skip_existing` a job whose sidecar holds the same
    resolved config is skipped, one made from another prompt, seed, method or model is an error, and any other
    re-runs (saying why); otherwise output.overwrite must be set. The whole file set is written to a staging
    folder and placed only when complete, the sidecar last (vgen.fileset); everything that can fail (loading,
    hashing the weights, generating, encoding) runs before. Sizes far beyond the memory are refused before any
    model loads (vgen.sizes), unless `force`. `distributed` ({rank, world_size}) goes into the sidecar of a job
    run by a launched batch. Under context parallelism (`models.parallel`), every rank of the group runs the job
    and only the group's first rank writes.
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
    if skip_existing and not job.output.overwrite and (foreign := foreign_output(job)):
        raise ConfigError(f"'{mp4}' holds the output of {foreign}; --skip-existing never replaces it: "
                          "pass --overwrite, or --out / output.name for another file")
    if why:
        log(f"re-running {mp4.name}: {why}")
    if job.__dict__.get("_sources", {}).get("model.id", "").startswith("model:"):
        log(f"model: {job.model.id} (named by {job.__dict__['_sources']['model.id'].removeprefix('model:')}'s "
            f"settings for {job.method})")

    import torch

    from vgen.core.kernels.dispatch import kernels_ran
    from vgen.core.sampler import resolve_size
    from vgen.fileset import commit, short_file_hash, staged
    from vgen.fingerprint import model_weight_hashes
    from vgen.methods import get_method, load_runner
    from vgen.models import resolve_device, resolve_dtype
    from vgen.sizes import check_sizes

    device = resolve_device(job.runtime.device)
    check_sizes(job, device, str(resolve_dtype(job.runtime.dtype, device)).removeprefix("torch."), log, force)
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
    kernels = configure_kernels(job)
    if job.sampler.scheduler_config and job.sampler.scheduler not in ("model", "auto"):  # known before the model loads
        from vgen.core.schedulers import check_scheduler_config

        check_scheduler_config(job.sampler.scheduler, None, dict(job.sampler.scheduler_config))
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
    # the weights are hashed before anything is made (a first hash of a big model takes minutes)
    weights: dict[str, str] = dict(model_weight_hashes(components, job.model, streaming=job.method == "streaming"))
    load_s = time.perf_counter() - t0

    def load_model(cfg: ModelConfig):
        extra = models.get(job, cfg)
        weights.update(model_weight_hashes(extra, cfg))
        return extra

    def context(output_stem: Path) -> RunContext:
        return RunContext(generator=torch.Generator("cpu").manual_seed(job.seed), height=height, width=width,
                          output_stem=output_stem, progress=progress, log=log, load_model=load_model)

    if parallel is not None and not parallel.writes:  # the group's first rank writes the files
        load_runner(job.method)(job, components, context(mp4.with_suffix("")))  # in lockstep with the group; the frames are the leader's
        return JobResult(job, "done", mp4, time.perf_counter() - started, note=why)

    folder = mp4.parent
    with staged(mp4) as stage:
        staged_mp4 = stage / mp4.name

        def placed(path: Path | str) -> Path:
            path = Path(path)
            return folder / path.relative_to(stage) if path.is_relative_to(stage) else path

        t0 = time.perf_counter()
        video: Video | WrittenVideo = load_runner(job.method)(job, components, context(staged_mp4.with_suffix("")))
        generate_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        if isinstance(video, WrittenVideo):  # streamed by the runner; extras read it back
            files = [video.path]
            frames = read_video(video.path) if job.output.gif or job.output.save_frames else None
        else:
            files = [write_mp4(video, staged_mp4)]
            frames = video
        if job.output.gif:
            files.append(write_gif(frames, staged_mp4.with_suffix(".gif")))
        if job.output.save_frames:
            files.append(write_pngs(frames, staged_mp4.with_name(f"{mp4.stem}_frames")))
        files += [Path(p) for p in video.metadata.pop("files", [])]
        write_s = time.perf_counter() - t0

        timings = {"load_s": load_s, "generate_s": generate_s, "write_s": write_s,
                   "total_s": time.perf_counter() - started}
        final = [placed(f) for f in files]
        sidecar = build_sidecar(job, components, mp4, final[1:], video, timings, video.metadata, weights=weights,
                                distributed=distributed,
                                context_parallel=parallel.sidecar() if parallel is not None else None)
        sidecar["kernels"] = {"asked": job.runtime.kernels, "env": os.environ.get("VGEN_KERNELS"),
                              "choice": kernels, "ran": kernels_ran()}
        sidecar["output_sha256"] = short_file_hash(staged_mp4)
        if unknown:
            sidecar["unknown_words"] = unknown
        write_json(sidecar, sidecar_path(staged_mp4))
        old = _read_sidecar(sidecar_path(mp4)) if sidecar_path(mp4).is_file() else None
        old_files = [folder / Path(str(f)).name for f in (old or {}).get("files", []) if Path(str(f)).name.startswith(mp4.stem)]
        commit(stage, folder, sidecar_path(mp4).name, old_files)
    return JobResult(job, "done", mp4, time.perf_counter() - started, files=final, note=why)


def refine_file(source: Path, job: JobConfig, out: Optional[Path] = None, progress: Optional[bool] = None) -> Path:
    """`vgen refine`: StreamingT2V's stage 3 on the video at `source` (vgen.methods.streaming.refine), written as
    <out>.mp4 + its sidecar (method "refine") the way run_job places a file set; returns the mp4 path."""
    from vgen.fileset import commit, short_file_hash, staged
    from vgen.fingerprint import model_weight_hashes
    from vgen.methods.streaming import refine as R

    started = time.perf_counter()
    mp4 = R.default_output(source, out)
    if mp4.resolve() == source.resolve():
        raise VgenError(f"--out '{mp4}' is the input video; choose another path")
    check_writable(mp4.parent)
    video = read_video(source)
    R.check_frames(video, source)

    t0 = time.perf_counter()
    components = ModelCache().get(job)
    size = R.check_refinable(components, video, job.streaming.upscale, source)
    weights = model_weight_hashes(components, job.model)  # before anything is made (vgen.fileset)
    load_s = time.perf_counter() - t0
    latents, encode_s, refine_s = R.refine_frames(components, video, job, progress)

    with staged(mp4) as stage:  # the mp4 and its sidecar are placed together, the sidecar last
        staged_mp4 = stage / mp4.name
        t0 = time.perf_counter()
        frames = R.write_decoded(components, latents, staged_mp4, video.fps, job.memory.decode_chunk)
        timings = {"load_s": load_s, "encode_s": encode_s, "refine_s": refine_s,
                   "write_s": time.perf_counter() - t0, "total_s": time.perf_counter() - started}
        written = WrittenVideo(mp4, frames, size, video.fps)
        sidecar = build_sidecar(job, components, mp4, [], written, timings, R.refine_info(job, source, video, frames),
                                method="refine", weights=weights)
        sidecar["output_sha256"] = short_file_hash(staged_mp4)
        write_json(sidecar, sidecar_path(staged_mp4))
        commit(stage, mp4.parent, sidecar_path(mp4).name)
    return mp4


def build_sidecar(job: JobConfig, components: Any, mp4: Path, files: list, video: Any, timings: dict,
                  method_info: dict, method: Optional[str] = None, weights: Optional[dict] = None,
                  distributed: Optional[dict] = None, context_parallel: Optional[dict] = None) -> dict:
    """The provenance JSON written beside every mp4: config, seed, model, device, sizes, timings, versions.

    `config` is the resolved config with only the method's own section: `vgen generate --config` on this
    file repeats the run; `config_sources` says where each value came from; `scheduler` is the scheduler the
    job sampled with (class, full config, and `base`: the model's own schedule or its family's, before
    sampler.scheduler_config); `weights` fingerprints the weight files loaded (short sha256); `vgen` is the
    version and, in a git checkout, the commit; `distributed` ({rank, world_size}) is recorded only for a video made
    by a launched (torchrun) run, and `context_parallel` (kind, degree, ulysses, ring, group, groups, ranks)
    only for one whose sequence was split over several processes.
    """
    from vgen import provenance

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
        "vgen": provenance.source(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "config": to_dict(job, only_method=True),
        "config_sources": config_sources(job),
        "weights": weights or {},
        **_scheduler_info(job, components),
    }


def _scheduler_info(job: JobConfig, components: Any) -> dict:
    """{"scheduler": ...} for a sidecar, or {} for components without a scheduler (a test's stand-in)."""
    if getattr(components, "scheduler", None) is None:
        return {}
    from vgen.core.schedulers import scheduler_record

    record = scheduler_record(job.sampler.scheduler, components.scheduler, getattr(components, "family", None))
    return {"scheduler": {"name": job.sampler.scheduler, **record, "base": getattr(components, "scheduler_source", "model")}}


def shared_outputs(jobs: list[JobConfig]) -> dict[int, str]:
    """0-based index -> why, for every job of a batch that would write the same file as another one (those
    jobs fail, the rest run)."""
    by_path: dict[Path, list[int]] = {}
    for i, job in enumerate(jobs):
        by_path.setdefault(output_path(job).resolve(), []).append(i)
    out = {}
    for path, group in by_path.items():
        if len(group) > 1:
            names = ", ".join(str(i + 1) for i in group)
            for i in group:
                out[i] = (f"jobs {names} would all write '{output_path(jobs[i])}'; give them different seeds, "
                          "output.name or output.dir")
    return out


def run_batch(
    jobs: list[JobConfig],
    skip_existing: bool = False,
    progress: Optional[bool] = None,
    on_result: Callable[[int, JobResult], None] = lambda i, r: None,
    world: Any = None,
    mine: Optional[list[int]] = None,
    parallel: Any = None,
) -> list[JobResult]:
    """Run every job (or, in a launched run, the 0-based indices `mine` that rank 0 handed this rank's group;
    `world` a vgen.distributed.World); a failure is recorded and the next job runs (Ctrl-C stops the batch). Jobs
    that would write one file fail, saying so. `on_result` gets each job's 1-based batch index.

    With `parallel` (a vgen.context_parallel.Group) the jobs go to groups of ranks, every rank of a group runs
    its group's jobs, and only the group's first rank writes and reports (`on_result`). An internal error in a
    split job stops the process (the launcher then stops the others): the group's ranks would no longer agree
    on which collective comes next.
    """
    from vgen.distributed import jobs_of_group
    from vgen.context_parallel import Layout

    shared = shared_outputs(jobs)
    world_size, rank = (world.world_size, world.rank) if world is not None else (1, 0)
    layout = parallel.layout if parallel is not None else Layout(world_size)
    if mine is None:
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
        if i in shared:
            result = JobResult(job, "failed", error=shared[i])
        elif skip_existing and previous_output(job)[0]:
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
