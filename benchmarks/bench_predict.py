"""Benchmark: `diffmem predict` against the onset a full study measures at the same size.

    python benchmarks/bench_predict.py --n 128 --out runs/bench_predict
    python benchmarks/bench_predict.py --n 128 --out runs/bench_predict16 -- --pilot-sizes 16 32 64
    python benchmarks/bench_predict.py --n 128 --measured runs/dynamics/results.json

Runs ``diffmem predict --n N --out OUT/predict`` with the flags after ``--`` (none: the default pilots
N/16, N/8, N/4, two subsets each, the quick study's training), times it and prints the prediction
from ``predict.json``: tau_mem_pred with its 95% interval, tau_gen_pred, the exponent of
tau_mem - tau_gen over the pilots with its interval, and the wall time. With ``--measured
results.json`` (a study that trained size N, e.g. the quick study ``diffmem dynamics``, whose
tau_mem at n = 128 is the reference of docs/results.md) it also prints the measured tau_mem at N
(the geometric mean over that size's runs), the ratio measured / predicted and whether the measured
value lies inside the interval. Writes ``OUT/bench_predict.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def _g(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def measured_tau_mem(results: dict, n: int) -> float | None:
    """Geometric mean of tau_mem over the runs of size ``n`` in a study's ``results.json``."""
    ts = [r["tau_mem"] for r in results["runs"] if r["n"] == n and r["tau_mem"] is not None]
    return math.exp(sum(math.log(t) for t in ts) / len(ts)) if ts else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="the size to predict for (default 128)")
    ap.add_argument("--out", default="runs/bench_predict")
    ap.add_argument("--measured", default=None, help="results.json of a study that trained size --n")
    ap.add_argument("flags", nargs=argparse.REMAINDER, help="after --: flags of diffmem predict")
    args = ap.parse_args()
    flags = [f for f in args.flags if f != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from diffmem.cli import main as cli

    t = time.perf_counter()
    rc = cli(["predict", "--n", str(args.n), "--out", str(out / "predict"), "--quiet", *flags])
    wall = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"diffmem predict exited with status {rc}")
    pred = json.loads((out / "predict" / "predict.json").read_text())
    rec = {
        "n": args.n,
        "flags": flags,
        "wall_seconds": wall,
        **{k: pred.get(k) for k in ("law", "tau_mem_pred", "tau_mem_ci", "tau_gen_pred", "alpha", "alpha_ci")},
    }
    m, s = divmod(round(wall), 60)
    lo, hi = rec["tau_mem_ci"] or (None, None)
    print(f"\n`diffmem predict --n {args.n} {' '.join(flags)}`: {m} min {s} s wall")
    a_lo, a_hi = rec["alpha_ci"] or (None, None)
    print(f"tau_mem_pred {_g(rec['tau_mem_pred'])} [{_g(lo)}, {_g(hi)}], tau_gen_pred {_g(rec['tau_gen_pred'])}")
    print(f"tau_mem - tau_gen over the pilots ~ n^{_g(rec['alpha'])} [{_g(a_lo)}, {_g(a_hi)}]")
    if args.measured:
        ref = measured_tau_mem(json.loads(Path(args.measured).read_text()), args.n)
        rec["measured_tau_mem"] = ref
        if ref is not None and rec["tau_mem_pred"]:
            rec["measured_over_predicted"] = ref / rec["tau_mem_pred"]
            rec["inside"] = lo is not None and hi is not None and lo <= ref <= hi
            print(
                f"measured {ref:.4g}: measured / predicted {rec['measured_over_predicted']:.3g}, inside {rec['inside']}"
            )
        else:
            print(f"the study in {args.measured} has no tau_mem at n = {args.n}")
    (out / "bench_predict.json").write_text(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
