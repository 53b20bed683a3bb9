"""Run ``num_envs`` copies of a non-batched environment as one :class:`BatchedEnv`.

Every adapter to a library whose environments are single (LBF, RWARE, MPE, SMAC, Gymnasium)
implements :class:`SingleEnv` -- one copy, NumPy in and out -- and :class:`VectorEnv` does the rest,
the same way for every family:

- the copies run in this process (``workers=0``, the default for cheap environments) or in
  ``workers`` processes, each holding a contiguous slice of the copies (``workers=-1``: one
  process per copy). Results are identical either way.
- copy ``i`` is built with seed ``seed + i``; it uses that seed on its first reset and its own
  random stream afterwards, so the same seed gives the same trajectories.
- the time limit is counted here: a copy that reaches ``time_limit`` steps without a true terminal
  state ends with ``truncated=True``; a true terminal state wins over the time limit.
- a copy whose episode ended is not stepped again until it is reset; it keeps returning its final
  observation with reward 0 and both end flags False.
- a worker that raises, dies or does not answer within ``timeout`` seconds stops the run with a
  :class:`QmixError` naming the environment, the worker and what happened -- never a hang.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import pickle
import sys
import time
import traceback
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import numpy as np
import torch

from qmix.envs.base import BatchedEnv, EnvInfo, StepResult
from qmix.errors import QmixError

REWARD_AGGREGATIONS = ("sum", "mean")

# env_args every VectorEnv-based family accepts (merged into each family's own defaults).
VECTOR_ENV_ARGS: dict[str, Any] = {"workers": 0, "worker_timeout": 120.0}


class SingleEnv(ABC):
    """One copy of an environment, NumPy in and out.

    ``reset()`` returns ``(obs [n, obs_dim] float32, state [state_dim] float32,
    avail [n, n_actions] bool)``; ``step(actions [n] int64)`` returns
    ``(obs, state, avail, reward: float, terminated: bool, truncated: bool, info: dict[str, float])``
    where ``reward`` is already the team reward and ``truncated`` is the library's own time limit
    (``VectorEnv`` adds its own). ``info`` holds the episode outcome entries named in
    ``EnvInfo.info_keys`` (read where the episode ended).

    ``info`` (an :class:`EnvInfo`) must be set by the constructor, without starting an episode;
    ``info.episode_limit`` is the time limit ``VectorEnv`` enforces.
    """

    info: EnvInfo

    @abstractmethod
    def reset(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    @abstractmethod
    def step(self, actions: np.ndarray) -> tuple: ...

    def close(self) -> None:
        pass


def team_reward(rewards, how: str) -> float:
    """One team reward from a library's reward: a scalar stays as is, a per-agent list is summed
    (``how="sum"``) or averaged (``how="mean"``)."""
    if isinstance(rewards, dict):
        rewards = list(rewards.values())
    if isinstance(rewards, (list, tuple)) and rewards and all(type(x) in (float, int) for x in rewards):
        return float(sum(rewards) if how == "sum" else sum(rewards) / len(rewards))
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim == 0:
        return float(r)
    return float(r.sum() if how == "sum" else r.mean())


def check_reward_aggregation(env_id: str, how: str) -> str:
    if how not in REWARD_AGGREGATIONS:
        raise QmixError(
            f"env_args.reward_aggregation for {env_id} must be one of {', '.join(REWARD_AGGREGATIONS)}, "
            f"got {how!r}."
        )
    return how


def pad_rows(rows: Sequence[np.ndarray], width: int, fill=0) -> np.ndarray:
    """Stack 1-D arrays of possibly different lengths into ``[len(rows), width]`` (padded)."""
    out = np.full((len(rows), width), fill, dtype=np.asarray(rows[0]).dtype if rows else np.float32)
    for i, r in enumerate(rows):
        r = np.asarray(r).reshape(-1)
        out[i, : r.shape[0]] = r
    return out


# ----------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------


def _worker_main(conn, make_copy: Callable[[int, int], SingleEnv], indices: list[int], seeds: list[int]):
    """Loop of one worker process: builds its copies, then answers reset/step/close commands."""
    envs: list[SingleEnv] = []
    try:
        envs = [make_copy(i, s) for i, s in zip(indices, seeds)]
        conn.send(("ok", None))
        while True:
            cmd, arg = conn.recv()
            if cmd == "reset":
                conn.send(("ok", [envs[k].reset() for k in arg]))
            elif cmd == "step":
                conn.send(("ok", [envs[k].step(a) for k, a in arg]))
            elif cmd == "close":
                break
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    except BaseException as exc:  # report anything raised by the environment, then exit
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        except Exception:
            pass
    finally:
        for env in envs:
            try:
                env.close()
            except Exception:
                pass
        conn.close()


def _context() -> mp.context.BaseContext:
    """How worker processes start: ``fork`` on Linux (instant; the workers run only the
    environment's NumPy code, never torch), ``spawn`` elsewhere. The environment variable
    ``QMIX_WORKER_START`` (``fork``, ``forkserver`` or ``spawn``) overrides it; with ``forkserver``
    or ``spawn`` a script that builds worker-mode environments needs the usual
    ``if __name__ == "__main__":`` guard."""
    method = os.environ.get("QMIX_WORKER_START")
    if not method:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
    if method not in mp.get_all_start_methods():
        raise QmixError(
            f"QMIX_WORKER_START={method!r} is not available here; use one of {', '.join(mp.get_all_start_methods())}."
        )
    return mp.get_context(method)


class _Worker:
    def __init__(self, ctx, env_id: str, rank: int, make_copy, indices: list[int], seeds: list[int]):
        self.env_id, self.rank, self.indices = env_id, rank, indices
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, args=(child, make_copy, indices, seeds), daemon=True,
            name=f"qmix-env-{env_id}-{rank}",
        )
        self.process.start()
        child.close()

    def send(self, msg) -> None:
        try:
            self.conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._raise_dead()

    def recv(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready = self.conn.poll(0.05)
            except (EOFError, OSError):
                ready = True
            if ready:
                try:
                    msg = self.conn.recv()
                except (EOFError, OSError, ConnectionResetError):
                    self._raise_dead()
                if msg[0] == "error":
                    raise QmixError(
                        f"environment {self.env_id}: worker {self.rank} (copies {self._span()}) failed: "
                        f"{msg[1]}"
                    )
                return msg[1]
            if not self.process.is_alive():
                self._raise_dead()
            if time.monotonic() > deadline:
                raise QmixError(
                    f"environment {self.env_id}: worker {self.rank} (copies {self._span()}) did not answer "
                    f"within {timeout:g} s (raise env_args.worker_timeout if its steps are that slow)."
                )

    def _span(self) -> str:
        return f"{self.indices[0]}-{self.indices[-1]}" if len(self.indices) > 1 else str(self.indices[0])

    def _raise_dead(self):
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        raise QmixError(
            f"environment {self.env_id}: worker {self.rank} (copies {self._span()}) died "
            f"(exit code {code}) without reporting an error."
        )

    def close(self, force: bool = False) -> None:
        if self.process.is_alive():
            if not force:
                try:
                    self.conn.send(("close", None))
                except Exception:
                    pass
                self.process.join(timeout=2.0)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=2.0)
        try:
            self.conn.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------
# The batched environment
# ----------------------------------------------------------------------------------------------


class VectorEnv(BatchedEnv):
    """``num_envs`` copies of a :class:`SingleEnv`, in this process or in worker processes.

    ``make_copy(index, seed) -> SingleEnv`` must be picklable (a module-level function or a
    ``functools.partial`` of one) when ``workers != 0``. Copy 0 is always built in this process
    first, to read the sizes (``SingleEnv.info``); in worker mode it is closed again unused.
    """

    def __init__(
        self,
        env_id: str,
        make_copy: Callable[[int, int], SingleEnv],
        num_envs: int,
        seed: int,
        device: torch.device,
        workers: int = 0,
        worker_timeout: float = 120.0,
    ):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < -1:
            raise QmixError(f"env_args.workers for {env_id} must be 0 (in-process), -1 (one per copy) or a positive integer, got {workers!r}.")
        if not worker_timeout > 0:
            raise QmixError(f"env_args.worker_timeout for {env_id} must be positive, got {worker_timeout!r}.")
        self.env_id = env_id
        self._closed = False
        self._envs: list[SingleEnv] = []
        self._workers: list[_Worker] = []
        first = make_copy(0, seed)
        self.info = info = first.info
        self.num_envs = num_envs
        self.device = torch.device(device)
        self._on_cpu = self.device.type == "cpu"
        self.time_limit = info.episode_limit
        self.timeout = float(worker_timeout)
        B, n, d, a = num_envs, info.n_agents, info.obs_dim, info.n_actions
        self._obs = np.zeros((B, n, d), np.float32)
        self._state = np.zeros((B, info.state_dim), np.float32)
        self._avail = np.ones((B, n, a), bool)
        self._t = np.zeros(B, np.int64)
        self._ended = np.zeros(B, bool)
        seeds = [seed + i for i in range(B)]
        n_workers = B if workers == -1 else min(workers, B)
        if n_workers == 0:
            self._envs = [first] + [make_copy(i, seeds[i]) for i in range(1, B)]
        else:
            first.close()
            ctx = _context()
            bounds = np.linspace(0, B, n_workers + 1).round().astype(int)
            try:
                for w in range(n_workers):
                    idx = list(range(bounds[w], bounds[w + 1]))
                    try:
                        worker = _Worker(ctx, env_id, w, make_copy, idx, [seeds[i] for i in idx])
                    except (AttributeError, TypeError, pickle.PicklingError) as exc:
                        raise QmixError(
                            f"environment {env_id} cannot be sent to a worker process ({type(exc).__name__}: "
                            f"{exc}); define it in an importable module or use env_args.workers=0."
                        ) from None
                    self._workers.append(worker)
                for worker in self._workers:
                    worker.recv(self.timeout)
            except BaseException:
                self._shutdown(force=True)
                raise
        self.one_copy_lane = B == 1 and not self._workers  # step_one: NumPy in and out, see there
        # copy index -> (worker, position in that worker)
        self._where = [(w, k) for w, wk in enumerate(self._workers) for k in range(len(wk.indices))]

    # -- plumbing -------------------------------------------------------------------------

    def _run(self, cmd: str, per_copy: dict[int, Any]) -> dict[int, Any]:
        """Run ``cmd`` on the copies in ``per_copy`` (index -> argument); returns index -> result."""
        if not self._workers:
            if cmd == "reset":
                return {i: self._envs[i].reset() for i in per_copy}
            return {i: self._envs[i].step(a) for i, a in per_copy.items()}
        jobs: dict[int, list[int]] = {}
        for i in per_copy:
            jobs.setdefault(self._where[i][0], []).append(i)
        try:
            for w, idx in jobs.items():
                if cmd == "reset":
                    arg = [self._where[i][1] for i in idx]
                else:
                    arg = [(self._where[i][1], per_copy[i]) for i in idx]
                self._workers[w].send((cmd, arg))
            out = {}
            for w, idx in jobs.items():
                out.update(zip(idx, self._workers[w].recv(self.timeout)))
        except BaseException:
            self._shutdown(force=True)  # a worker failed: stop them all now, without waiting
            raise
        return out

    def _store(self, i: int, obs, state, avail) -> None:
        self._obs[i] = obs
        self._state[i] = state
        self._avail[i] = avail

    def _torch(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """NumPy arrays as tensors on ``device`` (shared memory on the CPU, no extra copy)."""
        out = [torch.from_numpy(a) for a in arrays]
        return out if self._on_cpu else [x.to(self.device) for x in out]

    def _tensors(self):
        return tuple(self._torch(self._obs.copy(), self._state.copy(), self._avail.copy()))

    # -- BatchedEnv -------------------------------------------------------------------------

    def reset(self, mask: torch.Tensor | None = None):
        if self._closed:
            raise QmixError(f"environment {self.env_id} was closed.")
        if mask is None:
            which = range(self.num_envs)
        else:
            which = np.flatnonzero(mask.detach().to("cpu", torch.bool).numpy()).tolist()
        results = self._run("reset", {i: None for i in which})
        for i, (obs, state, avail) in results.items():
            self._store(i, obs, state, avail)
            self._t[i] = 0
            self._ended[i] = False
        return self._tensors()

    def step(self, actions: torch.Tensor) -> StepResult:
        if self._closed:
            raise QmixError(f"environment {self.env_id} was closed.")
        if actions.dtype != torch.int64 or actions.device.type != "cpu" or actions.requires_grad:
            actions = actions.detach().to("cpu", torch.int64)
        acts = actions.numpy()
        B = self.num_envs
        reward = np.zeros(B, np.float32)
        terminated = np.zeros(B, bool)
        truncated = np.zeros(B, bool)
        infos = {k: np.zeros(B, np.float32) for k in self.info.info_keys}
        active = np.flatnonzero(~self._ended).tolist() if self._ended.any() else range(B)
        if self._workers:
            results = self._run("step", {i: acts[i] for i in active}).items()
        else:
            results = ((i, self._envs[i].step(acts[i])) for i in active)
        steps, limit = self._t, self.time_limit
        for i, (obs, state, avail, r, term, trunc, info) in results:
            self._store(i, obs, state, avail)
            steps[i] += 1
            reward[i] = r
            if term:
                terminated[i] = True
            elif trunc or steps[i] >= limit:
                truncated[i] = True
            for k, v in info.items():
                if k in infos:
                    infos[k][i] = v
        self._ended |= terminated | truncated
        obs, state, avail = self._tensors()
        reward_t, terminated_t, truncated_t, *info_t = self._torch(reward, terminated, truncated, *infos.values())
        return StepResult(obs, state, avail, reward_t, terminated_t, truncated_t, dict(zip(infos, info_t)))

    def step_one(self, actions: np.ndarray) -> tuple:
        """``step`` for one copy in this process (``one_copy_lane``), NumPy in and out, without the
        batch's tensors: ``actions [n_agents]`` int -> ``(obs [n, obs_dim], state [state_dim],
        avail [n, n_actions], reward: float, terminated: bool, truncated: bool, info)``, the same
        values ``step`` returns for the copy (time limit included; ``info`` maps the episode
        outcome names to floats, meaningful when the episode ended). The arrays are this
        environment's own, valid until its next ``step``/``reset``: copy what must outlive them."""
        if self._closed:
            raise QmixError(f"environment {self.env_id} was closed.")
        obs, state, avail, reward, term, trunc, info = self._envs[0].step(actions)
        self._store(0, obs, state, avail)
        self._t[0] += 1
        term = bool(term)
        trunc = not term and (bool(trunc) or int(self._t[0]) >= self.time_limit)
        self._ended[0] = term or trunc
        return self._obs[0], self._state[0], self._avail[0], float(reward), term, trunc, info

    def get_state(self):
        """Deep copy of every copy (for checkpoints mid-episode); impossible with worker processes
        or simulators that cannot be copied (StarCraft II), which then start fresh episodes."""
        if self._workers or not all(getattr(e, "copyable", True) for e in self._envs):
            raise NotImplementedError(f"{self.env_id} runs in worker processes or external simulators")
        try:
            return copy.deepcopy(self.__dict__)
        except Exception as exc:
            raise NotImplementedError(f"{self.env_id} cannot be copied: {exc}") from exc

    def close(self) -> None:
        self._shutdown(force=False)

    def _shutdown(self, force: bool) -> None:
        if self._closed:
            return
        self._closed = True
        for env in self._envs:
            try:
                env.close()
            except Exception:
                pass
        for worker in self._workers:
            worker.close(force=force)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


__all__ = [
    "SingleEnv", "VectorEnv", "VECTOR_ENV_ARGS", "REWARD_AGGREGATIONS", "team_reward",
    "check_reward_aggregation", "pad_rows",
]
