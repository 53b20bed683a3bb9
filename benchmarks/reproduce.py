"""QMIX here beside epymarl's QMIX (the code of Papoudakis et al. 2021), same settings, same machine.

    python benchmarks/reproduce.py FAMILY [--steps 200000] [--seeds 1 2] [--out results/repro]
                                   [--epymarl DIR --epymarl-python PY [--reuse]]

FAMILY is one of lbf, mpe, rware; each uses the task of epymarl's README and epymarl's own QMIX
settings (MLP agents, Adam 5e-4, one env, one update of 32 episodes per episode, buffer 5000,
target copy every 200 updates, epsilon 1 -> 0.05 over 50k steps, rewards standardised by their
running mean and variance, greedy tests of 100 episodes every 50k steps), so the only
differences are the ones the docs name.

Runs `qmix train` once per seed (one thread each) and, with --epymarl, epymarl's `src/main.py`
with the same budget and seeds. Prints a markdown table of greedy test returns per test step
(ours from the run's metrics.jsonl, epymarl from its sacred info.json) and the wall time of
each process (of a reused epymarl run: sacred's start to stop), and writes the same as JSON
beside the runs (OUT/FAMILY.json).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

# Epymarl's README command for each family: (qmix env id, epymarl env key, time limit).
TASKS = {
    "lbf": ("lbf:Foraging-8x8-2p-3f-v3", "lbforaging:Foraging-8x8-2p-3f-v3", 50),
    "mpe": ("mpe:simple_spread_v3", "pz-mpe-simple-spread-v3", 25),
    "rware": ("rware:rware-tiny-2ag-v2", "rware:rware-tiny-2ag-v2", 500),
}

# epymarl's qmix.yaml + default.yaml, written as qmix overrides.
EPYMARL_QMIX = [
    "agent=mlp", "obs_last_action=false", "hypernet_layers=2", "optimizer=adam", "lr=0.0005",
    "batch_size=32", "buffer_size=5000", "num_envs=1", "episodes_per_update=1",
    "target_update_interval=200", "epsilon_anneal_steps=50000", "test_interval=50000",
    "test_episodes=100", "standardise_rewards=true", "torch_threads=1",
]


def run_ours(family: str, seed: int, steps: int, out: Path) -> dict:
    env, _, limit = TASKS[family]
    run_dir = out / f"{family}_ours_seed{seed}"
    cmd = [sys.executable, "-m", "qmix.cli", "train", "--env", env, "--seed", str(seed),
           "--out", str(run_dir), f"t_max={steps}", f"env_args.time_limit={limit}", *EPYMARL_QMIX]
    if family == "lbf":
        cmd.append("env_args.avail_masks=false")  # epymarl's gymma wrapper makes every action available
    wall = _timed(cmd, log=out / f"{family}_ours_seed{seed}.log")
    tests = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "test/return_mean" in r]
    return {"name": f"ours seed {seed}", "wall_s": wall, "command": " ".join(cmd[1:]),
            "tests": [(r["t_env"], r["test/return_mean"]) for r in tests]}


def run_epymarl(family: str, seed: int, steps: int, root: Path, python: str, out: Path,
                reuse: bool) -> dict:
    _, key, limit = TASKS[family]
    cmd = [python, "src/main.py", "--config=qmix", "--env-config=gymma", "with",
           f"env_args.time_limit={limit}", f"env_args.key={key}", "use_cuda=False",
           f"t_max={steps}", f"seed={seed}"]
    runs = root / "results" / "sacred" / "qmix" / key
    done = _finished_epymarl_run(runs, seed, steps, limit) if reuse else None
    if done is not None:
        print(f"reusing epymarl's finished run {done} (seed {seed}, {steps} steps)", flush=True)
        run = json.loads((done / "run.json").read_text())
        wall = _seconds(run["stop_time"]) - _seconds(run["start_time"])
    else:
        before = set(runs.iterdir()) if runs.is_dir() else set()
        wall = _timed(cmd, cwd=root, log=out / f"{family}_epymarl_seed{seed}.log")
        new = sorted(set(runs.iterdir()) - before, key=lambda p: p.stat().st_mtime)
        if not new:
            raise SystemExit(f"epymarl wrote no sacred run under {runs}; see its output above.")
        done = new[-1]
    info = json.loads((done / "info.json").read_text())
    values = [v["value"] if isinstance(v, dict) else v for v in info["test_return_mean"]]
    return {"name": f"epymarl seed {seed}", "wall_s": wall, "command": " ".join(cmd[1:]),
            "run": str(done), "tests": list(zip(info["test_return_mean_T"], values))}


def _finished_epymarl_run(runs: Path, seed: int, steps: int, limit: int) -> Path | None:
    """The newest completed sacred run of this task with this seed, budget and time limit."""
    found = []
    for d in runs.iterdir() if runs.is_dir() else []:
        try:
            config = json.loads((d / "config.json").read_text())
            status = json.loads((d / "run.json").read_text())["status"]
        except (OSError, ValueError, KeyError):
            continue
        if (status == "COMPLETED" and config.get("seed") == seed and config.get("t_max") == steps
                and config.get("env_args", {}).get("time_limit") == limit and (d / "info.json").is_file()):
            found.append(d)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _timed(cmd: list[str], log: Path, cwd: Path | None = None) -> float:
    """Wall seconds of one process (one thread), its output in `log`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"command failed with exit code {done.returncode} (output in {log}): {' '.join(cmd)}")
    return time.perf_counter() - start


def table(results: list[dict], interval: int = 50000) -> str:
    """One row per test block; epymarl logs its tests a few steps after each interval."""
    rows = sorted({t // interval for r in results for t, _ in r["tests"]})
    lines = ["| steps | " + " | ".join(r["name"] for r in results) + " |",
             "|---" * (len(results) + 1) + "|"]
    for row in rows:
        cells = []
        for r in results:
            hit = [v for t, v in r["tests"] if t // interval == row]
            cells.append(f"{hit[0]:.3f}" if hit else "-")
        lines.append(f"| {row * interval // 1000}k | " + " | ".join(cells) + " |")
    lines.append("| wall time | "
                 + " | ".join(f"{r['wall_s'] / 60:.1f} min" for r in results) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=sorted(TASKS))
    parser.add_argument("--steps", type=int, default=200000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("results/repro"))
    parser.add_argument("--epymarl", type=Path, help="an epymarl checkout to run beside ours")
    parser.add_argument("--epymarl-python", default=sys.executable,
                        help="the Python of epymarl's environment (default: this one)")
    parser.add_argument("--reuse", action="store_true",
                        help="use epymarl's finished runs with the same seed and budget instead of rerunning them")
    args = parser.parse_args()
    if args.epymarl and not (args.epymarl / "src" / "main.py").is_file():
        parser.error(f"{args.epymarl} is not an epymarl checkout (no src/main.py)")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        if args.epymarl:
            results.append(run_epymarl(args.family, seed, args.steps, args.epymarl, args.epymarl_python,
                                       args.out, args.reuse))
        results.append(run_ours(args.family, seed, args.steps, args.out))
    results.sort(key=lambda r: (not r["name"].startswith("epymarl"), r["name"]))
    path = args.out / f"{args.family}.json"
    path.write_text(json.dumps({"family": args.family, "steps": args.steps, "runs": results}, indent=1))
    print(table(results))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
