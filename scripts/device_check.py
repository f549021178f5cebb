"""The one prepared command for a GPU machine: ``make device-check`` (python3 scripts/device_check.py).

Aimed at < 8 minutes on one H200, offline. Steps, each timed; a section that would start after --budget
seconds is skipped and says so:
  0 wheels    packages such a machine lacks (diffusers, omegaconf, importlib_metadata: see WHEELS), from
              .whl/ in the tree (``make device-wheels`` fills it where PyPI is reachable; git-ignored,
              carried along), installed with pip --no-index --target into /tmp/vgen-site; the script then
              re-runs itself with that folder on PYTHONPATH. The machine's own torch and triton are used.
  1 imports   versions of torch, triton, diffusers, transformers, omegaconf; vgen's modules; the GPU
  2 tests     tests/test_kernels.py, compiled on CUDA (pytest)
  3 methods   vanilla, vico, i4vgen, streaming end to end on zeroscope-quarter (random ZeroScope layout at
              1/4 width), 16 frames of 320x512, --steps steps, in float16 and bfloat16 (plus Vico with the
              torch kernels in float16): time and peak CUDA memory (torch.cuda.max_memory_allocated above
              the weights) against vanilla in the same dtype; finite = every UNet and VAE-decoder output of
              the run was finite. Each run follows a 2-step warm-up of the same job (kernel compiles and
              first-call allocations are not the method's cost). No mp4 is encoded when imageio-ffmpeg is
              missing (its wheel is 68 MB, over what a call carries): streamed frames are then dropped.
  4 kernels   scripts/bench_kernels.py on CUDA: Triton vs torch vs torch.compile at ZeroScope's sizes, GB/s
              against the chip's peak
  4b dit-kernels  scripts/bench_kernels.py --set dit --size wan: issue 35's same-position attention slices
              (forward + backward) and AR(1) scans at Wan 2.1 1.3B's size (81 frames of 480x832: 21 x 30x52
              tokens, 12 heads x 128, bfloat16): Triton vs the torch references, time and peak CUDA memory
  5 dits      the DiT families in bfloat16: vanilla against WanPipeline on wan-quarter (81 frames 480x832) and
              LTXPipeline on ltx-quarter (161 frames 512x704), --dit-steps steps, median of 5, time and peak
              CUDA memory (scripts/bench_dit_loop.py); Wan's streamed decode against vae.decode at 17/81/241
              frames, 480x832 (scripts/bench_wan_decode.py)
  6 cp        one video split over 1/2/4/8 GPUs (as many as the machine has; context parallelism, Ulysses,
              `vgen generate --nproc N`, NCCL): wan-quarter, 81 frames 480x832, bfloat16, --dit-steps steps; time
              (the sidecar's generate_s), speed-up over one GPU, max frame difference to one GPU
              (scripts/bench_context_parallel.py). Skipped on a machine with one GPU.
then one summary with the issue's targets: bottleneck product >= 5x the torch tiled version, recorded
attention <= 1.5x SDPA's time, Vico <= 1.6x vanilla's time and <= 1.3x its memory in float16, vanilla on a
DiT <= 1.02x its diffusers pipeline's time.

--dry-run (any machine, no GPU needed): prints this plan, which wheels it would install, and checks the
imports (triton may be missing on a CPU). --out DIR also writes results.json there (e.g. --out $OUT).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
SITE = Path("/tmp/vgen-site")
# what `make device-wheels` downloads: the packages the GPU image lacks (KINDS.md lists what it has);
# the machine keeps its own torch, triton, transformers, huggingface-hub, safetensors, numpy, typer, rich
WHEEL_PINS = ["diffusers==0.42.1", "omegaconf==2.4.0", "importlib_metadata==10.2.0"]
IMPORTS = ["torch", "triton", "diffusers", "transformers", "huggingface_hub", "omegaconf", "safetensors", "numpy"]
VGEN_MODULES = ["vgen.config", "vgen.jobs", "vgen.models", "vgen.tiny", "vgen.core.flow", "vgen.core.attention",
                "vgen.core.noise", "vgen.core.kernels.dispatch", "vgen.methods.vanilla.runner", "vgen.methods.vico.runner",
                "vgen.methods.i4vgen.runner", "vgen.methods.streaming.runner", "vgen.models.wan", "vgen.models.ltx"]
TRITON_MODULES = ["vgen.core.kernels.triton_bottleneck", "vgen.core.kernels.triton_attention"]
VGEN_MODULES += ["vgen.core.scan", "vgen.core.attention_slices"]  # issue 35's DiT kernels
TRITON_MODULES += ["vgen.core.kernels.triton_slices", "vgen.core.kernels.triton_scan"]
METHODS = ["vanilla", "vico", "i4vgen", "streaming"]
PROMPT = "a red circle moving left and a blue square moving up"


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------------------
# 0 wheels


PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def download_wheels() -> None:
    """Here, where PyPI is reachable: WHEEL_PINS for the GPU image's CPython 3.12 on x86-64, into .whl/."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(WHEELS),
           *WHEEL_PINS]
    subprocess.run(cmd, check=True)
    log(f"{WHEELS}: " + ", ".join(w.name for w in sorted(WHEELS.glob("*.whl"))))


