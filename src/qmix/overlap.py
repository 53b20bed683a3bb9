"""Learning beside collection: the learner in a process of its own, bit for bit the serial run.

With one environment the serial loop alternates: play episode k with the networks of update
k-1, insert it, run update k, play episode k+1 with its result. Update k's batch is a uniform draw
over the episodes stored once episode k is in, so it can be drawn before episode k is played. When
none of the drawn rows is the one episode k is about to fill, update k reads only episodes already
stored: it runs in the learner process, on another core, while episode k is played, and episode
k+1 starts once it is done, as in the serial loop. When the draw does include that row, the update
waits for the insertion, which is the serial order. Same data, same order, same random streams:
the same networks and learning curve, bit for bit, only sooner (``tests/test_overlap.py``).

The learner process owns the replay buffer, the learner (online and target networks, optimiser)
and the replay-sampling generator; the main process keeps the environment, acting and a copy of
the online networks, refreshed after every update. Messages go through a socket as plain bytes and
NumPy arrays (nothing in shared memory; the learner process writes a checkpoint's replay-buffer
file itself, and a resumed buffer is streamed into its memory). A checkpoint taken while an update is in flight holds the
state from before that update (the learner process keeps a snapshot), so resuming replays the
serial run exactly.
"""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch

from qmix import launch
from qmix.buffer import EpisodeBuffer
from qmix.errors import QmixError
from qmix.launch import MIN_STEPS, Started, discard, take_prestarted, usable_cpus  # noqa: F401


def wanted(cfg, device: torch.device, buffer_device: torch.device) -> bool:
    """Whether this run learns in a separate process (``learner_process``); QmixError if ``on``
    asks for it where it cannot work."""
    fits = cfg.num_envs == 1 and device.type == "cpu" and buffer_device.type == "cpu"
    if cfg.learner_process == "on":
        if not fits or os.name != "posix":
            raise QmixError("learner_process=on needs num_envs=1, the networks and buffer on the CPU, and a "
                            "POSIX system (Linux, macOS); set learner_process=auto or off.")
        return True
    return (cfg.learner_process == "auto" and fits and os.name == "posix" and usable_cpus() >= 2
            and cfg.t_max >= MIN_STEPS)


def _to_bytes(obj) -> bytes:
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


def _from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)


def start() -> Started:
    """A learner process: the one the command line started early (:func:`qmix.launch.prestart`),
    or a new one."""
    return take_prestarted() or launch.start()


