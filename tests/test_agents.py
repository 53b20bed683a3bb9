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
