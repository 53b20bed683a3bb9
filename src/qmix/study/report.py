"""Result tables of a study (or any run directories): final and best test metrics per env and
algorithm, over seeds: mean +- std, median, IQM, number of seeds, steps, wall time."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from qmix.errors import QmixError
from qmix.study.stats import iqm

# Config keys that never tell two lines apart (bookkeeping, budget, the seed itself).
_NOT_DISTINGUISHING = {"seed", "alg", "env", "progress", "use_tensorboard", "device", "buffer_device", "torch_threads",
                       "native_kernels", "checkpoint_interval", "checkpoint_keep", "checkpoint_buffer", "log_interval",
                       "t_max", "compile", "test_num_envs"}


@dataclass
class Run:
    dir: Path
    config: dict
    summary: dict | None
    tests: list[dict]  # the test events of metrics.jsonl, in order
    last: dict = field(default_factory=dict)  # the last event of any kind
    label: str = ""

    @property
    def env(self) -> str:
        return str(self.config.get("env", "?"))

    @property
    def alg(self) -> str:
        return str(self.config.get("alg", "?"))

    @property
    def finished(self) -> bool:
        return bool(self.summary and self.summary.get("finished"))

    @property
    def t_env(self) -> int:
        if self.summary and "t_env" in self.summary:
            return int(self.summary["t_env"])
        return int(self.last.get("t_env", 0))

    @property
    def wall_time_s(self) -> float:
        if self.summary and self.summary.get("wall_time_s") is not None:
            return float(self.summary["wall_time_s"])
        return float(self.last.get("time_s", 0.0))

    def curve(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        pts = [(r["t_env"], r[metric]) for r in self.tests if isinstance(r.get(metric), (int, float))]
        if not pts:
            return np.zeros(0), np.zeros(0)
        xs, ys = zip(*pts)
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def _read_run(d: Path) -> Run | None:
    try:
        config = yaml.safe_load((d / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    tests, last = [], {}
    try:
        with open(d / "metrics.jsonl") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written right now
                if not isinstance(rec, dict) or "t_env" not in rec:
                    continue
                last = rec
                if any(k.startswith("test/") for k in rec):
                    tests.append(rec)
    except OSError:
        return None
    try:
        summary = json.loads((d / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        summary = None
    return Run(d, config, summary, tests, last)


def _run_dirs(path: Path) -> list[Path]:
    if (path / "metrics.jsonl").is_file() and (path / "config.yaml").is_file():
        return [path]
    trials = path / "trials.json"
    if trials.is_file():  # a study: its trials in grid order
        try:
            ids = [t["id"] for t in json.loads(trials.read_text())["trials"]]
            dirs = [path / "runs" / i for i in ids]
            return [d for d in dirs if (d / "metrics.jsonl").is_file()]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            pass
    return sorted(p.parent for p in path.rglob("metrics.jsonl") if (p.parent / "config.yaml").is_file())


def _flat(config: dict) -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                out[f"{k}.{k2}"] = v2
        else:
            out[k] = v
    return out


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def label_runs(runs: list[Run]) -> None:
    """Label = algorithm plus the config keys that differ between runs of that algorithm on that env."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.env, r.alg), []).append(r)
    for (_env, alg), group in groups.items():
        flats = [_flat(r.config) for r in group]
        keys = sorted({k for f in flats for k in f} - _NOT_DISTINGUISHING)
        varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
        for r, f in zip(group, flats):
            extra = ",".join(f"{k}={_fmt_value(f.get(k))}" for k in varying)
            r.label = f"{alg} {extra}".strip()


