"""The `vgen` command line: parse flags into a JobConfig and hand it to vgen.jobs.

Nothing heavy is imported at module load (``vgen --help`` must not import torch); commands import what
they need when they run. Every user error ends as one ``error: ...`` line and a non-zero exit.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from vgen.errors import VgenError

app = typer.Typer(
    name="vgen",
    help="Text-to-video generation with Vico, StreamingT2V, ZS2 and I4VGen on diffusers models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(config_app, name="config")

EXIT_USER_ERROR = 2
EXIT_FAILED_JOBS = 1
EXIT_INTERRUPTED = 130

OVERRIDES_HELP = (
    "KEY=VALUE overrides of any config key, e.g. sampler.eta=0.5 memory.decode_chunk=4; method knobs are "
    "METHOD.KEY=VALUE (vico.lr=1e-2, vico.words=cat,dog, zs2.momentum=0.9; `vgen config show -m METHOD` lists them)"
)
DEFAULTS_NOTE = (
    "Defaults: each value comes from the built-in schema < the method's defaults (the paper's) < the model's "
    "settings for that method (its vgen.yaml; the toy ships some) < --config < flags < KEY=VALUE; "
    "`vgen config show -m METHOD [--model ID]` prints every value and where it came from."
)


def _default(key: str) -> str:
    """The schema default of a dotted key, for help texts (no torch, no model read)."""
    from vgen.config import JobConfig

    node = JobConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return "the model's" if node is None else str(node)


def _method_defaults(key: str) -> str:
    from vgen.methods import METHODS

    found = [f"{m.name} {m.defaults[key]}" for m in METHODS.values() if key in m.defaults]
    return f"; {', '.join(found)}" if found else ""


def _hint(text: str, key: str) -> str:
    return f"{text} [default: {_default(key)}{_method_defaults(key)}; a model may carry its own]"


def _version_callback(value: bool) -> None:
    if value:
        from vgen import __version__

        typer.echo(f"vgen {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Text-to-video generation with Vico, StreamingT2V, ZS2 and I4VGen on diffusers models."""


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


def _out_flags(out: Optional[Path]) -> dict:
    """--out DIR, or --out FILE.mp4 (folder and file stem)."""
    if out is None:
        return {}
    if out.suffix.lower() == ".mp4":
        return {"output.dir": str(out.parent) or ".", "output.name": out.stem}
    if out.suffix:
        raise VgenError(f"--out '{out}' must be a folder or a .mp4 file")
    return {"output.dir": str(out)}


