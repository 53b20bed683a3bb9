"""How fast a Gymnasium multi-agent library steps on its own, with nothing of qmix in the loop.

    python benchmarks/library_step.py Foraging-8x8-2p-3f-v3 --module lbforaging --steps 20000
    python benchmarks/library_step.py rware-tiny-2ag-v2 --module rware --time-limit 500

One environment built by ``gymnasium.make`` (the environment checker off, as qmix builds it),
uniformly random actions drawn beforehand, a reset at every episode end or ``--time-limit`` steps.
This is the floor under any trainer's env steps/s with one environment: compare it with
``qmix bench env <family>:<id> --num-envs 1`` (the library plus qmix's adapter) and
``qmix bench train`` (the whole loop).
"""

import argparse
import importlib
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env_id")
    parser.add_argument("--module", default=None, help="module that registers env_id (e.g. lbforaging)")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--time-limit", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import gymnasium

    if args.module:
        importlib.import_module(args.module)
    env = gymnasium.make(args.env_id, disable_env_checker=True)
    sizes = [int(space.n) for space in env.action_space.spaces]
    rng = np.random.default_rng(args.seed)
    actions = [tuple(int(a) for a in row) for row in rng.integers(0, sizes, size=(args.steps, len(sizes)))]
    rates = []
    for _ in range(args.repeats):
        env.reset(seed=args.seed)
        t, episodes = 0, 0
        start = time.perf_counter()
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            t += 1
            if t >= args.time_limit or np.all(terminated) or np.all(truncated):
                env.reset()
                t, episodes = 0, episodes + 1
        rates.append(args.steps / (time.perf_counter() - start))
    env.close()
    print(f"{args.env_id}: {', '.join(f'{r:,.0f}' for r in rates)} env steps/s "
          f"(median {np.median(rates):,.0f}; {args.steps} steps, {episodes} episodes per repeat)")


if __name__ == "__main__":
    main()
