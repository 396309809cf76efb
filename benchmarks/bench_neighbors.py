"""The ratio test at the paper's size: time and peak memory of the exact search against full-matrix routines.

``memorization_fraction`` for N samples against M training rows of dimension D (default 10 000 x 32 768 x
1 024, float32 Gaussian data with planted copies: samples that are training rows plus small noise, exact
copies, and duplicated training rows so that exact ties occur) is timed against two reference
implementations of the same test:

* ``chunked64``: both sets converted to float64, a 4 096 x M float64 ``torch.cdist`` block per step,
  ``torch.topk`` of 2;
* ``cdist64``: one float64 ``torch.cdist`` of everything (the full N x M matrix), ``torch.topk`` of 2.

Each method runs ``--repeats`` times, each in a fresh Python process (median and range of the wall
time); a process's peak resident memory is its ``getrusage(RUSAGE_SELF).ru_maxrss``, reported as is
and less the peak of a process that imports torch and diffmem and builds the same data but searches
nothing (the baseline). The answers are compared: f_mem, the memorized flags, the nearest indices and
the ratios, everywhere and away from ties (samples with d1 < d2). Then the exact search is checked bit
for bit against a float64 brute force (every distance as the plain sum of squared differences, stable
sort) on a smaller case (``--check-n`` samples against ``--check-m`` rows, same data, ties included).

    flock -x /work/cpu.lock python3 benchmarks/bench_neighbors.py --out runs/bench_neighbors.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

K = 1 / 3


def make_data(n: int, m: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 training rows and samples: 5% noisy copies, 1% exact copies, 1% duplicated training rows."""
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(m, d, generator=g)
    dup = torch.randint(0, m, (max(1, m // 100), 2), generator=g)
    train[dup[:, 1]] = train[dup[:, 0]]  # exact ties among the training rows
    samples = torch.randn(n, d, generator=g)
    k_noisy, k_exact = n // 20, max(1, n // 100)
    src = torch.randint(0, m, (k_noisy + k_exact,), generator=g)
    samples[:k_noisy] = train[src[:k_noisy]] + 0.1 * torch.randn(k_noisy, d, generator=g)
    samples[k_noisy : k_noisy + k_exact] = train[src[k_noisy:]]
    samples[k_noisy + k_exact : k_noisy + 2 * k_exact] = train[dup[:k_exact, 1]]  # on two identical rows
    return samples, train


def _ratios(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d2 > 0, d1 / d2, np.where(d1 > 0, np.inf, 0.0))


def chunked64(samples: torch.Tensor, train: torch.Tensor, chunk: int = 4096):
    s, tr = samples.reshape(len(samples), -1).double(), train.reshape(len(train), -1).double()
    d1, d2, idx = [], [], []
    for i in range(0, s.shape[0], chunk):
        v, j = torch.topk(torch.cdist(s[i : i + chunk], tr), 2, dim=1, largest=False)
        d1.append(v[:, 0])
        d2.append(v[:, 1])
        idx.append(j[:, 0])
    return torch.cat(d1).numpy(), torch.cat(d2).numpy(), torch.cat(idx).numpy()


def cdist64(samples: torch.Tensor, train: torch.Tensor):
    d = torch.cdist(samples.double(), train.double())
    v, j = torch.topk(d, 2, dim=1, largest=False)
    return v[:, 0].numpy(), v[:, 1].numpy(), j[:, 0].numpy()


def worker(method: str, n: int, m: int, d: int, out: str) -> None:
    from diffmem.metrics import bootstrap_mean_ci, memorization_fraction

    samples, train = make_data(n, m, d)
    t = time.perf_counter()
    if method == "baseline":
        ratios, nearest, d1, d2 = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n)
    elif method == "exact":
        r = memorization_fraction(samples, train, K)
        ratios, nearest = r.ratios, r.nearest
    else:
        d1, d2, nearest = (chunked64 if method == "chunked64" else cdist64)(samples, train)
        ratios = _ratios(d1, d2)
        bootstrap_mean_ci((ratios < K).astype(np.float64))  # as memorization_fraction does
    wall = time.perf_counter() - t
    if method == "exact":  # the distances themselves, outside the timing (for the tie count)
        from diffmem.metrics import nearest_two

        d1, d2, _ = nearest_two(samples, train)
    np.savez(out, ratios=ratios, nearest=nearest, tied=d1 == d2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    print(json.dumps({"method": method, "wall_s": wall, "peak_rss_bytes": peak}))


def run_worker(method: str, n: int, m: int, d: int, folder: Path) -> dict:
    out = folder / f"{method}.npz"
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--m", str(m), "--d", str(d), "--npz", str(out)]
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    res = json.loads(line)
    z = np.load(out, allow_pickle=False)
    res["ratios"], res["nearest"], res["tied"] = z["ratios"], z["nearest"], z["tied"]
    return res


def brute_check(n: int, m: int, d: int) -> dict:
    """The exact search against a float64 brute force over every pair, bit for bit."""
    from diffmem.metrics.neighbors import pair_sqdist64, two_nearest

    samples, train = make_data(n, m, d, seed=1)
    t = time.perf_counter()
    got = two_nearest(samples, train)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    i1, i2 = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    d1, d2 = np.empty(n), np.empty(n)
    for i in range(n):  # one sample at a time against all rows: plain sums of squared differences
        dist = pair_sqdist64(samples[i : i + 1].expand(m, -1), train).sqrt_()
        o = torch.argsort(dist, stable=True)[:2]
        i1[i], i2[i], d1[i], d2[i] = int(o[0]), int(o[1]), float(dist[o[0]]), float(dist[o[1]])
    t_brute = time.perf_counter() - t
    ties = int((d1 == d2).sum())
    same = all(np.array_equal(a, b) for a, b in ((got.index1, i1), (got.index2, i2), (got.d1, d1), (got.d2, d2)))
    return {"n": n, "m": m, "d": d, "exact_equal": same, "tied_samples": ties, "exact_s": t_exact, "brute_s": t_brute}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples")
    ap.add_argument("--m", type=int, default=32_768, help="training rows")
    ap.add_argument("--d", type=int, default=1024, help="dimension")
    ap.add_argument("--methods", nargs="+", default=["exact", "chunked64", "cdist64"])
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per method (median and range)")
    ap.add_argument("--check-n", type=int, default=300, help="samples of the brute-force check (0: skip)")
    ap.add_argument("--check-m", type=int, default=4096, help="training rows of the brute-force check")
    ap.add_argument("--out", default="runs/bench_neighbors.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--npz", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.m, args.d, args.npz)
        return
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ["baseline", *args.methods]:
            runs = [run_worker(method, args.n, args.m, args.d, Path(tmp)) for _ in range(args.repeats)]
            rows[method] = runs[-1]
            rows[method]["walls"] = sorted(x["wall_s"] for x in runs)
            rows[method]["peak_rss_bytes"] = max(x["peak_rss_bytes"] for x in runs)
    base = rows["baseline"]["peak_rss_bytes"]
    exact = rows.get("exact")
    summary: dict = {"n": args.n, "m": args.m, "d": args.d, "threads": torch.get_num_threads(), "methods": {}}
    print(f"N={args.n} M={args.m} D={args.d}, torch threads {torch.get_num_threads()}")
    print(f"baseline (python, torch, diffmem, the data): peak RSS {base / 2**30:.2f} GiB")
    for method in args.methods:
        r = rows[method]
        entry = {
            "wall_s": float(np.median(r["walls"])),
            "wall_s_range": [r["walls"][0], r["walls"][-1]],
            "repeats": len(r["walls"]),
            "peak_rss_gib": r["peak_rss_bytes"] / 2**30,
            "peak_above_baseline_gib": (r["peak_rss_bytes"] - base) / 2**30,
            "f_mem": float(np.mean(r["ratios"] < K)),
        }
        if exact is not None and method != "exact":
            flags = (r["ratios"] < K) != (exact["ratios"] < K)
            entry["memorized_flags_differ"] = int(flags.sum())
            entry["memorized_flags_differ_untied"] = int((flags & ~exact["tied"]).sum())
            differ = r["nearest"] != exact["nearest"]
            entry["nearest_differ"] = int(differ.sum())
            entry["nearest_differ_untied"] = int((differ & ~exact["tied"]).sum())  # where d1 < d2
            finite = np.isfinite(r["ratios"]) & np.isfinite(exact["ratios"])
            gap = np.abs(r["ratios"] - exact["ratios"])
            entry["max_abs_ratio_diff"] = float(gap[finite].max())
            entry["max_abs_ratio_diff_untied"] = float(gap[finite & ~exact["tied"]].max())
        summary["methods"][method] = entry
        extra = "".join(
            f", {k} {entry[k]:.3g}"
            for k in (
                "memorized_flags_differ",
                "memorized_flags_differ_untied",
                "nearest_differ",
                "nearest_differ_untied",
                "max_abs_ratio_diff",
                "max_abs_ratio_diff_untied",
            )
            if k in entry
        )
        print(
            f"{method:>10}: {entry['wall_s']:6.2f} s [{entry['wall_s_range'][0]:.2f}, {entry['wall_s_range'][1]:.2f}] "
            f"over {entry['repeats']}, peak RSS {entry['peak_rss_gib']:.2f} GiB "
            f"({entry['peak_above_baseline_gib']:.2f} above baseline), f_mem {entry['f_mem']:.4f}{extra}"
        )
    summary["baseline_peak_rss_gib"] = base / 2**30
    if args.check_n:
        chk = brute_check(args.check_n, args.check_m, args.d)
        summary["brute_force_check"] = chk
        print(
            f"brute-force check N={chk['n']} M={chk['m']} D={chk['d']}: bit-for-bit equal {chk['exact_equal']} "
            f"({chk['tied_samples']} samples with d1 == d2), exact {chk['exact_s']:.2f} s, brute {chk['brute_s']:.1f} s"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