@app.command(epilog=DEFAULTS_NOTE)
def generate(
    prompt: Optional[str] = typer.Argument(
        None, metavar="PROMPT", show_default=False,
        help="What the video shows (may come from --config, e.g. a sidecar JSON to re-run)."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="KEY=VALUE", help=OVERRIDES_HELP, show_default=False),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", metavar="METHOD", help="vanilla, vico, streaming, zs2, i4vgen (see `vgen methods`) [default: vanilla]."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", metavar="FILE",
        help="YAML job config (configs/*.yaml), or an output's sidecar .json to re-run it exactly."),
    model: Optional[str] = typer.Option(
        None, "--model", metavar="MODEL", help="Hub id, local diffusers folder or built-in name (`vgen models`) [default: toy]."),
    frames: Optional[int] = typer.Option(None, "--frames", "-f", metavar="N", help=_hint("Number of frames.", "video.frames")),
    height: Optional[int] = typer.Option(None, "--height", metavar="PX", help="Height in pixels [default: the model's native size]."),
    width: Optional[int] = typer.Option(None, "--width", metavar="PX", help="Width in pixels [default: the model's native size]."),
    fps: Optional[int] = typer.Option(None, "--fps", metavar="N", help=_hint("Frames per second of the mp4.", "video.fps")),
    steps: Optional[int] = typer.Option(None, "--steps", metavar="N", help=_hint("Denoising steps.", "sampler.steps")),
    guidance: Optional[float] = typer.Option(
        None, "--guidance", "-g", metavar="SCALE", help=_hint("Classifier-free guidance scale.", "sampler.guidance")),
    negative: Optional[str] = typer.Option(None, "--negative", metavar="TEXT", help="Negative prompt [default: none]."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", metavar="NAME",
        help=_hint("ddim, dpm++, sde-dpm++, euler, euler-a, ddpm, unipc, pndm, model or auto (which ones a model runs: its family; auto: ddim on UNets, the model's own on Wan/LTX).", "sampler.scheduler")),
    seed: Optional[int] = typer.Option(None, "--seed", "-s", metavar="N", help="Random seed [default: 0]."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", metavar="PATH", help="Output folder, or the .mp4 path [default: outputs/<slug>-<method>-<seed>-<config hash>.mp4]."),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Replace an existing output (otherwise it is an error)."),
    skip_existing: bool = typer.Option(
        False, "--skip-existing", help="Keep an existing output whose sidecar has the same settings; never replace another prompt's or model's output; re-run (saying why) otherwise."),
    device: Optional[str] = typer.Option(None, "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N [default: auto]."),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", metavar="DTYPE", help="auto, float32, float16, bfloat16 [default: auto: float16 on cuda, else float32]."),
    gif: Optional[bool] = typer.Option(None, "--gif/--no-gif", help="Also write a GIF [default: no]."),
    save_frames: Optional[bool] = typer.Option(None, "--save-frames/--no-save-frames", help="Also write one PNG per frame [default: no]."),
    force: bool = typer.Option(
        False, "--force", help="Run even when the estimated peak memory is far beyond the device's (it is refused otherwise)."),
    nproc: Optional[int] = typer.Option(
        None, "--nproc", min=1, show_default=False,
        help="Split the video's sequence over N local processes (context parallelism, runtime.context_parallel "
             "[default: ulysses]; as `torchrun --standalone --nproc-per-node N`); leave it out under torchrun."),
) -> None:
    """Generate one video from a text prompt: outputs/<slug>-<method>-<seed>-<config hash>.mp4 and its .json sidecar."""
    from vgen.config import build_job

    flags = {
        "prompt": prompt,
        "method": method,
        "model.id": model,
        "video.frames": frames,
        "video.height": height,
        "video.width": width,
        "video.fps": fps,
        "sampler.steps": steps,
        "sampler.guidance": guidance,
        "sampler.scheduler": scheduler,
        "negative": negative,
        "seed": seed,
        "runtime.device": device,
        "runtime.dtype": dtype,
        "output.overwrite": overwrite,
        "output.gif": gif,
        "output.save_frames": save_frames,
        **_out_flags(out),
    }
    job = build_job(str(config) if config else None, flags, overrides or [], strict=True)
    if config is not None and (warning := _sidecar_version_warning(config)):
        _echo_err(warning)
    from vgen.distributed import world_from_env
    from vgen.jobs import run_job

    world = world_from_env()
    if nproc is not None:
        if world is not None:
            raise VgenError("--nproc starts its own workers: leave it out when vgen runs under torchrun")
        _launch_generate(nproc, job)
        return
    if world is not None and world.world_size > 1:
        result = _generate_ranked(job, world, skip_existing, force)
        if result is None:
            return
    else:
        result = run_job(job, log=_echo_err, skip_existing=skip_existing, force=force)
    if result.status == "skipped":
        _echo_err(f"skipped: {result.path} exists with the same settings ({result.path.with_suffix('.json').name})")
    typer.echo(str(result.path))
    for extra in result.files[1:]:
        typer.echo(str(extra))


def _split_plan(job, world_size: int):
    """The context-parallel plan of one video over `world_size` processes, checked as far as it can be without
    a model (one line, before any worker starts or waits)."""
    from vgen.context_parallel import check_device, parse, plan, refusal
    from vgen.methods import get_method
    from vgen.models import resolve_device

    p = plan(parse(job.runtime.context_parallel), world_size, whole_world=True)
    if p is not None:
        refused = refusal(get_method(job.method))
        if refused:
            raise VgenError(refused)
        check_device(p, resolve_device(job.runtime.device).type)
    return p


