"""Learning equivalence: the fast Learner and the plain pymarl-style PlainLearner, seed for seed;
or (``--compare acting``) acting in NumPy and acting in torch.

    python benchmarks/equivalence.py [--tasks matrix:two-step micro:3m] [--seeds N] [--t-max N] [--out DIR]
    python benchmarks/equivalence.py --compare acting --tasks micro:3m [--seeds N] [--out DIR]
    python benchmarks/equivalence.py --report-only [--compare acting] [--out DIR]

``--compare acting`` runs each task with one environment (``num_envs=1``), where a few agents act
through :meth:`qmix.modules.agents.AgentNetwork.step_arrays` (NumPy, the default) against the same
step in torch (``NUMPY_WORK = 0``); the learner is the same.

Each task trains QMIX with the same config and seeds on both paths; a seed fixes the env streams,
exploration, replay sampling and the initial weights, so the only difference between the two runs
of a seed is how the update is computed (:class:`qmix.learner.Learner`, packed and fused, against
:class:`qmix.bench.reference.PlainLearner`, padded and stepped; same loss up to float rounding).
The runs still drift apart, as training amplifies float rounding differences (a 1-ulp change of
one initial weight does the same), so their learning curves are compared as samples: per path
the final value and the area under the curve (divided by the steps it spans: the curve's
time-average) of the test return, test win rate and training return, and the wall and learner
time, mean ± std over seeds, and Welch's t-test of the difference of the areas.

Runs go to ``DIR/<task>/<path>/seed<k>`` (metrics.jsonl, summary.json, equivalence.json); an
existing run directory is never overwritten. ``--report-only`` prints the tables from ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import yaml

from qmix.bench.reference import PlainLearner
from qmix.config import resolve
from qmix.errors import QmixError
from qmix.learner import Learner
from qmix.modules import agents
from qmix.trainer import Trainer, prepare_new_run, run_training

# comparison -> its two paths (the default first)
COMPARISONS = {"learner": ("fast", "plain"), "acting": ("numpy", "torch")}
LEARNERS = {"fast": Learner, "plain": PlainLearner}
# Learning in this process (the learner compared is swapped in here).
COMMON = {"alg": "qmix", "progress": False, "use_tensorboard": False, "torch_threads": 1,
          "checkpoint_interval": 0, "checkpoint_buffer": False, "learner_process": "off"}
EXTRA = {"learner": {}, "acting": {"num_envs": 1}}  # per comparison, on top of the task's overrides
# task -> (default seeds, overrides of the env preset)
TASKS = {
    "matrix:two-step": (5, {}),
    "micro:3m": (3, {"t_max": 50_000, "test_interval": 5_000, "test_episodes": 16, "log_interval": 5_000}),
}


def task_dir(out: Path, task: str) -> Path:
    return out / task.replace(":", "_").replace("/", "_")


def train_one(cfg, run_dir: Path, path: str) -> dict:
    """Train one run on ``path``: its learner swapped in before training starts, or its acting."""
    trainer = Trainer(cfg, run_dir)
    if path in LEARNERS:
        old = trainer.learner  # fresh: its targets are copies of the initial weights, no update yet
        trainer.learner = LEARNERS[path](cfg, old.agent, old.mixer, old.n_actions)
    prepare_new_run(cfg, run_dir)
    work = agents.NUMPY_WORK
    agents.NUMPY_WORK = 0 if path == "torch" else work
    try:
        summary = run_training(cfg, run_dir, trainer=trainer)
    finally:
        agents.NUMPY_WORK = work
    timing = trainer.runner.timing
    extra = {"task": cfg.env, "path": path, "seed": cfg.seed, "wall_time_s": summary["wall_time_s"],
             "learn_s": round(timing["learn"], 2), "updates": summary["updates"]}
    (run_dir / "equivalence.json").write_text(json.dumps(extra, indent=2) + "\n")
    return extra


def run_tasks(out: Path, tasks: list[str], seeds: int | None, t_max: int | None, compare: str) -> None:
    plans = []
    for task in tasks:
        n_seeds, overrides = TASKS[task]
        for seed in range(seeds or n_seeds):
            for path in COMPARISONS[compare]:  # interleaved, so that drifting machine load hits both alike
                cfg = resolve({**COMMON, "env": task, "seed": seed, **overrides, **EXTRA[compare],
                               **({"t_max": t_max} if t_max is not None else {})})
                plans.append((cfg, task_dir(out, task) / path / f"seed{seed}", path))
    for _, run_dir, _ in plans:
        if run_dir.exists():
            sys.exit(f"equivalence: {run_dir} already exists; choose another --out, or add --report-only to read it.")
    for cfg, run_dir, path in plans:
        extra = train_one(cfg, run_dir, path)
        print(f"{cfg.env} {path} seed {cfg.seed}: {extra['wall_time_s']:.1f} s "
              f"({extra['learn_s']:.1f} s in {extra['updates']} updates)", flush=True)


def load_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def curve(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, values) of the events that logged ``key``."""
    points = [(r["t_env"], r[key]) for r in records if key in r]
    return np.array([t for t, _ in points], dtype=float), np.array([y for _, y in points], dtype=float)


