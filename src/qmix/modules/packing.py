"""Episodes of different lengths packed into one array with no padding, for the learner.

A batch ``[B, T, ...]`` holds episodes of ``lengths[b] <= T`` steps followed by padding. Packed,
its valid steps are rows of one array ``[M, ...]`` (``M = sum(lengths)``), time-major with the
longest episodes first: the rows of step ``t`` are one contiguous block of ``counts[t]`` rows, and
the episodes still running at step ``t + 1`` are the first ``counts[t + 1]`` rows of that block.
A recurrence then steps over contiguous blocks that shrink as episodes end, and no layer spends
work on padding.
"""

from __future__ import annotations

import torch


class EpisodePacking:
    def __init__(self, lengths: torch.Tensor, T: int):
        """``lengths [B]``: valid steps per episode (each ``<= T``)."""
        self.B, self.T = lengths.shape[0], T
        order = torch.argsort(lengths, descending=True, stable=True)
        valid = torch.arange(T, device=lengths.device).unsqueeze(1) < lengths[order].unsqueeze(0)  # [T, B]
        t, j = valid.nonzero(as_tuple=True)  # time-major, longest first
        self.episode, self.step = order[j], t  # of each packed row
        self.index = self.episode * T + t  # packed row -> row of the [B * T] batch
        self.counts = [c for c in valid.sum(1).tolist() if c > 0]  # rows per step
        self._position = None

    @property
    def rows(self) -> int:
        return self.index.shape[0]

    def pack(self, x: torch.Tensor, shift: int = 0) -> torch.Tensor:
        """``[B, T', ...]`` -> ``[M, ...]``: each packed row's step ``t + shift`` (``T' >= T + shift``)."""
        index = self.index if x.shape[1] == self.T and not shift else self.episode * x.shape[1] + self.step + shift
        return x.reshape(self.B * x.shape[1], *x.shape[2:]).index_select(0, index)

    def rows_of(self, episode: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Packed rows of valid ``(episode, step)`` pairs."""
        if self._position is None:  # packed row of every batch row (garbage where padded)
            self._position = torch.empty(self.B * self.T, dtype=torch.long, device=self.index.device)
            self._position[self.index] = torch.arange(self.rows, device=self.index.device)
        return self._position[episode * self.T + step]

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """``[M, ...]`` -> ``[B, T, ...]``, zeros where padded (differentiable)."""
        out = y.new_zeros(self.B * self.T, *y.shape[1:])
        return out.index_copy(0, self.index, y).view(self.B, self.T, *y.shape[1:])
