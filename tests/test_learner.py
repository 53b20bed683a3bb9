"""The learner's TD targets and loss, checked against hand-computed values on tiny batches."""

import copy

import pytest
import torch
from torch import nn

from qmix.buffer import EpisodeBatch
from qmix.config import resolve
from qmix.learner import Learner, td_targets


class FixedAgent(nn.Module):
    """Returns preset utilities ``[B, T+1, n, A]`` (plus a zero-valued parameter for the optimiser)."""

    def __init__(self, q):
        super().__init__()
        self.q = q
        self.w = nn.Parameter(torch.zeros(()))

    def forward_seq(self, obs, last_actions):
        return self.q + self.w

    def forward_packed(self, obs, last_actions, packing):
        return packing.pack(self.q) + self.w


def make_learner(online_q, target_q, **overrides):
    cfg = resolve({"alg": "vdn", "env": "matrix:two-step", "gamma": 0.5, **overrides})
    learner = Learner(cfg, FixedAgent(online_q), None if cfg.mixer == "none" else __import__(
        "qmix.modules.mixers", fromlist=["VDNMixer"]).VDNMixer(), n_actions=online_q.shape[-1])
    learner.target_agent = FixedAgent(target_q)
    return learner


def batch_of(T, n, A, actions, reward, terminated, filled, avail=None):
    B = len(actions)
    return EpisodeBatch(
        obs=torch.zeros(B, T + 1, n, 1), state=torch.zeros(B, T + 1, 1),
        avail=torch.ones(B, T + 1, n, A, dtype=torch.bool) if avail is None else avail,
        actions=torch.tensor(actions), reward=torch.tensor(reward),
        terminated=torch.tensor(terminated), filled=torch.tensor(filled))


def test_double_q_uses_online_argmax_and_target_value():
    # One episode, T=1, one agent, 3 actions, truncated after step 0 (bootstrap from step 1).
    online = torch.tensor([[[[1.0, 2.0, 0.0]], [[0.0, 5.0, 9.0]]]])  # [1, 2, 1, 3]
    target = torch.tensor([[[[0.0, 0.0, 0.0]], [[100.0, 3.0, 7.0]]]])
    batch = batch_of(1, 1, 3, [[[1]]], [[1.0]], [[False]], [[True]])
    learner = make_learner(online, target, double_q=True)
    _, stats = learner.loss(batch)
    # online argmax at t=1 is action 2 (9.0) -> target value 7.0; y = 1 + 0.5 * 7 = 4.5
    assert stats["target_mean"].item() == pytest.approx(4.5)
    assert stats["q_taken_mean"].item() == pytest.approx(2.0)
    assert stats["loss"].item() == pytest.approx((2.0 - 4.5) ** 2)
    # without double Q the target nets' own max (100.0) is used
    _, stats = make_learner(online, target, double_q=False).loss(batch)
    assert stats["target_mean"].item() == pytest.approx(1 + 0.5 * 100.0)


def test_unavailable_actions_are_never_the_argmax():
    online = torch.tensor([[[[1.0, 2.0, 0.0]], [[0.0, 5.0, 9.0]]]])
    target = torch.tensor([[[[0.0, 0.0, 0.0]], [[100.0, 3.0, 7.0]]]])
    avail = torch.ones(1, 2, 1, 3, dtype=torch.bool)
    avail[0, 1, 0, 2] = False  # the online favourite is unavailable at t=1
    avail[0, 1, 0, 0] = False
    batch = batch_of(1, 1, 3, [[[1]]], [[1.0]], [[False]], [[True]], avail=avail)
    for double_q in (True, False):
        _, stats = make_learner(online, target, double_q=double_q).loss(batch)
        assert stats["target_mean"].item() == pytest.approx(1 + 0.5 * 3.0)


