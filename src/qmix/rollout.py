"""Acting: step ``num_envs`` environments together, one forward for all envs and agents.

Each env copy runs its own episode; when one ends it is handed to the replay buffer and that copy
alone is reset (no copy waits for the others). Episodes are staged in preallocated tensors
``[B, T+1, ...]`` written at each copy's own time index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import time
from collections import defaultdict

import numpy as np
import torch

from qmix.controller import epsilon_greedy, epsilon_greedy_arrays
from qmix.envs.base import BatchedEnv


@dataclass
class FinishedEpisodes:
    """Statistics of the episodes that ended during one ``collect`` call (host-side lists)."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    info: dict[str, list[float]] = field(default_factory=dict)
    copies: list[int] = field(default_factory=list)  # which env copy ran each episode

    def extend(self, other: "FinishedEpisodes") -> None:
        self.returns += other.returns
        self.lengths += other.lengths
        self.copies += other.copies
        for k, v in other.info.items():
            self.info.setdefault(k, []).extend(v)

    def __len__(self) -> int:
        return len(self.returns)


class Runner:
    """Drives one batched env with the online agent network."""

    def __init__(self, cfg, env: BatchedEnv, agent, generator: torch.Generator):
        self.cfg, self.env, self.agent, self.generator = cfg, env, agent, generator
        info = env.info
        self.n_agents, self.n_actions, self.limit = info.n_agents, info.n_actions, info.episode_limit
        B, T1, n, dev = env.num_envs, info.episode_limit + 1, info.n_agents, env.device
        self.B, self.device = B, dev
        self.obs = torch.zeros(B, T1, n, info.obs_dim, device=dev)
        self.state = torch.zeros(B, T1, info.state_dim, device=dev)
        self.avail = torch.zeros(B, T1, n, info.n_actions, dtype=torch.bool, device=dev)
        self.actions = torch.zeros(B, T1 - 1, n, dtype=torch.long, device=dev)
        self.reward = torch.zeros(B, T1 - 1, device=dev)
        self.terminated = torch.zeros(B, T1 - 1, dtype=torch.bool, device=dev)
        self.t = torch.zeros(B, dtype=torch.long, device=dev)  # each copy's step within its episode
        self.ep_return = torch.zeros(B, device=dev)
        self.last_actions = torch.full((B, n), -1, dtype=torch.long, device=dev)
        self.hidden = agent.initial_hidden(B, n, dev)
        self._rows = torch.arange(B, device=dev)
        self._first_row = self._rows * T1  # flat row of each copy's step 0 in the [B * (T+1)] staging
        self._first_step = self._rows * (T1 - 1)  # ... and in the [B * T] staging of actions, rewards
        # Flat views of the staging arrays, written with one index_copy_ each per step.
        self._flat = (self.obs.view(B * T1, n, info.obs_dim), self.state.view(B * T1, info.state_dim),
                      self.avail.view(B * T1, n, info.n_actions))
        self._flat_steps = (self.actions.view(-1, n), self.reward.view(-1), self.terminated.view(-1))
        # One copy on the CPU: each step's writes go through NumPy views of the same staging memory
        # (a few NumPy assignments instead of a dozen tensor operations; the same bytes written).
        self._one_copy = None
        if B == 1 and dev.type == "cpu":
            self._one_copy = tuple(x[0].numpy() for x in (self.obs, self.state, self.avail, self.actions,
                                                          self.reward, self.terminated)) \
                + (self.t.numpy(), self.ep_return.numpy(), torch.ones(1, dtype=torch.bool))
        # ... and one in-process copy of a library's environment (VectorEnv.step_one) answers in
        # NumPy straight into that memory and into the two tensors the next step acts on (their
        # own allocations: a matrix product's rounding depends on its input's alignment, and a
        # staging row's is not always the batch path's).
        self._lane = self._one_copy is not None and getattr(env, "one_copy_lane", False)
        if self._lane:
            self._lane_now = (torch.zeros(1, n, info.obs_dim), torch.zeros(1, n, info.n_actions, dtype=torch.bool))
            self._lane_np = tuple(x[0].numpy() for x in self._lane_now)
        self._now = None  # (obs, avail) each copy acts on next: the env's last answer
        self._numpy_acting = hasattr(agent, "step_arrays") and dev.type == "cpu"
        self.started = False
        self.timing: dict[str, float] = defaultdict(float)  # seconds spent: act, env, store

    def start(self) -> None:
        obs, state, avail = self.env.reset()
        self._write_obs(self._first_row + self.t, obs, state, avail)
        self._now = (obs, avail)
        self.started = True

    def _write_obs(self, flat, obs, state, avail) -> None:
        """Write the observations of the copies at staging rows ``flat`` (into ``[B * (T+1)]``)."""
        obs_rows, state_rows, avail_rows = self._flat
        obs_rows.index_copy_(0, flat, obs)
        state_rows.index_copy_(0, flat, state)
        avail_rows.index_copy_(0, flat, avail)

    def act(self, obs: torch.Tensor, avail: torch.Tensor, epsilon: float) -> torch.Tensor:
        agent = self.agent
        if self._numpy_acting and agent.steps_in_numpy(obs):  # a few agents on the CPU: arrays throughout
            q, hidden = agent.step_arrays(obs.numpy(), self.last_actions.numpy(), self.hidden.numpy())
            if hidden is not None:
                self.hidden = torch.from_numpy(hidden)
            return epsilon_greedy_arrays(q, avail.numpy(), epsilon, self.generator)
        with torch.no_grad():
            q, self.hidden = agent.forward_step(obs, self.last_actions, self.hidden)  # q [B, n, A]
        return epsilon_greedy(q, avail, epsilon, self.generator)

    def collect(self, steps: int, epsilon: float, buffer=None) -> FinishedEpisodes:
        """Step every copy ``steps`` times; finished episodes go to ``buffer`` (if given)."""
        if not self.started:
            self.start()
        done = FinishedEpisodes()
        if self._now is None:  # restored from a checkpoint: read the current step back
            self._now = (self.obs[self._rows, self.t], self.avail[self._rows, self.t])
        step = self._step_lane if self._lane else self._step_batch
        clock, timing = time.perf_counter, self.timing
        for _ in range(steps):
            t0 = clock()
            obs, avail = self._now
            actions = self.act(obs, avail, epsilon)
            t1 = clock()
            t2 = step(actions, buffer, done)
            t3 = clock()
            timing["act"] += t1 - t0
            timing["env"] += t2 - t1
            timing["store"] += t3 - t2
        return done

    def _step_batch(self, actions: torch.Tensor, buffer, done: FinishedEpisodes) -> float:
        """Step the batch with ``actions`` and stage its answer (finished episodes to ``buffer``
        and ``done``); returns the clock when the environment had answered."""
        res = self.env.step(actions)
        t2 = time.perf_counter()
        if self._one_copy is not None:
            ended = self._store_one(actions, res)
        else:
            actions_flat, reward_flat, terminated_flat = self._flat_steps
            step = self._first_step + self.t  # flat index of each copy's step t in [B * T]
            actions_flat.index_copy_(0, step, actions)
            reward_flat.index_copy_(0, step, res.reward)
            terminated_flat.index_copy_(0, step, res.terminated)
            self.ep_return += res.reward
            self.t += 1
            self._write_obs(self._first_row + self.t, res.obs, res.state, res.avail)
            ended = res.terminated | res.truncated
            if not ended.any():
                ended = None
        self.last_actions = actions
        self._now = (res.obs, res.avail)
        if ended is not None:
            done.extend(self._finish(ended, res.info, buffer))
        return t2

    def _step_lane(self, actions: torch.Tensor, buffer, done: FinishedEpisodes) -> float:
        """:meth:`_step_batch` for one in-process copy of a library's environment
        (``one_copy_lane``): the same writes, from the environment's NumPy answers, with no batch
        tensors built for them."""
        acts = actions.numpy()[0]
        o, s, a, r, term, trunc, info = self.env.step_one(acts)
        t2 = time.perf_counter()
        self._write_one(acts, np.float32(r), term, o, s, a)  # the team reward stored as float32, as in the batch path
        obs_now, avail_now = self._lane_np
        obs_now[:] = o
        avail_now[:] = a
        self.last_actions = actions
        self._now = self._lane_now
        if term or trunc:
            outcome = {k: torch.tensor([info.get(k, 0.0)], dtype=torch.float32) for k in self.env.info.info_keys}
            done.extend(self._finish(self._one_copy[-1], outcome, buffer))
        return t2

    def _store_one(self, actions: torch.Tensor, res) -> torch.Tensor | None:
        """The collect step's writes for a single CPU copy, through NumPy views; returns the
        ``ended`` mask if its episode ended, else None."""
        term = res.terminated.numpy()[0]
        self._write_one(actions.numpy()[0], res.reward.numpy()[0], term, res.obs.numpy()[0],
                        res.state.numpy()[0], res.avail.numpy()[0])
        return self._one_copy[-1] if term or res.truncated.numpy()[0] else None

    def _write_one(self, acts, reward, terminated, obs, state, avail) -> None:
        """Stage one step of the single CPU copy (NumPy values) at its time index, and advance it."""
        obs_s, state_s, avail_s, acts_s, reward_s, term_s, t_view, ep_return, _ = self._one_copy
        t = int(t_view[0])
        acts_s[t] = acts
        reward_s[t] = reward
        term_s[t] = terminated
        ep_return += reward
        t_view[0] = t + 1
        obs_s[t + 1] = obs
        state_s[t + 1] = state
        avail_s[t + 1] = avail

    def _finish(self, ended: torch.Tensor, info: dict, buffer) -> FinishedEpisodes:
        idx = ended.nonzero().squeeze(1)
        length = self.t[idx]
        if buffer is not None:
            buffer.insert(self.obs[idx], self.state[idx], self.avail[idx], self.actions[idx],
                          self.reward[idx], self.terminated[idx], length)
        out = FinishedEpisodes(self.ep_return[idx].tolist(), length.tolist(),
                               {k: v[idx].float().tolist() for k, v in info.items()}, idx.tolist())
        # Reset the ended copies only; clear their staging rows so no stale step survives.
        self.obs[idx] = 0
        self.state[idx] = 0
        self.avail[idx] = False
        self.actions[idx] = 0
        self.reward[idx] = 0
        self.terminated[idx] = False
        self.t[idx] = 0
        self.ep_return[idx] = 0
        self.last_actions[idx] = -1
        self.hidden[idx] = 0
        obs, state, avail = self.env.reset(ended)
        self._write_obs(self._first_row[idx], obs[idx], state[idx], avail[idx])
        self._now = (obs, avail)  # every copy's current observation, the reset ones included
        return out

    def run_episodes(self, n_episodes: int, epsilon: float) -> FinishedEpisodes:
        """Run exactly ``n_episodes`` fresh episodes (for tests and evaluation).

        Copy i runs episodes i, i+B, i+2B, ... so the sample is not biased toward short episodes
        (a copy whose quota is met keeps stepping, but its extra episodes are not counted).
        """
        self.reset_all()
        quota = [len(range(i, n_episodes, self.B)) for i in range(self.B)]
        count = [0] * self.B
        done = FinishedEpisodes()
        while len(done) < n_episodes:
            new = self.collect(1, epsilon)
            for j, c in enumerate(new.copies):
                if count[c] < quota[c]:
                    count[c] += 1
                    done.returns.append(new.returns[j])
                    done.lengths.append(new.lengths[j])
                    done.copies.append(c)
                    for k, v in new.info.items():
                        done.info.setdefault(k, []).append(v[j])
        return done

    def reset_all(self) -> None:
        self.t.zero_()
        self.ep_return.zero_()
        self.last_actions.fill_(-1)
        self.hidden.zero_()
        for buf in (self.obs, self.state, self.avail, self.actions, self.reward, self.terminated):
            buf.zero_()
        self.start()

    # --- checkpointing of in-flight episodes ---
    def state_dict(self) -> dict:
        return {k: getattr(self, k).cpu().clone() for k in
                ("obs", "state", "avail", "actions", "reward", "terminated", "t", "ep_return",
                 "last_actions", "hidden")} | {"started": self.started}

    def load_state_dict(self, data: dict) -> None:
        self._now = None
        for k, v in data.items():
            if k == "started":
                self.started = v
            else:
                getattr(self, k).copy_(v.to(self.device))
