"""Learner-update benchmark: ours against the plain pymarl-style reference, same random batch.

Prints milliseconds per update, the update's model FLOPs, the GFLOP/s achieved, and this
machine's large float32 matmul GFLOP/s (the practical ceiling), so the distance to the hardware
floor is visible.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from qmix.bench.reference import CellAgent, ReferenceLearner
from qmix.buffer import EpisodeBatch
from qmix.config import resolve
from qmix.learner import Learner
from qmix.modules import build_agent, build_mixer


@dataclass(frozen=True)
class LearnerShapes:
    batch: int
    T: int
    n_agents: int
    obs_dim: int
    n_actions: int
    state_dim: int


# Shapes of the SMAC maps (obs/state sizes as SMAC), pymarl's batch of 32 episodes at full length.
SCENARIOS = {
    "3m": LearnerShapes(32, 60, 3, 30, 9, 48),
    "8m": LearnerShapes(32, 120, 8, 80, 14, 168),
    "27m_vs_30m": LearnerShapes(32, 180, 27, 285, 36, 1170),
}


def random_batch(s: LearnerShapes, seed: int = 0, device="cpu", full: bool = False) -> EpisodeBatch:
    """A batch of random episodes; the longest is exactly ``T`` steps (so T is what is unrolled);
    ``full``: every episode is."""
    g = torch.Generator().manual_seed(seed)
    B, T, n = s.batch, s.T, s.n_agents
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    lengths[0] = T
    if full:
        lengths[:] = T
    filled = torch.arange(T) < lengths.unsqueeze(1)
    terminated = torch.zeros(B, T, dtype=torch.bool)
    ends = torch.rand(B, generator=g) < 0.7  # most end in a terminal state, the rest time out
    terminated[torch.arange(B)[ends], lengths[ends] - 1] = True
    avail = torch.rand(B, T + 1, n, s.n_actions, generator=g) < 0.7
    avail[..., 1] = True  # "stop" is always available
    actions = torch.multinomial(avail[:, :T].reshape(-1, s.n_actions).float(), 1, generator=g).view(B, T, n)
    batch = EpisodeBatch(
        obs=torch.rand(B, T + 1, n, s.obs_dim, generator=g),
        state=torch.rand(B, T + 1, s.state_dim, generator=g),
        avail=avail, actions=actions * filled.unsqueeze(-1),
        reward=torch.rand(B, T, generator=g) * filled,
        terminated=terminated, filled=filled,
    )
    return batch.to(device)


def bench_config(**overrides):
    """pymarl QMIX with 2-layer hypernets (the issue's reference setting)."""
    return resolve({"alg": "qmix", "env": "matrix:two-step", "hypernet_layers": 2, **overrides})


def build_pair(s: LearnerShapes, cfg, device="cpu", seed: int = 0):
    """Our learner and the reference, with identical weights."""
    torch.manual_seed(seed)
    agent = build_agent(cfg, s.obs_dim, s.n_agents, s.n_actions).to(device)
    in_dim = agent.layout.dim
    mixer = build_mixer(cfg, s.n_agents, s.state_dim).to(device)
    ours = Learner(cfg, agent, mixer, s.n_actions)
    ref_agent = CellAgent(in_dim, s.n_actions, cfg.rnn_hidden_dim).to(device).load_from(agent)
    ref_target = CellAgent(in_dim, s.n_actions, cfg.rnn_hidden_dim).to(device).load_from(ours.target_agent)
    ref = ReferenceLearner(cfg, agent.layout, ref_agent, ref_target, copy.deepcopy(mixer),
                           copy.deepcopy(ours.target_mixer))
    return ours, ref


def update_flops(s: LearnerShapes, cfg) -> float:
    """Model FLOPs of one update (multiply-add = 2): online fwd+bwd (3x fwd) + target fwd."""
    in_dim = s.obs_dim + s.n_actions * cfg.obs_last_action + s.n_agents * cfg.obs_agent_id
    H, E, He = cfg.rnn_hidden_dim, cfg.mixing_embed_dim, cfg.hypernet_embed
    tokens = s.batch * (s.T + 1) * s.n_agents
    agent_fwd = tokens * 2 * (in_dim * H + 2 * H * 3 * H + H * s.n_actions)
    rows = s.batch * s.T
    if cfg.hypernet_layers == 2:
        hyper = 2 * (s.state_dim * He + He * s.n_agents * E) + 2 * (s.state_dim * He + He * E)
    else:
        hyper = 2 * s.state_dim * s.n_agents * E + 2 * s.state_dim * E
    mixer_fwd = rows * (hyper + 2 * s.state_dim * E * 2 + 2 * E + 2 * s.n_agents * E + 2 * E)
    return 3 * (agent_fwd + mixer_fwd) + agent_fwd + mixer_fwd


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _time_interleaved(fns: list, updates: int, warmup: int) -> list[float]:
    """Median seconds per call of each function, calls interleaved (A B A B ...) so that a
    machine whose speed drifts (shared or thermally limited CPUs) affects all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(updates):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [sorted(t)[len(t) // 2] for t in times]


def run_learner_bench(scenarios: list[str], updates: int = 10, warmup: int = 2, device: str = "cpu",
                      reference: bool = True) -> list[dict]:
    results = []
    peak = matmul_gflops()
    for name in scenarios:
        s = SCENARIOS[name]
        cfg = bench_config()
        ours, ref = build_pair(s, cfg, device)
        batch = random_batch(s, device=device)
        flops = update_flops(s, cfg)
        row = {"scenario": name, "shapes": vars(s) if hasattr(s, "__dict__") else s.__dict__,
               "gflop_per_update": flops / 1e9, "matmul_peak_gflops": peak}
        fns = [lambda: ours.update(batch)] + ([lambda: ref.update(batch)] if reference else [])
        t_ours, *t_ref = _time_interleaved(fns, updates, warmup)
        row.update(ours_ms=t_ours * 1e3, ours_gflops=flops / t_ours / 1e9)
        if reference:
            t_ref = t_ref[0]
            row.update(reference_ms=t_ref * 1e3, reference_gflops=flops / t_ref / 1e9, speedup=t_ref / t_ours)
        results.append(row)
    return results
