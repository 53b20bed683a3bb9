"""The ``qmix`` command: thin; parses arguments, calls the library, prints.

User errors (QmixError) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys

from qmix.errors import QmixError

EPILOG_TRAIN = """\
Any config key can be overridden as key=value after the options (dotted for env_args), e.g.
  qmix train --env micro:8m t_max=500000 lr=0.001 env_args.timeout_terminal=true
Presets: --alg qmix (pymarl), qmix-tuned (pymarl2), vdn, iql; each env family has its own preset.
Keys: see docs/configuration.md or `qmix config` for the resolved values."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own default prints usage too)
        raise QmixError(f"{message} (see `{self.prog} --help`)")


def _add_train(sub):
    p = sub.add_parser("train", help="train a team (default: QMIX on micro:3m)", epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alg", default=None, help="qmix | qmix-tuned | vdn | iql (default qmix)")
    p.add_argument("--env", default=None, help="env id family:name (default micro:3m; see `qmix envs`)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 1)")
    p.add_argument("--out", default=None, help="run directory (default runs/<env>_<alg>_seed<seed>_<time>)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    p.add_argument("--config", default=None, help="a YAML file of config keys, applied before key=value")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def _train_overrides(args) -> dict:
    from qmix.config import load_yaml_file, merge_config, parse_overrides

    overrides = merge_config(load_yaml_file(args.config) if args.config else {}, parse_overrides(args.overrides))
    for key in ("alg", "env", "seed", "device"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.quiet:
        overrides["progress"] = False
    return overrides


def _cmd_train(args) -> int:
    from qmix.trainer import train

    overrides = _train_overrides(args)
    if args.resume:
        for key in ("alg", "env", "seed"):
            if key in overrides:
                raise QmixError(f"--{key} cannot be given with --resume; the run's saved config is used.")
        summary = train(resume=args.resume, **overrides)
    else:
        alg = overrides.pop("alg", "qmix")
        env = overrides.pop("env", "micro:3m")
        seed = overrides.pop("seed", 1)
        summary = train(alg=alg, env=env, seed=seed, out=args.out, **overrides)
    if summary.get("signal") is not None:
        return 128 + int(summary["signal"])
    return 0


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="greedy evaluation of a run or checkpoint")
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--render", default=None, metavar="OUT.gif", help="also draw one greedy episode")


def _cmd_evaluate(args) -> int:
    from qmix.evaluate import evaluate, render

    result = evaluate(args.path, episodes=args.episodes, seed=args.seed, device=args.device)
    if args.render:
        drawn = render(args.path, args.render, seed=args.seed, device=args.device)
        if not args.json:
            print(f"rendered one episode to {drawn['path']} (return {drawn['return']:.2f}, "
                  f"{drawn['ep_length']} steps)")
    if args.json:
        print(json.dumps(result))
    else:
        win = f", win rate {result['win_rate']:.1%}" if result["win_rate"] is not None else ""
        print(f"{result['episodes']} episodes: return {result['return_mean']:.3f} +- {result['return_std']:.3f}"
              f"{win}, length {result['ep_length_mean']:.1f}")
    return 0


def _add_envs(sub):
    p = sub.add_parser("envs", help="list environment ids with their sizes")
    p.add_argument("family", nargs="?", default=None, help="only this family")
    p.add_argument("--json", action="store_true")


def _cmd_envs(args) -> int:
    from qmix.envs.registry import FAMILIES, list_env_ids, split_env_id
    from qmix.envs import make

    families = [args.family] if args.family else list(FAMILIES)
    if args.family:
        split_env_id(f"{args.family}:x")
    rows, notes = [], []
    for fam in families:
        try:
            ids = list_env_ids(fam)
        except QmixError as e:
            notes.append(f"{fam}: {e}")
            continue
        if not ids:
            notes.append(f"{fam}: {FAMILIES[fam].description} (open-ended ids, e.g. see docs/environments.md)")
        for env_id in ids:
            try:
                env = make(env_id, num_envs=1)
                rows.append({"id": env_id, **env.info.as_dict()})
                env.close()
            except QmixError as e:
                notes.append(f"{env_id}: {e}")
    if args.json:
        print(json.dumps({"envs": rows, "notes": notes}))
        return 0
    header = f"{'id':28} {'agents':>6} {'actions':>7} {'obs':>5} {'state':>6} {'limit':>6}"
    print(header)
    for r in rows:
        print(f"{r['id']:28} {r['n_agents']:>6} {r['n_actions']:>7} {r['obs_dim']:>5} {r['state_dim']:>6} "
              f"{r['episode_limit']:>6}")
    for n in notes:
        print(n)
    return 0


def _add_config(sub):
    p = sub.add_parser("config", help="print the resolved config for --alg/--env and key=value overrides")
    p.add_argument("--alg", default="qmix")
    p.add_argument("--env", default="micro:3m")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def _cmd_config(args) -> int:
    from qmix.config import parse_overrides, resolve, to_yaml

    cfg = resolve({"alg": args.alg, "env": args.env, **parse_overrides(args.overrides)})
    print(to_yaml(cfg), end="")
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "envs": _cmd_envs, "config": _cmd_config}
ADDERS = [_add_train, _add_evaluate, _add_envs, _add_config]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qmix", description="QMIX, VDN and IQL for cooperative multi-agent RL.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for add in ADDERS:
        add(sub)
    from qmix.bench.cli import register as register_bench
    from qmix.study.cli import register as register_study

    register_bench(sub, COMMANDS)
    register_study(sub, COMMANDS)
    return parser


def _prestart_learner(args) -> None:
    """``train`` (not resuming) and ``bench train``: start the run's learner process now, while
    this process loads torch, if its settings make one likely (:mod:`qmix.launch`; the trainer
    decides for itself later). A command line the real path rejects starts nothing here."""
    from qmix import launch
    from qmix.config import guess_settings

    try:
        if args.command == "train" and not args.resume:
            settings = guess_settings(_train_overrides(args))
        elif args.command == "bench" and args.what == "train" and args.target:
            from qmix.bench.cli import _train_args, train_overrides

            settings = guess_settings(train_overrides(*_train_args(args)))
        else:
            return
    except Exception:  # noqa: BLE001 - the command itself reports what is wrong
        return
    launch.prestart(settings)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        _prestart_learner(args)  # before torch is loaded (by the next line)
        from qmix.system import configure_allocator

        configure_allocator()
        return COMMANDS[args.command](args)
    except QmixError as e:
        print(f"qmix: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's side (a full disk, a lost mount, permissions), in one line
        print(f"qmix: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qmix: interrupted", file=sys.stderr)
        return 130
    finally:
        from qmix import launch

        launch.drop_prestarted()  # one that no run took (the command failed before its trainer)


def run() -> None:
    """The ``qmix`` command: :func:`main`, then the process ends without the interpreter's teardown
    of torch's modules (about half a second on every command). By then every file of ours is
    closed (runs, logs and checkpoints are written and synced in ``finally`` blocks); the exit
    handlers registered with ``atexit`` still run, and the standard streams are flushed."""
    code = main()
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (qmix ... | head) or stream
                pass
        os._exit(code if isinstance(code, int) else int(code is not None))  # as sys.exit would take it


if __name__ == "__main__":
    run()