def test_terminated_steps_do_not_bootstrap_and_padding_is_masked():
    # Two episodes, T=2, two agents (VDN sums), 2 actions.
    # ep 0: steps 0,1 then terminated at step 1.  ep 1: one step, truncated (filled only t=0).
    q = torch.zeros(2, 3, 2, 2)
    q[0, 0] = torch.tensor([[1.0, 0.0], [0.5, 0.0]])  # chosen (0,0) -> Q_tot 1.5
    q[0, 1] = torch.tensor([[0.0, 2.0], [0.0, 1.0]])  # chosen (1,1) -> 3.0
    q[1, 0] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])  # chosen (0,0) -> 4.0
    target = torch.full((2, 3, 2, 2), 10.0)
    target[1, 1] = torch.tensor([[2.0, 1.0], [1.0, 3.0]])  # after ep 1's step 0 (online argmax ties -> 0)
    batch = batch_of(2, 2, 2,
                     actions=[[[0, 0], [1, 1]], [[0, 0], [0, 0]]],
                     reward=[[1.0, 2.0], [0.5, 99.0]],
                     terminated=[[False, True], [False, False]],
                     filled=[[True, True], [True, False]])
    learner = make_learner(q, target, double_q=True)
    loss, stats = learner.loss(batch)
    y00 = 1.0 + 0.5 * 20.0  # bootstraps from target at t=1 (argmax 1 for both agents -> 10 + 10)
    y01 = 2.0  # terminated: no bootstrap
    y10 = 0.5 + 0.5 * (2.0 + 1.0)  # truncated after t=0: online argmax at t=1 is action 0 for both
    expected = ((1.5 - y00) ** 2 + (3.0 - y01) ** 2 + (4.0 - y10) ** 2) / 3
    assert loss.item() == pytest.approx(expected)
    assert stats["target_mean"].item() == pytest.approx((y00 + y01 + y10) / 3)


