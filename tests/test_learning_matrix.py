"""QMIX learns the two-step game's optimum (8); VDN cannot represent it and settles on 7."""

import pytest

from qmix.analysis import format_table, two_step_tables
from qmix.config import resolve
from qmix.trainer import Trainer


def train_two_step(alg, seed, tmp_path):
    cfg = resolve({"alg": alg, "env": "matrix:two-step", "seed": seed, "progress": False,
                   "use_tensorboard": False})
    trainer = Trainer(cfg, tmp_path)
    while trainer.counters.t_env < cfg.t_max:
        trainer.train_step()
    return cfg, trainer


@pytest.mark.parametrize("alg,expected", [("qmix", 8.0), ("vdn", 7.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_step_greedy_return(alg, expected, seed, tmp_path):
    cfg, trainer = train_two_step(alg, seed, tmp_path)
    result = trainer.test()
    tables = two_step_tables(cfg, trainer.learner.agent, trainer.learner.mixer)
    print(f"\n{alg} seed {seed}: greedy return {result['test/return_mean']}")
    for name, table in tables.items():
        print(format_table(name, table))
    assert result["test/return_mean"] == expected
    two_b = tables["state 2B"]
    if alg == "qmix":  # the optimum is the best joint action in 2B, and worth more than 2A's 7
        assert two_b[1][1] == max(max(r) for r in two_b)
        assert max(max(r) for r in tables["state 1"]) > 7.0


@pytest.mark.parametrize("overrides", [
    {"separate_agent_params": True},
    {"agent": "mlp"},
    # pymarl2's settings without TD(lambda): multi-step returns under uniformly random behaviour
    # are the random policy's values (VDN-like 7 is then right for them), so they are left out here
    # and checked by hand-computed targets in test_learner.py.
    {"alg": "qmix-tuned", "td_lambda": 0.0, "num_envs": 16, "episodes_per_update": 4, "batch_size": 64},
    {"target_update_tau": 0.01},
    {"hypernet_layers": 2, "double_q": False},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_qmix_variants_solve_two_step(overrides, tmp_path):
    cfg = resolve({"alg": "qmix", "env": "matrix:two-step", "seed": 0, "progress": False,
                   "use_tensorboard": False, **overrides})
    trainer = Trainer(cfg, tmp_path)
    while trainer.counters.t_env < cfg.t_max:
        trainer.train_step()
    assert trainer.test()["test/return_mean"] == 8.0
