"""``qmix bench``: named, fixed speed scenarios with a table and optional JSON for comparisons.

    qmix bench learner [--scenario 3m,27m_vs_30m]      # one update: ours vs the pymarl-style reference
    qmix bench env micro:2s3z --num-envs 1,64,1024     # environment steps/s with random valid actions
    qmix bench act micro:3m --num-envs 1,64            # acting (network + env) steps/s
    qmix bench train lbf-epymarl [--steps N] [key=value ...]   # whole training loop on a named config
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone

from qmix.errors import QmixError

# Named training scenarios: (algorithm, env, overrides, default steps).
TRAIN_SCENARIOS = {
    # QMIX with pymarl's defaults on the default map.
    "micro-3m": ("qmix", "micro:3m", {}, 50_000),
    # epymarl's QMIX settings for LBF (MLP agents, Adam, 2-layer hypernets, one env, one update
    # per episode, batch 32, buffer 5000, target every 200 episodes, 100 test episodes per 50k,
    # rewards standardised, every action available as its gym wrapper reports).
    "lbf-epymarl": ("qmix", "lbf:Foraging-8x8-2p-3f-v3", {
        "agent": "mlp", "obs_last_action": False, "hypernet_layers": 2, "optimizer": "adam", "lr": 5e-4,
        "standardise_rewards": True,
        "batch_size": 32, "buffer_size": 5000, "num_envs": 1, "episodes_per_update": 1,
        "target_update_interval": 200, "epsilon_anneal_steps": 50_000, "test_interval": 50_000,
        "test_episodes": 100, "env_args": {"time_limit": 50, "avail_masks": False}}, 100_000),
    # JaxMARL's QMIX update-to-data ratio on a natively batched task: one update of 32 episodes per
    # 8 finished episodes of 25 steps (~208 env steps per update, as its 8 envs x 26 steps).
    "vmas-spread": ("qmix", "vmas:simple_spread", {
        "num_envs": 64, "episodes_per_update": 8, "batch_size": 32, "buffer_size": 5000,
        "env_args": {"time_limit": 25}, "test_interval": 10**9, "test_episodes": 0}, 200_000),
    "micro-3m-batched": ("qmix", "micro:3m", {
        "num_envs": 64, "episodes_per_update": 8, "test_interval": 10**9, "test_episodes": 0}, 200_000),
}


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise QmixError(f"--num-envs must be a comma-separated list of integers, got {text!r}.") from None
    if not values or min(values) < 1:
        raise QmixError(f"--num-envs values must be positive, got {text!r}.")
    return values


def peak_memory_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_act(env_id: str, num_envs_list: list[int], steps: int, device: str, seed: int,
              env_args: dict | None = None) -> list[dict]:
    import torch

    from qmix.config import resolve
    from qmix.envs import make
    from qmix.modules import build_agent
    from qmix.rollout import Runner

    rows = []
    for B in num_envs_list:
        cfg = resolve({"alg": "qmix", "env": env_id, "env_args": env_args or {}})
        env = make(env_id, num_envs=B, seed=seed, device=device, **cfg.env_args)
        info = env.info
        agent = build_agent(cfg, info.obs_dim, info.n_agents, info.n_actions).to(device)
        runner = Runner(cfg, env, agent, torch.Generator(device=env.device).manual_seed(seed))
        runner.collect(5, 0.05)
        runner.timing.clear()
        n_iter = max(1, steps // B)
        t0 = time.perf_counter()
        runner.collect(n_iter, 0.05)
        wall = time.perf_counter() - t0
        env.close()
        rows.append({"env": env_id, "num_envs": B, "steps": n_iter * B, "steps_per_s": n_iter * B / wall,
                     **{f"time_{k}_pct": 100 * v / wall for k, v in runner.timing.items()}})
    return rows


def train_overrides(name: str, steps: int | None, device: str, seed: int, extra: dict | None = None) -> dict:
    """The config keys of train scenario ``name`` with the user's ``extra`` on top (not yet
    validated; no torch needed)."""
    from qmix.config import merge_config

    if name not in TRAIN_SCENARIOS:
        raise QmixError(f"unknown train scenario {name!r}; known: {', '.join(TRAIN_SCENARIOS)}.")
    alg, env_id, overrides, default_steps = TRAIN_SCENARIOS[name]
    overrides = merge_config(overrides, extra or {})  # the user's overrides win; env_args are merged
    return {"alg": alg, "env": env_id, "seed": seed, "device": device, "t_max": steps or default_steps,
            "progress": False, "use_tensorboard": False, "checkpoint_interval": 0, **overrides}


def train_config(name: str, steps: int | None, device: str, seed: int, extra: dict | None = None):
    """The config of train scenario ``name`` with the user's overrides (their errors raised here)."""
    from qmix.config import resolve

    return resolve(train_overrides(name, steps, device, seed, extra))