class LearnerProcess:
    """The main process's side: a stand-in for the replay buffer (``insert``, ``can_sample``)
    plus the updates, run in the learner process."""

    device = torch.device("cpu")

    def __init__(self, cfg, info, learner, buffer_state: dict | None, sample_gen: torch.Generator,
                 started: "Started | None" = None):
        """``started``: the process from :func:`start`, called earlier so that its start overlaps
        the caller's own set-up (default: started now)."""
        self.cfg, self.learner, self.sample_gen = cfg, learner, sample_gen
        self.capacity = cfg.buffer_size
        if buffer_state is not None:
            EpisodeBuffer.check_fits(buffer_state, self.capacity)
        self.episodes_in = buffer_state["episodes_in"] if buffer_state is not None else 0
        self.in_flight = False
        self.busy_s = 0.0  # time the learner process spent in updates (sampling included)
        self._done: tuple | None = None  # an update's answer that came while waiting for another
        threads = cfg.torch_threads if cfg.torch_threads > 0 else max(1, usable_cpus() - 1)
        init = _to_bytes({"learner": learner.state_dict(), "sample_gen": sample_gen.get_state()})
        self._proc, self._conn = started if started is not None else start()
        # Not waited for: its start (a second interpreter importing torch, seconds) overlaps this
        # process's set-up and first episodes; what it sends first is the answer to the first
        # update, or the error that stopped it.
        self._send((cfg, info, threads, init))
        try:
            _send_arrays(self._conn, buffer_state)  # the replay buffer of a resumed run, streamed
        except OSError:
            self._died()

    # -------------------------------------------------------- the buffer's face
    def __len__(self) -> int:
        return min(self.episodes_in, self.capacity)

    def can_sample(self, batch_size: int) -> bool:
        return len(self) >= batch_size

    def insert(self, obs, state, avail, actions, reward, terminated, length) -> None:
        self._send(("insert", [t.numpy() for t in (obs, state, avail, actions, reward, terminated, length)]))
        self.episodes_in += int(length.shape[0])

    # -------------------------------------------------------------- updates
    def start_next(self) -> None:
        """Start the update that the next inserted episode triggers (drawn now, run as soon as its
        rows are all stored)."""
        stored = min(self.episodes_in + 1, self.capacity)
        self._send(("update", stored, self.episodes_in % self.capacity))
        self.in_flight = True

    def finish(self, then_target: bool = False, then_next: bool = False) -> dict:
        """The statistics of the update due now (the one in flight, or one run now), after which
        the acting networks hold its result. ``then_target``: the target networks are updated
        right after it; ``then_next``: the update the next inserted episode triggers is started
        right after that (:meth:`start_next`). Both are queued before the wait for this answer, so
        the learner process goes on to the next update without waiting for this process."""
        if not self.in_flight:
            self._send(("update", len(self), None))
        self.in_flight = False
        if then_target:
            self.hard_update_targets()
        if then_next:
            self.start_next()
        if self._done is not None:
            answer, self._done = self._done, None
        else:
            answer = self._receive("done")
        stats, acting = answer[1], answer[2]
        self.busy_s += answer[3]
        with torch.no_grad():  # the agent's parameters lead the flat buffer; the mixer's follow at checkpoints
            self.learner.flat[: acting.shape[0]].copy_(torch.from_numpy(acting))
        return stats

    def hard_update_targets(self) -> None:
        self._send(("target",))

    def state(self, with_buffer: bool) -> dict:
        """The learner's, the buffer's and the sampling generator's state as the serial run has them
        now (before an update in flight); the main process's learner is brought up to it."""
        self._send(("state", self.in_flight, with_buffer))
        state = _from_bytes(self._receive("state")[1])
        try:
            state["buffer"] = _receive_arrays(self._conn)
        except (EOFError, OSError):
            self._died()
        self.learner.load_state_dict(state["learner"])
        self.sample_gen.set_state(state["sample_gen"])
        return state

    def write_buffer(self, path: Path) -> None:
        """Have the learner process write the replay buffer's checkpoint file at ``path`` (as
        ``EpisodeBuffer.state_dict()`` saved by the main process would be); OSError if it cannot."""
        self._send(("write_buffer", str(path)))
        answer = self._receive("written")
        if answer[1] is not None:
            raise OSError(answer[1])

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self) -> None:
        if self.alive():
            try:
                self._conn.send(("stop",))
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._conn.close()

    # ------------------------------------------------------------- plumbing
    def _send(self, msg) -> None:
        try:
            self._conn.send(msg)
        except OSError:
            self._died()

    def _receive(self, kind: str) -> tuple:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                self._died()
            if msg[0] == "error":
                self._wait()
                raise QmixError(f"the learner process failed: {msg[1]}")
            if msg[0] == kind:
                return msg
            if msg[0] == "done":  # an update that finished while we wait for something else
                self._done = msg
                continue
            raise QmixError(f"the learner process answered {msg[0]!r} where {kind!r} was due (a bug; please report it).")

    def _wait(self) -> int | None:
        try:
            return self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None

    def _died(self):
        try:  # its own account of why, if it sent one
            while self._conn.poll(0):
                msg = self._conn.recv()
                if msg[0] == "error":
                    self._wait()
                    raise QmixError(f"the learner process failed: {msg[1]}")
        except (EOFError, OSError):
            pass
        code = self._wait()
        raise QmixError(f"the learner process exited unexpectedly (exit code {code}); "
                        "if memory is short, set learner_process=off.")