def test_iql_has_one_td_error_per_agent():
    q = torch.zeros(1, 2, 2, 2)
    q[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    target = torch.zeros(1, 2, 2, 2)
    batch = batch_of(1, 2, 2, [[[0, 1]]], [[2.0]], [[True]], [[True]])
    loss, _ = make_learner(q, target, alg="iql").loss(batch)
    assert loss.item() == pytest.approx(((1 - 2) ** 2 + (3 - 2) ** 2) / 2)


def test_n_step_and_lambda_targets_by_hand():
    reward = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    terminated = torch.tensor([[False, False, True, False]])
    filled = torch.tensor([[True, True, True, False]])
    v = torch.tensor([[10.0, 20.0, 30.0, 40.0]])  # value of the state reached by step t
    g = 0.5
    one = td_targets(reward, terminated, filled, v, g)
    assert one[0, :3].tolist() == pytest.approx([1 + g * 10, 2 + g * 20, 3.0])
    two = td_targets(reward, terminated, filled, v, g, n_step=2)
    assert two[0, :3].tolist() == pytest.approx([1 + g * 2 + g * g * 20, 2 + g * 3, 3.0])
    lam = 0.6
    out = td_targets(reward, terminated, filled, v, g, td_lambda=lam)
    G2 = 3.0
    G1 = 2 + g * ((1 - lam) * 20 + lam * G2)
    G0 = 1 + g * ((1 - lam) * 10 + lam * G1)
    assert out[0, :3].tolist() == pytest.approx([G0, G1, G2])
    # truncated episode: the last valid step bootstraps fully in every form
    trunc = torch.tensor([[False, False, False, False]])
    for kw in ({}, {"n_step": 3}, {"td_lambda": 0.6}):
        assert td_targets(reward, trunc, filled, v, g, **kw)[0, 2].item() == pytest.approx(3 + g * 30)


def test_lambda_one_step_limit_matches_one_step():
    torch.manual_seed(0)
    r, v = torch.randn(3, 6), torch.randn(3, 6)
    term = torch.zeros(3, 6, dtype=torch.bool)
    term[0, 3] = True
    filled = torch.arange(6).expand(3, 6) < torch.tensor([[4], [6], [2]])
    a = td_targets(r, term, filled, v, 0.9, td_lambda=1e-9)
    b = td_targets(r, term, filled, v, 0.9)
    assert torch.allclose(a[filled], b[filled], atol=1e-6)


def test_standardised_rewards_track_the_running_mean_and_variance():
    from qmix.learner import RewardStats

    g = torch.Generator().manual_seed(0)
    stats = RewardStats()
    first = 3 + 2 * torch.randn(32, 50, generator=g)
    stats.update(first)  # the initial count (1e-4) weighs almost nothing
    assert abs(float(stats.mean) - float(first.mean())) < 1e-3 and abs(float(stats.var) - float(first.var())) < 1e-3
    for _ in range(200):
        stats.update(3 + 2 * torch.randn(32, 50, generator=g))
    assert abs(float(stats.mean) - 3) < 0.02 and abs(float(stats.var) - 4) < 0.05
    scaled = stats.standardise(3 + 2 * torch.randn(32, 50, generator=g))
    assert abs(float(scaled.mean())) < 0.05 and abs(float(scaled.std()) - 1) < 0.05


def test_standardise_rewards_changes_the_targets_and_survives_a_checkpoint():
    B, T, n, A = 2, 3, 2, 2
    q = torch.zeros(B, T + 1, n, A)
    batch = batch_of(T, n, A, [[[0, 0]] * T] * B, [[1.0, 0.0, 2.0], [0.0, 4.0, 1.0]],
                     [[False] * T] * B, [[True] * T] * B)
    plain = make_learner(q, q)
    scaled = make_learner(q, q, standardise_rewards=True)
    stats = plain.update(batch)
    assert torch.isclose(stats["target_mean"], batch.reward.mean())  # zero utilities: y = r
    s = scaled.update(batch)
    r = batch.reward
    expected = (r - r.mean()) / r.var().sqrt()  # first batch: the statistics are its own
    assert torch.isclose(s["target_mean"], expected.mean(), atol=1e-3)
    restored = make_learner(q, q, standardise_rewards=True)
    restored.load_state_dict(scaled.state_dict())
    assert restored.reward_stats.state_dict() == scaled.reward_stats.state_dict()


def test_parameters_and_gradients_live_in_one_flat_buffer():
    from qmix.bench.learner import LearnerShapes, bench_config, build_pair, random_batch

    s = LearnerShapes(4, 6, 2, 5, 3, 7)
    learner, _ = build_pair(s, bench_config(), seed=0)
    names = {k: v.shape for k, v in learner.agent.state_dict().items()}
    flat = learner.flat
    assert flat is not None and flat.numel() == sum(p.numel() for p in learner.params)
    before = copy.deepcopy(learner.agent.state_dict())
    learner.update(random_batch(s))
    for p in learner.params:  # still views of the flat buffers after backward and the optimiser step
        assert p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == flat.grad.untyped_storage().data_ptr()
    after = learner.agent.state_dict()
    assert {k: v.shape for k, v in after.items()} == names  # checkpoints keep their layout
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_per_parameter_optimizer_state_of_older_checkpoints_loads(optimizer, monkeypatch):
    """A learner saved with one optimiser state per parameter (earlier versions) resumes exactly."""
    import qmix.learner as L
    from qmix.bench.learner import LearnerShapes, bench_config, build_pair, random_batch

    s, cfg = LearnerShapes(4, 6, 2, 5, 3, 7), bench_config(optimizer=optimizer)
    batch = random_batch(s)
    with monkeypatch.context() as m:
        m.setattr(L, "flatten_parameters", lambda params: None)
        old, _ = build_pair(s, cfg, seed=1)
    new, _ = build_pair(s, cfg, seed=1)
    for _ in range(3):
        old.update(batch)
    saved = copy.deepcopy(old.state_dict())
    assert len(saved["optimizer"]["state"]) == len(old.params) > 1
    new.load_state_dict(saved)
    old.update(batch)
    new.update(batch)
    for a, b in zip(old.params, new.params):
        assert torch.allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
@pytest.mark.parametrize("clip", [10.0, 1e-3])  # 1e-3: every update is clipped
def test_flat_clip_and_optimiser_step_match_torch(clip, optimizer, monkeypatch):
    """The learner's own gradient clipping and optimiser step on the flat parameter give what
    ``clip_grad_norm_`` and ``torch.optim`` give, update after update."""
    from qmix.bench.learner import LearnerShapes, bench_config, build_pair, random_batch

    s, cfg = LearnerShapes(4, 6, 2, 5, 3, 7), bench_config(grad_norm_clip=clip, optimizer=optimizer)
    ours, _ = build_pair(s, cfg, seed=2)
    plain, _ = build_pair(s, cfg, seed=2)
    plain._optimizer = (torch.optim.Adam([plain.flat], lr=cfg.lr, eps=cfg.optim_eps, fused=True)
                        if optimizer == "adam" else
                        torch.optim.RMSprop([plain.flat], lr=cfg.lr, alpha=cfg.optim_alpha, eps=cfg.optim_eps,
                                            foreach=False))
    monkeypatch.setattr(plain, "_clip_gradients", lambda: torch.nn.utils.clip_grad_norm_(
        plain.trained, clip).detach())
    for seed in range(5):
        batch = random_batch(s, seed=seed)
        a, b = ours.update(batch), plain.update(batch)
        assert torch.allclose(a["grad_norm"], b["grad_norm"], rtol=1e-6)
    assert type(ours.optimizer).__module__ == "qmix.optim"
    assert torch.allclose(ours.flat, plain.flat, rtol=1e-5, atol=1e-7)
    st_a, st_b = ours.optimizer.state[ours.flat], plain.optimizer.state[plain.flat]
    assert float(st_a["step"]) == float(st_b["step"]) == 5
    for k in st_b:
        assert torch.allclose(st_a[k], st_b[k], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_the_optimiser_is_built_on_first_use_with_any_state_loaded_before(optimizer):
    """A learner that never updates (the main process beside a learner process) never builds an
    optimiser; state loaded before the first use, or a fresh one (saved as None), resumes exactly."""
    from qmix.bench.learner import LearnerShapes, bench_config, build_pair, random_batch

    s, cfg = LearnerShapes(4, 6, 2, 5, 3, 7), bench_config(optimizer=optimizer)
    batch = random_batch(s)
    a, _ = build_pair(s, cfg, seed=1)
    b, _ = build_pair(s, cfg, seed=2)
    fresh = a.state_dict()
    assert fresh["optimizer"] is None and a._optimizer is None
    b.update(batch)  # b's optimiser now has state of its own
    b.load_state_dict(copy.deepcopy(fresh))  # b's own optimiser state is dropped: fresh as a's
    for _ in range(2):
        a.update(batch)
        b.update(batch)
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params))
    c, _ = build_pair(s, cfg, seed=3)
    c.load_state_dict(copy.deepcopy(a.state_dict()))  # held, not built
    assert c._optimizer is None and c.state_dict()["optimizer"] is not None
    a.update(batch)
    c.update(batch)
    assert all(torch.equal(x, y) for x, y in zip(a.params, c.params))


