"""Small statistics over seeds: IQM, bootstrap and t confidence intervals, interpolation.

Everything here is plain NumPy so that it can be unit-tested with hand numbers.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

# Two-sided 95% Student-t critical values for df = 1..30 (beyond 30 the normal 1.96 is close).
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def iqm(values, axis: int = 0) -> np.ndarray | float:
    """Interquartile mean: the mean after dropping floor(n/4) values from each end (scipy's
    ``trim_mean(x, 0.25)``, as rliable does). For n < 4 nothing is dropped (it is the mean)."""
    x = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    if n == 0:
        return float("nan")
    cut = n // 4
    kept = np.take(x, np.arange(cut, n - cut), axis=axis)
    out = kept.mean(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def aggregate(values, how: str = "mean", axis: int = 0):
    """``mean``, ``median`` or ``iqm`` along ``axis``."""
    if how == "mean":
        return np.mean(values, axis=axis)
    if how == "median":
        return np.median(values, axis=axis)
    if how == "iqm":
        return iqm(values, axis=axis)
    raise ValueError(f"unknown aggregate {how!r}")


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean (only 95% is tabulated). One value gives (x, x)."""
    if confidence != 0.95:
        raise ValueError("only the 95% t-interval is tabulated")
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    m = float(x.mean())
    if n < 2:
        return m, m
    crit = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    half = crit * float(x.std(ddof=1)) / math.sqrt(n)
    return m - half, m + half


def bootstrap_ci(samples, stat: str | Callable = "mean", confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``stat`` over the seeds (axis 0) of ``samples``.

    ``samples`` is [n_seeds] or [n_seeds, n_points]; the same resampled seed sets are used for
    every point, so a band is consistent along a curve. With one seed the band is that value.
    """
    x = np.asarray(samples, dtype=np.float64)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[:, None]
    n = x.shape[0]
    fn = (lambda a, axis: aggregate(a, stat, axis)) if isinstance(stat, str) else stat
    if n < 2:
        lo = hi = x[0] if n == 1 else np.full(x.shape[1], np.nan)
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(resamples, n))
        stats = np.asarray(fn(x[idx], axis=1))  # [resamples, n_points]
        alpha = (1.0 - confidence) / 2.0
        lo, hi = np.quantile(stats, [alpha, 1.0 - alpha], axis=0)
    if squeeze:
        return float(lo[0]), float(hi[0])
    return lo, hi


def interpolate(xs, ys, grid) -> np.ndarray:
    """Linear interpolation of one curve onto ``grid``; NaN outside the curve's own x range
    (a run is never extrapolated past its last test)."""
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    out = np.full(grid.shape, np.nan)
    if xs.size == 0:
        return out
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    inside = (grid >= xs[0]) & (grid <= xs[-1])
    out[inside] = np.interp(grid[inside], xs, ys)
    return out
