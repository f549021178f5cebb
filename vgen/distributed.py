"""torch.distributed for `vgen batch` and `vgen generate`: who this process is, its device, the gather of job
results, the launcher.

A run started by torchrun (or any launcher that sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT) runs one process per device. The batch plan rank 0 hands out and the job results (a few hundred
bytes a job) travel on a gloo group over CPU tensors whatever the device: it works on GPU nodes, on CPUs and
across machines alike. When one video is split over processes (context parallelism, vgen.context_parallel) its
tensors need a group of their own: the default group is then NCCL on CUDA (gloo on CPU) and the plan and results
keep a gloo group beside it. Runners never see this module; vgen.batch and vgen.jobs call it.
"""

from __future__ import annotations

import os
import re
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Mapping, Optional

from vgen.errors import ConfigError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# How long rank 0 waits in the final gather for the slowest rank. A dead rank is noticed much sooner (its socket
# closes, and torchrun stops the group); this only bounds a rank that hangs. Ranks may legitimately finish hours
# apart (jobs differ in length), hence a day by default.
TIMEOUT_ENV = "VGEN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 24 * 3600


class RankLost(RuntimeError):
    """A collective failed: some rank died, hung past the timeout, or could not be reached."""


class Stopped(BaseException):
    """SIGTERM, which torchrun sends every rank when another one fails: unwinds the batch like Ctrl-C (a
    BaseException, so no job's error handling swallows it), deleting the job's partial files on the way."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises Stopped inside the block; after it the process only reports and exits, so a late SIGTERM
    (the launcher reacting to a dead rank that this rank already noticed) is ignored rather than cutting the
    summary short."""

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Stopped("stopped by the launcher (SIGTERM), most likely because another rank failed")

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sidecar(self) -> dict[str, int]:
        """What the sidecar records: where in the run the video was made."""
        return {"rank": self.rank, "world_size": self.world_size}


def world_from_env(env: Optional[Mapping[str, str]] = None) -> Optional[World]:
    """This process's place in a launched run, or None for a plain (single-process) run."""
    env = os.environ if env is None else env
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    try:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ConfigError("RANK and WORLD_SIZE must both be set to integers (as torchrun sets them)") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"RANK={rank} does not fit WORLD_SIZE={world_size} (need 0 <= RANK < WORLD_SIZE)")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise ConfigError(f"RANK/WORLD_SIZE are set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
                          "start the batch with torchrun")
    return World(rank, world_size, local_rank)


def rank_device(world: World) -> Optional[str]:
    """cuda:LOCAL_RANK when CUDA is there (one GPU per process); None on CPU (jobs keep their own device)."""
    import torch

    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ConfigError(
            f"LOCAL_RANK {world.local_rank} has no GPU: this machine has {count}; "
            f"start at most {count} processes per machine (--nproc-per-node)"
        )
    torch.cuda.set_device(world.local_rank)
    return f"cuda:{world.local_rank}"


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return value


_RESULTS: list[Any] = []  # the gloo group of job results when the default group is NCCL (empty: the default group)


def init(world: World, tensors: bool = True) -> None:
    """Join the process group (env:// rendezvous from MASTER_ADDR/MASTER_PORT or torchrun's store): with `tensors`
    NCCL on CUDA plus a gloo group for the plan and results (gloo alone on CPU), else gloo alone. `tensors` is the
    default because a launched batch joins before it knows whether a video is split (only rank 0 reads the batch,
    then broadcasts the plan); an NCCL group that carries nothing stays idle. A second call does nothing."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    timeout = timedelta(seconds=timeout_s())
    nccl = tensors and torch.cuda.is_available()
    dist.init_process_group("nccl" if nccl else "gloo", rank=world.rank, world_size=world.world_size, timeout=timeout)
    _RESULTS.clear()
    if nccl:
        _RESULTS.append(dist.new_group(backend="gloo", timeout=timeout))


def collective_error(err: BaseException) -> str:
    """The first useful line of a failed collective's error (gloo's source location and advice left out)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[.../pair.cc:553] " source location
    return first.split(". ")[0][:200]  # "Connection closed by peer [host]:port", without gloo's advice


def gather(obj: Any, world: World) -> Optional[list[Any]]:
    """Every rank's `obj` on rank 0, in rank order (None on the others); RankLost when a rank did not report."""
    import torch.distributed as dist

    out: Optional[list[Any]] = [None] * world.world_size if world.is_main else None
    try:
        dist.gather_object(obj, out, dst=0, group=_RESULTS[0] if _RESULTS else None)
    except Exception as err:  # gloo raises RuntimeError / DistBackendError on a closed socket or a timeout
        raise RankLost(collective_error(err)) from err
    return out


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's `obj` on every rank (pickled through gloo); RankLost when a rank cannot be reached."""
    import torch.distributed as dist

    box = [obj if world.is_main else None]
    try:
        dist.broadcast_object_list(box, src=0, group=_RESULTS[0] if _RESULTS else None)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RankLost(re.sub(r"^\[[^\]]*\]\s*", "", first)[:200]) from err
    return box[0]


def teardown(quiet: bool = False) -> None:
    """Leave the process group. `quiet`: this rank already lost a peer, so a group that cannot be torn down
    cleanly is expected and not worth a traceback."""
    import torch.distributed as dist

    _RESULTS.clear()
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            if not quiet:
                raise


@dataclass
class Launch:
    """How the workers of a local launch ended: exit code of every rank that failed, and the first to fail."""

    failures: dict[int, int]
    first: Optional[int] = None  # the root cause; the launcher stops the other ranks after it (SIGTERM)


def launch_local(nproc: int, argv: list[str]) -> Launch:
    """Run `python -m vgen.cli ARGV` on `nproc` local workers through torch's own launcher (`torchrun
    --standalone --nproc-per-node N`, no restarts).

    As torchrun, it sets OMP_NUM_THREADS=1 for the workers unless it is already set.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # the summary and the failures are vgen's to report: keep the launcher's own warnings (the OMP banner,
    # the ChildFailedError dump) off the terminal
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "vgen.cli", *argv])
    try:
        run(args)
    except ChildFailedError as err:
        first, _ = err.get_first_failure()
        return Launch({int(rank): failure.exitcode for rank, failure in err.failures.items()}, int(first))
    return Launch({})


def assign(n_jobs: int, world_size: int) -> list[int]:
    """Round robin: the k-th job handed out goes to rank k mod world_size (equal counts; long and short jobs
    interleave). Names and frames never depend on the rank (both come from the job alone)."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    return [i % world_size for i in range(n_jobs)]


def jobs_of_group(n_jobs: int, n_groups: int, group: int) -> list[int]:
    """The jobs (0-based) that one group of ranks runs when no plan hands them out: `assign` over groups instead
    of ranks (a group of one rank when no video is split)."""
    return [i for i, g in enumerate(assign(n_jobs, n_groups)) if g == group]
