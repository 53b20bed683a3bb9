"""Learning curves of a study: one subplot per env, one line per algorithm (plus the config keys
that tell its runs apart), the mean or median over seeds with a 95% percentile-bootstrap band.

Runs test at slightly different t_env, so every run is interpolated linearly onto a common grid
per env (the union of the test steps, or 200 even points when that is larger); a run is never
extrapolated past its last test, so a point aggregates the seeds that reached it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qmix.errors import QmixError, missing_package
from qmix.study.report import Run, default_metric, group_runs, load_runs
from qmix.study.stats import aggregate, bootstrap_ci, interpolate

MAX_POINTS = 200
_NAMES = {"test/win_rate": "test win rate", "test/return_mean": "test return (mean)",
          "test/ep_length_mean": "test episode length"}


def _grid(runs: list[Run], metric: str) -> np.ndarray:
    xs = [r.curve(metric)[0] for r in runs]
    xs = [x for x in xs if x.size]
    if not xs:
        return np.zeros(0)
    union = np.unique(np.concatenate(xs))
    if union.size <= MAX_POINTS:
        return union
    return np.linspace(union[0], union[-1], MAX_POINTS)


def curve_stats(runs: list[Run], metric: str, grid: np.ndarray, agg: str = "mean", seed: int = 0) -> dict:
    """Aggregate (``mean``/``median``) and 95% bootstrap band of ``runs`` on ``grid``.

    Returns x, y, lo, hi (NaN where no run covers a point) and n (seeds covering each point).
    """
    ys = np.stack([interpolate(*r.curve(metric), grid) for r in runs])  # [runs, points]
    covered = ~np.isnan(ys)
    n = covered.sum(0)
    y, lo, hi = (np.full(grid.shape, np.nan) for _ in range(3))
    # Points covered by the same set of runs share one bootstrap (usually one or two sets in all).
    patterns: dict[bytes, list[int]] = {}
    for j in range(grid.size):
        if n[j]:
            patterns.setdefault(covered[:, j].tobytes(), []).append(j)
    for key, cols in patterns.items():
        rows = np.frombuffer(key, dtype=bool)
        block = ys[np.ix_(rows, cols)]
        y[cols] = aggregate(block, agg, axis=0)
        lo[cols], hi[cols] = bootstrap_ci(block, agg, seed=seed)
    return {"x": grid, "y": y, "lo": lo, "hi": hi, "n": n}


def _steps_formatter(value, _pos=None) -> str:
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:g}M"
    if a >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def plot_runs(paths, metric: str | None = None, out: str | None = None, agg: str = "mean", title: str | None = None,
              info: dict | None = None):
    """Draw the curves for the runs under ``paths`` (study or run directories); save to ``out``
    (.png, .svg or .pdf) when given. Returns the matplotlib Figure (one Axes per env; one Line2D
    per line, labelled; the bands are PolyCollections)."""
    if agg not in ("mean", "median"):
        raise QmixError(f"--agg must be mean or median; got {agg!r}.")
    if out is not None and Path(out).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise QmixError(f"--out must end in .png, .svg or .pdf; got {out}.")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise missing_package("matplotlib", "sweep", "plotting") from None

    runs = load_runs(paths)
    metric = metric or default_metric(runs)
    groups = group_runs(runs)
    groups = {env: {lab: rs for lab, rs in by.items() if any(r.curve(metric)[1].size for r in rs)}
              for env, by in groups.items()}
    groups = {env: by for env, by in groups.items() if by}
    if not groups:
        raise QmixError(f"no run logged {metric!r} in a test event; try --metric test/return_mean.")

    labels = list(dict.fromkeys(lab for by in groups.values() for lab in by))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    colors = {lab: palette[i % len(palette)] for i, lab in enumerate(labels)}
    styles = {lab: ("-", "--", "-.", ":")[i % 4] for i, lab in enumerate(labels)}  # overlapping lines stay visible
    n_env = len(groups)
    ncols = min(3, n_env)
    nrows = -(-n_env // ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    n_lines = 0
    for ax, (env, by_label) in zip(axes, groups.items()):
        grid = _grid([r for rs in by_label.values() for r in rs], metric)
        seeds = []
        for lab, rs in by_label.items():
            rs = [r for r in rs if r.curve(metric)[1].size]
            s = curve_stats(rs, metric, grid, agg)
            ax.plot(s["x"], s["y"], color=colors[lab], linestyle=styles[lab], label=lab, linewidth=1.8)
            ax.fill_between(s["x"], s["lo"], s["hi"], color=colors[lab], alpha=0.2, linewidth=0)
            seeds.append(len(rs))
            n_lines += 1
        lo, hi = min(seeds), max(seeds)
        ax.set_title(f"{env}  ({lo if lo == hi else f'{lo}-{hi}'} seed{'s' if hi > 1 else ''} per line)")
        ax.set_xlabel("environment steps (t_env)")
        ax.set_ylabel(_NAMES.get(metric, metric))
        ax.xaxis.set_major_formatter(FuncFormatter(_steps_formatter))
        if metric.endswith("win_rate"):
            ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small", frameon=False)
    for ax in axes[n_env:]:
        ax.set_visible(False)
    fig.suptitle(title or f"{_NAMES.get(metric, metric)}: {agg} over seeds, shaded 95% bootstrap CI")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=150)
    if info is not None:
        info.update({"metric": metric, "lines": n_lines, "envs": n_env, "runs": len(runs)})
    return fig