def _bytes_of(x: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous tensor, as a NumPy view (any dtype, bfloat16 included)."""
    return x.reshape(-1).view(torch.uint8).numpy() if x.numel() else np.empty(0, np.uint8)


def _send_arrays(conn, arrays: dict | None) -> None:
    """Replay-buffer contents (``EpisodeBuffer.state_dict()``'s form), each array's bytes sent
    straight from its memory: no pickled copy of what can be gigabytes."""
    if arrays is None:
        conn.send(None)
        return
    conn.send({"episodes_in": arrays["episodes_in"],
               "arrays": [(k, tuple(arrays[k].shape), arrays[k].dtype) for k in EpisodeBuffer.FIELDS]})
    for k in EpisodeBuffer.FIELDS:
        conn.send_bytes(_bytes_of(arrays[k].contiguous()))


def _receive_arrays(conn, into: EpisodeBuffer | None = None) -> dict | None:
    """What :func:`_send_arrays` sent, received into new tensors, or straight into ``into``'s
    storage (whose state it then is)."""
    meta = conn.recv()
    if meta is None:
        return None
    out = {"episodes_in": meta["episodes_in"]}
    for k, shape, dtype in meta["arrays"]:
        dest = None if into is None else getattr(into, k)[: shape[0]]
        if dest is not None and tuple(dest.shape) != tuple(shape):
            raise QmixError("the checkpoint's replay buffer does not fit this run's buffer; keep the run's "
                            "buffer_size.")
        # straight into the buffer where the dtypes agree; else converted as EpisodeBuffer.load_state_dict does
        x = dest if dest is not None and dest.dtype == dtype else torch.empty(shape, dtype=dtype)
        target = _bytes_of(x)
        if conn.recv_bytes_into(target) != target.nbytes:
            raise RuntimeError(f"replay array {k} arrived short")
        if dest is not None and x is not dest:
            dest.copy_(x)
        out[k] = x
    if into is not None:
        into.episodes_in = meta["episodes_in"]
    return out


def _serve(fd: int) -> None:
    """The learner process: answers the main process's messages, in order, until ``stop`` (or
    until the main process is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process decides
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        import qmix.learner  # noqa: F401  (loaded while the main process sets up)

        cfg, info, threads, init = conn.recv()
        _serve_loop(conn, cfg, info, threads, init)
    except EOFError:  # the main process ended
        pass
    except BaseException as exc:  # reported to the main process, which ends the run with it
        text = str(exc) if isinstance(exc, QmixError) else \
            f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
        try:
            conn.send(("error", text))
        except OSError:
            pass


def _serve_loop(conn, cfg, info, threads: int, init: bytes) -> None:
    from qmix.learner import Learner
    from qmix.modules import build_agent, build_mixer
    from qmix.system import configure_allocator
    from qmix.trainer import configure_kernels, needs_kernels

    configure_allocator()
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    configure_kernels(cfg.native_kernels, cpu, needs_kernels(cfg))
    start = _from_bytes(init)
    learner = Learner(cfg, build_agent(cfg, info.obs_dim, info.n_agents, info.n_actions),
                      build_mixer(cfg, info.n_agents, info.state_dim), info.n_actions)
    learner.load_state_dict(start["learner"])
    buffer = EpisodeBuffer(cfg.buffer_size, info.episode_limit, info.n_agents, info.obs_dim, info.state_dim,
                           info.n_actions, cpu, cfg.buffer_obs_dtype)
    _receive_arrays(conn, into=buffer)
    gen = torch.Generator().manual_seed(0)
    gen.set_state(start["sample_gen"])

    # A thread only reads, so the main process's sends (an episode can be megabytes) always go
    # through even while this process is blocked sending an update's result that the main process
    # will read only after its own send: two blocked sends would wait for each other forever.
    # It also stores each episode as it arrives, while an update may be running, so that storing
    # it is not on the way from one update to the next; what it passes on after an episode comes
    # after that episode is stored. An update's rows never include the row being stored unless it
    # waits for it ("inserted"); the lock keeps a store and a gather apart all the same.
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    lock = threading.Lock()

    def read() -> None:
        try:
            while True:
                msg = conn.recv()
                if msg[0] == "insert":
                    with lock:
                        buffer.insert(*(torch.from_numpy(a) for a in msg[1]))
                    msg = ("inserted",)
                inbox.put(msg)
                if msg[0] == "stop":
                    return
        except (EOFError, OSError):  # the main process ended
            inbox.put(("stop",))
        except BaseException as exc:  # raised by the loop below, which reports it
            inbox.put(("failed", exc))

    threading.Thread(target=read, name="qmix-learner-inbox", daemon=True).start()
    waiting = None  # rows of an update that waits for the episode being played
    before = None  # (learner snapshot, generator state) from before the update in flight

    acting = sum(p.numel() for p in learner.agent.parameters())  # the acting networks' share of the flat buffer
    if next(learner.agent.parameters()).data_ptr() != learner.flat.data_ptr():
        raise RuntimeError("the agent's parameters do not lead the learner's flat buffer")

    def update(idx):
        start = time.perf_counter()
        with lock:
            batch = buffer.gather(idx)
        stats = learner.update(batch)
        stats = {k: float(v) for k, v in stats.items()}
        conn.send(("done", stats, learner.flat.detach()[:acting].numpy().copy(), time.perf_counter() - start))

    while True:
        msg = inbox.get()
        kind = msg[0]
        if kind == "inserted":
            if waiting is not None:
                update(waiting)
                waiting = None
        elif kind == "update":
            stored, next_row = msg[1], msg[2]
            if next_row is not None:  # ahead of the episode that triggers it
                before = (learner.snapshot(), gen.get_state())
            idx = buffer.draw(stored, cfg.batch_size, gen)
            if next_row is not None and bool((idx == next_row).any()):
                waiting = idx
            else:
                update(idx)
        elif kind == "target":
            learner.hard_update_targets()
        elif kind == "state":
            in_flight, with_buffer = msg[1], msg[2]
            now = (learner.snapshot(), gen.get_state()) if in_flight else None
            if in_flight:
                learner.restore(before[0])
                gen.set_state(before[1])
            conn.send(("state", _to_bytes({"learner": learner.state_dict(), "sample_gen": gen.get_state()})))
            stored = len(buffer)
            _send_arrays(conn, {"episodes_in": buffer.episodes_in,
                                **{k: getattr(buffer, k)[:stored] for k in buffer.FIELDS}} if with_buffer else None)
            if now is not None:
                learner.restore(now[0])
                gen.set_state(now[1])
        elif kind == "write_buffer":
            path = Path(msg[1])
            try:
                with open(path, "wb") as f:
                    torch.save(buffer.state_dict(), f)
                    f.flush()
                    os.fsync(f.fileno())
                conn.send(("written", None))
            except OSError as exc:  # a full disk: the main process keeps training and says so
                path.unlink(missing_ok=True)
                conn.send(("written", exc.strerror or str(exc)))
        elif kind == "stop":
            return
        elif kind == "failed":
            raise msg[1]
        else:
            raise RuntimeError(f"unknown message {kind!r}")


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
    # Nothing of its own is left to flush (a checkpoint's buffer file is written and synced before
    # its answer): skip the interpreter's teardown of torch, which the main process would wait for.
    os._exit(0)
