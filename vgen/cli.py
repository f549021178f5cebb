"""The `vgen` command line: parse flags into a JobConfig and hand it to vgen.jobs.

Nothing heavy is imported at module load (``vgen --help`` must not import torch); commands import what
they need when they run. Every user error ends as one ``error: ...`` line and a non-zero exit.
"""

from __future__ import annotations

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

OVERRIDES_HELP = "key=value overrides of any config key, e.g. sampler.eta=0.5 memory.decode_chunk=4"


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


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What the video shows."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="vanilla, vico, streaming, zs2, i4vgen (see `vgen methods`)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML job config (e.g. configs/vanilla.yaml)."),
    model: Optional[str] = typer.Option(None, "--model", help="Hub id, local diffusers folder or built-in name."),
    frames: Optional[int] = typer.Option(None, "--frames", "-f", help="Number of frames."),
    height: Optional[int] = typer.Option(None, "--height", help="Height in pixels (default: the model's)."),
    width: Optional[int] = typer.Option(None, "--width", help="Width in pixels (default: the model's)."),
    fps: Optional[int] = typer.Option(None, "--fps", help="Frames per second of the mp4."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps."),
    guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale."),
    negative: Optional[str] = typer.Option(None, "--negative", help="Negative prompt."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="ddim, dpm++, euler, euler-a, ddpm, unipc, pndm or model."),
    seed: Optional[int] = typer.Option(None, "--seed", "-s", help="Random seed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder, or the .mp4 path."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto, float32, float16, bfloat16."),
    gif: Optional[bool] = typer.Option(None, "--gif/--no-gif", help="Also write a GIF."),
    save_frames: Optional[bool] = typer.Option(None, "--save-frames/--no-save-frames", help="Also write one PNG per frame."),
) -> None:
    """Generate one video from a text prompt."""
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
        "output.gif": gif,
        "output.save_frames": save_frames,
        **_out_flags(out),
    }
    job = build_job(str(config) if config else None, flags, overrides or [])
    from vgen.jobs import run_job

    result = run_job(job)
    typer.echo(str(result.path))
    for extra in result.files[1:]:
        typer.echo(str(extra))


@app.command()
def batch(
    file: Path = typer.Argument(..., help="Batch YAML: defaults, jobs, prompts (file), seeds."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " (applied to every job)", show_default=False),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip jobs whose mp4 and sidecar exist (resume)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder for every job."),
) -> None:
    """Run many jobs from a YAML file; failed jobs never stop the others."""
    from vgen.batch import load_batch

    extra = [f"output.dir={out}"] if out is not None else []
    items = load_batch(file, list(overrides or []) + extra)
    from rich.console import Console

    from vgen.jobs import JobResult, run_batch

    console = Console(stderr=True)
    runnable = [item for item in items if item.job is not None]
    labels = {id(item.job): item.label for item in runnable}

    def report(i: int, result: JobResult) -> None:
        detail = str(result.path) if result.status != "failed" else result.error
        console.print(f"[{i}/{len(runnable)}] {result.status}: {labels[id(result.job)]} -> {detail}", highlight=False)

    results = run_batch([item.job for item in runnable], skip_existing=skip_existing, on_result=report)
    by_job = {id(r.job): r for r in results}
    rows = []
    for item in items:
        if item.job is None:
            rows.append((item.label, "-", "-", "failed", 0.0, item.error))
        else:
            r = by_job[id(item.job)]
            rows.append((item.label, item.job.method, str(item.job.seed), r.status, r.seconds, str(r.path) if r.path else r.error))
    _print_summary(rows)
    failed = sum(1 for row in rows if row[3] == "failed")
    if failed:
        _echo_err(f"error: {failed} of {len(rows)} jobs failed")
        raise typer.Exit(EXIT_FAILED_JOBS)


def _print_summary(rows: list[tuple]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vgen batch")
    for name in ("job", "method", "seed", "status", "seconds", "output / error"):
        table.add_column(name, overflow="fold")
    style = {"done": "green", "skipped": "yellow", "failed": "red"}
    for label, method, seed, status, seconds, detail in rows:
        table.add_row(label, method, seed, f"[{style[status]}]{status}[/]", f"{seconds:.1f}", detail)
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
) -> None:
    """Scene cuts, warp error (MAWE), seams at chunk boundaries, CLIP score and toy-world detector scores of videos.

    `vgen eval toy` runs the held-out toy benchmark instead.
    """
    import json

    if [str(f) for f in files] == ["toy"]:
        from vgen.toyworld.evaluate import evaluate

        table = evaluate(progress=True)  # vanilla sampling on toy / toy-t2i, held-out prompts, seed 0
        typer.echo(json.dumps(table.as_dict(), indent=2) if as_json else table.render())
        return

    from vgen.eval.clipscore import load_clip_scorer
    from vgen.eval.files import results_table, score_file, seams_table
    from vgen.eval.seams import Layout

    if stride is not None and chunk is None:
        raise VgenError("--stride needs --chunk (the first boundary)")
    layout = Layout(chunk, stride or chunk) if chunk is not None else None
    scorer, clip_note = load_clip_scorer(clip)
    results = [score_file(f, prompt, min_scene_len, flow, mawe_size, layout, scorer) for f in files]
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
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
    """List the methods and the model kinds each runs on."""
    from vgen.methods import METHODS

    for info in METHODS.values():
        typer.echo(f"{info.name:<10} {info.summary} [{', '.join(info.kinds)}]")


@app.command()
def models() -> None:
    """List the built-in model names."""
    typer.echo("toy                 text-to-video model of the toy world (ships with vgen)")
    typer.echo("toy-t2i             text-to-image model of the toy world, same latent space")
    typer.echo("tiny-random-unet3d  random ModelScope-shaped model, for tests")
    typer.echo("tiny-random-motion  random AnimateDiff-shaped model, for tests")
    typer.echo("tiny-random-unet2d  random Stable-Diffusion-shaped model, for tests")
    typer.echo("zeroscope-quarter   random ZeroScope-shaped model at 1/4 width, for benchmarks (320x512)")
    typer.echo("Any Hugging Face id (e.g. cerspense/zeroscope_v2_576w) or local diffusers folder also works.")


@config_app.command("show")
def config_show(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method whose section to show."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML job config to merge."),
    model: Optional[str] = typer.Option(None, "--model", help="Model id."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt (a placeholder if omitted)."),
) -> None:
    """Print the resolved config (defaults < --config < flags < overrides) as YAML."""
    from vgen.config import build_job, to_yaml

    flags = {"method": method, "model.id": model, "prompt": prompt or "<prompt>"}
    job = build_job(str(config) if config else None, flags, overrides or [])
    typer.echo(to_yaml(job), nl=False)


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
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps of the full schedule (default 25)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="ddim, dpm++, euler, euler-a, ddpm, unipc, pndm or model."),
    seed: Optional[int] = typer.Option(None, "--seed", "-s", help="Random seed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .mp4 path or folder (default: <stem>-refined.mp4 beside the input)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto, float32, float16, bfloat16."),
) -> None:
    """Refine a video with StreamingT2V's randomized blending (SDEdit in overlapping chunks)."""
    from vgen.methods.streaming.refine import refine_file, refine_job

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


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: one-line errors, exit codes 0 ok / 1 failed jobs / 2 user error / 130 Ctrl-C."""
    command = typer.main.get_command(app)
    usage_errors = _click_exception_types()
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
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