def _generate_ranked(job, world, skip_existing: bool, force: bool = False):
    """`vgen generate` as one rank of a launched run: the video split over every rank; rank 0 writes and returns
    the result, the others return None. A user error is printed by rank 0 only."""
    from vgen import distributed
    from vgen.context_parallel import Group, Layout

    try:
        p = _split_plan(job, world.world_size)
    except VgenError:
        if not world.is_main:
            raise typer.Exit(EXIT_USER_ERROR)
        raise
    group = Group(Layout(world.world_size, p.degree), p, world.rank)
    distributed.init(world, tensors=True)
    result, lost = None, ""
    try:
        with distributed.stop_on_sigterm():
            try:
                result, lost = _attempt_ranked(job, world, group, skip_existing, force)
            except distributed.Stopped as err:  # the launcher's SIGTERM: in the loop, or while handling a lost peer
                lost = _lost_line(world, f"rank {world.rank} {err}")
    finally:
        distributed.teardown(quiet=bool(lost))
    if lost:
        if lost != "quiet":
            _echo_err(f"error: {lost}; no output was written")
        raise typer.Exit(EXIT_FAILED_JOBS)
    return result if world.is_main else None


def _lost_line(world, line: str) -> str:
    """What a rank says when its video stopped: nothing under `vgen generate --nproc` (the parent names the rank
    that died, once), else `line`."""
    from vgen.batch import SUPERVISED_ENV

    return "quiet" if os.environ.get(SUPERVISED_ENV) else line


def _attempt_ranked(job, world, group, skip_existing: bool, force: bool):
    """One rank's share of the video: (result, "") or (None, why it stopped)."""
    from vgen import distributed
    from vgen.jobs import ModelCache, run_job

    try:
        models = ModelCache(distributed.rank_device(world), group)
        result = run_job(job, models, progress=None if world.is_main else False,
                         log=_echo_err if world.is_main else (lambda message: None),
                         skip_existing=skip_existing, force=force, distributed=world.sidecar())
    except VgenError:
        if not world.is_main:
            raise typer.Exit(EXIT_USER_ERROR)
        raise
    except Exception as err:  # most often a collective that failed because another rank died
        if os.environ.get("VGEN_DEBUG"):
            raise
        import torch.distributed as dist

        line = f"rank {world.rank} stopped the video ({type(err).__name__}: {distributed.collective_error(err)})"
        return None, _lost_line(world, line) if isinstance(err, dist.DistError) else line
    return result, ""


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _launch_generate(nproc: int, job) -> None:
    """`vgen generate --nproc N`: check once, start N workers on the same command, and report a lost rank."""
    from vgen.config import output_path
    from vgen.distributed import launch_local

    from vgen.batch import SUPERVISED_ENV

    _split_plan(job, nproc)
    mp4 = output_path(job)
    os.environ[SUPERVISED_ENV] = "1"
    launch = launch_local(nproc, _without_nproc(_ARGV))
    failures = launch.failures
    if not failures:
        return
    if failures.get(0) == EXIT_USER_ERROR:
        raise typer.Exit(EXIT_USER_ERROR)  # rank 0 printed the one-line error
    # a rank that exits 1 lost its group (it says nothing when supervised): the cause is another one
    causes = [rank for rank, code in failures.items() if code != EXIT_FAILED_JOBS]
    first = launch.first if launch.first in causes else min(causes or failures)
    kept = "kept" if mp4.is_file() and mp4.with_suffix(".json").is_file() else "no output was written"
    _echo_err(f"error: rank {first} stopped ({_how(failures[first])})"
              f"{' and the launcher stopped the other ranks' if nproc > 1 else ''}; {mp4.name}: {kept}")
    raise typer.Exit(EXIT_FAILED_JOBS)


def _how(code: int) -> str:
    import signal

    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@app.command()
