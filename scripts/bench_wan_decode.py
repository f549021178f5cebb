"""Peak memory of a Wan decode against video length: vgen's streamed decode (one latent frame at a time, frames
handed on as made) and diffusers' vae.decode (the whole video in one tensor), on wan-quarter's VAE (Wan 2.1's VAE
layout at 1/4 width, random weights).

Each way runs in a fresh process, the lengths in increasing order: on CPU the number is the process's peak RSS so far
above its RSS with the VAE built (getrusage ru_maxrss, monotonic: a flat column means the longer video needed no
more memory); on CUDA, torch.cuda.max_memory_allocated of that decode above what was allocated before it. Streamed frames are converted to uint8 and dropped (a writer would encode them).

    python scripts/bench_wan_decode.py [--frames 17 81 241] [--height 240 --width 416] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(spec: dict) -> list[dict]:
    """One way, the lengths in increasing order in this process: each row's peak is the process's peak so far
    (so a flat row means that length needed no more memory than the shorter ones)."""
    import torch

    from vgen.models.wan import stream_decode, wan_quarter_vae

    torch.set_grad_enabled(False)
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    vae = wan_quarter_vae().to(device).eval()
    cuda = device.type == "cuda"
    rows = []
    for frames in sorted(spec["frames"]):
        lat_f = (frames - 1) // 4 + 1
        z = torch.randn(1, 16, lat_f, spec["height"] // 8, spec["width"] // 8,
                        generator=torch.Generator().manual_seed(0)).to(device)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        elif not rows:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        made = 0
        if spec["way"] == "streamed":
            for piece in stream_decode(vae, z):
                made += piece.shape[0]
                (piece * 255).round().to(torch.uint8)  # what the writer gets; dropped here
        else:
            video = vae.decode(z).sample
            made = video.shape[2]
            (video.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
            del video
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        rows.append({"frames": made, "latents": lat_f, "peak_mib": peak / 2**20, "seconds": time.perf_counter() - t0})
        del z
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="*", default=[17, 81, 241])
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=416)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ways", nargs="*", default=["streamed", "vae.decode"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(f"Wan decode peak memory, wan-quarter VAE (random), {args.height}x{args.width}, {args.device}; "
          "peak above the built VAE, one process per way")
    print(f"{'frames':>6} {'latents':>7} {'way':<11} {'peak MiB':>9} {'seconds':>8}")
    rows = []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # glibc: blocks over 128 KiB are mmapped and go back to the OS when freed, so the peak RSS follows the live
    # tensors rather than what the allocator keeps cached
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    env.setdefault("MALLOC_ARENA_MAX", "2")
    for way in args.ways:
        spec = {"frames": args.frames, "height": args.height, "width": args.width, "device": args.device, "way": way}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                             env=env)
        if out.returncode:
            print(f"{way}: failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        for r in json.loads(out.stdout.strip().splitlines()[-1]):
            rows.append((way, r["frames"], r))
            print(f"{r['frames']:>6} {r['latents']:>7} {way:<11} {r['peak_mib']:>9.0f} {r['seconds']:>8.1f}", flush=True)
    streamed = [r["peak_mib"] for way, _, r in rows if way == "streamed"]
    if len(streamed) > 1:
        spread = (max(streamed) - min(streamed)) / max(min(streamed), 1e-9)
        print(f"streamed: peak spread across lengths {spread:.1%} (target: flat within 10%)")


if __name__ == "__main__":
    main()
