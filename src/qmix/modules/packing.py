"""Episodes of different lengths packed into one array with no padding, for the learner.

A batch ``[B, T, ...]`` holds episodes of ``lengths[b] <= T`` steps followed by padding. Packed,
its valid steps are rows of one array ``[M, ...]`` (``M = sum(lengths)``), time-major with the
longest episodes first: the rows of step ``t`` are one contiguous block of ``counts[t]`` rows, and
the episodes still running at step ``t + 1`` are the first ``counts[t + 1]`` rows of that block.
A recurrence then steps over contiguous blocks that shrink as episodes end, and no layer spends
work on padding.

When every episode fills the batch (all ``lengths == T``: fixed-horizon tasks, and any batch
whose episodes all ran to the time limit) the packed order is plain time-major ``t * B + b``:
packing is a transpose, and the rows of steps ``t + shift`` are one slice, with no index arrays.
"""

from __future__ import annotations

import torch


class EpisodePacking:
    def __init__(self, lengths: torch.Tensor, T: int, uniform: bool | None = None):
        """``lengths [B]``: valid steps per episode (each ``<= T``). ``uniform`` (all episodes
        ``T`` steps long) is found from ``lengths`` unless given; ``False`` forces the index path."""
        self.B, self.T = lengths.shape[0], T
        self._lengths = lengths
        if uniform is None:
            uniform = bool((lengths == T).all())
        self.uniform = uniform
        self._position = None
        if uniform:
            self.counts = [self.B] * T
            self._episode = self._step = self._index = None  # built on demand
            return
        order = torch.argsort(lengths, descending=True, stable=True)
        valid = torch.arange(T, device=lengths.device).unsqueeze(1) < lengths[order].unsqueeze(0)  # [T, B]
        t, j = valid.nonzero(as_tuple=True)  # time-major, longest first
        self._episode, self._step = order[j], t  # of each packed row
        self._index = self._episode * T + t  # packed row -> row of the [B * T] batch
        self.counts = [c for c in valid.sum(1).tolist() if c > 0]  # rows per step

    def _uniform_rows(self) -> None:
        device = self._lengths.device
        self._step = torch.arange(self.T, device=device).repeat_interleave(self.B)
        self._episode = torch.arange(self.B, device=device).repeat(self.T)
        self._index = self._episode * self.T + self._step

    @property
    def episode(self) -> torch.Tensor:
        """The episode of each packed row."""
        if self._episode is None:
            self._uniform_rows()
        return self._episode

    @property
    def step(self) -> torch.Tensor:
        """The step of each packed row."""
        if self._step is None:
            self._uniform_rows()
        return self._step

    @property
    def index(self) -> torch.Tensor:
        """Each packed row's row of the ``[B * T]`` batch."""
        if self._index is None:
            self._uniform_rows()
        return self._index

    @property
    def rows(self) -> int:
        return self.B * self.T if self.uniform else self._index.shape[0]

    def pack(self, x: torch.Tensor, shift: int = 0) -> torch.Tensor:
        """``[B, T', ...]`` -> ``[M, ...]``: each packed row's step ``t + shift`` (``T' >= T + shift``)."""
        if self.uniform:
            return x[:, shift: shift + self.T].transpose(0, 1).reshape(self.rows, *x.shape[2:])
        index = self.index if x.shape[1] == self.T and not shift else self.episode * x.shape[1] + self.step + shift
        return x.reshape(self.B * x.shape[1], *x.shape[2:]).index_select(0, index)

    def rows_of(self, episode: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Packed rows of valid ``(episode, step)`` pairs."""
        if self._position is None:  # packed row of every batch row (garbage where padded)
            self._position = torch.empty(self.B * self.T, dtype=torch.long, device=self._lengths.device)
            self._position[self.index] = torch.arange(self.rows, device=self._lengths.device)
        return self._position[episode * self.T + step]

    def take(self, x: torch.Tensor, other: "EpisodePacking", shift: int = 0) -> torch.Tensor:
        """Rows of ``x [M, ...]`` (packed by this packing) at each row of ``other``'s episode and
        step + ``shift``, in ``other``'s order: ``[other.rows, ...]``. Both uniform over the same
        episodes: one slice (a view)."""
        if self.uniform and other.uniform and self.B == other.B and other.T + shift <= self.T:
            return x[shift * self.B: shift * self.B + other.rows]
        return x.index_select(0, self.rows_of(other.episode, other.step + shift))

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """``[M, ...]`` -> ``[B, T, ...]``, zeros where padded (differentiable)."""
        if self.uniform:
            return y.view(self.T, self.B, *y.shape[1:]).transpose(0, 1).contiguous()
        out = y.new_zeros(self.B * self.T, *y.shape[1:])
        return out.index_copy(0, self.index, y).view(self.B, self.T, *y.shape[1:])
