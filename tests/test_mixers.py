"""Monotonicity and IGM of the mixers: the property QMIX is built on."""

import itertools

import pytest
import torch

from qmix.modules.mixers import QMixer, VDNMixer


@pytest.mark.parametrize("layers", [1, 2])
def test_qmix_is_monotonic_in_every_agent_value(layers):
    torch.manual_seed(0)
    n, S, N = 5, 12, 256
    mixer = QMixer(n, S, embed_dim=16, hypernet_layers=layers, hypernet_embed=32)
    qs = (torch.randn(N, n) * 5).requires_grad_(True)
    states = torch.randn(N, S) * 3
    q_tot = mixer(qs, states)
    (grad,) = torch.autograd.grad(q_tot.sum(), qs)
    assert grad.shape == (N, n)
    assert (grad >= 0).all(), f"negative dQ_tot/dQ_a: min {grad.min().item()}"
    assert (grad > 0).any()


def test_qmix_state_dependence_is_not_constrained():
    """The state enters only through the hypernets, so dQ_tot/ds may take either sign."""
    torch.manual_seed(1)
    mixer = QMixer(3, 6, embed_dim=8)
    qs = torch.randn(512, 3)
    states = torch.randn(512, 6).requires_grad_(True)
    (grad,) = torch.autograd.grad(mixer(qs, states).sum(), states)
    assert (grad > 0).any() and (grad < 0).any()


@pytest.mark.parametrize("mixer_name", ["qmix", "vdn"])
def test_decentralised_argmax_equals_joint_argmax(mixer_name):
    torch.manual_seed(2)
    n, A, S = 3, 4, 7
    mixer = QMixer(n, S, embed_dim=8, hypernet_layers=2) if mixer_name == "qmix" else VDNMixer()
    joint = torch.tensor(list(itertools.product(range(A), repeat=n)))  # [A^n, n]
    for _ in range(50):
        agent_q = torch.randn(n, A) * 3
        state = torch.randn(1, S)
        chosen = agent_q[torch.arange(n), joint]  # [A^n, n]
        q_tot = mixer(chosen, state.expand(len(joint), -1))  # [A^n]
        best_joint = joint[q_tot.argmax()]
        decentralised = agent_q.argmax(-1)
        assert torch.equal(best_joint, decentralised)


def test_vdn_is_the_sum():
    qs = torch.tensor([[1.0, 2.0, -0.5]])
    assert VDNMixer()(qs).item() == pytest.approx(2.5)


@pytest.mark.parametrize("layers", [1, 2])
def test_the_references_plain_pymarl_mixer_computes_what_qmixer_computes(layers):
    """The benchmark reference's mixer (pymarl's: each hypernetwork on its own, two bmm) gives
    QMixer's values and gradients."""
    from qmix.bench.reference import plain_mix
    from qmix.modules.mixers import QMixer

    torch.manual_seed(0)
    mixer = QMixer(3, 7, embed_dim=8, hypernet_layers=layers)
    qs, states = torch.randn(4, 5, 3, requires_grad=True), torch.randn(4, 5, 7)
    a = mixer(qs, states)
    ga = torch.autograd.grad(a.sum(), [qs, *mixer.parameters()])
    b = plain_mix(mixer, qs, states)
    gb = torch.autograd.grad(b.sum(), [qs, *mixer.parameters()])
    assert a.shape == b.shape == (4, 5) and torch.allclose(a, b, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga, gb))
