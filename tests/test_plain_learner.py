"""PlainLearner (padded, step-by-step, pymarl's way) computes our Learner's loss and gradients."""

import copy

import pytest
import torch

from qmix.bench.learner import LearnerShapes, bench_config, random_batch
from qmix.bench.reference import PlainLearner
from qmix.learner import Learner
from qmix.modules import build_agent, build_mixer

SHAPES = LearnerShapes(batch=6, T=13, n_agents=3, obs_dim=11, n_actions=7, state_dim=13)


def _pair(cfg):
    """A Learner and a PlainLearner with identical weights; targets differ from the online nets."""
    torch.manual_seed(3)
    agent = build_agent(cfg, SHAPES.obs_dim, SHAPES.n_agents, SHAPES.n_actions)
    mixer = build_mixer(cfg, SHAPES.n_agents, SHAPES.state_dim)
    fast = Learner(cfg, agent, mixer, SHAPES.n_actions)
    plain = PlainLearner(cfg, copy.deepcopy(agent), copy.deepcopy(mixer), SHAPES.n_actions)
    targets = [fast.target_agent] + ([fast.target_mixer] if mixer is not None else [])
    with torch.no_grad():
        for net in targets:
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    plain.target_agent.load_state_dict(fast.target_agent.state_dict())
    if mixer is not None:
        plain.target_mixer.load_state_dict(fast.target_mixer.state_dict())
    return fast, plain


@pytest.mark.parametrize("agent,mixer,layers,double_q,last_action", [
    ("rnn", "qmix", 1, True, True), ("rnn", "qmix", 2, True, True), ("mlp", "qmix", 1, True, True),
    ("mlp", "qmix", 2, True, True), ("rnn", "qmix", 2, False, True), ("rnn", "vdn", 1, True, True),
    ("rnn", "none", 1, True, True), ("mlp", "qmix", 2, True, False), ("rnn", "qmix", 1, True, False),
])
def test_same_loss_stats_and_gradients(agent, mixer, layers, double_q, last_action):
    cfg = bench_config(agent=agent, mixer=mixer, hypernet_layers=layers, double_q=double_q,
                       obs_last_action=last_action)
    fast, plain = _pair(cfg)
    batch = random_batch(SHAPES, seed=5)
    loss, stats = fast.loss(batch)
    plain_loss, plain_stats = plain.loss(batch)
    assert plain_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert plain_stats.keys() == stats.keys()
    for k in stats:
        assert plain_stats[k].item() == pytest.approx(stats[k].item(), rel=1e-5, abs=1e-6), k
    loss.backward()
    plain_loss.backward()
    assert len(fast.params) == len(plain.params)
    for p, q in zip(fast.params, plain.params):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), p.shape
    assert all(p.grad is None for p in plain.target_agent.parameters())


def test_update_keeps_learner_behaviour():
    fast, plain = _pair(bench_config())
    batch = random_batch(SHAPES, seed=7)
    fast_stats, plain_stats = fast.update(batch), plain.update(batch)
    assert plain_stats.keys() == fast_stats.keys() and plain.updates == 1
    for p, q in zip(fast.params, plain.params):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("overrides,match", [
    ({"separate_agent_params": True}, "shared-parameter AgentNetwork"),
    ({"n_step": 3}, "1-step targets only"),
    ({"td_lambda": 0.6}, "1-step targets only"),
])
def test_unsupported_configs_are_refused(overrides, match):
    cfg = bench_config(**overrides)
    agent = build_agent(cfg, SHAPES.obs_dim, SHAPES.n_agents, SHAPES.n_actions)
    with pytest.raises(ValueError, match=match):
        PlainLearner(cfg, agent, build_mixer(cfg, SHAPES.n_agents, SHAPES.state_dim), SHAPES.n_actions)
