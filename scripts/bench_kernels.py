"""Core kernels at ZeroScope's sizes (or a DiT's: --set dit): Triton vs the torch references vs torch.compile.

    .venv/bin/python scripts/bench_kernels.py [--device cpu|cuda] [--quick] [--repeats 5] [--no-compile]
        [--only flow|attention|noise ...] [--json out.json]
    .venv/bin/python scripts/bench_kernels.py --set dit [--size wan|mid|toy] [--device cpu|cuda] ...

Shapes are those of ZeroScope (zeroscope_v2_576w layout) at 16 frames of 320x512 (latents 40x64), at the
level Vico records (latent factor 4: P = 10x16 = 160 positions; 64 heads of 20 channels there), J = 24
prompt tokens kept of 77:
  flow-temporal   (R [P, F, F] ⊗ X [P, F, J]) one temporal layer of the default graph, float32
  flow-spatial    ([F, P, P] ⊗ [F, P, J]) one spatial layer of vico.graph=full, float32
  attn-cross      recorded cross-attention q [F, 64, P, 20], k/v [F, 64, 77, 20], 24 columns kept
  attn-temporal   recorded temporal attention q/k/v [P, 64, F, 20], all F columns
  noise-ar1       AR(1) noise mixing of [1, 4, 16, 40, 64] along frames, float32
  noise-kv        ZS2's key/value running average of SD 1.5 at 512x512: [2, 16, 4096, 320] along frames
Implementations: "torch" is the reference the dispatch falls back to (the tiled product, the chunked
recorded attention, the ar_matrix einsum of noise.py / ZS2's processor), "plain" the broadcast reference
where it fits, "matmul" the ar_matrix product as one batched matmul on a contiguous view (same values),
"scan" a frame loop y_i = decay*y_{i-1} + gain*x_i, "compile" / "compile-scan" torch.compile (Inductor)
of the plain reference / of the loop (on CUDA Inductor writes that loop as one Triton kernel), "triton" the vgen/core/kernels kernel (CUDA only), "sdpa" plain SDPA (the output alone) as
the yardstick of the recorded attention. fwd = forward, f+b = forward and backward (flow, attention).

--set dit: the kernels of issue 35's DiT methods (vgen/core/attention_slices.py, vgen/core/scan.py) at
--size wan (Wan 2.1 1.3B at 81 frames of 480x832: 21 latent frames x 30x52 positions, 12 heads x 128; CUDA
only, the CPU would take many minutes), mid (33 frames of 192x320: 9 x 12x20 positions, 12 heads x 128) or
toy (toy-wan: 5 latent frames x 4x4 positions after the 2x2 patch, 4 heads x 32):
  slice           same_position_attention f+b: "torch" the tiled reference, "triton" the kernel, "naive" the
                  full N x N softmax then the slice (autograd; skipped where it would not fit), "sdpa" one
                  SDPA attention of the same q, k (v = k) as the yardstick of a block's own attention
  scan-noise      ar_scan of the initial noise [1, 16, F, 2·h, 2·w] along frames (ZS2's AR(1) noise)
  scan-kv         ar_scan of keys and values [2, F, P, 12·128] along frames (ZS2's momentum attention)
  "torch" = the ar_matrix matmul, "triton" the sequential scan kernel, "scan" a frame loop in torch.
peak MiB: the most memory one call (f+b where there is a backward) allocated above its inputs: CUDA's
allocator peak, or on a CPU the peak RSS of a forked child running the call once, above its start.

Times are medians of --repeats after warm-ups (compile time excluded, printed apart). GB/s counts the
least traffic (each input read once, each output written once; f+b adds the gradients), against the
chip's peak on CUDA (H200: 4.8 TB/s HBM3e, spec). On a shared CPU the numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vgen.core import attention, attention_slices, flow, noise, scan  # noqa: E402
from vgen.core.kernels import use_kernels  # noqa: E402

F, P, J, HEADS, HEAD_DIM, TOKENS = 16, 160, 24, 64, 20, 77
PEAK_GBS = {"H200": 4800.0, "H100": 3350.0}


@dataclass
class Case:
    name: str
    make: Callable[[torch.device, torch.Generator], tuple]  # -> inputs
    impls: dict[str, Callable]  # name -> fn(*inputs) -> tensor or tuple
    backward: bool = True
    cuda_only: set = field(default_factory=set)  # impls that need CUDA (triton)


def _attn(shape, device, gen, dtype=torch.float32):
    return torch.softmax(3 * torch.randn(shape, generator=gen), -1).to(device, dtype)


def _plain_recorded(q, k, v, scale, columns):
    """The recorded attention as plain ops (softmax probabilities stored): what torch.compile gets."""
    p = torch.softmax(torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale, dim=-1)
    return torch.matmul(p.to(v.dtype), v), p[..., :columns].mean(dim=1)


def _torch_recorded(q, k, v, scale, columns):
    with use_kernels("torch"):
        return attention.recorded_attention(q, k, v, None, scale, columns)


def _triton_recorded(q, k, v, scale, columns):
    with use_kernels("triton"):
        return attention.recorded_attention(q, k, v, None, scale, columns)


def _sdpa(q, k, v, scale, columns):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)


def _triton_bottleneck(mode):
    def fn(A, B, tau=0.01):
        with use_kernels("triton"):
            return flow.bottleneck(A, B, mode, tau)
    return fn


def scan_mix(x: torch.Tensor, decay: float, gain: float, dim: int) -> torch.Tensor:
    """y_0 = x_0, y_i = decay*y_{i-1} + gain*x_i along ``dim`` as a frame loop (the scan candidate)."""
    xs = x.unbind(dim)
    ys = [xs[0]]
    for xi in xs[1:]:
        ys.append(decay * ys[-1] + gain * xi)
    return torch.stack(ys, dim)


def einsum_mix(x: torch.Tensor, mix: torch.Tensor, spec: str) -> torch.Tensor:
    return torch.einsum(spec, mix, x)


def matmul_mix(x: torch.Tensor, mix: torch.Tensor, dim: int) -> torch.Tensor:
    """The same product as one batched matmul over a contiguous view (no permuted copies)."""
    lead = math.prod(x.shape[:dim])
    return torch.matmul(mix, x.reshape(lead, x.shape[dim], -1)).reshape(x.shape)


def cases(half: torch.dtype) -> list[Case]:
    rho, mu = 0.94, 0.98
    out = []
    for name, shapes in (("flow-temporal", ((P, F, F), (P, F, J))), ("flow-spatial", ((F, P, P), (F, P, J)))):
        def make(device, gen, shapes=shapes):
            return _attn(shapes[0], device, gen), _attn(shapes[1], device, gen)
        for mode in ("soft", "hard"):
            plain = (lambda A, B: flow.soft_bottleneck_matmul(A, B, 0.01)) if mode == "soft" else flow.bottleneck_matmul
            tiled = (lambda A, B: flow.soft_bottleneck_matmul_tiled(A, B, 0.01)) if mode == "soft" else flow.bottleneck_matmul_tiled
            out.append(Case(f"{name}/{mode}", make, {"torch": tiled, "plain": plain, "compile": plain,
                                                   "triton": _triton_bottleneck(mode)}, cuda_only={"triton"}))
    for name, (nq, nk, batch, cols) in (("attn-cross", (P, TOKENS, F, J)), ("attn-temporal", (F, F, P, F))):
        def make(device, gen, nq=nq, nk=nk, batch=batch):
            q = torch.randn(batch, HEADS, nq, HEAD_DIM, generator=gen).to(device, half)
            k = torch.randn(batch, HEADS, nk, HEAD_DIM, generator=gen).to(device, half)
            v = torch.randn(batch, HEADS, nk, HEAD_DIM, generator=gen).to(device, half)
            return q, k, v
        s = HEAD_DIM ** -0.5
        out.append(Case(name, make, {
            "torch": lambda q, k, v, c=cols: _torch_recorded(q, k, v, s, c),
            "plain": lambda q, k, v, c=cols: _plain_recorded(q, k, v, s, c),
            "compile": lambda q, k, v, c=cols: _plain_recorded(q, k, v, s, c),
            "triton": lambda q, k, v, c=cols: _triton_recorded(q, k, v, s, c),
            "sdpa": lambda q, k, v, c=cols: _sdpa(q, k, v, s, c)}, cuda_only={"triton"}))
    ar = noise.ar_matrix(F, rho, math.sqrt(1 - rho * rho), torch.float32)
    mom = noise.ar_matrix(F, mu, 1 - mu, torch.float32)
    out.append(Case("noise-ar1", lambda device, gen: (torch.randn(1, 4, F, 40, 64, generator=gen).to(device),), {
        "torch": lambda x: einsum_mix(x, ar.to(x.device), "ij,bcjhw->bcihw"),
        "matmul": lambda x: matmul_mix(x, ar.to(x.device), 2),
        "scan": lambda x: scan_mix(x, rho, math.sqrt(1 - rho * rho), 2),
        "compile": lambda x: einsum_mix(x, ar.to(x.device), "ij,bcjhw->bcihw"),
        "compile-scan": lambda x: scan_mix(x, rho, math.sqrt(1 - rho * rho), 2)}, backward=False))
    out.append(Case("noise-kv", lambda device, gen: (torch.randn(2, F, 4096, 320, generator=gen).to(device, half),), {
        "torch": lambda x: einsum_mix(x, mom.to(x.device, x.dtype), "ij,gjtd->gitd"),
        "matmul": lambda x: matmul_mix(x, mom.to(x.device, x.dtype), 1),
        "scan": lambda x: scan_mix(x, mu, 1 - mu, 1),
        "compile": lambda x: einsum_mix(x, mom.to(x.device, x.dtype), "ij,gjtd->gitd"),
        "compile-scan": lambda x: scan_mix(x, mu, 1 - mu, 1)}, backward=False))
    return out


# --set dit sizes: (latent frames, latent height, latent width after the 2x2 patch, heads, head dim)
DIT_SIZES = {"wan": (21, 30, 52, 12, 128), "mid": (9, 12, 20, 12, 128), "toy": (5, 4, 4, 4, 32)}


def naive_slice(q, k, frames: int, scale: float):
    """The full softmax over N keys in the compute precision, then each position's F x F block."""
    B, H, N, _ = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    probs = torch.softmax(torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale, dim=-1)
    P = N // frames
    idx = torch.arange(P, device=q.device)
    # [b, h, f, p, g, p'] at p' = p: advanced indexing on the two position axes -> [P, B, H, F, F]
    return probs.view(B, H, frames, P, frames, P)[:, :, :, idx, :, idx].permute(1, 2, 0, 3, 4)


