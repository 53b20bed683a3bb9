"""An inf/NaN loss or gradient is never applied, and a run whose updates are all non-finite stops."""

import copy

import pytest
import torch

from qmix import checkpoint as ckpt
from qmix.bench.learner import LearnerShapes, bench_config, random_batch
from qmix.config import resolve
from qmix.errors import QmixError
from qmix.learner import Learner
from qmix.modules import build_agent, build_mixer
from qmix.trainer import run_training


def learner_and_batch():
    torch.manual_seed(0)
    s = LearnerShapes(4, 6, 2, 5, 3, 7)
    cfg = bench_config(optimizer="adam")
    learner = Learner(cfg, build_agent(cfg, s.obs_dim, s.n_agents, s.n_actions),
                      build_mixer(cfg, s.n_agents, s.state_dim), s.n_actions)
    return learner, random_batch(s)


def snapshot(learner):
    return copy.deepcopy(learner.agent.state_dict()), copy.deepcopy(learner.mixer.state_dict()), \
        copy.deepcopy(learner.optimizer.state_dict())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_update_changes_nothing(bad):
    learner, batch = learner_and_batch()
    learner.update(batch)  # a normal update first, so the optimiser has state to protect
    before = snapshot(learner)
    batch.reward[0, 0] = bad
    stats = learner.update(batch)
    assert stats["nonfinite_updates"].item() == 1.0 and not torch.isfinite(stats["grad_norm"])
    after = snapshot(learner)
    for a, b in zip(before[:2], after[:2]):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert before[2]["state"].keys() == after[2]["state"].keys()
    for k, v in before[2]["state"].items():
        assert all(torch.equal(v[x], after[2]["state"][k][x]) for x in v)
    assert learner.updates == 1

    batch.reward[0, 0] = 0.0
    stats = learner.update(batch)
    assert stats["nonfinite_updates"].item() == 0.0 and learner.updates == 2
    assert not torch.equal(before[0]["fc2.weight"], learner.agent.state_dict()["fc2.weight"])


def test_run_whose_updates_are_all_nonfinite_stops_with_a_checkpoint(tmp_path, monkeypatch):
    real_loss = Learner.loss

    def loss(self, batch):  # the data turns bad once the run is under way
        value, stats = real_loss(self, batch)
        return (value * float("nan"), stats) if self.updates >= 20 else (value, stats)

    monkeypatch.setattr(Learner, "loss", loss)
    cfg = resolve({"alg": "qmix", "env": "matrix:two-step", "seed": 0, "progress": False, "t_max": 100_000,
                   "log_interval": 400, "checkpoint_interval": 0, "use_tensorboard": False, "torch_threads": 1})
    with pytest.raises(QmixError, match=r"inf or NaN loss or gradient.*checkpoint holds the last finite networks"):
        run_training(cfg, tmp_path)
    state = ckpt.load(tmp_path)
    assert state["counters"]["t_env"] < 100_000
    assert all(torch.isfinite(v).all() for v in state["learner"]["agent"].values())
    assert not (tmp_path / "summary.json").exists()
