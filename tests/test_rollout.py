"""Acting and staging: epsilon-greedy choices, and the episodes the runner hands to the buffer are
exactly what the environment produced, step by step, for every copy."""

import pytest
import torch

from qmix.buffer import EpisodeBuffer
from qmix.config import resolve
from qmix.controller import epsilon_greedy, masked_argmax
from qmix.envs.registry import make
from qmix.modules.agents import build_agent
from qmix.rollout import Runner


def test_epsilon_greedy_never_picks_unavailable_and_explores_uniformly():
    g = torch.Generator().manual_seed(0)
    q = torch.tensor([[[5.0, 1.0, 0.0, 3.0]]]).expand(20000, 1, 4)
    avail = torch.tensor([True, False, True, True]).expand(20000, 1, 4)
    greedy = epsilon_greedy(q, avail, 0.0, g)
    assert (greedy == 0).all()
    masked = masked_argmax(q, torch.tensor([False, True, True, True]).expand(20000, 1, 4))
    assert (masked == 3).all()
    uniform = epsilon_greedy(q, avail, 1.0, g).flatten()
    counts = torch.bincount(uniform, minlength=4).float() / uniform.numel()
    assert counts[1] == 0
    assert torch.allclose(counts[[0, 2, 3]], torch.full((3,), 1 / 3), atol=0.02)
    half = epsilon_greedy(q, avail, 0.5, g).flatten()
    share = (half == 0).float().mean()  # greedy half + a third of the explorers
    assert abs(share - (0.5 + 0.5 / 3)) < 0.02


class Recorder:
    """A real batched env that remembers everything it returned, per copy."""

    def __init__(self, env):
        self.env, self.info, self.num_envs, self.device = env, env.info, env.num_envs, env.device
        self.log = [[] for _ in range(env.num_envs)]  # per copy: list of episodes (list of dicts)

    def reset(self, mask=None):
        obs, state, avail = self.env.reset(mask)
        for i in range(self.num_envs):
            if mask is None or mask[i]:
                self.log[i].append([{"obs": obs[i].clone(), "state": state[i].clone(), "avail": avail[i].clone()}])
        return obs, state, avail

    def step(self, actions):
        res = self.env.step(actions)
        for i in range(self.num_envs):
            ep = self.log[i][-1]
            if "reward" in ep[-1]:
                continue  # this copy's episode already ended: it is not stepped
            ep[-1].update(action=actions[i].clone(), reward=float(res.reward[i]), terminated=bool(res.terminated[i]))
            ep.append({"obs": res.obs[i].clone(), "state": res.state[i].clone(), "avail": res.avail[i].clone()})
            if res.terminated[i] or res.truncated[i]:
                ep[-1]["reward"] = None  # marks the end
        return res


@pytest.mark.parametrize("num_envs", [3, 1])  # one copy on the CPU is staged through NumPy views
def test_runner_stages_exactly_what_the_env_returned(num_envs):
    cfg = resolve({"env": "micro:3m"})
    env = Recorder(make("micro:3m", num_envs=num_envs, seed=4))
    info = env.info
    agent = build_agent(cfg, info.obs_dim, info.n_agents, info.n_actions)
    buffer = EpisodeBuffer(64, info.episode_limit, info.n_agents, info.obs_dim, info.state_dim,
                           info.n_actions, torch.device("cpu"))
    runner = Runner(cfg, env, agent, torch.Generator().manual_seed(0))
    assert (runner._one_copy is not None) == (num_envs == 1)
    finished = runner.collect(150 * 3 // num_envs, epsilon=0.5, buffer=buffer)
    assert len(finished) >= 3 and buffer.episodes_in == len(finished)
    ended = [iter([ep for ep in log if ep[-1].get("reward", 0) is None]) for log in env.log]
    for e, (copy, length) in enumerate(zip(finished.copies, finished.lengths)):
        episode = next(ended[copy])  # each copy's episodes finish in order
        assert len(episode) - 1 == length == int(buffer.length[e])
        for t, step in enumerate(episode):
            assert torch.equal(buffer.obs[e, t], step["obs"])
            assert torch.equal(buffer.state[e, t], step["state"])
            assert torch.equal(buffer.avail[e, t], step["avail"])
            if t < length:
                assert torch.equal(buffer.actions[e, t].long(), step["action"])
                assert buffer.reward[e, t] == torch.tensor(step["reward"], dtype=torch.float32)
                assert bool(buffer.terminated[e, t]) == step["terminated"]
        assert (buffer.obs[e, length + 1:] == 0).all() and (buffer.actions[e, length:] == 0).all()
        assert abs(finished.returns[e] - sum(s["reward"] for s in episode[:-1])) < 1e-4


def same_runs_two_ways(cfg, make_env, steps: int, choose_path) -> list[tuple]:
    """Collect ``steps`` from a fresh environment, agent and runner twice, with ``choose_path(runner,
    True)`` (the runner's own path, checked by the caller) and ``choose_path(runner, False)`` (the
    general path); asserts both runs gave the same episodes, buffer and staging, bit for bit, and
    returns ``(finished, buffer, runner, env)`` of each."""
    out = []
    for default in (True, False):
        env = make_env()
        info = env.info
        torch.manual_seed(0)
        agent = build_agent(cfg, info.obs_dim, info.n_agents, info.n_actions)
        buffer = EpisodeBuffer(64, info.episode_limit, info.n_agents, info.obs_dim, info.state_dim,
                               info.n_actions, torch.device("cpu"))
        runner = Runner(cfg, env, agent, torch.Generator().manual_seed(1))
        choose_path(runner, default)
        out.append((runner.collect(steps, epsilon=0.3, buffer=buffer), buffer, runner, env))
    (fa, ba, ra, _), (fb, bb, rb, _) = out
    assert fa.returns == fb.returns and fa.lengths == fb.lengths and fa.info == fb.info
    for x, y in ((ba.state_dict(), bb.state_dict()), (ra.state_dict(), rb.state_dict())):
        for k in x:
            assert torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])), k
    assert int(ra.t[0]) > 0  # an episode was in flight
    return out


