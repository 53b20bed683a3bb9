"""The agent's first layer takes the parts of its input; it must equal the plain layer on the
concatenated input ``[obs | onehot(last action) | onehot(agent id)]`` for every layout."""

import itertools

import pytest
import torch

from qmix.modules.agents import AgentNetwork, InputLayout, first_layer


@pytest.mark.parametrize("last_action,agent_id", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("recurrent", [False, True])
def test_first_layer_and_forward_match_the_concatenated_input(last_action, agent_id, recurrent):
    torch.manual_seed(0)
    B, T, n, o, A, H = 4, 7, 3, 5, 6, 16
    layout = InputLayout(o, A, n, last_action, agent_id)
    net = AgentNetwork(layout, H, recurrent)
    obs = torch.randn(B, T, n, o)
    last = torch.randint(-1, A, (B, T, n))
    plain = net.fc1(layout.build(obs, last))
    parts = first_layer(layout, net.fc1, obs, last)
    torch.testing.assert_close(parts, plain, rtol=1e-5, atol=1e-5)
    # a whole episode through the network, step by step vs all at once
    hidden = net.initial_hidden(B, n, "cpu")
    steps = []
    for t in range(T):
        q, hidden = net.forward_step(obs[:, t], last[:, t], hidden)
        steps.append(q)
    torch.testing.assert_close(net.forward_seq(obs, last), torch.stack(steps, 1), rtol=1e-4, atol=1e-5)
    # acting (no gradients, a few agents on the CPU: in NumPy) computes the same steps
    hidden = net.initial_hidden(B, n, "cpu")
    with torch.no_grad():
        for t in range(T):
            q, hidden = net.forward_step(obs[:, t], last[:, t], hidden)
            torch.testing.assert_close(q, steps[t], rtol=1e-5, atol=1e-6)
    assert "_numpy_cache" in net.__dict__


@pytest.mark.parametrize("numpy_work", [2**17, 0])  # acting in NumPy, in torch
@pytest.mark.parametrize("recurrent", [False, True])
def test_acting_follows_every_change_of_the_weights(recurrent, numpy_work, monkeypatch):
    """forward_step keeps its weights' views between calls (without gradients): they must follow
    in-place updates (optimiser steps, loading), flattening into one buffer, and copies."""
    import copy

    import qmix.modules.agents as agents
    from qmix.learner import flatten_parameters

    monkeypatch.setattr(agents, "NUMPY_WORK", numpy_work)
    same = torch.equal if numpy_work == 0 else (lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6))
    torch.manual_seed(1)
    B, n, o, A, H = 2, 3, 5, 4, 8
    net = AgentNetwork(InputLayout(o, A, n, False, True), H, recurrent)
    obs, last, hidden = torch.randn(B, n, o), torch.zeros(B, n, dtype=torch.long), torch.randn(B, n, H)

    def fresh(module):  # with gradients enabled nothing is cached
        with torch.enable_grad():
            return module.forward_step(obs, last, hidden)[0].detach()

    def acting(module):
        with torch.no_grad():
            return module.forward_step(obs, last, hidden)[0]

    assert same(acting(net), fresh(net))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))  # an optimiser step
    assert same(acting(net), fresh(net))
    flatten_parameters(list(net.parameters()))  # the storage moves
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    assert same(acting(net), fresh(net))
    other = copy.deepcopy(net)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    assert same(acting(other), fresh(other))
    assert same(acting(net), fresh(net))
    assert not same(acting(other), acting(net))
