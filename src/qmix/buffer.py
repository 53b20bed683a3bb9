"""Episode replay: preallocated tensors, FIFO, uniform sampling of whole episodes.

Episode ``e`` occupies row ``e % capacity``; time has ``max_len + 1`` slots so the final
observation/state of a truncated episode is kept for bootstrapping. ``filled[e, t]`` marks the
steps that really happened (t < length); nothing past it is ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qmix.errors import QmixError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class EpisodeBatch:
    """A batch of whole episodes, cut to the longest one in it (``T`` = its length)."""

    obs: torch.Tensor  # [B, T+1, n, obs_dim] float32
    state: torch.Tensor  # [B, T+1, state_dim] float32
    avail: torch.Tensor  # [B, T+1, n, n_actions] bool
    actions: torch.Tensor  # [B, T, n] int64
    reward: torch.Tensor  # [B, T] float32
    terminated: torch.Tensor  # [B, T] bool, true terminal at step t (no bootstrap)
    filled: torch.Tensor  # [B, T] bool, step t happened

    def to(self, device) -> "EpisodeBatch":
        return EpisodeBatch(**{k: v.to(device, non_blocking=True) for k, v in vars(self).items()})


class EpisodeBuffer:
    FIELDS = ("obs", "state", "avail", "actions", "reward", "terminated", "length")  # the stored arrays

    def __init__(self, capacity: int, max_len: int, n_agents: int, obs_dim: int, state_dim: int,
                 n_actions: int, device: torch.device, obs_dtype: str = "float32"):
        self.capacity, self.max_len, self.device = capacity, max_len, device
        self.obs_dtype = _DTYPES[obs_dtype]
        T1 = max_len + 1
        action_dtype = torch.int16 if n_actions < 2**15 else torch.int32
        self.obs = torch.zeros(capacity, T1, n_agents, obs_dim, dtype=self.obs_dtype, device=device)
        self.state = torch.zeros(capacity, T1, state_dim, dtype=self.obs_dtype, device=device)
        self.avail = torch.zeros(capacity, T1, n_agents, n_actions, dtype=torch.bool, device=device)
        self.actions = torch.zeros(capacity, max_len, n_agents, dtype=action_dtype, device=device)
        self.reward = torch.zeros(capacity, max_len, dtype=torch.float32, device=device)
        self.terminated = torch.zeros(capacity, max_len, dtype=torch.bool, device=device)
        self.length = torch.zeros(capacity, dtype=torch.long, device=device)
        self.episodes_in = 0  # total episodes ever inserted (FIFO position)

    @staticmethod
    def nbytes(capacity, max_len, n_agents, obs_dim, state_dim, n_actions, obs_dtype="float32") -> int:
        """Memory the buffer will take, computed before allocating it."""
        item = _DTYPES[obs_dtype].itemsize
        T1 = max_len + 1
        per_episode = (T1 * (n_agents * obs_dim + state_dim) * item + T1 * n_agents * n_actions
                       + max_len * (n_agents * 2 + 4 + 1) + 8)
        return capacity * per_episode

    def __len__(self) -> int:
        return min(self.episodes_in, self.capacity)

    def can_sample(self, batch_size: int) -> bool:
        return len(self) >= batch_size

    def insert(self, obs, state, avail, actions, reward, terminated, length) -> None:
        """Insert E finished episodes: arrays ``[E, max_len(+1), ...]`` and ``length [E]``."""
        E = length.shape[0]
        rows = (torch.arange(E, device=self.device) + self.episodes_in) % self.capacity
        self.obs[rows] = obs.to(self.device, self.obs_dtype)
        self.state[rows] = state.to(self.device, self.obs_dtype)
        self.avail[rows] = avail.to(self.device)
        self.actions[rows] = actions.to(self.device, self.actions.dtype)
        self.reward[rows] = reward.to(self.device)
        self.terminated[rows] = terminated.to(self.device)
        self.length[rows] = length.to(self.device)
        self.episodes_in += E

    def sample(self, batch_size: int, generator: torch.Generator) -> EpisodeBatch:
        """Uniform over stored episodes; the time axis is cut to the longest sampled episode."""
        return self.gather(self.draw(len(self), batch_size, generator))

    @staticmethod
    def draw(stored: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """The rows of a uniform sample when ``stored`` episodes are in the buffer (with
        replacement, as every sample of this buffer): drawn apart from :meth:`gather` so that a
        sample can be drawn before its last episode is inserted (:mod:`qmix.overlap`)."""
        return torch.randint(stored, (batch_size,), generator=generator)

    def gather(self, idx: torch.Tensor) -> EpisodeBatch:
        """The episodes at rows ``idx``, cut to the longest of them."""
        idx = idx.to(self.device)
        T = int(self.length[idx].max())  # the one host sync per update, as in pymarl
        filled = torch.arange(T, device=self.device) < self.length[idx].unsqueeze(1)  # [B, T]
        return EpisodeBatch(
            obs=self.obs[idx, : T + 1].float(),
            state=self.state[idx, : T + 1].float(),
            avail=self.avail[idx, : T + 1],
            actions=self.actions[idx, :T].long(),
            reward=self.reward[idx, :T],
            terminated=self.terminated[idx, :T],
            filled=filled,
        )

    def state_dict(self) -> dict:
        """The stored episodes (only those: a view would be saved with its whole storage)."""
        n = len(self)
        out = {"episodes_in": self.episodes_in}
        for k in self.FIELDS:
            x = getattr(self, k)
            out[k] = (x[:n].clone() if n < self.capacity else x).cpu()
        return out

    @staticmethod
    def check_fits(data: dict, capacity: int) -> int:
        """The number of episodes in a saved buffer (``state_dict()``'s form); QmixError if a
        buffer of ``capacity`` cannot hold them."""
        n = data["length"].shape[0]
        if n > capacity:
            raise QmixError("the checkpoint's replay buffer is larger than buffer_size; keep the run's buffer_size.")
        return n

    def load_state_dict(self, data: dict) -> None:
        n = self.check_fits(data, self.capacity)
        for k in self.FIELDS:
            getattr(self, k)[:n] = data[k].to(self.device)
        self.episodes_in = data["episodes_in"]
