"""Exact two-nearest-neighbour search in bounded memory, on the CPU or a GPU.

For every sample x (a row of ``samples``) :func:`two_nearest` finds its nearest and second-nearest
reference rows a1, a2 in L2 and their distances d1 <= d2, exactly as a float64 brute force does, without
ever holding the full N x M distance matrix.

The distance
    Distances are defined in float64 as the plain sum of squared differences,
    ``d(x, y) = sqrt(sum_i (x_i - y_i)^2)`` (the inputs converted to float64; the sum taken in blocks of
    8 192 coordinates, so its rounding does not depend on how many pairs are evaluated together). Every
    distance returned is one of these values, never negative.

The search
    The candidates come from the matrix-product form ``|x'|^2 + |y'|^2 - 2 x'.y'`` on centred and
    power-of-two scaled copies ``x' = fl((x - c) 2^p)`` (c the references' mean; exact in real arithmetic,
    and it keeps the cancellation small), with float32 products for speed, or float64 ones where the
    whole product is small (N M D <= 2^27) or the dimension is too large for float32. A rigorous bound

        |d~^2(x, y) - d(x, y)^2 2^2p| <= e(x, y) = kappa (|x'|^2 + |y'|^2) + alpha,
        kappa = 1.25 ((D + 32) u + 4 D 2^-53)

    (u = 2^-24 for float32 products, 2^-53 for float64; D the dimension; the float32 products are taken
    at "highest" matmul precision, TF32 and bf16 off, for the call) covers the product's rounding, the
    rounding of x' and of the float64 sum. With ``T`` the second smallest ``d~^2 + e`` over the kept
    references, every reference that can be one of the two nearest has ``d~^2 - e <= T``: those, and only
    those, are recomputed in float64 and the two nearest chosen from the float64 values. Per sample
    the ``8`` smallest ``d~^2 - e`` are kept; when more than 8 references pass the test (many exact or
    near ties, duplicated references) the sample is searched again over all references with its
    threshold T, so the answer stays exact (only slower).

Ties
    References are ordered by (float64 distance, index): among equal distances the lowest index is the
    nearest. When the two nearest are tied, d1 == d2 (a sample on two duplicated references gets
    d1 = d2 = 0; the ratio convention 0/0 = 0 is :func:`diffmem.metrics.memorization_fraction`'s).

Memory
    The working blocks (a block of samples times a chunk of references, and the float64 re-check) are
    sized so that together they stay within ``memory_budget`` bytes (256 MiB by default) whatever N, M and
    D; besides them the search keeps O(N + M) numbers (8 candidates per sample, a norm per reference).
    The inputs are read block by block from where they are (a CPU tensor can be searched on a GPU).

Backends
    ``backend="torch"`` (the default below a million references) runs on ``device`` (default: the
    samples' device). ``backend="faiss"`` takes the candidates from a faiss exact flat index
    (``IndexFlatL2``, float32, on the CPU; ``pip install "diffmem[faiss]"``) with the same bound (twice
    the norms' share: faiss takes the norms in float32) and the same float64 re-check; it keeps a float32
    copy of the references (4 M D bytes). ``backend="auto"`` uses faiss when it is installed and there
    are more than :data:`FAISS_THRESHOLD` references, torch otherwise.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["DEFAULT_MEMORY_BUDGET", "FAISS_THRESHOLD", "TwoNearest", "pair_sqdist64", "two_nearest"]

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes of working blocks a search may hold at once (256 MiB)."""

FAISS_THRESHOLD = 1_000_000
"""``backend="auto"`` uses faiss (when installed) for more references than this."""

_KEEP = 8  # candidates kept per sample in the first pass
_FLOAT64_BELOW = 2**27  # N * M * D at or below which the products are taken in float64
_SUM_BLOCK = 8192  # coordinates summed together in the float64 distance
_SLACK = 2.0**-20  # relative slack on the threshold (covers the last roundings and ties under sqrt)
_BACKENDS = ("auto", "torch", "faiss")
_PRECISIONS = ("auto", "float32", "float64")


