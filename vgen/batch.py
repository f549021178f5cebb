"""Batch files: a YAML list of jobs and/or a prompts file, one video per prompt x seed.

```yaml
defaults:            # keys of any job, applied to every job
  model: {id: toy}
  sampler: {steps: 20}
jobs:                # explicit jobs (each a partial job config)
  - prompt: a red circle moving left
  - {prompt: a blue square moving up, method: vico, seed: 3}
  - {config: ../outputs/a-red-circle-moving-left-vanilla-0.json}   # re-run an output from its sidecar
prompts: prompts.txt # one prompt per line ('#' starts a comment); relative to this file
seeds: [0, 1]        # seeds for the prompts file (default [0])
```
A job whose config is wrong becomes a failed item; the other jobs still run.

Started by torchrun, each process runs its share of the jobs (`assign`) and rank 0 reports the whole batch. With
runtime.context_parallel the ranks form groups that each split one video at a time: the jobs go to the groups
(`jobs_of_group`) rather than to the ranks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from vgen.config import JobConfig, load_config_file, load_yaml, parse_overrides, resolve
from vgen.errors import ConfigError, VgenError

BATCH_KEYS = ("defaults", "jobs", "prompts", "seeds")


@dataclass
class BatchItem:
    label: str  # what the summary shows for this job
    job: Optional[JobConfig] = None
    error: str = ""  # set when the job's config is wrong


def read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"prompts file '{path}' not found")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def load_batch(path: str | Path, overrides: Iterable[str] = ()) -> list[BatchItem]:
    path = Path(path)
    spec = load_yaml(path)
    unknown = [k for k in spec.keys() if k not in BATCH_KEYS]
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' in batch file '{path}'; valid keys: {', '.join(BATCH_KEYS)}")
    defaults = spec.get("defaults") or OmegaConf.create({})
    if not isinstance(defaults, DictConfig):
        raise ConfigError(f"'defaults' in '{path}' must be a mapping of job keys")
    cli = parse_overrides(overrides)

    entries: list[tuple[str, Any]] = []
    jobs = spec.get("jobs") or []
    if not isinstance(jobs, (ListConfig, list)):
        raise ConfigError(f"'jobs' in '{path}' must be a list")
    for i, job in enumerate(jobs, 1):
        if isinstance(job, str):
            job = OmegaConf.create({"prompt": job})
        entries.append((f"job {i}", job))
    if spec.get("prompts"):
        seeds = spec.get("seeds") or [0]
        if not isinstance(seeds, (ListConfig, list)) or not all(isinstance(s, int) for s in seeds):
            raise ConfigError(f"'seeds' in '{path}' must be a list of integers")
        for prompt in read_prompts(path.parent / str(spec.prompts)):
            for seed in seeds:
                entries.append((f"{prompt!r} seed {seed}", OmegaConf.create({"prompt": prompt, "seed": seed})))
    if not entries:
        raise ConfigError(f"batch file '{path}' has no jobs (give 'jobs' and/or 'prompts')")

    items = []
    for label, entry in entries:
        if not isinstance(entry, DictConfig):
            items.append(BatchItem(label, error=f"{label} must be a mapping of job keys or a prompt string"))
            continue
        try:
            layers = [(defaults, f"{path} defaults")]
            if "config" in entry:  # a job config file or an output's sidecar: that run, then the entry's own keys
                source = path.parent / str(entry.config)
                layers.append((load_config_file(source), str(source)))
                entry = OmegaConf.masked_copy(entry, [k for k in entry.keys() if k != "config"])
            job = resolve(layers + [(entry, f"{path} {label}"), (cli, "overrides")])
            items.append(BatchItem(label, job=job))
        except VgenError as err:
            items.append(BatchItem(label, error=str(err)))
    return items


# ----------------------------------------------------------------------------------------------
# many processes (torchrun): which rank runs which job, and what every rank did


def assign(n_jobs: int, world_size: int) -> list[int]:
    """The rank that runs each job: job i on rank i mod world_size.

    It depends only on the job's place in the batch file, so a job's output name and frames (seeded per job) never
    depend on the world size, a resume with --skip-existing finds the same files under any world size, and the
    ranks get equal counts (long and short jobs interleave). Each rank loads a model once, when its first job
    asks for it.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    return [i % world_size for i in range(n_jobs)]


def jobs_of_group(n_jobs: int, n_groups: int, group: int) -> list[int]:
    """The jobs (0-based) that one group of ranks runs: `assign` over groups instead of ranks (a group of one rank
    when no video is split)."""
    return [i for i, g in enumerate(assign(n_jobs, n_groups)) if g == group]


