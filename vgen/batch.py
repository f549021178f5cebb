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

Started by torchrun, rank 0 reads the batch and what is done and hands the unfinished jobs out (`share_plan`);
each process runs its share and rank 0 reports the whole batch. With runtime.context_parallel the ranks form
groups that each split one video at a time: the plan hands the jobs round robin to the groups rather than to the
ranks (`plan_ranks`, `jobs_of_group`), every rank of a group runs its group's jobs, and the group's first rank
writes and reports them.
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
from vgen.distributed import assign, jobs_of_group  # noqa: F401 (jobs_of_group: re-exported for callers of vgen.batch)

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


def plan_ranks(jobs: list[JobConfig], world_size: int, skip_existing: bool, degree: int = 1) -> dict[int, int]:
    """0-based job index -> the rank that runs it (with groups of `degree` ranks, context parallelism: the group's
    first rank, which writes; the group's other ranks run the job beside it), for the jobs still to run: under
    --skip-existing a job whose output is done (its sidecar holds this job's settings) is handed to no group, and
    the unfinished ones are spread round robin over the groups (a group per rank when nothing is split), so a
    resume after a lost rank keeps every group busy. Jobs that share one output (they fail) go to no group."""
    from vgen.jobs import previous_output, shared_outputs

    shared = shared_outputs(jobs)
    todo = [i for i, job in enumerate(jobs) if i not in shared and not (skip_existing and previous_output(job)[0])]
    return {i: group * degree for i, group in zip(todo, assign(len(todo), world_size // degree))}


@dataclass
class Plan:
    """What rank 0 read and handed out, the same on every rank (broadcast): the batch's items (the file is
    parsed once, on rank 0), each unfinished job's rank (its group's first rank), how each video is split
    (`split`, a vgen.context_parallel.Plan, None when none is), and an error that stops the whole batch."""

    items: list[BatchItem]
    ranks: dict[int, int]  # 0-based index among the runnable jobs -> the rank (group leader) that runs it
    error: str = ""
    split: Optional[Any] = None

    @property
    def jobs(self) -> list[JobConfig]:
        return [item.job for item in self.items if item.job is not None]

    @property
    def degree(self) -> int:
        return self.split.degree if self.split is not None else 1

    def mine(self, rank: int) -> list[int]:
        """The jobs `rank` runs: its group's (every rank of a group runs the same jobs)."""
        leader = rank - rank % self.degree
        return sorted(i for i, r in self.ranks.items() if r == leader)


def share_plan(load: Callable[[], list[BatchItem]], skip_existing: bool, world: Any) -> Plan:
    """Rank 0 reads the batch (`load`) and what is already done, decides how videos are split
    (runtime.context_parallel, vgen.context_parallel.batch_plan) and hands out the unfinished jobs to the groups;
    the other ranks receive that Plan (torch.distributed broadcast), so a batch or prompts file that differs
    between nodes (or is missing on one) cannot shift work. A batch-file error is raised on every rank."""
    from vgen import distributed
    from vgen.context_parallel import batch_plan

    distributed.init(world)  # able to carry a split video's tensors: only rank 0 knows yet whether one is split
    plan = None
    if world.is_main:
        try:
            items = load()
            jobs = [item.job for item in items if item.job is not None]
            split = batch_plan([job.runtime.context_parallel for job in jobs], world.world_size)
            plan = Plan(items, plan_ranks(jobs, world.world_size, skip_existing, split.degree if split else 1),
                        split=split)
        except VgenError as err:
            plan = Plan([], {}, str(err))
    plan = distributed.broadcast(plan, world)
    if plan.error:
        distributed.teardown()
        raise ConfigError(plan.error)
    return plan


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


def outcomes_on_disk(jobs: list[JobConfig], ranks: dict[int, int], since: float, skip_existing: bool,
                     reason: str) -> list[Outcome]:
    """What a batch left on disk, for when a rank stopped before reporting: a job whose mp4 and sidecar were
    written since `since` (epoch seconds) is done; one from before is skipped under --skip-existing only when
    its sidecar holds this job's settings (as run_batch decides); any other is failed with `reason`. `ranks`:
    the plan's rank of each job handed out (0-based index); with groups (context parallelism) that is the
    group's first rank, so a job is reported as its group leader's."""
    from vgen.config import output_path
    from vgen.jobs import is_complete, previous_output, shared_outputs, sidecar_path

    shared = shared_outputs(jobs)
    outcomes = []
    for i, job in enumerate(jobs, 1):
        rank = ranks.get(i - 1, 0)
        mp4 = output_path(job)
        if i - 1 in shared:
            outcomes.append(Outcome(i, "failed", error=shared[i - 1]))
        elif is_complete(job) and sidecar_path(mp4).stat().st_mtime >= since:
            try:
                seconds = float(json.loads(sidecar_path(mp4).read_text())["timings"]["total_s"])
            except (OSError, ValueError, KeyError, TypeError):
                seconds = 0.0
            outcomes.append(Outcome(i, "done", str(mp4), seconds, rank=rank))
        elif skip_existing and previous_output(job)[0]:
            outcomes.append(Outcome(i, "skipped", str(mp4), rank=rank, note="same settings as its sidecar"))
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
             world: Optional[Any] = None, plan: Optional[Plan] = None,
             parallel: Optional[Any] = None) -> Optional[Report]:
    """Run this process's share of `jobs` (all of them in a plain run; under a launcher the jobs `plan` hands
    this rank's group) and return the whole batch's Report on rank 0, None on the other ranks.

    Rank 0 reports the jobs it handed to no group (done, or sharing an output) itself. Results meet on rank 0
    through torch.distributed (gather). If the gather fails (a rank died, or hung past VGEN_DIST_TIMEOUT), rank 0
    reads what the batch left on disk instead; file sets are placed whole, so every finished one is kept
    whoever dies. `parallel` (a vgen.context_parallel.Group) splits each video over a group.
    """
    from vgen.jobs import JobResult, run_batch, shared_outputs

    if world is None:
        results: list[Outcome] = []

        def record(i: int, result: Any) -> None:
            results.append(Outcome.of(i, result))
            on_result(results[-1])

        run_batch(jobs, skip_existing=skip_existing, on_result=record)
        return Report(results)

    from vgen import distributed
    from vgen.config import output_path

    if plan is None:
        raise ValueError("a launched batch runs the plan rank 0 shared (share_plan)")
    started = time.time()
    mine: list[Outcome] = []

    def record_rank(i: int, result: Any) -> None:
        mine.append(Outcome.of(i, result, world.rank))
        on_result(mine[-1])

    if world.is_main:  # the jobs no rank runs: done (under --skip-existing) or sharing one output
        shared = shared_outputs(jobs)
        for i, job in enumerate(jobs):
            if i in plan.ranks:
                continue
            result = (JobResult(job, "failed", error=shared[i]) if i in shared else
                      JobResult(job, "skipped", output_path(job), note="same settings as its sidecar"))
            record_rank(i + 1, result)

    def from_disk(reason: str) -> Report:
        own = {o.index: o for o in mine}
        disk = outcomes_on_disk(jobs, plan.ranks, started, skip_existing, reason)
        return Report([own.get(o.index, o) for o in disk], lost=reason)

    distributed.init(world)  # made by share_plan already (a no-op then)
    lost = True  # until the ranks have reported
    try:
        with distributed.stop_on_sigterm():
            try:
                try:
                    # only rank 0 draws progress bars; every writing rank prints one line per finished job
                    run_batch(jobs, skip_existing=skip_existing, progress=None if world.is_main else False,
                              on_result=record_rank, world=world, mine=plan.mine(world.rank), parallel=parallel)
                    gathered = distributed.gather(mine, world)
                except distributed.RankLost as err:
                    if not world.is_main:
                        raise distributed.RankLost(f"rank {world.rank} lost contact with rank 0 ({err}); "
                                                   "its finished outputs are kept") from None
                    return from_disk(f"a rank stopped before reporting ({err})")
            except distributed.Stopped as err:  # the launcher's SIGTERM: in a job, or while handling a lost rank
                if not world.is_main:
                    raise distributed.RankLost(f"rank {world.rank} {err}; its finished outputs are kept") from None
                return from_disk(f"rank 0 was {err}")
        lost = False
        if not world.is_main:
            return None
        return Report(sorted((o for part in gathered for o in part), key=lambda o: o.index))
    finally:
        distributed.teardown(quiet=lost)
