"""Benchmark the attention-flow kernels (vgen/core/flow.py products, vgen/methods/vico/flow.py graphs): time per inference and peak memory.

    .venv/bin/python scripts/bench_flow.py [--quick] [--device cpu|cuda]

Times are the best of a few repeats (robust to other load on shared CPUs), forward only unless marked fwd+bwd, on random head-averaged attention
maps of the given sizes. Exact max-flow is timed on a sample of (block, token, position) graphs and
extrapolated. Peak memory is measured in a fresh subprocess per variant: peak RSS growth on CPU (Linux VmHWM,
reset through /proc/self/clear_refs), torch.cuda.max_memory_allocated on CUDA; analytic sizes beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from vgen.core import flow as fl  # noqa: E402
from vgen.methods.vico import flow as vf  # noqa: E402

SIZES = {  # name: (frames, h, w, tokens, blocks)
    "toy": (8, 8, 8, 16, 2),
    "zeroscope": (16, 10, 16, 77, 5),
}


def attn(*shape, gen, device):
    return torch.softmax(3 * torch.randn(*shape, generator=gen), dim=-1).to(device)


def make_blocks(F, P, J, n_blocks, device, spatial=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(attn(F, P, J, gen=gen, device=device), attn(F, P, P, gen=gen, device=device) if spatial else None,
             [attn(P, F, F, gen=gen, device=device) for _ in range(2)]) for _ in range(n_blocks)]


def timeit(fn, device, reps):
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def fwd_bwd(fn, blocks):
    leaves = [b[0].requires_grad_() for b in blocks]
    out = fn()
    torch.autograd.grad(out.sum(), leaves)
    for x in leaves:
        x.requires_grad_(False)


def exact_time(blocks, J, budget_s, backend):
    """Seconds per (block, token, position) graph, all F sinks solved, graph built once per sample."""
    F, P = blocks[0][0].shape[:2]
    rng = random.Random(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s or n < 2:
        b, j, p = rng.randrange(len(blocks)), rng.randrange(J), rng.randrange(P)
        edges, src, sink_of = vf.build_flow_graph([blocks[b]], j, "default", position=p)
        for f in range(F):
            vf._max_flow_value(edges, src, sink_of(f, p), backend)
        n += 1
    return (time.perf_counter() - t0) / n


def bench_times(name, device, quick):
    F, h, w, J, nb = SIZES[name]
    P = h * w
    blocks = make_blocks(F, P, J, nb, device)
    reps = 3 if quick else 10
    print(f"\n== {name}: {F} frames, {h}x{w} positions, {J} tokens, {nb} blocks x (cross, 2 temporal); device {device}")
    rows = [
        ("cross-attention only", lambda: vf.cross_attention_flow(blocks)),
        ("attention rollout", lambda: vf.attention_rollout(blocks)),
        ("ST-Flow hard", lambda: vf.st_flow_blocks(blocks, "hard")),
        ("ST-Flow soft, plain", lambda: vf.st_flow_blocks(blocks, "soft", 0.01, tiled=False)),
        ("ST-Flow soft, tiled", lambda: vf.st_flow_blocks(blocks, "soft", 0.01, tiled=True)),
    ]
    res = {}
    with torch.no_grad():
        for label, fn in rows:
            res[label] = timeit(fn, device, reps)
            print(f"  {label:<34s} {res[label] * 1e3:9.2f} ms")
    for label in ("ST-Flow soft, plain", "ST-Flow soft, tiled"):
        tiled = label.endswith("tiled")
        t = timeit(lambda: fwd_bwd(lambda: vf.st_flow_blocks(blocks, "soft", 0.01, tiled=tiled), blocks), device, reps)
        print(f"  {label + ' fwd+bwd':<34s} {t * 1e3:9.2f} ms")
    st = min(res["ST-Flow soft, plain"], res["ST-Flow soft, tiled"])
    cpu_blocks = [(c.cpu(), None, [t.cpu() for t in ts]) for c, _, ts in blocks]
    for backend in ("scipy",) if quick else ("scipy", "networkx"):
        per_graph = exact_time(cpu_blocks, J, 0.3 if quick else 2.0, backend)
        per_token = per_graph * nb * P
        per_inf = per_token * J
        print(f"  exact max-flow ({backend:<8s}) {per_graph * 1e3:9.2f} ms per (block, token, position) graph with "
              f"{F} sinks -> extrapolated {per_token:.2f} s per token, {per_inf:.1f} s per inference ({J} tokens)")
        print(f"    ratio exact/ST-Flow soft (best of plain, tiled): {per_inf / st:,.0f}x per inference "
              f"(exact for ONE token alone: {per_token / st:,.0f}x ST-Flow for all {J})")


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _rss_reset_peak():
    """Current RSS, after resetting the kernel's peak-RSS mark (Linux: clear_refs 5) so that VmHWM is ours."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def _rss_peak():
    return _status_kib("VmHWM")