def load_runs(paths) -> list[Run]:
    """Every run under the given study directories or run directories (each run once), labelled."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    runs, seen = [], set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise QmixError(f"{p} does not exist.")
        for d in _run_dirs(p):
            key = d.resolve()
            if key in seen:
                continue
            seen.add(key)
            r = _read_run(d)
            if r is not None:
                runs.append(r)
    if not runs:
        raise QmixError(f"no runs (directories with config.yaml and metrics.jsonl) found in {', '.join(map(str, paths))}.")
    label_runs(runs)
    return runs


def default_metric(runs: list[Run]) -> str:
    if any("test/win_rate" in t for r in runs for t in r.tests):
        return "test/win_rate"
    return "test/return_mean"


def group_runs(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """env -> label -> runs, in order of first appearance."""
    out: dict[str, dict[str, list[Run]]] = {}
    for r in runs:
        out.setdefault(r.env, {}).setdefault(r.label, []).append(r)
    return out


def _describe(values: np.ndarray) -> dict:
    n = values.size
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if n > 1 else 0.0,
            "median": float(np.median(values)), "iqm": float(iqm(values))}


def table_rows(runs: list[Run], metrics: list[str] | None = None) -> list[dict]:
    """One row per (env, label, metric) that at least one run logged."""
    if not metrics:
        metrics = ["test/win_rate", "test/return_mean"] if default_metric(runs) == "test/win_rate" else ["test/return_mean"]
    rows = []
    for env, by_label in group_runs(runs).items():
        for label, group in by_label.items():
            for metric in metrics:
                finals, bests, used = [], [], []
                for r in group:
                    _, ys = r.curve(metric)
                    if ys.size:
                        finals.append(ys[-1])
                        bests.append(ys.max())
                        used.append(r)
                if not used:
                    continue
                final, best = _describe(np.asarray(finals)), _describe(np.asarray(bests))
                rows.append({
                    "env": env, "algorithm": label, "metric": metric, "n_seeds": len(used),
                    "n_finished": sum(r.finished for r in used),
                    "steps": int(round(float(np.mean([r.t_env for r in used])))),
                    "wall_time_s": round(float(np.mean([r.wall_time_s for r in used])), 1),
                    **{f"final_{k}": v for k, v in final.items()}, **{f"best_{k}": v for k, v in best.items()},
                })
    if not rows:
        raise QmixError(f"no run logged {' or '.join(metrics)} in a test event.")
    return rows


CSV_COLUMNS = ["env", "algorithm", "metric", "n_seeds", "n_finished", "steps", "wall_time_s",
               "final_mean", "final_std", "final_median", "final_iqm", "best_mean", "best_std", "best_median", "best_iqm"]


def _num(metric: str, v: float) -> str:
    return f"{v:.3f}" if "rate" in metric else f"{v:.2f}"


def _steps(v: int) -> str:
    if v >= 1_000_000:
        return f"{v / 1e6:.2f}M"
    if v >= 10_000:
        return f"{v / 1e3:.0f}k"
    return f"{v:,}"


def _wall(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.0f} s"


def _display_rows(rows: list[dict], pm: str) -> tuple[list[str], list[list[str]]]:
    header = ["env", "algorithm", "metric", "seeds", "steps", "wall time", f"final (mean {pm.strip()} std)",
              "final median", "final IQM", f"best (mean {pm.strip()} std)", "best median", "best IQM"]
    out = []
    for r in rows:
        m = r["metric"]
        seeds = str(r["n_seeds"]) if r["n_finished"] == r["n_seeds"] else f"{r['n_seeds']} ({r['n_seeds'] - r['n_finished']} unfinished)"
        out.append([r["env"], r["algorithm"], m.removeprefix("test/"), seeds, _steps(r["steps"]), _wall(r["wall_time_s"]),
                    f"{_num(m, r['final_mean'])}{pm}{_num(m, r['final_std'])}", _num(m, r["final_median"]),
                    _num(m, r["final_iqm"]), f"{_num(m, r['best_mean'])}{pm}{_num(m, r['best_std'])}",
                    _num(m, r["best_median"]), _num(m, r["best_iqm"])])
    return header, out


def format_rows(rows: list[dict], fmt: str = "md") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in CSV_COLUMNS})
        return buf.getvalue()
    if fmt == "md":
        header, body = _display_rows(rows, " ± ")
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        header, body = _display_rows(rows, " $\\pm$ ")

        def esc(s: str) -> str:
            for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#")):
                if "$\\pm$" in s and a == "\\":
                    continue
                s = s.replace(a, b)
            return s

        lines = ["\\begin{tabular}{lll" + "r" * (len(header) - 3) + "}", "\\toprule",
                 " & ".join(esc(h) for h in header) + " \\\\", "\\midrule"]
        lines += [" & ".join(esc(c) for c in row) + " \\\\" for row in body]
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise QmixError(f"unknown report format {fmt!r}; use md, csv or latex.")


def report(paths, fmt: str = "md", metrics: list[str] | None = None) -> str:
    """The table as text (``md``, ``csv`` or ``latex``) for the runs under ``paths``."""
    return format_rows(table_rows(load_runs(paths), metrics), fmt)
