"""Starting the learner process of :mod:`qmix.overlap`, without loading torch here.

The learner process is a fresh interpreter that spends about a second loading torch before it
can take any work. :func:`start` launches it; :class:`qmix.trainer.Trainer` does so first
thing, so that it loads while the main process builds its environments and networks. The
``qmix`` command goes further: :func:`prestart` launches it before the command itself has loaded
torch, when the run's settings make a learner process likely (the trainer takes it with
:func:`take_prestarted`, or ends it with :func:`drop_prestarted` if it decides otherwise).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

MIN_STEPS = 20_000  # learner_process=auto: shorter runs do not repay the process start (~2 s)

Started = tuple  # (subprocess.Popen, Connection)

_prestarted: list = []  # at most one Started, launched by prestart() and not yet taken


def usable_cpus() -> int:
    """The CPUs this run may use: those it may be scheduled on, and no more than OMP_NUM_THREADS
    where that is set (as a sweep does for each trial, to its share of the machine)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        cpus = min(cpus, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        pass
    return max(1, cpus)


def start() -> Started:
    """Start a learner process, which loads torch and the learner's code while the caller sets up
    (a :class:`qmix.overlap.LearnerProcess` then gives it its work); :func:`discard` ends one
    never used."""
    # A fresh interpreter (a fork would inherit this process's OpenMP and allocator state;
    # multiprocessing's spawn would re-run the user's main script).
    ours, theirs = socket.socketpair()
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    # Its own session: a terminal's Ctrl-C (sent to the foreground group) reaches only the main
    # process, even while this one is still starting; it ends when the main process's end closes
    # the socket.
    proc = subprocess.Popen([sys.executable, "-m", "qmix.overlap", str(theirs.fileno())],
                            pass_fds=[theirs.fileno()], env=env, start_new_session=True)
    theirs.close()
    return proc, Connection(ours.detach())


def discard(started: Started) -> None:
    proc, conn = started
    conn.close()  # it reads the end of its input and exits
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def likely(settings: dict) -> bool:
    """Whether a run with these (merged, unvalidated) config values will probably use a learner
    process: a cheap guess made before torch is loaded (no device query; a CUDA machine is
    recognised by its driver's files). The trainer decides for itself afterwards."""
    def get(key, default):
        value = settings.get(key, default)
        return default if value is None else value

    mode, device = get("learner_process", "auto"), str(get("device", "auto"))
    if mode == "off" or os.name != "posix" or get("num_envs", 1) != 1:
        return False
    if not device.startswith(("auto", "cpu")) or not str(get("buffer_device", "auto")).startswith(("auto", "cpu")):
        return False
    if device == "auto" and (os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi")):
        return False  # the run will probably pick the GPU
    if mode == "on":
        return True
    try:
        return mode == "auto" and usable_cpus() >= 2 and int(get("t_max", 0)) >= MIN_STEPS
    except (TypeError, ValueError):
        return False


def prestart(settings: dict) -> None:
    """Start a learner process now if :func:`likely`; it waits for the trainer."""
    if not _prestarted and likely(settings):
        _prestarted.append(start())


def take_prestarted() -> Started | None:
    return _prestarted.pop() if _prestarted else None


def drop_prestarted() -> None:
    """End a prestarted learner process that no trainer took, at once (it was given no work; it
    would also exit by itself when this process ends)."""
    started = take_prestarted()
    if started is not None:
        proc, conn = started
        proc.kill()
        proc.wait()
        conn.close()
