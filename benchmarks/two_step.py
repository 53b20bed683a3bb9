"""The QMIX paper's two-step game: greedy returns and learned Q_tot tables of QMIX and VDN.

    python benchmarks/two_step.py --seeds 5 [--t-max 10000]

Uses the `matrix` preset (uniform exploration, as in the paper) and prints, per algorithm, the
greedy return of every seed, the wall time, and the Q_tot tables of the first seed.
"""

import argparse
import tempfile
import time

import torch

from qmix.analysis import format_table, two_step_tables
from qmix.config import resolve
from qmix.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--t-max", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for alg in ("qmix", "vdn"):
        returns, walls = [], []
        for seed in range(args.seeds):
            overrides = {"alg": alg, "env": "matrix:two-step", "seed": seed, "progress": False,
                         "use_tensorboard": False}
            if args.t_max:
                overrides["t_max"] = args.t_max
            cfg = resolve(overrides)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                trainer = Trainer(cfg, tmp)
                while trainer.counters.t_env < cfg.t_max:
                    trainer.train_step()
                returns.append(trainer.test()["test/return_mean"])
                walls.append(time.perf_counter() - t0)
                if seed == 0:
                    tables = two_step_tables(cfg, trainer.learner.agent, trainer.learner.mixer)
        print(f"{alg}: greedy return per seed {returns}; {cfg.t_max} env steps, "
              f"{trainer.counters.updates} updates, {sum(walls) / len(walls):.1f} s per seed")
        print(f"{alg} Q_tot (seed 0; rows agent 0's action, columns agent 1's):")
        for name, table in tables.items():
            print(format_table(name, table))
        print()


if __name__ == "__main__":
    main()