def area(records: list[dict], key: str) -> float:
    """Area under the curve of ``key`` over env steps, divided by the steps it spans."""
    t, y = curve(records, key)
    if len(t) < 2:
        return float(y[-1])
    return float(np.sum((y[1:] + y[:-1]) * np.diff(t)) / 2 / (t[-1] - t[0]))


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) (continued fraction, Numerical Recipes 6.4)."""
    if x <= 0.0 or x >= 1.0:
        return float(x >= 1.0)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * f / a


def welch(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """Welch's t-test of ``mean(b) - mean(a)``: (difference, t, degrees of freedom, two-sided p)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(b.mean() - a.mean())
    if min(len(a), len(b)) < 2:
        return diff, math.nan, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:  # both samples constant: identical (p = 1) or certainly different (p = 0)
        return diff, math.nan, math.nan, float(diff == 0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return diff, t, df, betainc(df / 2, 0.5, df / (df + t * t))


def pm(values: list[float], fmt: str = ".2f") -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"


# curves compared: metric key -> name in the tables
METRICS = {"test/return_mean": "test return", "test/win_rate": "test win rate",
           "train/return_mean": "train return"}


def report(out: Path, tasks: list[str], compare: str) -> None:
    paths = COMPARISONS[compare]
    for task in tasks:
        root = task_dir(out, task)
        runs = {path: [(json.loads((d / "equivalence.json").read_text()), load_metrics(d))
                       for d in sorted(root.glob(f"{path}/seed*/"), key=lambda d: int(d.name[4:]))
                       if (d / "equivalence.json").is_file()]
                for path in paths}
        done = [path for path in paths if runs[path]]
        if not done:
            print(f"## {task}\n\nno finished runs under {root}\n")
            continue
        first, records = runs[done[0]][0]
        cfg = yaml.safe_load((root / done[0] / f"seed{first['seed']}" / "config.yaml").read_text())
        keys = [k for k in METRICS if any(k in r for r in records)]
        print(f"## {task}\n\nt_max {cfg['t_max']:,}; greedy test of {cfg['test_episodes']} episodes every "
              f"{cfg['test_interval']:,} env steps; train return = mean over the ε-greedy episodes of each "
              f"{cfg['log_interval']:,}-step log window; final = last point; area = area under the curve "
              f"divided by the steps it spans; mean ± std over seeds\n")
        head = ["path", "seeds"] + [f"{w} {METRICS[k]}" for k in keys for w in ("final", "area")] \
            + ["wall time / run (s)", "learner time / run (s)"]
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for path in done:
            cells = [path, ", ".join(str(e["seed"]) for e, _ in runs[path])]
            for k in keys:
                cells += [pm([curve(m, k)[1][-1] for _, m in runs[path]]), pm([area(m, k) for _, m in runs[path]])]
            cells += [pm([e["wall_time_s"] for e, _ in runs[path]], ".1f"),
                      pm([e["learn_s"] for e, _ in runs[path]], ".1f")]
            print("| " + " | ".join(cells) + " |")
        print()
        if len(done) == len(paths):
            a, b = paths
            for k in keys:
                diff, t, df, p = welch([area(m, k) for _, m in runs[a]], [area(m, k) for _, m in runs[b]])
                print(f"- area under the {METRICS[k]} curve, {b} − {a}: {diff:+.3f} "
                      f"(Welch t = {t:.2f}, df = {df:.1f}, two-sided p = {p:.3f})")
            print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--seeds", type=int, default=None, help="seeds per task (default: 5 matrix, 3 micro)")
    parser.add_argument("--t-max", type=int, default=None, help="env steps per run (default: per task)")
    parser.add_argument("--out", type=Path, default=Path("results/equivalence"))
    parser.add_argument("--report-only", action="store_true", help="only print the tables of the runs in --out")
    parser.add_argument("--compare", choices=list(COMPARISONS), default="learner",
                        help="learner: fast vs plain update; acting: NumPy vs torch acting step, one env")
    args = parser.parse_args()
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if not args.report_only:
        try:
            run_tasks(args.out, args.tasks, args.seeds, args.t_max, args.compare)
        except QmixError as e:
            sys.exit(f"equivalence: {e}")
    report(args.out, args.tasks, args.compare)


if __name__ == "__main__":
    main()
