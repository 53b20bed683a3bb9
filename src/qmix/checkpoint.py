"""Checkpoints: written atomically, read with one-line errors.

Layout inside a run directory::

    checkpoints/step_<t_env>/state.pt   everything needed to continue the run
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
FORMAT_VERSION = 1


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(run_dir: Path, t_env: int, state: dict, keep: int = 0) -> Path:
    """Write ``state`` as ``checkpoints/step_<t_env>`` and point ``latest`` at it.

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
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
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
    if keep > 0:
        steps = sorted((p for p in root.glob("step_*") if p.is_dir()), key=lambda p: int(p.name[5:]))
        for old in steps[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
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


def load(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint file with one-line errors for anything wrong with it."""
    state_path = find(path)
    try:
        with open(state_path, "rb") as f:
            state = torch.load(f, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QmixError(f"checkpoint {state_path} is corrupt or unreadable ({first[:120]}).") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION or "config" not in state:
        raise QmixError(f"{state_path} is not a qmix checkpoint (or was written by an incompatible version).")
    return state
