"""A run interrupted by SIGTERM and resumed logs exactly what an uninterrupted run logs."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


ARGS = ["--env", "matrix:two-step", "--seed", "3", "t_max=6000", "checkpoint_interval=500",
        "test_interval=500", "log_interval=500", "use_tensorboard=false", "torch_threads=1", "device=cpu"]


def qmix(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "qmix.cli", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def metrics(run: Path):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # wall-clock figures differ between any two runs
        r.pop("time_s")
        for k in [k for k in r if k.startswith("perf/")]:
            r.pop(k)
    return rows


# micro: random battles in the training env and in the test env, whose episode counters (and so
# its battles) must survive the checkpoint too.
MICRO_ARGS = ["--env", "micro:3m", "--seed", "3", "t_max=4000", "checkpoint_interval=1000", "test_interval=1000",
              "log_interval=1000", "test_episodes=8", "use_tensorboard=false", "torch_threads=1", "device=cpu",
              "env_args.compile=false"]


# One env with the learner in a second process: the signal reaches the main process (and, from a
# terminal, the learner process too, which leaves it to the main one), checkpoints hold the serial
# state even with an update running ahead.
OVERLAP_ARGS = ["--env", "matrix:two-step", "--seed", "3", "t_max=2000", "checkpoint_interval=250",
                "test_interval=250", "log_interval=250", "use_tensorboard=false", "torch_threads=1", "device=cpu",
                "num_envs=1", "episodes_per_update=1", "batch_size=8", "learner_process=on"]


# A library's environment, one copy answering in NumPy (VectorEnv.step_one), mid-episode at the
# checkpoints, with the learner in a second process.
LBF_ARGS = ["--env", "lbf:Foraging-5x5-2p-1f-v3", "--seed", "3", "t_max=2000", "checkpoint_interval=250",
            "test_interval=250", "log_interval=250", "test_episodes=4", "use_tensorboard=false", "torch_threads=1", "device=cpu",
            "num_envs=1", "episodes_per_update=1", "batch_size=8", "learner_process=on"]
try:
    import lbforaging  # noqa: F401
    HAVE_LBF = True
except ImportError:
    HAVE_LBF = False


@pytest.mark.parametrize("args", [ARGS, MICRO_ARGS, OVERLAP_ARGS,
                                  pytest.param(LBF_ARGS, marks=pytest.mark.skipif(not HAVE_LBF, reason="needs lbforaging"))],
                         ids=["matrix", "micro", "learner-process", "lbf-one-copy"])
def test_sigterm_then_resume_matches_uninterrupted(tmp_path, args):
    full, cut = tmp_path / "full", tmp_path / "cut"
    p = qmix(*args, "--out", str(full))
    assert p.wait(timeout=300) == 0, p.stderr.read()

    p = qmix(*args, "--out", str(cut))
    deadline = time.time() + 120
    while time.time() < deadline:  # stop it somewhere after its second checkpoint
        ck = cut / "checkpoints"
        if ck.exists() and len(list(ck.glob("step_*"))) >= 2:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint saved" in out
    assert not (cut / "summary.json").exists()
    stopped_at = len(metrics(cut))

    p = qmix("--resume", str(cut))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert stopped_at < len(metrics(full))
    assert metrics(cut) == metrics(full)
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((cut / "summary.json").read_text())
    for key in ("t_env", "episodes", "updates", "final_test", "best_test"):
        assert a[key] == b[key]


def test_resume_extends_t_max(tmp_path):
    run = tmp_path / "run"
    p = qmix(*ARGS[:4], "t_max=1000", "use_tensorboard=false", "--out", str(run))
    assert p.wait(timeout=120) == 0
    p = qmix("--resume", str(run), "t_max=2000")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert json.loads((run / "summary.json").read_text())["t_env"] == 2000
