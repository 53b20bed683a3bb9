"""Our learner and the plain pymarl-style reference compute the same loss and gradients."""

import pytest
import torch

from qmix.bench.learner import LearnerShapes, bench_config, build_pair, random_batch
from qmix.modules.gru import gru_sequence


@pytest.mark.parametrize("layers", [1, 2])
def test_same_loss_and_gradients_as_reference(layers):
    shapes = LearnerShapes(batch=6, T=17, n_agents=3, obs_dim=11, n_actions=7, state_dim=13)
    cfg = bench_config(hypernet_layers=layers)
    ours, ref = build_pair(shapes, cfg, seed=3)
    # make the target networks differ from the online ones, as after some training
    with torch.no_grad():
        for p in list(ours.target_agent.parameters()) + list(ours.target_mixer.parameters()):
            p.add_(torch.randn_like(p) * 0.1)
    ref.target_agent.load_from(ours.target_agent)
    ref.target_mixer.load_state_dict(ours.target_mixer.state_dict())
    batch = random_batch(shapes, seed=5)

    loss, _ = ours.loss(batch)
    loss.backward()
    ref_loss = ref.loss(batch)
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)

    a, r = ours.agent, ref.agent
    pairs = [(a.fc1.weight, r.fc1.weight), (a.fc1.bias, r.fc1.bias), (a.fc2.weight, r.fc2.weight),
             (a.rnn.weight_ih_l0, r.rnn.weight_ih), (a.rnn.weight_hh_l0, r.rnn.weight_hh),
             (a.rnn.bias_ih_l0, r.rnn.bias_ih), (a.rnn.bias_hh_l0, r.rnn.bias_hh)]
    pairs += list(zip(ours.mixer.parameters(), ref.mixer.parameters()))
    for ours_p, ref_p in pairs:
        assert torch.allclose(ours_p.grad, ref_p.grad, rtol=1e-4, atol=1e-6), (ours_p.shape,)
    # no gradient ever reaches the target networks
    assert all(p.grad is None for p in ours.target_agent.parameters())


def test_fused_gru_matches_nn_gru_in_float64():
    torch.manual_seed(0)
    T, N, I, H = 19, 7, 5, 4
    gru = torch.nn.GRU(I, H).double()
    with torch.no_grad():
        for p in gru.parameters():
            p.normal_()  # large weights: saturated gates are part of the check
    x = torch.randn(T, N, I, dtype=torch.double, requires_grad=True)
    upstream = torch.randn(T, N, H, dtype=torch.double)
    expected, _ = gru(x)
    (expected * upstream).sum().backward()
    want = [p.grad.clone() for p in gru.parameters()] + [x.grad.clone()]
    for p in gru.parameters():
        p.grad = None
    x.grad = None
    out = gru_sequence(x, gru.weight_ih_l0, gru.bias_ih_l0, gru.weight_hh_l0, gru.bias_hh_l0)
    assert torch.allclose(out, expected, atol=1e-12)
    (out * upstream).sum().backward()
    got = [p.grad for p in gru.parameters()] + [x.grad]
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-10)
    with torch.no_grad():  # the forward-only path gives the same values
        assert torch.allclose(gru_sequence(x, gru.weight_ih_l0, gru.bias_ih_l0, gru.weight_hh_l0, gru.bias_hh_l0),
                              expected, atol=1e-12)


def test_packed_gru_matches_nn_gru_per_episode_in_float64():
    """Episodes of different lengths, packed: the same outputs and gradients as running
    ``nn.GRU`` on each episode alone, and nothing computed for steps past an episode's end."""
    from qmix.modules.packing import EpisodePacking
    from qmix.modules.gru import gru_packed

    torch.manual_seed(1)
    B, T, R, I, H = 5, 9, 2, 3, 4
    gru = torch.nn.GRU(I, H).double()
    lengths = torch.tensor([4, 9, 1, 7, 9])
    x = torch.randn(B, T, R, I, dtype=torch.double, requires_grad=True)
    upstream = torch.randn(B, T, R, H, dtype=torch.double)
    expected = torch.zeros(B, T, R, H, dtype=torch.double)
    for b in range(B):
        L = int(lengths[b])
        expected[b, :L] = gru(x[b, :L])[0]  # [L, R, H]: R independent sequences
    (expected * upstream).sum().backward()
    want = [p.grad.clone() for p in gru.parameters()] + [x.grad.clone()]
    for p in gru.parameters():
        p.grad = None
    x.grad = None

    packing = EpisodePacking(lengths, T)
    assert packing.rows == int(lengths.sum()) and packing.counts == [5, 4, 4, 4, 3, 3, 3, 2, 2]
    out = packing.unpack(gru_packed(packing.pack(x), packing.counts, gru.weight_ih_l0, gru.bias_ih_l0,
                                    gru.weight_hh_l0, gru.bias_hh_l0))
    assert torch.allclose(out, expected, atol=1e-12)
    (out * upstream).sum().backward()
    for g, w in zip([p.grad for p in gru.parameters()] + [x.grad], want):
        assert torch.allclose(g, w, atol=1e-10)
