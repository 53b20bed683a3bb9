"""Checkpoints: written atomically, read with one-line errors.

Layout inside a run directory::

    checkpoints/step_<t_env>/state.pt   everything needed to continue the run but the replay buffer
    checkpoints/step_<t_env>/buffer.pt  the replay buffer (only the newest checkpoints keep it)
    checkpoints/latest                  the name of the newest step_* directory (one line)

A checkpoint directory is first written as ``.tmp-step_<t_env>`` and renamed into place, and
``latest`` is replaced by renaming a temporary file, so a crash never leaves a half-written
checkpoint behind a name that is trusted.
"""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch

from qmix.errors import QmixError

STATE_FILE = "state.pt"
BUFFER_FILE = "buffer.pt"
FORMAT_VERSION = 1


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write(path: Path, obj) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save(run_dir: Path, t_env: int, state: dict, keep: int = 0, keep_buffers: int = 0) -> Path:
    """Write ``state`` as ``checkpoints/step_<t_env>`` and point ``latest`` at it.

    ``state["buffer"]`` (the replay buffer, a function writing it to the path it is given, or
    None) goes to its own file. ``keep``: keep only the
    newest ``keep`` checkpoints (0: all); ``keep_buffers``: only the newest ``keep_buffers`` keep
    their replay buffer (0: all), the older ones keep everything else.

    If the file system refuses (a full disk, a lost mount), the partial copy is removed, the
    previous checkpoint and ``latest`` stay as they were, and a :class:`QmixError` says so.
    """
    root = Path(run_dir) / "checkpoints"
    name = f"step_{t_env}"
    final = root / name
    tmp = root / f".tmp-{name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        buffer = state.get("buffer")
        if callable(buffer):  # it writes the file itself (a learner process's buffer)
            buffer(tmp / BUFFER_FILE)
        elif buffer is not None:
            _write(tmp / BUFFER_FILE, buffer)
        _write(tmp / STATE_FILE, {"format_version": FORMAT_VERSION, **state,
                                  "buffer": BUFFER_FILE if buffer is not None else None})
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = _latest_name(root)
        raise QmixError(
            f"could not write checkpoint {final} ({exc.strerror or exc}); "
            + (f"the previous checkpoint, {kept}, is kept." if kept else "no earlier checkpoint exists.")
        ) from None
    if final.exists():  # the same step checkpointed again (e.g. at the end): replace it
        old = root / f".old-{name}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _atomic_write_text(root / "latest", name + "\n")
    steps = sorted((p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    steps = [p for p in steps if p != final] + [final]  # the one just written counts as the newest
    if keep > 0:
        for old in steps[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        steps = steps[-keep:]
    if keep_buffers > 0:
        for old in steps[:-keep_buffers]:
            try:
                (old / BUFFER_FILE).unlink(missing_ok=True)
            except OSError:
                pass
    return final


def _latest_name(root: Path) -> str | None:
    try:
        return (root / "latest").read_text().strip() or None
    except OSError:
        return None


def find(path: str | Path) -> Path:
    """Resolve a run directory, a ``checkpoints`` folder, a ``step_*`` folder or a state file."""
    p = Path(path)
    if not p.exists():
        raise QmixError(f"{path} does not exist.")
    if p.is_file():
        return p
    for root in (p / "checkpoints", p):
        latest = root / "latest"
        if latest.is_file():
            name = latest.read_text().strip()
            target = root / name / STATE_FILE
            if not target.is_file():
                raise QmixError(f"{latest} names {name}, which has no {STATE_FILE}; the checkpoint is incomplete.")
            return target
    if (p / STATE_FILE).is_file():
        return p / STATE_FILE
    raise QmixError(f"no checkpoint found in {path} (expected checkpoints/latest or {STATE_FILE}).")


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "checkpoints" / "latest").is_file()


def _read(path: Path, map_location):
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QmixError(f"checkpoint {path} is corrupt or unreadable ({first[:120]}).") from None


def load(path: str | Path, map_location="cpu", buffer: bool = True) -> dict:
    """Load a checkpoint with one-line errors for anything wrong with it.

    ``state["buffer"]`` is the replay buffer when ``buffer`` is true and the checkpoint has one,
    else None; ``state["buffer_dropped"]`` is true when the checkpoint was written with a buffer
    that was since removed (``checkpoint_keep_buffers``). Checkpoints of earlier versions, with
    the buffer inside ``state.pt``, load the same way.
    """
    state_path = find(path)
    state = _read(state_path, map_location)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION or "config" not in state:
        raise QmixError(f"{state_path} is not a qmix checkpoint (or was written by an incompatible version).")
    state["buffer_dropped"] = False
    if state.get("buffer") == BUFFER_FILE:
        buffer_path = state_path.parent / BUFFER_FILE
        if not buffer_path.is_file():
            state["buffer"], state["buffer_dropped"] = None, True
        else:
            state["buffer"] = _read(buffer_path, map_location) if buffer else None
    elif not buffer:
        state["buffer"] = None
    return state