def bench_train(name: str, cfg) -> dict:
    """Train scenario ``name`` with config ``cfg`` (:func:`train_config`) and time it."""
    from qmix.trainer import Trainer

    env_id = cfg.env
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        c = trainer.counters
        t0 = time.perf_counter()
        tests, last_log = 0, 0
        while c.t_env < cfg.t_max:
            if cfg.test_episodes > 0 and c.t_env - c.last_test_t >= cfg.test_interval:
                c.last_test_t = c.t_env
                t_test = time.perf_counter()
                trainer.last_test = trainer.test()
                trainer.runner.timing["test"] += time.perf_counter() - t_test
                tests += 1
            if c.t_env - last_log >= cfg.log_interval:  # the training statistics, as `qmix train` logs them
                last_log = c.t_env
                trainer.train_metrics()
            trainer.train_step()
        wall = time.perf_counter() - t0
        timing = dict(trainer.runner.timing)
        busy = trainer.buffer.busy_s if trainer.overlap else None
        trainer.close()
    return {"scenario": name, "env": env_id, "steps": c.t_env, "wall_s": wall, "steps_per_s": c.t_env / wall,
            "updates": c.updates, "updates_per_s": c.updates / wall, "episodes": c.episode, "tests": tests,
            "learner_process": trainer.overlap,
            **{f"time_{k}_pct": 100 * v / wall for k, v in timing.items()},
            # absolute costs: per training env step (acting, stepping, staging) and per update
            **{f"{k}_us_per_step": 1e6 * timing[k] / c.t_env for k in ("act", "env", "store") if k in timing},
            "learn_ms_per_update": 1e3 * timing.get("learn", 0.0) / max(c.updates, 1),
            # with a learner process, "learn" above is the time waited for it; its own time per update:
            **({"learner_process_ms_per_update": 1e3 * busy / max(c.updates, 1),
                # the share of the loop it spent updating: near 100, it is the slower side
                "learner_process_busy_pct": 100 * busy / wall} if busy is not None else {}),
            "last_test": trainer.last_test, "peak_rss_mib": peak_memory_mib()}


def _print_rows(rows: list[dict]) -> None:
    for row in rows:
        parts = []
        for k, v in row.items():
            if isinstance(v, float):
                parts.append(f"{k}={v:,.2f}")
            elif isinstance(v, (int, str)):
                parts.append(f"{k}={v}")
        print("  ".join(parts))


def register(sub, commands: dict) -> None:
    p = sub.add_parser("bench", help="speed benchmarks (learner, env, act, train)")
    p.add_argument("what", choices=["learner", "env", "act", "train"])
    p.add_argument("target", nargs="?", default=None,
                   help="env id (env, act) or scenario name (train: " + ", ".join(TRAIN_SCENARIOS) + ")")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="train: config overrides on top of the scenario's, e.g. num_envs=256; "
                        "env, act: env args, e.g. env_args.compile=true")
    p.add_argument("--scenario", default="3m,27m_vs_30m", help="learner shapes: 3m, 8m, 27m_vs_30m")
    p.add_argument("--num-envs", default="1,64,1024")
    p.add_argument("--steps", type=int, default=None, help="env steps to time (env, act, train)")
    p.add_argument("--updates", type=int, default=10, help="timed learner updates per scenario")
    p.add_argument("--no-reference", action="store_true", help="skip the reference learner")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    p.add_argument("--native", choices=["auto", "on", "off"], default="auto",
                   help="native C++ kernels for the learner: GRU, QMIX mixing (learner, train; default auto: if they build)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the results as JSON")
    commands["bench"] = _cmd_bench


