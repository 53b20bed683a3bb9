"""The ``qmix sweep``, ``qmix plot`` and ``qmix report`` subcommands.

``register(subparsers, commands)`` adds the three parsers to the ``qmix`` command's subparsers
and their handlers (``fn(args) -> exit code``) to ``commands``.
"""

from __future__ import annotations

import argparse


EPILOG_SWEEP = """\
A sweep file names a base config and a grid; every cell is an ordinary `qmix train` run:
  name: two-step
  base: {t_max: 10000, use_tensorboard: false}
  grid:
    alg: [qmix, vdn, iql]
    env: [matrix:two-step, matrix:climbing]
    seed: 5                      # seeds 1..5 (or a list)
    overrides: [{}, {lr: 0.001}] # variants (or a mapping key -> list of values: their product)
Re-running the same command skips finished trials and resumes the others from their checkpoints.
Ctrl-C stops cleanly (running trials checkpoint). See docs/sweeps.md."""


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return v


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a study: a grid of training runs (algorithms x envs x overrides x seeds)",
                       epilog=EPILOG_SWEEP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_file", metavar="SWEEP.yaml")
    p.add_argument("--study-dir", default=None,
                   help="where the study lives (default: study_dir in the file, else studies/<name>)")
    p.add_argument("--address", default=None,
                   help="join an existing Ray cluster: auto or ray://HOST:PORT (default: a local Ray instance)")
    p.add_argument("--local", action="store_true", help="no Ray: run the trials one after another on this machine")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="at most N trials at once (default: as many as the CPUs/GPUs allow; 1 with --local)")
    p.add_argument("--cpus-per-trial", type=_positive_float, default=1.0, metavar="X", help="CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=_positive_float, default=0.0, metavar="Y",
                   help="GPUs per trial, fractions allowed (default 0)")
    p.add_argument("--num-cpus", type=int, default=None, metavar="N",
                   help="size of the local Ray instance (default: this machine's CPU count)")
    p.add_argument("--dry-run", action="store_true", help="list the trials and their state; run nothing")


def _cmd_sweep(args) -> int:
    from qmix.study.sweep import is_finished, load_sweep, run_sweep

    if args.dry_run:
        study = load_sweep(args.sweep_file, args.study_dir)
        print(f"study {study.name} in {study.dir}: {len(study.trials)} trials")
        for t in study.trials:
            state = ("finished" if is_finished(study.run_dir(t)) else
                     "resume" if (study.run_dir(t) / "config.yaml").is_file() else "start")
            print(f"  {t.id:60} {state}")
        return 0
    result = run_sweep(args.sweep_file, study_dir=args.study_dir, address=args.address, local=args.local,
                       max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                       gpus_per_trial=args.gpus_per_trial, num_cpus=args.num_cpus)
    if result["interrupted"]:
        return 130
    return 1 if result["failed"] else 0


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="learning curves of a study (or runs): one subplot per env, one line per algorithm")
    p.add_argument("paths", nargs="+", metavar="STUDY_OR_RUN")
    p.add_argument("--metric", default=None, help="default: test/win_rate if the runs log it, else test/return_mean")
    p.add_argument("--out", default="curves.png", help="output file; .png or .svg (default curves.png)")
    p.add_argument("--agg", choices=("mean", "median"), default="mean", help="over seeds (default mean)")
    p.add_argument("--title", default=None, help="figure title")


def _cmd_plot(args) -> int:
    from qmix.study.plot import plot_runs

    info = {}
    plot_runs(args.paths, metric=args.metric, out=args.out, agg=args.agg, title=args.title, info=info)
    print(f"qmix plot: {info['metric']} ({args.agg} over seeds, 95% bootstrap CI) for {info['lines']} line(s) "
          f"in {info['envs']} env(s) from {info['runs']} run(s) -> {args.out}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="a table of final and best test results per algorithm and env")
    p.add_argument("paths", nargs="+", metavar="STUDY_OR_RUN")
    p.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    p.add_argument("--metric", action="append", default=None,
                   help="repeatable; default: test/win_rate (when logged) and test/return_mean")
    p.add_argument("--out", default=None, help="write to this file instead of stdout")


def _cmd_report(args) -> int:
    from qmix.study.report import report

    text = report(args.paths, fmt=args.format, metrics=args.metric)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"qmix report: written to {args.out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def register(subparsers, commands: dict) -> None:
    """Add ``sweep``, ``plot`` and ``report`` to the ``qmix`` command."""
    _add_sweep(subparsers)
    _add_plot(subparsers)
    _add_report(subparsers)
    commands.update({"sweep": _cmd_sweep, "plot": _cmd_plot, "report": _cmd_report})
