"""Process-wide settings that make small, allocation-heavy PyTorch workloads fast on Linux, and
the process's memory use for the training log."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import warnings
from typing import Callable

import torch

_done = False


def configure_allocator() -> bool:
    """Keep freed memory in the process (glibc ``mallopt``) instead of returning it to the system.

    By default glibc serves every allocation above 128 KB-32 MB with a fresh ``mmap`` and unmaps
    it when freed, so each learner update page-faults on (and the kernel zeroes) every array it
    creates: on micro:3m that was a quarter of the update's time. With a high mmap threshold and
    no trimming, those arrays are reused from the heap. The process keeps its peak memory until
    it exits. A no-op (returns False) outside Linux/glibc; safe to call more than once.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    _done = bool(mallopt(M_MMAP_THRESHOLD, 1 << 30) and mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
                 and mallopt(M_TOP_PAD, 64 << 20))
    return _done


def resident_mib(pid: int | str = "self") -> float | None:
    """A process's resident memory in MiB (Linux ``/proc/<pid>/statm``; this one by default);
    ``None`` elsewhere or if it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def compile_methods(obj: object, names: tuple[str, ...], what: str) -> None:
    """Replace the methods ``names`` of ``obj`` by compiled ones (``torch.compile``, static shapes).

    Compiling happens at each method's first call (and again for a new shape). If a compiled call
    raises and the uncompiled method does not on the same arguments (no C++ compiler, a platform
    or torch version the compiler does not support), one warning names ``what`` and all the
    methods go back to running uncompiled. An error of the method itself is raised as usual.
    """
    eager = {name: getattr(obj, name) for name in names}
    _allow_recompiles(64)  # each instance and shape is one more compiled version of the same code
    try:
        compiled = {name: torch.compile(fn, dynamic=False) for name, fn in eager.items()}
    except Exception as e:  # torch.compile unavailable here
        _warn_uncompiled(what, e)
        return

    def guarded(name: str) -> Callable:
        fn = eager[name]

        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return compiled[name](*args, **kwargs)
            except Exception as e:
                out = fn(*args, **kwargs)  # the method's own errors propagate from here
                for n in names:  # every method back to the class's own
                    obj.__dict__.pop(n, None)
                _warn_uncompiled(what, e)
                return out

        call.compiled_by_qmix = True  # BatchedEnv.get_state leaves these out of checkpoints
        return call

    for name in names:
        setattr(obj, name, guarded(name))


def _allow_recompiles(limit: int) -> None:
    """Raise torch's limit on compiled versions per function (8 by default; past it, calls run
    uncompiled), e.g. for a process that builds many environments of different sizes."""
    try:
        config = torch._dynamo.config
        for attr in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
            if isinstance(getattr(config, attr, None), int):
                setattr(config, attr, max(getattr(config, attr), limit))
    except Exception:  # a private setting: leave torch's default where it is missing
        pass


def _warn_uncompiled(what: str, error: Exception) -> None:
    reason = (str(error).strip().splitlines() or [""])[0][:200]
    warnings.warn(f"{what}: torch.compile failed ({type(error).__name__}: {reason}); running uncompiled.",
                  RuntimeWarning, stacklevel=3)