def _slices(kernels, frames, scale):
    def fn(q, k):
        with use_kernels(kernels):
            return attention_slices.same_position_attention(q, k, frames, scale)
    return fn


def _scan(kernels, decay, gain, dim):
    def fn(x):
        with use_kernels(kernels):
            return scan.ar_scan(x, decay, gain, dim)
    return fn


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def dit_cases(size: str, half: torch.dtype, device: torch.device) -> list[Case]:
    F_, h, w, heads, d = DIT_SIZES[size]
    P_, scale = h * w, d ** -0.5
    N = F_ * P_
    rho, mu = 0.94, 0.98

    def qk(device, gen):
        return tuple(torch.randn(1, heads, N, d, generator=gen).to(device, half) for _ in range(2))

    impls = {"torch": _slices("torch", F_, scale), "triton": _slices("triton", F_, scale)}
    # the naive f+b holds about 4 float32 [heads, N, N] tensors (scores, probabilities, their gradients)
    if 4 * 4 * heads * N * N < _free_bytes(device) // 2:
        impls["naive"] = lambda q, k: naive_slice(q, k, F_, scale)
    impls["sdpa"] = lambda q, k: torch.nn.functional.scaled_dot_product_attention(q, k, k, scale=scale)
    out = [Case(f"slice/{size}", qk, impls, cuda_only={"triton"})]
    for name, shape, decay, gain, dim in (
            ("scan-noise", (1, 16, F_, 2 * h, 2 * w), rho, math.sqrt(1 - rho * rho), 2),
            ("scan-kv", (2, F_, P_, heads * d), mu, 1 - mu, 1)):
        dtype = torch.float32 if name == "scan-noise" else half
        out.append(Case(f"{name}/{size}", lambda device, gen, shape=shape, dtype=dtype: (
            torch.randn(shape, generator=gen).to(device, dtype),), {
            "torch": _scan("torch", decay, gain, dim), "triton": _scan("triton", decay, gain, dim),
            "scan": lambda x, decay=decay, gain=gain, dim=dim: scan_mix(x, decay, gain, dim)},
            cuda_only={"triton"}))
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _outputs(y) -> tuple:
    return y if isinstance(y, tuple) else (y,)