class TwoNearest(NamedTuple):
    """Per sample: the two nearest distances ``d1 <= d2`` (float64) and their reference indices (int64)."""

    d1: np.ndarray
    d2: np.ndarray
    index1: np.ndarray
    index2: np.ndarray


def pair_sqdist64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Float64 squared distances between the rows of ``a`` and ``b`` (both (P, D)), pair by pair.

    The plain sum of squared differences, taken in blocks of 8 192 coordinates then over the blocks, so
    that a pair gets the same value however many pairs are evaluated with it. This is the distance
    :func:`two_nearest` returns (square-rooted).
    """
    diff = a.to(torch.float64) - b.to(torch.float64)
    diff.square_()
    d = diff.shape[1]
    if d <= _SUM_BLOCK:
        return diff.sum(1)
    pad = (-d) % _SUM_BLOCK
    if pad:
        diff = torch.nn.functional.pad(diff, (0, pad))
    return diff.view(diff.shape[0], -1, _SUM_BLOCK).sum(2).sum(1)


def _rows(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name} must be a numeric array or tensor of shape (N, ...): {e}") from e
    if t.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.ndim < 2:
        raise ValueError(f"{name} must have shape (N, ...) with one example per row, got {tuple(t.shape)}")
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _device(device: Any, samples: Any, references: Any) -> torch.device:
    if device is None:
        for x in (samples, references):
            if isinstance(x, torch.Tensor):
                return x.device
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available: use device='cpu'")
    return dev


@contextmanager
def _ieee_float32_products():
    """float32 products in IEEE float32 (no TF32, no bf16) for the duration: the error bound assumes it."""
    cuda, mkldnn = torch.backends.cuda.matmul, getattr(torch.backends, "mkldnn", None)
    if hasattr(cuda, "fp32_precision") and hasattr(getattr(mkldnn, "matmul", None), "fp32_precision"):
        old = (cuda.fp32_precision, mkldnn.matmul.fp32_precision)  # type: ignore[union-attr]
        cuda.fp32_precision = mkldnn.matmul.fp32_precision = "ieee"  # type: ignore[union-attr]
        try:
            yield
        finally:
            cuda.fp32_precision, mkldnn.matmul.fp32_precision = old  # type: ignore[union-attr]
        return
    legacy = torch.get_float32_matmul_precision()  # pragma: no cover - torch before the fp32_precision API
    torch.set_float32_matmul_precision("highest")  # pragma: no cover
    try:  # pragma: no cover
        yield
    finally:  # pragma: no cover
        torch.set_float32_matmul_precision(legacy)


class _Plan(NamedTuple):
    dev: torch.device
    work: torch.dtype  # dtype of the products
    center: torch.Tensor  # (D,) float64 on dev
    scale: float  # power of two
    kappa: float
    alpha: float
    rows: int  # samples per block
    cols: int  # references per chunk
    pairs: int  # pairs per float64 re-check chunk
    cache: bool  # keep the prepared samples between reference chunks


def _check_budget(memory_budget: Any) -> int:
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float, np.integer, np.floating)):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    if not math.isfinite(float(memory_budget)) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    return int(memory_budget)


def _summaries(x: torch.Tensor, dev: torch.device, rows: int, name: str) -> tuple[torch.Tensor, ...]:
    """Column sums (float64), minima and maxima of x, read block by block; refuses NaN and inf."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=dev)
    lo = torch.full((x.shape[1],), math.inf, dtype=torch.float64, device=dev)
    hi = torch.full((x.shape[1],), -math.inf, dtype=torch.float64, device=dev)
    for i in range(0, x.shape[0], rows):
        t = x[i : i + rows].to(dev)
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        colsum = t.sum(0, dtype=torch.float64)
        if not torch.isfinite(colsum).all():  # a NaN or an inf anywhere makes its column's sum so
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} contains NaN or inf values: remove or replace them first")
            raise ValueError(f"{name} holds values too large for float64 sums: rescale the data")
        total += colsum
        mn, mx = torch.aminmax(t, dim=0)
        torch.minimum(lo, mn.to(torch.float64), out=lo)
        torch.maximum(hi, mx.to(torch.float64), out=hi)
    return total, lo, hi