def _train_args(args) -> tuple:
    """``bench train``'s arguments for :func:`train_overrides` and :func:`train_config`."""
    from qmix.config import parse_overrides

    return (args.target, args.steps, args.device, args.seed,
            {"native_kernels": args.native, **parse_overrides(args.overrides)})


def _cmd_bench(args) -> int:
    import torch

    from qmix.modules import native

    stray = args.overrides or ([args.target] if args.target and "=" in args.target else [])
    if stray and args.what == "learner":
        raise QmixError(f"config overrides ({stray[0]}, ...) apply to qmix bench train, env and act only.")
    if args.what in ("env", "act"):
        not_env = [o for o in stray if not o.startswith("env_args.")]
        if not_env:
            raise QmixError(f"qmix bench {args.what} takes env args only (env_args.NAME=value), not {not_env[0]}.")
        from qmix.config import parse_overrides

        env_args = parse_overrides(args.overrides).get("env_args", {})
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    needed = True  # the learner scenarios' agents have a GRU (and a QMIX mixer)
    if args.what == "train" and args.target:  # a mistyped key fails before a first-run kernel build
        from qmix.trainer import needs_kernels

        cfg = train_config(*_train_args(args))
        needed = needs_kernels(cfg)
    info = machine()
    if args.what in ("learner", "train") and args.device == "cpu" and needed:
        from qmix.trainer import configure_kernels

        warning = configure_kernels(args.native, torch.device("cpu"))
        if warning:
            print(f"qmix: warning: {warning}.", file=sys.stderr)
        info["native_kernels"] = native.active()
    kernels = f" | kernels: {'native' if info['native_kernels'] else 'torch'}" if "native_kernels" in info else ""
    print(f"# {info['cpu']} | {info['cores']} cores | torch {info['torch']} ({info['threads']} threads){kernels} "
          f"| {info['date']}")
    if args.what == "learner":
        from qmix.bench.learner import SCENARIOS, run_learner_bench

        names = [s for s in args.scenario.split(",") if s]
        for s in names:
            if s not in SCENARIOS:
                raise QmixError(f"unknown learner scenario {s!r}; known: {', '.join(SCENARIOS)}.")
        rows = run_learner_bench(names, updates=args.updates, device=args.device, reference=not args.no_reference)
        for r in rows:
            line = (f"{r['scenario']:>12}: ours {r['ours_ms']:8.1f} ms/update ({r['ours_gflops']:5.1f} GFLOP/s)")
            if "reference_ms" in r:
                line += (f" | reference {r['reference_ms']:8.1f} ms ({r['reference_gflops']:5.1f} GFLOP/s)"
                         f" | speed-up {r['speedup']:.2f}x")
            print(line + f" | {r['gflop_per_update']:.2f} GFLOP/update | matmul peak {r['matmul_peak_gflops']:.0f} GFLOP/s")
    elif args.what == "env":
        from qmix.bench.env import run_env_bench

        if not args.target or "=" in args.target:
            raise QmixError("qmix bench env needs an env id, e.g. qmix bench env micro:2s3z.")
        env_steps = args.steps or 20_000  # per batch size, counted in steps of single battles
        rows = [row for B in _ints(args.num_envs)
                for row in run_env_bench(args.target, [B], max(10, env_steps // B), args.device, args.seed,
                                         env_args=env_args)]
        _print_rows(rows)
    elif args.what == "act":
        if not args.target or "=" in args.target:
            raise QmixError("qmix bench act needs an env id, e.g. qmix bench act micro:3m.")
        rows = bench_act(args.target, _ints(args.num_envs), args.steps or 20_000, args.device, args.seed, env_args)
        _print_rows(rows)
    else:
        if not args.target:
            raise QmixError(f"qmix bench train needs a scenario: {', '.join(TRAIN_SCENARIOS)}.")
        rows = [bench_train(args.target, cfg)]
        _print_rows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "command": " ".join(["qmix", *sys.argv[1:]]), "what": args.what,
                       "results": rows}, f, indent=2, default=str)
    return 0
