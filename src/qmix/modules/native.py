"""Native (C++) kernels, built on first use and cached on disk.

Two parts of the CPU learner have a C++ implementation (``native_kernels.cpp``): the GRU
recurrence (the same computation as :mod:`qmix.modules.gru`, with each step's element-wise work
fused into one vectorised loop) and QMIX's mixing of the agents' utilities once the
hypernetworks have run (:class:`qmix.modules.mixers.QMixer`, one pass forward and one backward).
They are compiled by ``torch.utils.cpp_extension`` (a C++ compiler is needed; ``-O3
-march=native``) into ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), under a
name that includes this CPU's model and instruction-set flags, so machines sharing a home
directory never load each other's build. Building takes about 30 s once; later runs load the
cached library.

``QMIX_NATIVE_VERBOSE=1`` prints the compiler's commands and output (to see why a build fails).

``native_kernels`` (config) chooses: ``auto`` (use them where they build, else the PyTorch path,
with one warning line), ``on`` (a build failure is an error), ``off`` (PyTorch path only).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("native_kernels.cpp")
_lock = threading.Lock()
_state: dict = {"mode": "off", "module": None, "error": None, "tried": False}


def _machine_fingerprint() -> str:
    """CPU model and flags (Linux), else the platform's processor description."""
    parts = [platform.machine(), platform.processor(), torch.__version__]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU implementer", "CPU part")):
                    parts.append(line.strip())
                if line.strip() == "":  # the first processor's block is enough
                    break
    except OSError:
        pass
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


@functools.cache
def extension_name() -> str:
    source = hashlib.sha1(_SOURCE.read_bytes()).hexdigest()[:8]
    return f"qmix_native_{source}_{_machine_fingerprint()}"


def build_dir() -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(extension_name(), verbose=False))


def is_built() -> bool:
    """Whether a compiled library for this source and machine is already cached."""
    if _cached_library() is not None:  # without loading torch's builder
        return True
    try:
        return (build_dir() / f"{extension_name()}.so").exists()
    except Exception:  # noqa: BLE001 - a missing or unwritable cache simply means "not built"
        return False


def _ninja_on_path() -> None:
    """torch's extension builder runs ``ninja`` from PATH: where only the ``ninja`` Python package
    provides it (a dependency; its binary sits beside this interpreter, which may not be on PATH),
    add its directory."""
    if shutil.which("ninja"):
        return
    try:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except (ImportError, AttributeError):
        pass


@contextlib.contextmanager
def _exclusive(directory: Path):
    """Hold an exclusive lock on ``directory`` against other processes (released by the operating
    system if this process dies). Inside it, a build lock left by torch's builder is stale: its
    builder was killed mid-build (it would otherwise make every later build wait forever)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock file alone
        yield
        return
    try:
        handle = open(directory / "qmix.lock", "a")
    except OSError:  # a read-only cache: nothing can be built there, torch's loader decides
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (directory / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached_library() -> Path | None:
    """The library a previous build left in torch's extension cache, found by torch's own
    directory scheme (``$TORCH_EXTENSIONS_DIR``, else its cache root and a ``py311_cpu``-style
    folder) without importing ``torch.utils.cpp_extension`` (about 0.1 s: it imports setuptools).
    A guess: where it finds nothing, :func:`_build` asks torch's builder."""
    name = extension_name()
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        from torch import _appdirs

        hip, cuda = getattr(torch.version, "hip", None), torch.version.cuda
        accelerator = f"rocm{hip.replace('.', '')}" if hip else f"cu{cuda.replace('.', '')}" if cuda else "cpu"
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(os.path.realpath(_appdirs.user_cache_dir(appname="torch_extensions")),
                            f"{python}_{accelerator}")
    path = Path(root) / name / (name + (".pyd" if sys.platform == "win32" else ".so"))
    return path if path.is_file() else None


def _load_cached():
    """The module of an existing build of this source for this machine and torch (the name says
    so), loaded as torch's builder loads it; None where there is none or it does not load."""
    try:
        path = _cached_library()
        if path is None:
            return None
        with _exclusive(path.parent):  # not while another process (re)builds it
            spec = importlib.util.spec_from_file_location(extension_name(), path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    except Exception:  # noqa: BLE001 - any doubt: the builder's own path decides
        return None


def _build():
    compilers = (os.environ.get("CXX", "c++"), "c++", "g++", "clang++")
    if not is_built() and not any(shutil.which(c) for c in compilers):
        raise RuntimeError("no C++ compiler found (c++, g++ or clang++)")
    _ninja_on_path()
    from torch.utils.cpp_extension import load

    flags = ["-O3", "-march=native"]
    # at::parallel_for in the extension runs on torch's OpenMP threads only if compiled with OpenMP.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") and torch.backends.openmp.is_available() else []
    directory = build_dir()
    with _exclusive(directory):
        # Compile a copy kept in the build directory (the name holds the source's hash), so that
        # installs or checkouts at other paths share one build instead of rebuilding in turn.
        source = directory / _SOURCE.name
        if not source.exists() or source.read_bytes() != _SOURCE.read_bytes():
            shutil.copyfile(_SOURCE, source)
        return load(name=extension_name(), sources=[str(source)], extra_cflags=flags + openmp,
                    extra_ldflags=openmp, build_directory=str(directory),
                    verbose=bool(os.environ.get("QMIX_NATIVE_VERBOSE")))


def configure(mode: str = "auto") -> str | None:
    """Select the learner's kernels for this process: ``auto``, ``on`` or ``off``.

    Builds (or loads) the kernels unless ``off``. Returns None, or a one-line reason why the native
    kernels are not used under ``auto``. Raises RuntimeError under ``on`` if they cannot be built.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"native kernel mode must be auto, on or off; got {mode!r}")
    with _lock:
        _state["mode"] = mode
        if mode == "off":
            return None
        if not _state["tried"]:
            _state["tried"] = True
            try:
                _state["module"] = _load_cached() or _build()
            except Exception as exc:  # noqa: BLE001 - any build failure falls back (auto) or is reported (on)
                first = str(exc).strip().splitlines()
                _state["error"] = f"{type(exc).__name__}: {first[0] if first else ''}"[:300]
        if _state["module"] is None:
            if mode == "on":
                raise RuntimeError(f"the native kernels could not be built ({_state['error']})")
            return f"the native kernels could not be built ({_state['error']}); using the PyTorch path"
        return None


def module():
    """The compiled module if configured and available, else None."""
    return _state["module"] if _state["mode"] != "off" else None


def active() -> bool:
    return module() is not None