def batch(
    file: Path = typer.Argument(..., help="Batch YAML: defaults, jobs, prompts (file), seeds."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " (applied to every job)", show_default=False),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip jobs whose mp4 and sidecar exist with the same settings (resume); re-run changed ones, saying why."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder for every job."),
    nproc: Optional[int] = typer.Option(
        None, "--nproc", min=1, show_default=False,
        help="Split the jobs over N local worker processes (as `torchrun --standalone --nproc-per-node N`); "
             "leave it out when torchrun started vgen."),
) -> None:
    """Run many jobs from a YAML file; failed jobs never stop the others. Under torchrun, the jobs are split over the ranks."""
    from vgen.batch import SUPERVISED_ENV, load_batch, run_jobs, share_plan
    from vgen.distributed import world_from_env

    extra = [f"output.dir={out}"] if out is not None else []
    world = world_from_env()
    if nproc is not None and world is not None:
        raise VgenError("--nproc starts its own workers: leave it out when vgen runs under torchrun")

    def load() -> list:
        loaded = load_batch(file, list(overrides or []) + extra)
        for line in _sidecar_version_warnings(file, loaded):
            _echo_err(line)
        return loaded

    plan = None
    if world is None:
        items = load()
    else:  # rank 0 reads the batch and what is done, and hands the unfinished jobs out
        plan = share_plan(load, skip_existing, world)
        items = plan.items
    runnable = [item for item in items if item.job is not None]
    jobs = [item.job for item in runnable]
    from vgen.context_parallel import Group, Layout, batch_plan

    if plan is not None:  # rank 0 decided the split with the plan
        split = plan.split
    else:
        split = batch_plan([job.runtime.context_parallel for job in jobs], nproc or 1)
    if nproc is not None:
        argv = ["batch", str(file), *(overrides or []), *(["--skip-existing"] if skip_existing else []),
                *(["--out", str(out)] if out is not None else [])]
        _launch_batch(nproc, argv, items, jobs, skip_existing, split.degree if split else 1)
        return
    parallel = Group(Layout(world.world_size, split.degree), split, world.rank) if split and world else None

    prefix = f"rank {world.rank}: " if world is not None else ""

    def report(outcome) -> None:  # one whole line per job (one write), so ranks sharing a terminal do not garble
        detail = outcome.path if outcome.status != "failed" else outcome.error
        detail += f" ({outcome.note})" if outcome.note and outcome.status != "failed" else ""
        typer.echo(f"{prefix}[{outcome.index}/{len(jobs)}] {outcome.status}: {runnable[outcome.index - 1].label} -> {detail}", err=True)

    from vgen.distributed import RankLost

    try:
        result = run_jobs(jobs, skip_existing, report, world, plan, parallel)
    except RankLost as err:  # this rank's outputs are on disk; rank 0 (or the launcher) reports the batch
        _echo_err(f"error: {err}")
        raise typer.Exit(EXIT_FAILED_JOBS)
    if result is None:  # not rank 0: rank 0 prints the summary for the whole batch
        return
    if result.lost and os.environ.get(SUPERVISED_ENV):
        raise typer.Exit(EXIT_FAILED_JOBS)  # `vgen batch --nproc` reports a lost rank itself, once
    _finish_batch(items, result.outcomes, result.lost)


def _sidecar_version_warning(path: Path) -> Optional[str]:
    """One line when `path` is a sidecar written by another vgen version (its re-run may give other frames)."""
    import json

    from vgen.provenance import version_warning

    if Path(path).suffix.lower() != ".json":
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return version_warning(data, path) if isinstance(data, dict) else None


def _sidecar_version_warnings(batch_file: Path, items: list) -> list[str]:
    """The version warning of every sidecar a batch file's jobs re-run (`config: x.json`), once per file."""
    from vgen.config import load_yaml

    try:
        entries = load_yaml(batch_file).get("jobs") or []
    except VgenError:
        return []
    paths = {str(e.get("config")) for e in entries if hasattr(e, "get") and e.get("config")}
    lines = [_sidecar_version_warning(Path(batch_file).parent / p) for p in sorted(paths)]
    return [line for line in lines if line]


