"""A checkpoint the file system refuses (a full disk) loses nothing and stops nothing."""

import errno

import pytest
import torch

from qmix import checkpoint as ckpt
from qmix.config import resolve
from qmix.errors import QmixError
from qmix.trainer import run_training

REAL_SAVE = torch.save


def refuse(monkeypatch, failing: set[int]):
    """``torch.save`` in the checkpoint module fails on the calls numbered in ``failing`` (from 1)
    as a full disk does, after writing part of the file; the other calls work."""
    calls = []

    def save(obj, f, *args, **kwargs):
        if not str(getattr(f, "name", "")).endswith(ckpt.STATE_FILE):  # not a checkpoint file
            return REAL_SAVE(obj, f, *args, **kwargs)
        calls.append(1)
        if len(calls) in failing:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return REAL_SAVE(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save)


def test_refused_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    refuse(monkeypatch, {2})
    ckpt.save(tmp_path, 100, {"config": {}, "x": 1})
    with pytest.raises(QmixError, match=r"No space left on device.*previous checkpoint, step_100, is kept"):
        ckpt.save(tmp_path, 200, {"config": {}, "x": 2})
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_100"]  # no partial copy left
    assert ckpt.load(tmp_path)["x"] == 1


def test_training_goes_on_past_a_refused_checkpoint(tmp_path, monkeypatch, capsys):
    refuse(monkeypatch, {2, 3})  # the checkpoints at steps 600 and 900; the final one (1000) works
    cfg = resolve({"alg": "qmix", "env": "matrix:two-step", "seed": 0, "progress": False, "t_max": 1000,
                   "checkpoint_interval": 300, "use_tensorboard": False, "torch_threads": 1})
    summary = run_training(cfg, tmp_path)
    end = summary["t_env"]
    assert summary["finished"] and end >= 1000
    steps = sorted(int(p.name[5:]) for p in (tmp_path / "checkpoints").glob("step_*"))
    assert len(steps) == 2 and 300 <= steps[0] < 600 and steps[1] == end  # the refused ones left nothing
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    err = capsys.readouterr().err
    assert err.count("qmix: warning: could not write checkpoint") == 2
    assert f"previous checkpoint, step_{steps[0]}, is kept. Training goes on" in err
    assert ckpt.load(tmp_path)["counters"]["t_env"] == end


def test_refused_final_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    from qmix.cli import main

    refuse(monkeypatch, {1})
    code = main(["train", "--env", "matrix:two-step", "--out", str(tmp_path / "run"), "t_max=300",
                 "checkpoint_interval=0", "use_tensorboard=false", "progress=false", "torch_threads=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "no earlier checkpoint exists" in err