def time_call(fn, device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mib(fn, device: torch.device):
    """Memory one call of ``fn`` allocated at its peak above what was allocated before: CUDA's allocator
    counters, or on a CPU the peak resident set of a forked child running it above the child's start."""
    if device.type != "cuda":
        return _cpu_peak_mib(fn)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _cpu_peak_mib(fn):
    if not hasattr(os, "fork") or not os.path.exists("/proc/self/statm"):
        return None
    import resource

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run once, report the growth of its peak RSS (Linux starts it at the parent's RSS)
        os.close(read)
        try:
            torch.set_num_threads(1)  # no OpenMP team across the fork (libgomp may hang in a forked child)
            base = _rss_kib()
            fn()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            os.write(write, str((peak - base) / 1024).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return float(text) if text else None


def run_case(case: Case, device: torch.device, repeats: int, compile_ok: bool, quick: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    inputs = case.make(device, gen)
    rows = []
    for impl, fn in case.impls.items():
        if impl in case.cuda_only and device.type != "cuda":
            continue
        if impl == "plain" and case.name.startswith("flow-spatial") and device.type == "cpu" and quick:
            continue
        if impl.startswith("compile"):
            if not compile_ok:
                continue
            fn = torch.compile(fn, dynamic=False)
        row = {"case": case.name, "impl": impl}
        try:
            t0 = time.perf_counter()
            y = _outputs(fn(*inputs))  # first call: compiles
            _sync(device)
            row["first_s"] = time.perf_counter() - t0
            traffic = _bytes(inputs) + _bytes(y)
            row["fwd_s"] = time_call(lambda: fn(*inputs), device, repeats)
            row["fwd_gbs"] = traffic / row["fwd_s"] / 1e9
            if case.backward and impl != "sdpa":
                xs = [x.detach().requires_grad_() for x in inputs]
                ws = [torch.randn_like(t, dtype=torch.float32) for t in y]

                def fb():
                    outs = _outputs(fn(*xs))
                    torch.autograd.backward([o.float() for o in outs], ws)
                    for x in xs:
                        x.grad = None

                t0 = time.perf_counter()
                fb()
                _sync(device)
                row["first_s"] += time.perf_counter() - t0
                row["peak_mib"] = peak_mib(fb, device)
                row["fb_s"] = time_call(fb, device, repeats)
                row["fb_gbs"] = (2 * traffic + _bytes(inputs)) / row["fb_s"] / 1e9
            elif case.backward and impl == "sdpa":
                xs = [x.detach().requires_grad_() for x in inputs]
                g = torch.randn_like(y[0])

                def fb_sdpa():
                    fn(*xs).backward(g)
                    for x in xs:
                        x.grad = None

                row["peak_mib"] = peak_mib(fb_sdpa, device)
                row["fb_s"] = time_call(fb_sdpa, device, repeats)
            else:
                row["peak_mib"] = peak_mib(lambda: fn(*inputs), device)
        except Exception as err:  # a compile that fails on this machine is a row, not the end of the run
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
        rows.append(row)
    return rows


def peak_gbs(device: torch.device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_GBS.items() if k in name), None)


def print_table(rows: list[dict], device: torch.device) -> None:
    peak = peak_gbs(device)
    print(f"{'case':<20} {'impl':<13} {'fwd ms':>9} {'f+b ms':>9} {'fwd GB/s':>9} {'%peak':>6} "
          f"{'vs torch':>9} {'f+b vs':>7} {'1st s':>6} {'peak MiB':>9}")
    base = {}
    for r in rows:
        if r["impl"] == "torch" and "fwd_s" in r:
            base[r["case"]] = r
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<20} {r['impl']:<13} error: {r['error']}")
            continue
        b = base.get(r["case"], {})
        fwd, fb = r["fwd_s"] * 1e3, r.get("fb_s", math.nan) * 1e3
        pct = f"{100 * r['fwd_gbs'] / peak:>5.1f}%" if peak else f"{'-':>6}"
        sp = b["fwd_s"] / r["fwd_s"] if b else math.nan
        spb = b.get("fb_s", math.nan) / r.get("fb_s", math.nan) if b else math.nan
        print(f"{r['case']:<20} {r['impl']:<13} {fwd:>9.3f} {fb:>9.3f} {r['fwd_gbs']:>9.1f} {pct} "
              f"{sp:>8.2f}x {spb:>6.2f}x {r['first_s']:>6.1f} {_mib(r.get('peak_mib'))}")


def _mib(v) -> str:
    return f"{'-':>9}" if v is None else f"{v:>9.1f}"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="attention/noise-kv dtype (default: float16 on cuda, float32 on cpu)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip the plain broadcast of flow-spatial on a CPU")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    ap.add_argument("--only", nargs="*", default=None, help="case name prefixes (flow, attn, noise, ...)")
    ap.add_argument("--budget", type=float, default=0, help="seconds after which no new case starts (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="case_set", choices=["zeroscope", "dit"], default="zeroscope",
                    help="which kernels and sizes: ZeroScope's (Vico's UNet kernels, ZS2) or a DiT's (issue 35)")
    ap.add_argument("--size", choices=sorted(DIT_SIZES), default=None,
                    help="--set dit: wan (default on CUDA), mid (default on a CPU) or toy")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    half = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    if args.case_set == "dit" and not args.dtype and device.type == "cuda":
        half = torch.bfloat16  # Wan's dtype
    size = args.size or ("wan" if device.type == "cuda" else "mid")
    if args.case_set == "dit" and size == "wan" and device.type != "cuda":
        sys.exit("bench_kernels: --set dit --size wan needs a CUDA device (N = 32760 tokens: the torch side alone "
                 "would take many minutes on a CPU); use --size mid or toy here")
    compile_ok = not args.no_compile
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    what = "" if args.case_set == "zeroscope" else f"set dit, size {size} {DIT_SIZES[size]}, "
    print(f"kernels on {name}: {what}torch {torch.__version__}, attention/noise-kv dtype {str(half).removeprefix('torch.')}, "
          f"repeats {args.repeats}, load {os.getloadavg()[0]:.1f}")
    rows = []
    started = time.perf_counter()
    chosen = cases(half) if args.case_set == "zeroscope" else dit_cases(size, half, device)
    for case in chosen:
        if args.only and not any(case.name.startswith(o) for o in args.only):
            continue
        if args.budget and time.perf_counter() - started > args.budget:
            rows.append({"case": case.name, "impl": "-", "error": f"skipped: past the {args.budget:.0f}s budget"})
            continue
        rows += run_case(case, device, args.repeats, compile_ok, args.quick)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(rows, device)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