def _finish_batch(items: list, outcomes: list, lost: str = "") -> None:
    """The summary table of the whole batch, then exit 1 when any job failed."""
    by_index = {o.index: o for o in outcomes}
    rows = []
    index = 0
    for item in items:
        if item.job is None:
            rows.append((item.label, "-", "-", "failed", 0.0, item.error))
        else:
            index += 1
            o = by_index[index]
            rows.append((item.label, item.job.method, str(item.job.seed), o.status, o.seconds, o.path or o.error))
    _print_summary(rows)
    if lost:
        _echo_err(f"error: {lost}; finished outputs are kept; re-run with --skip-existing to finish the rest")
    failed = sum(1 for row in rows if row[3] == "failed")
    if failed:
        _echo_err(f"error: {failed} of {len(rows)} jobs failed")
        raise typer.Exit(EXIT_FAILED_JOBS)


def _launch_batch(nproc: int, argv: list[str], items: list, jobs: list, skip_existing: bool, degree: int = 1) -> None:
    """`vgen batch --nproc N`: check what all workers would check, once, start them, and report a lost rank."""
    import time

    from vgen.batch import SUPERVISED_ENV, outcomes_on_disk, plan_ranks
    from vgen.distributed import launch_local

    ranks = plan_ranks(jobs, nproc, skip_existing, degree)  # what rank 0 will hand out (the same files, the same rule)
    started = time.time()
    os.environ[SUPERVISED_ENV] = "1"
    launch = launch_local(nproc, argv)
    failures = launch.failures
    if not failures:
        return
    if failures == {0: EXIT_FAILED_JOBS}:  # rank 0 printed the summary: some jobs failed
        raise typer.Exit(EXIT_FAILED_JOBS)
    if set(failures.values()) == {EXIT_USER_ERROR}:  # every worker printed the same one-line error
        raise typer.Exit(EXIT_USER_ERROR)

    first = launch.first if launch.first in failures else min(failures)
    reason = f"rank {first} stopped ({_how(failures[first])})"
    if nproc > 1:
        reason += " and the launcher stopped the other ranks"
    _finish_batch(items, outcomes_on_disk(jobs, ranks, started, skip_existing, reason), reason)
    raise typer.Exit(EXIT_FAILED_JOBS)


def _print_summary(rows: list[tuple]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="vgen batch")
    for name in ("job", "method", "seed", "status", "seconds", "output / error"):
        table.add_column(name, overflow="fold")
    style = {"done": "green", "skipped": "yellow", "failed": "red"}
    for label, method, seed, status, seconds, detail in rows:
        table.add_row(label, method, seed, f"[{style[status]}]{status}[/]", f"{seconds:.1f}", escape(detail))
    Console(width=max(100, min(200, os.get_terminal_size(0).columns if sys.stdout.isatty() else 160))).print(table)