def test_one_copy_staging_is_the_tensor_path_bit_for_bit():
    """The single-copy NumPy writes against the general tensor path: same buffer, same staging
    (an episode in flight included), same statistics."""

    def choose(runner, numpy_path):
        assert runner._one_copy is not None
        if not numpy_path:
            runner._one_copy = None

    (finished, *_), _ = same_runs_two_ways(resolve({"env": "micro:3m"}), lambda: make("micro:3m", num_envs=1, seed=7),
                                           333, choose)
    assert len(finished) >= 5


def test_small_cpu_epsilon_greedy_is_the_tensor_path_bit_for_bit(monkeypatch):
    """Small batches choose in NumPy: the same draw must give the same actions as the tensor path,
    ties, masks, NaN and epsilons next to a draw included."""
    import qmix.controller as controller

    gen = torch.Generator().manual_seed(3)
    cases = []
    for B, n, A in [(1, 2, 6), (1, 3, 9), (4, 5, 7), (1, 27, 36)]:
        for _ in range(200):
            q = torch.randint(-3, 3, (B, n, A), generator=gen).float()  # many ties
            if torch.rand((), generator=gen) < 0.1:
                q[0, 0, 0] = float("nan")
            avail = torch.rand(B, n, A, generator=gen) < 0.7
            avail[..., 0] |= ~avail.any(-1)
            eps = float(torch.rand((), generator=gen))
            cases.append((q, avail, eps if eps > 0.2 else 0.0))  # greedy (no draw) too
    cases.append((torch.zeros(1, 2, 3), torch.ones(1, 2, 3, dtype=torch.bool), 1.0))
    results = []
    for small in (controller.SMALL, 0):
        monkeypatch.setattr(controller, "SMALL", small)
        g = torch.Generator().manual_seed(11)
        results.append([epsilon_greedy(q, avail, eps, g) for q, avail, eps in cases])
    for a, b in zip(*results):
        assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)
    # epsilons at and around a draw: compared in float32, as torch compares with a Python scalar
    draw = float(torch.rand(1, 1, 4, generator=torch.Generator().manual_seed(5))[0, 0, 3])
    q, avail = torch.tensor([[[0.0, 2.0, 1.0]]]), torch.ones(1, 1, 3, dtype=torch.bool)  # greedy 1, explorer 2
    for eps in (draw, draw + 1e-9, draw - 1e-9, draw + 1e-7, draw - 1e-7):
        chosen = []
        for small in (1024, 0):
            monkeypatch.setattr(controller, "SMALL", small)
            chosen.append(epsilon_greedy(q, avail, eps, torch.Generator().manual_seed(5)))
        assert torch.equal(*chosen), eps


def _scored_foraging():
    """Level-Based Foraging whose final info carries an outcome (the food collected so far)."""
    import gymnasium

    class Scored(gymnasium.Wrapper):
        def reset(self, **kwargs):
            self.collected = 0.0
            return self.env.reset(**kwargs)

        def step(self, actions):
            obs, rewards, terminated, truncated, info = self.env.step(actions)
            self.collected += float(sum(rewards))
            return obs, rewards, terminated, truncated, {**info, "collected": self.collected}

    import lbforaging  # noqa: F401

    return Scored(gymnasium.make("Foraging-5x5-2p-1f-v3", disable_env_checker=True))


def test_one_copy_lane_is_the_tensor_path_bit_for_bit():
    """One in-process copy of a library's environment answers in NumPy straight into the staging
    (VectorEnv.step_one): against the general path through step()'s batch tensors and tensor writes, the same buffer,
    staging, statistics and outcomes, over terminal and time-limit endings and LBF's action masks."""
    gymnasium = pytest.importorskip("gymnasium")
    pytest.importorskip("lbforaging")
    if "ScoredForaging-v0" not in gymnasium.registry:
        gymnasium.register("ScoredForaging-v0", entry_point=_scored_foraging)

    def choose(runner, lane):
        assert runner._lane
        if not lane:  # the general tensor path
            runner._lane, runner._one_copy = False, None

    (finished, buffer, _, env_a), (_, _, _, env_b) = same_runs_two_ways(
        resolve({"env": "gym:ScoredForaging-v0"}),
        lambda: make("gym:ScoredForaging-v0", num_envs=1, seed=7, time_limit=15, info_keys=["collected"]),
        400, choose)
    assert len(finished) >= 20 and set(finished.lengths) > {15}  # terminal and time-limit endings
    assert any(x > 0 for x in finished.info["collected"])  # outcomes read where episodes ended
    assert not buffer.avail[: len(finished)].all()  # LBF's masks were staged, not all-True rows
    assert (env_a._t == env_b._t).all()  # the same environment clock
