"""Environment steps and wall time until each run's greedy test win rate first reached a threshold.

    python benchmarks/time_to_win.py STUDY_OR_RUN_DIRS... [--threshold 0.95]

Reads metrics.jsonl (test events) of every run directory found; prints one row per run: env,
algorithm, seed, best test win rate, the first test step at or above the threshold and the
training wall time (time_s) at that test, and the final test win rate.
"""

import argparse
import json
from pathlib import Path

import yaml


def runs(paths):
    for p in map(Path, paths):
        if (p / "metrics.jsonl").is_file():
            yield p
        else:
            yield from sorted(q.parent for q in p.rglob("metrics.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args()
    print(f"| env | alg | seed | best test win | first >= {args.threshold:.0%} at step | wall time then | "
          f"last test (step) |")
    print("|---|---|---|---|---|---|---|")
    for run in runs(args.paths):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        tests = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                 if "test/win_rate" in r]
        if not tests:
            continue
        best = max(r["test/win_rate"] for r in tests)
        hit = next((r for r in tests if r["test/win_rate"] >= args.threshold), None)
        reach = f"{hit['t_env']:,}" if hit else "not reached"
        wall = f"{hit['time_s']:.0f} s" if hit else "-"
        last = tests[-1]
        print(f"| {cfg['env']} | {cfg['alg']} | {cfg['seed']} | {best:.0%} | {reach} | {wall} | "
              f"{last['test/win_rate']:.0%} ({last['t_env']:,}) |")


if __name__ == "__main__":
    main()