@app.command()
def explain(
    prompt: str = typer.Argument(..., help="The prompt whose key tokens to show."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    method: str = typer.Option("vico", "--method", "-m", help="vico (maps before/after the update) or vanilla."),
    step: int = typer.Option(0, "--step", help="Denoising step at which to measure."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML job config."),
    model: Optional[str] = typer.Option(None, "--model", help="Hub id, local folder or built-in name."),
    frames: Optional[int] = typer.Option(None, "--frames", "-f", help="Number of frames."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps of the trajectory."),
    seed: Optional[int] = typer.Option(None, "--seed", "-s", help="Random seed."),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Folder for the PNG grid."),
) -> None:
    """Render each key token's attention-flow map over the frames (token dominance, before and after Vico)."""
    from vgen.config import build_job

    flags = {"prompt": prompt, "method": "vico", "model.id": model, "video.frames": frames, "sampler.steps": steps, "seed": seed}
    job = build_job(str(config) if config else None, flags, overrides or [])
    from vgen.explain import explain as render_explanation
    from vgen.jobs import ModelCache
    from vgen.video import check_writable

    check_writable(out)
    for path in render_explanation(job, ModelCache().get(job), out, method=method, step=step):
        typer.echo(str(path))


@app.command("eval")
def eval_(
    files: List[Path] = typer.Argument(..., help="Videos to score (mp4/gif); their prompts come from the JSON sidecars."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Score every file against this prompt instead."),
    as_json: bool = typer.Option(False, "--json", help="Print the full scores as JSON."),
    min_scene_len: Optional[int] = typer.Option(
        None, "--min-scene-len", min=0, show_default=False,
        help="Scene-cut detector's minimum scene length in frames (default: a quarter of the clip, at most 15)."),
    flow: str = typer.Option("dis", "--flow", help="OpenCV optical flow for the warp error: dis or farneback."),
    mawe_size: Optional[int] = typer.Option(
        None, "--mawe-size", min=16, show_default=False,
        help="Resize frames to SIZE x SIZE before the flow (720: StreamingT2V's MAWE protocol). Default: native size."),
    chunk: Optional[int] = typer.Option(
        None, "--chunk", min=1, show_default=False,
        help="Seams: frames before the first chunk boundary (default: from the sidecar of a chunked video)."),
    stride: Optional[int] = typer.Option(
        None, "--stride", min=1, show_default=False,
        help="Seams: frames between later boundaries (default --chunk; StreamingT2V: chunk - cond_frames)."),
    clip: Optional[str] = typer.Option(
        None, "--clip", show_default=False,
        help="CLIPModel folder (or cached hub id) for the CLIP score; default: openai/clip-vit-large-patch14 if cached."),
    model: Optional[str] = typer.Option(
        None, "--model", show_default=False,
        help="With `toy`: the video model to benchmark (default toy, with toy-t2i's image row); another model runs at "
             "its own vanilla frames/steps/guidance (toy-wan: 17 frames) without the image row."),
) -> None:
    """Scene cuts, warp error (MAWE), seams at chunk boundaries, CLIP score and toy-world detector scores of videos.

    `vgen eval toy` runs the held-out toy benchmark instead.
    """
    from vgen.video import dumps_json

    if [str(f) for f in files] == ["toy"]:
        from vgen.toyworld.evaluate import evaluate

        if model in (None, "toy"):
            table = evaluate(progress=True)  # vanilla sampling on toy / toy-t2i, held-out prompts, seed 0
        else:
            from vgen.toyworld.evaluate import vanilla_defaults

            frames, steps, guidance = vanilla_defaults(model)
            table = evaluate(model, None, frames=frames, steps=steps, guidance=guidance, progress=True)
        typer.echo(dumps_json(table.as_dict()) if as_json else table.render())
        return
    if model is not None:
        from vgen.errors import ConfigError

        raise ConfigError("--model applies to `vgen eval toy` only; scored files carry their model in the sidecar")

    from vgen.eval.clipscore import load_clip_scorer
    from vgen.eval.files import results_table, score_file, seams_table
    from vgen.eval.seams import Layout

    if stride is not None and chunk is None:
        raise VgenError("--stride needs --chunk (the first boundary)")
    layout = Layout(chunk, stride or chunk) if chunk is not None else None
    scorer, clip_note = load_clip_scorer(clip)
    results = [score_file(f, prompt, min_scene_len, flow, mawe_size, layout, scorer) for f in files]
    if as_json:
        typer.echo(dumps_json([r.to_dict() for r in results]))
    else:
        from rich.console import Console

        from vgen.eval.files import legend

        console = Console(width=160)
        console.print(results_table(results))
        if (table := seams_table(results)) is not None:
            console.print(table)
        typer.echo(legend(results, clip_note))
    if any(r.error for r in results):
        raise typer.Exit(EXIT_USER_ERROR)


@app.command()
def methods() -> None:
    """List the methods: paper, config file, model kinds, the knobs to turn first, the method's defaults."""
    from vgen.config import MODEL_KINDS
    from vgen.methods import METHODS

    for info in METHODS.values():
        typer.echo(f"{info.name:<10} {info.summary}")
        missing = [kind for kind in MODEL_KINDS[1:] if kind not in info.kinds]
        not_yet = f" (not yet on {', '.join(missing)})" if missing else ""
        typer.echo(f"{'':<10} paper: {info.paper or '-'}   config: {info.config}   runs on: {', '.join(info.kinds)}{not_yet}")
        typer.echo(f"{'':<10} main knobs: {', '.join(info.knobs)}")
        defaults = ", ".join(f"{k}={v}" for k, v in info.defaults.items()) or "the schema's"
        typer.echo(f"{'':<10} defaults: {defaults}")
        for family, over in info.family_defaults.items():
            typer.echo(f"{'':<10} on {family}: {', '.join(f'{k}={v}' for k, v in over.items())}")
    typer.echo("Every knob: `vgen config show -m METHOD`; paper settings: configs/<method>-paper.yaml.")


@app.command()
def models() -> None:
    """List the built-in models with their kind and native size."""
    from vgen.model_settings import (BUILTIN_FOLDERS, FOLDER_SUMMARIES, IN_MEMORY_MODELS, folder_frames, folder_info,
                                     settings_path)

    typer.echo(f"{'name':<20}{'kind':<8}{'size':<10}{'frames':<8}about")
    for name, folder in BUILTIN_FOLDERS.items():
        kind, size = folder_info(folder)
        shown = f"{size[0]}x{size[1]}" if size else "?"
        carries = " (carries per-method settings: vgen.yaml)" if settings_path(name) else ""
        frames = folder_frames(folder, kind)
        typer.echo(f"{name:<20}{kind:<8}{shown:<10}{frames:<8}{FOLDER_SUMMARIES.get(name, '')}{carries}")
    for info in IN_MEMORY_MODELS:
        typer.echo(f"{info.name:<20}{info.kind:<8}{f'{info.size[0]}x{info.size[1]}':<10}{info.frames:<8}{info.summary}")
    typer.echo("Any Hugging Face id (e.g. cerspense/zeroscope_v2_576w, Wan-AI/Wan2.1-T2V-1.3B-Diffusers, "
               "Lightricks/LTX-Video) or local diffusers folder also works; size is height x width in pixels; "
               "frames: the counts a model makes (4k+1: 1, 5, 9, ...; others are rounded as its pipeline does).")


@config_app.command("show")
def config_show(
    overrides: Optional[List[str]] = typer.Argument(None, metavar="KEY=VALUE", help=OVERRIDES_HELP, show_default=False),
    method: Optional[str] = typer.Option(None, "--method", "-m", metavar="METHOD", help="Method whose section to show [default: vanilla]."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="FILE", help="YAML job config or sidecar JSON to merge."),
    model: Optional[str] = typer.Option(None, "--model", metavar="MODEL", help="Model id [default: toy]."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", metavar="PROMPT", help="Prompt (PROMPT if omitted)."),
    sources: bool = typer.Option(True, "--sources/--no-sources", help="Say where each non-default value came from."),
) -> None:
    """Print the resolved config as YAML, each value's source in a comment.

    Order: default < method < model:<id> < --config < flag < override.
    """
    from vgen.config import build_job, to_yaml

    from vgen.config import load_config_file

    if prompt is None and not (config and load_config_file(config).get("prompt")):
        prompt = "PROMPT"  # a placeholder: the config is shown before any prompt is known
    flags = {"method": method, "model.id": model, "prompt": prompt}
    job = build_job(str(config) if config else None, flags, overrides or [], strict=True)
    typer.echo(to_yaml(job, sources=sources), nl=False)


@app.command()
def refine(
    video: Path = typer.Argument(..., help="The video to refine (mp4, gif, webm)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt (default: the one in the video's JSON sidecar)."),
    model: str = typer.Option("toy", "--model", help="Video model that refines: hub id, local folder or built-in name."),
    strength: Optional[float] = typer.Option(None, "--strength", help="SDEdit noise level in (0, 1] (default 0.6, T'=600)."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Frames per refinement chunk (default 24)."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Frames shared by consecutive chunks (default 8)."),
    upscale: Optional[int] = typer.Option(None, "--upscale", help="Integer factor frames are resized by first (default 1)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps of the full schedule [default: streaming's 50 (DDIM, eta 1), or the model's own: the toy's 20]."),
    guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="ddim, dpm++, sde-dpm++, euler, euler-a, ddpm, unipc, pndm, model or auto."),
    seed: Optional[int] = typer.Option(None, "--seed", "-s", help="Random seed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .mp4 path or folder (default: <stem>-refined.mp4 beside the input)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto, float32, float16, bfloat16."),
) -> None:
    """Refine a video with StreamingT2V's randomized blending (SDEdit in overlapping chunks)."""
    from vgen.jobs import refine_file
    from vgen.methods.streaming.refine import refine_job

    flags = {
        "model.id": model,
        "streaming.refine_strength": strength,
        "streaming.refine_chunk": chunk,
        "streaming.refine_overlap": overlap,
        "streaming.upscale": upscale,
        "streaming.refine_steps": steps,
        "sampler.guidance": guidance,
        "sampler.scheduler": scheduler,
        "seed": seed,
        "runtime.device": device,
        "runtime.dtype": dtype,
    }
    job = refine_job(video, prompt, flags, overrides or [])
    typer.echo(str(refine_file(video, job, out)))


def _click_exception_types() -> tuple[type, ...]:
    """Usage-error classes of the click that typer runs on (recent typer vendors its own copy)."""
    types: list[type] = []
    try:
        from typer._click.exceptions import ClickException

        types.append(ClickException)
    except ImportError:
        pass
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


def _plain_argument_placeholders(command) -> None:
    """Arguments read PROMPT, not `PROMPT <str>`: typer appends the Python type to each argument's name."""
    for sub in getattr(command, "commands", {}).values():
        _plain_argument_placeholders(sub)
    for param in getattr(command, "params", []):
        if getattr(param, "param_type_name", "") == "argument":
            param.display_type_rich = lambda ctx: None


def _terminate_like_ctrl_c():
    """SIGTERM (a scheduler or `kill` stopping vgen) unwinds as Ctrl-C does, so a job's staged files are removed
    and no half-written output stays; returns the handler it replaced (None off the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise KeyboardInterrupt

    return (signal.signal(signal.SIGTERM, stop),)


def _restore_sigterm(saved) -> None:
    import signal

    if saved is not None:
        signal.signal(signal.SIGTERM, saved[0])


_ARGV: list[str] = []  # the command's arguments, for `--nproc` to start its workers on the same command


@functools.lru_cache(maxsize=1)
def _command():
    """The click command, built once per process (~30 ms): tests call main() hundreds of times in process."""
    command = typer.main.get_command(app)
    _plain_argument_placeholders(command)
    return command


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: one-line errors, exit codes 0 ok / 1 failed jobs / 2 user error / 130 Ctrl-C."""
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    command = _command()
    usage_errors = _click_exception_types()
    terminated = _terminate_like_ctrl_c()
    try:
        code = command.main(args=argv, prog_name="vgen", standalone_mode=False)
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into a returned 130
            _echo_err("interrupted: no partial output was kept")
    except typer.Exit as exc:
        code = exc.exit_code
    except usage_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `vgen` or `vgen config` alone: show the help
            typer.echo(exc.format_message())
            code = 0
        else:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _echo_err(f"error: {exc.format_message()}{hint}")
            code = EXIT_USER_ERROR
    except (typer.Abort, KeyboardInterrupt):
        _echo_err("interrupted: no partial output was kept")
        code = EXIT_INTERRUPTED
    except VgenError as exc:
        _echo_err(f"error: {exc}")
        code = EXIT_USER_ERROR
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("VGEN_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        _echo_err(f"internal error: {type(exc).__name__}: {first} (set VGEN_DEBUG=1 for the traceback)")
        code = 1
    finally:
        _restore_sigterm(terminated)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