def _center_and_scale(
    s: torch.Tensor, r: torch.Tensor, dev: torch.device, budget: int, names: tuple[str, str]
) -> tuple[torch.Tensor, float]:
    """The references' float64 mean c, and the power of two 2^p with max |x - c| 2^p in [0.5, 1)."""
    d = s.shape[1]
    rows = max(1, budget // (3 * 8 * d))
    total, lo, hi = _summaries(r, dev, rows, names[1])
    _, slo, shi = _summaries(s, dev, rows, names[0])
    c = total / r.shape[0]
    big = float(torch.maximum(torch.maximum(hi, shi) - c, c - torch.minimum(lo, slo)).max())
    if big * big * 4 * d >= 2.0**1020:
        raise ValueError(
            f"values up to {big:.3g} away from the references' mean: their squared distances overflow float64; "
            "rescale the data (distances scale with it)"
        )
    if big == 0.0:
        return c, 1.0
    _, e = math.frexp(big)  # big = m 2^e with m in [0.5, 1)
    return c, math.ldexp(1.0, -e)


def _plan(
    s: torch.Tensor,
    r: torch.Tensor,
    dev: torch.device,
    budget: int,
    precision: str,
    max_rows: int,
    norms_twice: bool,
    names: tuple[str, str],
) -> _Plan:
    n, m, d = s.shape[0], r.shape[0], s.shape[1]
    if precision == "auto":
        small = n * m * d <= _FLOAT64_BELOW or (d + 32) * 2.0**-24 > 0.01
        work = torch.float64 if small else torch.float32
    else:
        work = torch.float64 if precision == "float64" or d * 2.0**-24 > 0.1 else torch.float32
    u = 2.0**-53 if work == torch.float64 else 2.0**-24
    center, scale = _center_and_scale(s, r, dev, budget, names)
    kappa = 1.25 * (((2 if norms_twice else 1) * d + 32) * u + 4 * d * 2.0**-53)
    # underflow: in the products (scaled data lies in [-1, 1]) and in the float64 sum (unscaled, hence scale^2)
    tiny = 2.0**-140 if work == torch.float32 else 2.0**-1000
    alpha = (4 * d + 64) * (tiny + 2.0**-1070 * scale * scale)
    rows, cols, pairs, cache = _block_sizes(n, m, d, 4 if work == torch.float32 else 8, budget, max_rows)
    return _Plan(dev, work, center * scale, scale, kappa, alpha, rows, cols, pairs, cache)


def _block_sizes(n: int, m: int, d: int, w: int, budget: int, max_rows: int) -> tuple[int, int, int, bool]:
    """Samples per block, references per chunk, pairs per re-check chunk, and whether to keep the prepared
    samples, such that the working blocks fit in ``budget`` bytes (products of w bytes)."""
    cache = n * d * w <= budget // 4
    pairs = max(1, budget // (4 * 8 * d))
    if cache:
        budget -= n * d * w
    rows = max(1, min(n, max_rows, 4096))

    def cols_for(b: int) -> int:
        return (budget - b * d * (8 + w)) // (2 * b * w + d * (8 + w))

    while rows > 1 and cols_for(rows) < min(m, 1024):
        rows = max(1, rows // 2)
    return rows, int(max(1, min(m, cols_for(rows)))), pairs, cache


def _prepare(x: torch.Tensor, p: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred, scaled rows x' = fl(x 2^p - c 2^p) in the product dtype, and their float64 squared norms.

    float32 work: a float32 (or narrower) x is scaled exactly and centred with one float32 rounding; any
    other x in float64 first (two roundings); either way |x' - (x - c) 2^p| <= 2^-23 |x'| per coordinate.
    """
    t = x.to(p.dev)
    narrow = p.work == torch.float32 and t.dtype in (torch.float32, torch.float16, torch.bfloat16)
    y = torch.mul(t.to(torch.float32 if narrow else torch.float64), p.scale)  # a new tensor: x is never written
    y.sub_(p.center.to(y.dtype) if narrow else p.center)
    if y.dtype != p.work:
        y = y.to(p.work)
    return y, torch.linalg.vector_norm(y, dim=1, dtype=torch.float64).square_()


def _products(xb: torch.Tensor, yc: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """fl(w_j - 2 x'.y'_j): d~^2 less the (row-constant) |x'|^2, up to the bound."""
    g = torch.mm(xb, yc.T)
    return g.mul_(-2.0).add_(w)


def _first_pass_torch(s: torch.Tensor, r: torch.Tensor, p: _Plan, keep: int):
    n, m = s.shape[0], r.shape[0]
    best = torch.full((n, keep), math.inf, dtype=torch.float64, device=p.dev)
    best_idx = torch.zeros((n, keep), dtype=torch.int64, device=p.dev)
    nx_all = torch.empty(n, dtype=torch.float64, device=p.dev)
    ny_all = torch.empty(m, dtype=torch.float64, device=p.dev)
    cached: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for j0 in range(0, m, p.cols):
        yc, ny = _prepare(r[j0 : j0 + p.cols], p)
        ny_all[j0 : j0 + yc.shape[0]] = ny
        w = (ny - (p.kappa * ny + p.alpha / 2)).to(p.work)
        kb = min(keep, yc.shape[0])
        for i0 in range(0, n, p.rows):
            if i0 in cached:
                xb, nx = cached[i0]
            else:
                xb, nx = _prepare(s[i0 : i0 + p.rows], p)
                nx_all[i0 : i0 + xb.shape[0]] = nx
                if p.cache:
                    cached[i0] = (xb, nx)
            g = _products(xb, yc, w)
            v, j = torch.topk(g, kb, dim=1, largest=False, sorted=False)
            del g
            v = v.to(torch.float64) + (nx - (p.kappa * nx + p.alpha / 2))[:, None]
            sl = slice(i0, i0 + xb.shape[0])
            allv = torch.cat([best[sl], v], 1)
            alli = torch.cat([best_idx[sl], j + j0], 1)
            bv, pos = torch.topk(allv, keep, dim=1, largest=False, sorted=True)
            best[sl] = bv
            best_idx[sl] = torch.gather(alli, 1, pos)
    return best, best_idx, nx_all, ny_all


def _first_pass_faiss(s: torch.Tensor, r: torch.Tensor, p: _Plan, keep: int, faiss: Any):
    n, m, d = s.shape[0], r.shape[0], s.shape[1]
    cpu = p._replace(dev=torch.device("cpu"), center=p.center.cpu())
    index = faiss.IndexFlatL2(d)
    ny_all = torch.empty(m, dtype=torch.float64)
    for j0 in range(0, m, p.cols):
        yc, ny = _prepare(r[j0 : j0 + p.cols], cpu)
        ny_all[j0 : j0 + yc.shape[0]] = ny
        index.add(np.ascontiguousarray(yc.numpy()))
    ey_all = p.kappa * ny_all + p.alpha / 2
    best = torch.empty((n, keep), dtype=torch.float64)
    best_idx = torch.empty((n, keep), dtype=torch.int64)
    nx_all = torch.empty(n, dtype=torch.float64)
    for i0 in range(0, n, p.rows):
        xb, nx = _prepare(s[i0 : i0 + p.rows], cpu)
        dist, idx = index.search(np.ascontiguousarray(xb.numpy()), keep)
        it = torch.from_numpy(idx.astype(np.int64))
        if (it < 0).any():  # pragma: no cover - faiss returns -1 only past ntotal
            raise RuntimeError("faiss returned fewer neighbours than asked")
        low = torch.from_numpy(dist).to(torch.float64) - (p.kappa * nx + p.alpha / 2)[:, None] - ey_all[it]
        low, order = torch.sort(low, dim=1)
        sl = slice(i0, i0 + xb.shape[0])
        best[sl], best_idx[sl], nx_all[sl] = low, torch.gather(it, 1, order), nx
    return best.to(p.dev), best_idx.to(p.dev), nx_all.to(p.dev), ny_all.to(p.dev)


class _BestTwo:
    """Running two best (distance, index) per row, merged from (row, index, distance) candidate pairs."""

    def __init__(self, n: int, m: int, dev: torch.device) -> None:
        self.d = torch.full((n, 2), math.inf, dtype=torch.float64, device=dev)
        self.i = torch.tensor([m, m + 1], dtype=torch.int64, device=dev).repeat(n, 1)  # sentinels past any index

    def merge(self, rows: torch.Tensor, idx: torch.Tensor, dist: torch.Tensor) -> None:
        if rows.numel() == 0:
            return
        touched = torch.unique(rows)
        pos = torch.searchsorted(touched, rows)
        k = touched.numel()
        r = torch.cat([pos, torch.arange(k, device=rows.device).repeat_interleave(2)])
        i = torch.cat([idx, self.i[touched].reshape(-1)])
        d = torch.cat([dist, self.d[touched].reshape(-1)])
        o = torch.argsort(i, stable=True)  # lexicographic (row, distance, index) by three stable sorts
        o = o[torch.argsort(d[o], stable=True)]
        o = o[torch.argsort(r[o], stable=True)]
        start = torch.searchsorted(r[o], torch.arange(k, device=rows.device))
        first, second = o[start], o[start + 1]
        self.d[touched] = torch.stack([d[first], d[second]], 1)
        self.i[touched] = torch.stack([i[first], i[second]], 1)


def _recheck(s: torch.Tensor, r: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor, p: _Plan, out: _BestTwo):
    """Float64 distances of the candidate pairs (rows into s, idx into r), merged into ``out``."""
    for a in range(0, rows.numel(), p.pairs):
        ra, ia = rows[a : a + p.pairs], idx[a : a + p.pairs]
        xs = s[ra.to(s.device)].to(p.dev)
        ys = r[ia.to(r.device)].to(p.dev)
        out.merge(ra, ia, pair_sqdist64(xs, ys).sqrt_())


def _full_pass(s, r, p: _Plan, who: torch.Tensor, limit: torch.Tensor, ny_all: torch.Tensor, out: _BestTwo):
    """Every reference with d~^2 - e <= limit for the samples ``who``, re-checked in float64."""
    m = r.shape[0]
    for j0 in range(0, m, p.cols):
        yc, _ = _prepare(r[j0 : j0 + p.cols], p)
        ny = ny_all[j0 : j0 + yc.shape[0]]
        w = (ny - (p.kappa * ny + p.alpha / 2)).to(p.work)
        for a in range(0, who.numel(), p.rows):
            rows = who[a : a + p.rows]
            xb, nx = _prepare(s[rows.to(s.device)], p)
            g = _products(xb, yc, w)
            thr = (limit[a : a + p.rows] - nx + (p.kappa * nx + p.alpha / 2)).to(p.work)
            thr = torch.nextafter(thr, torch.full_like(thr, math.inf))
            ri, ci = (g <= thr[:, None]).nonzero(as_tuple=True)
            del g
            _recheck(s, r, rows[ri], ci + j0, p, out)


def two_nearest(
    samples: Any,
    references: Any,
    *,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    device: Any = None,
    backend: str = "auto",
    precision: str = "auto",
    max_block: int | None = None,
    names: tuple[str, str] = ("samples", "references"),
) -> TwoNearest:
    """The exact two nearest references (L2) of every sample, in bounded memory.

    Equal to a float64 brute force: ``d = sqrt(sum((x - y)^2))`` over all references, sorted by
    (distance, index). See the module's documentation for the method and the error bound.

    Parameters
    ----------
    samples : torch.Tensor or numpy.ndarray, shape (N, ...)
        The query rows (any trailing shape; flattened), N >= 1.
    references : torch.Tensor or numpy.ndarray, shape (M, ...)
        The rows searched, same trailing size, M >= 2.
    memory_budget : float
        Bytes of working blocks held at once (default 256 MiB); the result does not depend on it.
    device : str or torch.device, optional
        Where to compute; default the samples' device (a tensor's), else the references', else the CPU.
    backend : {"auto", "torch", "faiss"}
        Candidate search: torch on ``device``, or a faiss exact flat index on the CPU (``pip install
        "diffmem[faiss]"``); "auto" picks faiss for more than :data:`FAISS_THRESHOLD` references when it
        is installed. The float64 re-check is the same, so is the answer.
    precision : {"auto", "float32", "float64"}
        Dtype of the products that pick the candidates (never of the distances returned); "auto" is
        float64 when N M D <= 2^27 or D > 167 000, float32 otherwise.
    max_block : int, optional
        At most this many samples per block.
    names : (str, str)
        What the two sets are called in error messages.

    Returns
    -------
    TwoNearest
        ``d1``, ``d2`` (N,) float64 with d1 <= d2, ``index1``, ``index2`` (N,) int64 reference indices;
        ties go to the lower index.

    Examples
    --------
    >>> import torch
    >>> refs = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    >>> r = two_nearest(torch.tensor([[0.0, 0.0], [3.0, 3.0]]), refs)
    >>> r.d1.tolist(), r.d2.tolist(), r.index1.tolist(), r.index2.tolist()
    ([0.0, 1.0], [0.0, 4.242640687119285], [0, 1], [2, 0])
    """
    budget = _check_budget(memory_budget)
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    if max_block is not None and (isinstance(max_block, bool) or not isinstance(max_block, int) or max_block < 1):
        raise ValueError(f"max_block must be a positive number of samples, got {max_block!r}")
    sn, rn = names
    s, r = _rows(samples, sn), _rows(references, rn)
    if s.shape[1] != r.shape[1]:
        raise ValueError(f"{sn} have dimension {s.shape[1]} but {rn} {r.shape[1]}; compare them in the same space")
    if r.shape[0] < 2:
        raise ValueError(f"need at least 2 rows of {rn} for the two nearest, got {r.shape[0]}")
    if s.shape[0] == 0:
        raise ValueError(f"{sn} is empty: pass at least one row")
    if s.shape[1] == 0:
        raise ValueError(f"{sn} and {rn} have no coordinates (dimension 0)")
    dev = _device(device, samples, references)
    faiss = _faiss(backend, r.shape[0], dev)
    n, m = s.shape[0], r.shape[0]
    keep = min(_KEEP, m)
    with torch.no_grad(), _ieee_float32_products():
        prec = "float32" if faiss is not None else precision
        p = _plan(s, r, dev, budget, prec, max_block or n, faiss is not None, names)
        if faiss is not None:
            low, cand, nx, ny = _first_pass_faiss(s, r, p, keep, faiss)
        else:
            low, cand, nx, ny = _first_pass_torch(s, r, p, keep)
        # a bound on each sample's second-nearest squared distance (scaled): 2nd smallest upper bound
        up = low + 2 * ((p.kappa * nx + p.alpha / 2)[:, None] + (p.kappa * ny + p.alpha / 2)[cand])
        limit = torch.sort(up, dim=1).values[:, 1]
        limit = limit + limit.abs() * _SLACK
        inside = low <= limit[:, None]
        overflow = inside[:, -1] if keep < m else torch.zeros(n, dtype=torch.bool, device=dev)
        out = _BestTwo(n, m, dev)
        ok = inside & ~overflow[:, None]
        rows, col = ok.nonzero(as_tuple=True)
        _recheck(s, r, rows, cand[rows, col], p, out)
        who = overflow.nonzero(as_tuple=True)[0]
        if who.numel():
            _full_pass(s, r, p, who, limit[who], ny, out)
    if bool((out.i >= m).any()):  # pragma: no cover - the bound guarantees two candidates per sample
        raise RuntimeError("internal error: a sample was left with fewer than two candidates")
    d, i = out.d.cpu().numpy(), out.i.cpu().numpy()
    return TwoNearest(d[:, 0].copy(), d[:, 1].copy(), i[:, 0].copy(), i[:, 1].copy())


def _faiss(backend: str, m: int, dev: torch.device):
    """The faiss module when the candidates come from faiss, else None (imported only then)."""
    if backend == "torch" or (backend == "auto" and (m <= FAISS_THRESHOLD or dev.type != "cpu")):
        return None
    try:
        import faiss
    except ImportError as e:
        if backend == "auto":
            return None
        raise ImportError(
            f'backend="faiss" needs faiss ({e}); install it with `pip install "diffmem[faiss]"` '
            '(or `pip install faiss-cpu`), or use backend="torch"'
        ) from e
    return faiss