def install_wheels(dry: bool) -> None:
    wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    if os.environ.get("VGEN_DEVICE_SITE") or not wheels:
        if not wheels:
            log(f"[0 wheels] none in {WHEELS} (make device-wheels fills it); using what is installed")
        return
    names = ", ".join(w.name for w in wheels)
    if dry:
        log(f"[0 wheels] would install into {SITE}: {names}")
        return
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)]
    subprocess.run(cmd, check=True)
    log(f"[0 wheels] installed {names} in {time.perf_counter() - t0:.1f}s; re-running with them")
    env = {**os.environ, "VGEN_DEVICE_SITE": str(SITE),
           "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


# ---------------------------------------------------------------------------------------------------------
# 1 imports


def check_imports(dry: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    found, missing = {}, []
    for name in IMPORTS:
        try:
            mod = importlib.import_module(name)
            found[name] = getattr(mod, "__version__", "?")
        except Exception as err:
            missing.append(f"{name} ({type(err).__name__}: {err})")
    log("[1 imports] " + ", ".join(f"{k} {v}" for k, v in found.items()))
    for name in VGEN_MODULES + (TRITON_MODULES if "triton" in found else []):
        try:
            importlib.import_module(name)
        except Exception as err:
            missing.append(f"{name} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    log(f"[1 imports] vgen modules {'ok' if not missing else 'FAILED'}; GPU: {gpu or 'none'}")
    for m in missing:
        log(f"  missing: {m}")
    fatal = [m for m in missing if not (dry and m.startswith("triton"))]
    if fatal:
        sys.exit(f"device-check: {len(fatal)} import(s) failed (see above)")
    return {"versions": found, "gpu": gpu}


# ---------------------------------------------------------------------------------------------------------
# 2 tests


def run_tests() -> dict:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    tail = (out.stdout + out.stderr).strip().splitlines()
    summary = tail[-1] if tail else "no output"
    log(f"[2 tests] tests/test_kernels.py on CUDA: {summary} ({time.perf_counter() - t0:.0f}s)")
    if out.returncode:
        log("\n".join(tail[-40:]))
    return {"rc": out.returncode, "summary": summary}


# ---------------------------------------------------------------------------------------------------------
# 3 methods


class FiniteWatch:
    """Forward hooks on the UNet and the VAE decoder: whether every output of a run was finite (one
    device-side flag, read once at the end)."""

    def __init__(self, components):
        import torch

        self.ok = torch.ones((), dtype=torch.bool, device=components.device)
        self.handles = [components.unet.register_forward_hook(self._hook),
                        components.vae.decoder.register_forward_hook(self._hook)]

    def _hook(self, module, args, output):
        import torch

        out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if isinstance(out, torch.Tensor):
            self.ok &= torch.isfinite(out).all()

    def reset(self):
        self.ok.fill_(True)

    def close(self):
        for h in self.handles:
            h.remove()


def _no_ffmpeg_writer() -> str:
    """When imageio-ffmpeg is missing, a stand-in that takes the frames and writes nothing."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
        return "mp4 encoded (imageio-ffmpeg)"
    except Exception:
        import types

        def write_frames(path, size, **kwargs):
            Path(path).touch()  # the writer's atomic rename expects the file
            while True:
                yield

        sys.modules["imageio_ffmpeg"] = types.SimpleNamespace(write_frames=write_frames)
        return "no ffmpeg here: streamed frames dropped, not encoded"


def run_methods(args, tmp: Path) -> list[dict]:
    import torch

    from vgen.config import build_job
    from vgen.core.sampler import resolve_size
    from vgen.jobs import ModelCache, RunContext, configure_kernels
    from vgen.methods import load_runner

    log(f"[3 methods] {_no_ffmpeg_writer()}")
    cuda = args.device.startswith("cuda")  # a CPU run (a smoke test of this script) has no memory column

    def sync():
        if cuda:
            torch.cuda.synchronize()
    cache = ModelCache()
    rows = []
    plan = [(m, d, "auto") for d in args.dtypes for m in args.methods]
    if "vico" in args.methods and "float16" in args.dtypes:
        plan.insert(args.methods.index("vico") + 1, ("vico", "float16", "torch"))
    for method, dtype, kernels in plan:
        row = {"method": method, "dtype": dtype, "kernels": kernels}
        flags = {"prompt": PROMPT, "method": method, "model.id": args.model, "sampler.steps": args.steps,
                 "video.frames": args.frames, "video.height": args.height, "video.width": args.width,
                 "runtime.device": args.device, "runtime.dtype": dtype, "runtime.kernels": kernels,
                 "output.dir": str(tmp)}
        if method == "vico":  # explicit key words: the GPU image has no part-of-speech tagger (spaCy)
            flags["vico.words"] = ["circle", "square"]
        try:
            job = build_job(flags=flags)
            warm = build_job(flags={**flags, "sampler.steps": 2})
            configure_kernels(job)
            components = cache.get(job)
            h, w = resolve_size(components, args.height, args.width)
            runner = load_runner(method)
            watch = FiniteWatch(components)

            def once(j):
                ctx = RunContext(generator=torch.Generator("cpu").manual_seed(0), height=h, width=w,
                                 output_stem=tmp / f"{method}-{dtype}", progress=False,
                                 load_model=lambda cfg, j=j: cache.get(j, cfg))
                return runner(j, components, ctx)

            once(warm)
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if cuda else 0
            watch.reset()
            t0 = time.perf_counter()
            once(job)
            sync()
            row["seconds"] = time.perf_counter() - t0
            row["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else math.nan
            row["finite"] = bool(watch.ok.item())
            watch.close()
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        rows.append(row)
        log(f"[3 methods] {method:<10} {dtype:<9} kernels={kernels:<6} " +
            (f"error: {row['error']}" if "error" in row else
             f"{row['seconds']:.2f}s peak {row['peak_mib']:.0f} MiB finite={row['finite']}"))
        if cuda:
            torch.cuda.empty_cache()
    return rows


def methods_table(rows: list[dict]) -> None:
    log(f"\n{'method':<10} {'dtype':<9} {'kernels':<7} {'time s':>8} {'x vanilla':>9} {'peak MiB':>9} {'x vanilla':>9} finite")
    base = {r["dtype"]: r for r in rows if r["method"] == "vanilla" and "seconds" in r}
    for r in rows:
        if "error" in r:
            log(f"{r['method']:<10} {r['dtype']:<9} {r['kernels']:<7} error: {r['error']}")
            continue
        b = base.get(r["dtype"])
        tx = r["seconds"] / b["seconds"] if b else math.nan
        mx = r["peak_mib"] / b["peak_mib"] if b and b["peak_mib"] > 0 else math.nan
        log(f"{r['method']:<10} {r['dtype']:<9} {r['kernels']:<7} {r['seconds']:>8.2f} {tx:>8.2f}x "
            f"{r['peak_mib']:>9.0f} {mx:>8.2f}x {'yes' if r['finite'] else 'NO'}")


# ---------------------------------------------------------------------------------------------------------
# targets


def run_dits(args) -> list[dict]:
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_dit_loop
    import bench_wan_decode

    rows = []
    for model, frames, h, w in (("wan-quarter", 81, 480, 832), ("ltx-quarter", 161, 512, 704)):
        try:
            rows += bench_dit_loop.main(["--models", model, "--frames", str(frames), "--height", str(h), "--width",
                                         str(w), "--steps", str(args.dit_steps), "--device", args.device,
                                         "--dtype", "bfloat16", "--repeats", "5"])
        except Exception as err:
            rows.append({"model": model, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"})
            log(f"[5 dits] {model}: error {rows[-1]['error']}")
    bench_wan_decode.main(["--device", args.device, "--height", "480", "--width", "832"])
    return rows


def run_cp(args) -> list[dict]:
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_context_parallel

    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    counts = [n for n in (2, 4, 8) if n <= gpus]
    if not counts:
        log(f"[6 cp] skipped: context parallelism needs 2 or more GPUs, this machine has {gpus}")
        return []
    return bench_context_parallel.main(["--model", "wan-quarter", "--frames", "81", "--height", "480", "--width",
                                        "832", "--steps", str(args.dit_steps), "--device", "cuda", "--dtype",
                                        "bfloat16", "--threads", "4", "--nproc", *map(str, counts),
                                        "--out", "/tmp/vgen-device-check/cp"])


def targets(methods: list[dict], kernels: list[dict], dits: list[dict] = (), cp: list[dict] = ()) -> list[str]:
    out = []
    for r in cp:
        if r.get("nproc", 1) > 1 and "speedup_gen" in r:
            out.append(f"context parallelism on {r['nproc']} GPUs: {r['speedup_gen']:.2f}x one GPU's generate time "
                       f"(xDiT reports 3.8x/4 and 7.4x/8 on Wan 14B; wan-quarter is smaller), "
                       f"max frame diff {r['max_diff']} grey levels")
    for r in dits:
        if "ours_s" in r:
            ratio = r["ours_s"] / r["pipe_s"]
            out.append(f"vanilla on {r['model']}: {ratio:.3f}x {r['pipeline']}'s time (target <= 1.02x: "
                       f"{'met' if ratio <= 1.02 else 'NOT met'}), max frame diff {r['max_diff']} grey levels")
    k = {(r["case"], r["impl"]): r for r in kernels if "fwd_s" in r}
    for case in ("flow-temporal/soft", "flow-spatial/soft", "flow-temporal/hard", "flow-spatial/hard"):
        t, b = k.get((case, "triton")), k.get((case, "torch"))
        if t and b:
            sp = b["fwd_s"] / t["fwd_s"]
            spb = b.get("fb_s", math.nan) / t.get("fb_s", math.nan)
            out.append(f"bottleneck {case}: triton {sp:.1f}x fwd, {spb:.1f}x f+b vs torch tiled (target >= 5x): "
                       f"{'met' if min(sp, spb) >= 5 else 'NOT met'}")
    for case in ("attn-cross", "attn-temporal"):
        t, s = k.get((case, "triton")), k.get((case, "sdpa"))
        if t and s:
            r = t["fwd_s"] / s["fwd_s"]
            out.append(f"recorded attention {case}: {r:.2f}x SDPA's forward time (target <= 1.5x): "
                       f"{'met' if r <= 1.5 else 'NOT met'}")
    t, b, s = k.get(("slice/wan", "triton")), k.get(("slice/wan", "torch")), k.get(("slice/wan", "sdpa"))
    if t and "fb_s" in t:
        line = f"same-position slices at Wan size, f+b: triton {1e3 * t['fb_s']:.1f} ms, {t.get('peak_mib') or 0:.0f} MiB"
        if b and "fb_s" in b:
            line += f"; torch tiled {1e3 * b['fb_s']:.1f} ms, {b.get('peak_mib') or 0:.0f} MiB"
        if s and "fb_s" in s:
            line += f"; one SDPA attention f+b {1e3 * s['fb_s']:.1f} ms (the yardstick, no target)"
        out.append(line)
    for case in ("scan-noise/wan", "scan-kv/wan"):
        t, b = k.get((case, "triton")), k.get((case, "torch"))
        if t and b:
            out.append(f"ar_scan {case}: triton {b['fwd_s'] / t['fwd_s']:.1f}x the torch matmul's speed (forward)")
    base = next((r for r in methods if r["method"] == "vanilla" and r["dtype"] == "float16" and "seconds" in r), None)
    vico = next((r for r in methods if r["method"] == "vico" and r["dtype"] == "float16" and r["kernels"] == "auto"
                 and "seconds" in r), None)
    if base and vico:
        tx, mx = vico["seconds"] / base["seconds"], vico["peak_mib"] / max(base["peak_mib"], 1e-9)
        out.append(f"vico float16: {tx:.2f}x vanilla's time (target <= 1.6x: {'met' if tx <= 1.6 else 'NOT met'}), "
                   f"{mx:.2f}x its peak memory (target <= 1.3x: {'met' if mx <= 1.3 else 'NOT met'})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan and check the imports (no GPU needed)")
    ap.add_argument("--budget", type=float, default=430.0, help="seconds after which no new section starts")
    ap.add_argument("--model", default="zeroscope-quarter")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", nargs="*", default=["float16", "bfloat16"])
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "methods", "kernels", "dit-kernels", "dits", "cp"])
    ap.add_argument("--dit-steps", type=int, default=10, help="steps of the DiT loop comparison")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per kernel")
    ap.add_argument("--out", help="folder for results.json")
    ap.add_argument("--download-wheels", action="store_true", help="fill .whl/ from PyPI (make device-wheels) and stop")
    args = ap.parse_args()
    if args.download_wheels:
        return download_wheels()
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VGEN_PROGRESS", "0")
    os.environ.pop("VGEN_KERNELS", None)
    install_wheels(args.dry_run)
    if args.dry_run:
        log(__doc__.split("\n\n")[1])
        log(f"plan: model {args.model}, {args.frames}x{args.height}x{args.width}, {args.steps} steps, "
            f"dtypes {args.dtypes}, methods {args.methods}, budget {args.budget:.0f}s")
    info = check_imports(args.dry_run)
    if not args.dry_run and args.device.startswith("cuda") and info["gpu"] is None:
        sys.exit("device-check: torch sees no CUDA device (use --dry-run, or --device cpu for a smoke test)")
    if args.dry_run:
        sys.path.insert(0, str(ROOT / "scripts"))
        import bench_kernels  # noqa: F401  (the kernel benchmark imports too)
        from vgen.config import build_job

        for m in args.methods:
            build_job(flags={"prompt": PROMPT, "method": m, "model.id": args.model, "video.frames": args.frames})
        import bench_context_parallel  # noqa: F401
        import bench_dit_loop  # noqa: F401
        import bench_wan_decode  # noqa: F401
        log("[dry-run] imports ok, the method jobs validate; nothing was run")
        return
    results = {"info": info, "tests": None, "methods": [], "kernels": [], "skipped": []}
    tmp = Path("/tmp/vgen-device-check")
    tmp.mkdir(parents=True, exist_ok=True)

    def section(name, fn):
        if name in args.skip:
            return None
        if time.perf_counter() - started > args.budget:
            results["skipped"].append(name)
            log(f"[{name}] skipped: past the {args.budget:.0f}s budget")
            return None
        t0 = time.perf_counter()
        out = fn()
        log(f"[{name}] {time.perf_counter() - t0:.0f}s (total {time.perf_counter() - started:.0f}s)")
        return out

    results["tests"] = section("tests", run_tests)
    results["methods"] = section("methods", lambda: run_methods(args, tmp)) or []
    if results["methods"]:
        methods_table(results["methods"])

    def kernels():
        sys.path.insert(0, str(ROOT / "scripts"))
        import bench_kernels

        log("")
        left = max(30.0, args.budget + 50 - (time.perf_counter() - started))  # stop starting cases by ~8 min
        return bench_kernels.main(["--device", args.device, "--repeats", str(args.repeats), "--budget", f"{left:.0f}"])

    results["kernels"] = section("kernels", kernels) or []

    def dit_kernels():
        sys.path.insert(0, str(ROOT / "scripts"))
        import bench_kernels

        log("")
        return bench_kernels.main(["--set", "dit", "--size", "wan", "--device", args.device, "--no-compile",
                                   "--repeats", str(args.repeats)])

    results["dit_kernels"] = section("dit-kernels", dit_kernels) or []
    results["dits"] = section("dits", lambda: run_dits(args)) or []
    results["cp"] = section("cp", lambda: run_cp(args)) or []
    log("\ntargets:")
    for line in targets(results["methods"], results["kernels"] + results["dit_kernels"], results["dits"], results["cp"]):
        log("  " + line)
    log(f"device-check done in {time.perf_counter() - started:.0f}s"
        + (f"; skipped: {', '.join(results['skipped'])}" if results["skipped"] else ""))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if results["tests"] and results["tests"]["rc"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