@dataclass
class Outcome:
    """One job's result as the summary needs it: small and picklable, so every rank's can be gathered on rank 0."""

    index: int  # 1-based, among the batch's runnable jobs
    status: str  # "done" | "skipped" | "failed"
    path: str = ""
    seconds: float = 0.0
    error: str = ""
    rank: int = 0
    note: str = ""  # why a job re-ran or was skipped (its sidecar's settings)

    @classmethod
    def of(cls, index: int, result: Any, rank: int = 0) -> "Outcome":
        return cls(index, result.status, str(result.path) if result.path else "", result.seconds, result.error, rank,
                   getattr(result, "note", "") or "")


def outcomes_on_disk(jobs: list[JobConfig], world_size: int, since: float, skip_existing: bool, reason: str,
                     degree: int = 1) -> list[Outcome]:
    """What a batch left on disk, for when a rank stopped before reporting: a job whose mp4 and sidecar were
    written since `since` (epoch seconds) is done; one from before is skipped under --skip-existing only when
    its sidecar holds this job's settings (as run_batch decides); any other is failed with `reason`. With groups
    of `degree` ranks (context parallelism) a job is reported as its group's first rank's."""
    from vgen.config import output_path
    from vgen.jobs import is_complete, previous_output, sidecar_path

    outcomes = []
    leaders = [g * degree for g in assign(len(jobs), world_size // degree)]
    for i, (job, rank) in enumerate(zip(jobs, leaders), 1):
        mp4 = output_path(job)
        if is_complete(job) and sidecar_path(mp4).stat().st_mtime >= since:
            try:
                seconds = float(json.loads(sidecar_path(mp4).read_text())["timings"]["total_s"])
            except (OSError, ValueError, KeyError, TypeError):
                seconds = 0.0
            outcomes.append(Outcome(i, "done", str(mp4), seconds, rank=rank))
        elif skip_existing and previous_output(job)[0]:
            outcomes.append(Outcome(i, "skipped", str(mp4), rank=rank))
        else:
            outcomes.append(Outcome(i, "failed", error=f"not finished on rank {rank}: {reason}", rank=rank))
    return outcomes


@dataclass
class Report:
    """The whole batch as rank 0 (or a plain run) sees it; `lost` says why some outcomes were read from disk."""

    outcomes: list[Outcome]
    lost: str = ""


SUPERVISED_ENV = "VGEN_BATCH_SUPERVISED"  # set by `vgen batch --nproc` for its workers: the parent reports lost ranks


def run_jobs(jobs: list[JobConfig], skip_existing: bool, on_result: Callable[[Outcome], None],
             world: Optional[Any] = None, parallel: Optional[Any] = None) -> Optional[Report]:
    """Run this process's share of `jobs` (all of them in a plain run) and return the whole batch's Report on
    rank 0, None on the other ranks.

    Results meet on rank 0 through torch.distributed (gather). If the gather fails (a rank died, or hung past
    VGEN_DIST_TIMEOUT), rank 0 reads what the batch left on disk instead; outputs are written atomically, so every
    finished one is kept whoever dies. `parallel` (a vgen.context_parallel.Group) splits each video over a group.
    """
    from vgen.jobs import run_batch

    if world is None:
        results: list[Outcome] = []

        def record(i: int, result: Any) -> None:
            results.append(Outcome.of(i, result))
            on_result(results[-1])

        run_batch(jobs, skip_existing=skip_existing, on_result=record)
        return Report(results)

    from vgen import distributed

    started = time.time()
    mine: list[Outcome] = []

    def record_rank(i: int, result: Any) -> None:
        mine.append(Outcome.of(i, result, world.rank))
        on_result(mine[-1])

    def from_disk(reason: str) -> Report:
        own = {o.index: o for o in mine}
        disk = outcomes_on_disk(jobs, world.world_size, started, skip_existing, reason,
                                parallel.layout.degree if parallel is not None else 1)
        return Report([own.get(o.index, o) for o in disk], lost=reason)

    distributed.init(world, tensors=parallel is not None)
    try:
        with distributed.stop_on_sigterm():
            try:
                # only rank 0 draws progress bars; every writing rank prints one line per finished job
                run_batch(jobs, skip_existing=skip_existing, progress=None if world.is_main else False,
                          on_result=record_rank, world=world, parallel=parallel)
                gathered = distributed.gather(mine, world)
            except distributed.Stopped as err:
                if not world.is_main:
                    raise distributed.RankLost(f"rank {world.rank} {err}; its finished outputs are kept") from None
                return from_disk(f"rank 0 was {err}")
            except distributed.RankLost as err:
                if not world.is_main:
                    raise distributed.RankLost(f"rank {world.rank} lost contact with rank 0 ({err}); "
                                               "its finished outputs are kept") from None
                return from_disk(f"a rank stopped before reporting ({err})")
        if not world.is_main:
            return None
        return Report(sorted((o for part in gathered for o in part), key=lambda o: o.index))
    finally:
        distributed.teardown()