def test_full_batches_pack_by_slicing_as_the_index_path_packs():
    """When every episode fills the batch, packing is a transpose and the rows of step t + shift
    one slice: the same arrays as the general index path, row for row."""
    from qmix.modules.packing import EpisodePacking

    B, T = 5, 7
    x = torch.randn(B, T + 2, 3, 2)
    lengths = torch.full((B,), T)
    fast, slow = EpisodePacking(lengths, T), EpisodePacking(lengths, T, uniform=False)
    inputs_fast, inputs_slow = EpisodePacking(lengths + 1, T + 1), EpisodePacking(lengths + 1, T + 1, uniform=False)
    assert fast.uniform and inputs_fast.uniform and not slow.uniform
    assert fast.counts == slow.counts and fast.rows == slow.rows
    for name in ("episode", "step", "index"):
        assert torch.equal(getattr(fast, name), getattr(slow, name))
    for shift in (0, 1, 2):
        assert torch.equal(fast.pack(x, shift), slow.pack(x, shift))
    packed = inputs_slow.pack(x)
    for shift in (0, 1):
        assert torch.equal(inputs_fast.take(packed, fast, shift), inputs_slow.take(packed, slow, shift))
    y = torch.randn(fast.rows, 2)
    assert torch.equal(fast.unpack(y), slow.unpack(y))
    assert not EpisodePacking(torch.tensor([T, T - 1, T, T, T]), T).uniform


@pytest.mark.parametrize("agent", ["rnn", "mlp"])
def test_a_full_batch_updates_as_the_index_path_does(agent, monkeypatch):
    """The learner on a batch of full-length episodes (the slicing path) gives the loss, the
    gradients and the parameters of the general path, bit for bit."""
    import qmix.learner as L
    from qmix.bench.learner import LearnerShapes, bench_config, random_batch
    from qmix.modules import build_agent, build_mixer
    from qmix.modules.packing import EpisodePacking

    s, cfg = LearnerShapes(6, 9, 3, 5, 4, 7), bench_config(agent=agent)
    batch = random_batch(s, seed=3, full=True)

    def learner():
        torch.manual_seed(4)
        return Learner(cfg, build_agent(cfg, s.obs_dim, s.n_agents, s.n_actions),
                       build_mixer(cfg, s.n_agents, s.state_dim), s.n_actions)

    fast, slow = learner(), learner()
    seen = []
    monkeypatch.setattr(L, "EpisodePacking",
                        lambda lengths, T, uniform: seen.append(("index", uniform)) or EpisodePacking(lengths, T, uniform=False))
    b = slow.update(batch)
    monkeypatch.setattr(L, "EpisodePacking",
                        lambda lengths, T, uniform: seen.append(("slices", uniform)) or EpisodePacking(lengths, T, uniform=uniform))
    a = fast.update(batch)
    assert seen == [("index", True)] * 2 + [("slices", True)] * 2
    for k in ("loss", "grad_norm", "q_taken_mean", "target_mean"):
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(fast.flat, slow.flat) and torch.equal(fast.flat.grad, slow.flat.grad)