def mem_child(variant, F, P, J, device):
    """Run one soft product fwd+bwd (spatial residual [F,P,P] ⊗ flow [F,P,J]) and report the peak."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    tiled = variant == "tiled"
    # warm-up on tiny inputs first: code pages and allocator pools faulted in by a first call are not data
    s, x = torch.rand(1, 8, 8, device=device, requires_grad=True), torch.rand(1, 8, 4, device=device, requires_grad=True)
    torch.autograd.grad(fl.bottleneck(s, x, "soft", 0.01, tiled=tiled).sum(), (s, x))
    S = fl.with_residual(attn(F, P, P, gen=gen, device=device)).requires_grad_()
    X = attn(F, P, J, gen=gen, device=device).requires_grad_()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_reset_peak()
    t0 = time.perf_counter()
    out = fl.bottleneck(S, X, "soft", 0.01, tiled=tiled)
    torch.autograd.grad(out.sum(), (S, X))
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_peak() - base
    print(json.dumps({"peak": peak, "s": time.perf_counter() - t0}))


def bench_memory(device, quick):
    F, P, J = (4, 160, 77) if quick else (16, 160, 77)
    inputs = (F * P * P + F * P * J) * 4
    print(f"\n== memory: soft product fwd+bwd, spatial residual [{F},{P},{P}] ⊗ flow [{F},{P},{J}], float32, {device}")
    print(f"  analytic: inputs {inputs / 2**20:.1f} MiB; one m*k*n intermediate {F * P * P * J * 4 / 2**20:.1f} MiB "
          f"(plain autograd keeps several); tiled keeps [F,P,J] LSE {F * P * J * 4 / 2**20:.2f} MiB + one tile "
          f"<= {fl.TILE_BUDGET * 4 / 2**20:.0f} MiB")
    how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS growth (VmHWM after clear_refs), fresh process"
    for variant in ("plain", "tiled"):
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--_mem", variant, str(F), str(P), str(J),
                            "--device", str(device), "--threads", str(torch.get_num_threads())], capture_output=True, text=True)
        if r.returncode:
            print(f"  {variant}: failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"  {variant:<6s} measured peak {d['peak'] / 2**20:8.1f} MiB  ({how}); fwd+bwd {d['s']:.2f} s")
    for Pbig, hw in ((640, "20x32"), (2560, "40x64")):
        print(f"  analytic at {hw} positions, 16 frames, 77 tokens: plain intermediate "
              f"{16 * Pbig * Pbig * 77 * 4 / 2**30:.1f} GiB each vs tiled LSE {16 * Pbig * 77 * 4 / 2**20:.1f} MiB + tile")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller memory case (< 20 s)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: stable timings on a shared machine; 0 = torch default)")
    ap.add_argument("--_mem", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._mem:
        variant, F, P, J = args._mem
        mem_child(variant, int(F), int(P), int(J), args.device)
        return
    device = torch.device(args.device)
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quick={args.quick}")
    for name in SIZES:
        bench_times(name, device, args.quick)
    bench_memory(device, args.quick)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
