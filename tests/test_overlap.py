"""learner_process: learning in a process of its own gives the serial run, bit for bit."""

import io

import pytest
import torch

from qmix import overlap
from qmix.config import resolve
from qmix.errors import QmixError
from qmix.trainer import Trainer

# One battle at a time, a buffer small enough to wrap around (and so to draw the row the next
# episode fills, which must wait for it), hard target updates every few episodes.
BASE = {"alg": "qmix", "env": "matrix:two-step", "device": "cpu", "num_envs": 1, "episodes_per_update": 1, "seed": 5, "t_max": 100_000, "batch_size": 4,
        "buffer_size": 12, "target_update_interval": 5, "rnn_hidden_dim": 16, "mixing_embed_dim": 8,
        "torch_threads": 1, "test_episodes": 0, "progress": False, "use_tensorboard": False,
        "checkpoint_interval": 0}


def trainer(tmp_path, name, **overrides):
    return Trainer(resolve({**BASE, **overrides}), tmp_path / name)


def train_to(tr, steps):
    while tr.counters.t_env < steps:
        tr.train_step()


def frozen(state):
    """A deep copy (the live state holds the networks' own tensors)."""
    out = io.BytesIO()
    torch.save(state, out)
    return torch.load(io.BytesIO(out.getvalue()), weights_only=False)


def assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def comparable(state):
    state = dict(state)
    state["config"] = {k: v for k, v in state["config"].items() if k != "learner_process"}
    return state


@pytest.mark.parametrize("extra", [{}, {"optimizer": "adam", "standardise_rewards": True, "target_update_tau": 0.01,
                                 "buffer_obs_dtype": "bfloat16"}, {"episodes_per_update": 2, "target_update_interval": 3}],
                         ids=["rmsprop-hard-targets", "adam-soft-targets-bfloat16", "every-second-episode"])
def test_same_run_as_serial_and_checkpoints_hold_the_serial_state(tmp_path, extra):
    serial = trainer(tmp_path, "serial", learner_process="off", **extra)
    train_to(serial, 351)
    serial_mid = frozen(serial._state())
    train_to(serial, 700)
    serial_end = frozen(serial._state())
    serial.close()

    ahead = trainer(tmp_path, "ahead", learner_process="on", **extra)
    assert ahead.overlap
    train_to(ahead, 351)
    assert ahead.buffer.in_flight  # the checkpoint is taken while an update runs ahead
    mid = frozen(ahead._state())
    ahead.close()
    assert ahead.counters.updates > 8
    assert_same(comparable(mid), comparable(serial_mid))

    resumed = Trainer(resolve({**BASE, "learner_process": "on", **extra}), tmp_path / "resumed", resume_state=mid)
    train_to(resumed, 700)
    end = frozen(resumed._state())
    resumed.close()
    assert_same(comparable(end), comparable(serial_end))


def test_statistics_and_acting_networks_follow_the_updates(tmp_path):
    tr = trainer(tmp_path, "run", learner_process="on")
    train_to(tr, 600)
    metrics = tr.train_metrics()
    assert metrics["updates"] == tr.counters.updates > 0
    assert metrics["loss"] > 0 and metrics["grad_norm"] > 0
    acting = [p.clone() for p in tr.learner.agent.parameters()]
    tr.close()  # brings the learner here up to the last update
    learned = list(tr.learner.agent.parameters())
    assert all(torch.equal(a, b) for a, b in zip(acting, learned))


def test_a_learner_process_that_dies_ends_the_run_with_one_line(tmp_path):
    tr = trainer(tmp_path, "run", learner_process="on")
    train_to(tr, 200)
    tr.buffer._proc.kill()
    tr.buffer._proc.wait()
    with pytest.raises(QmixError, match="learner process exited unexpectedly"):
        train_to(tr, 2000)
    tr.close()


def test_an_episode_it_cannot_store_ends_the_run_with_why(tmp_path):
    """Episodes are stored by the learner process's reading thread; a failure there reaches the
    main process as the learner process's error."""
    import numpy as np

    tr = trainer(tmp_path, "run", learner_process="on")
    train_to(tr, 200)
    tr.buffer._send(("insert", [np.zeros((1, 3, 7, 7), np.float32)] * 7))  # no episode of this run has this shape
    with pytest.raises(QmixError, match="the learner process failed"):
        train_to(tr, 2000)
    tr.close()


def test_a_learner_process_that_fails_while_starting_says_why(tmp_path, monkeypatch):
    """Its start is not waited for: the error that stopped it comes with the first answer due."""
    real = overlap._to_bytes
    monkeypatch.setattr(overlap, "_to_bytes", lambda obj: real({**obj, "learner": {}}))
    tr = trainer(tmp_path, "run", learner_process="on")
    with pytest.raises(QmixError, match="the learner process failed: KeyError"):
        train_to(tr, 2000)
    tr.close()


def test_a_failed_set_up_ends_the_learner_process_it_started(tmp_path, monkeypatch):
    started = []
    real = overlap.start
    monkeypatch.setattr(overlap, "start", lambda: started.append(real()) or started[-1])
    with pytest.raises(QmixError, match="nonsense"):
        trainer(tmp_path, "run", learner_process="on", env_args={"nonsense": 1})
    assert len(started) == 1 and started[0][0].poll() is not None  # started, then ended


def test_when_it_is_used(tmp_path):
    cpu = torch.device("cpu")
    cfg = resolve({**BASE, "learner_process": "auto"})
    assert overlap.wanted(cfg, cpu, cpu) == (overlap.usable_cpus() >= 2)
    assert not overlap.wanted(resolve({**BASE, "t_max": 5000}), cpu, cpu)  # too short to repay the start
    assert not overlap.wanted(resolve({**BASE, "num_envs": 8}), cpu, cpu)
    assert not overlap.wanted(resolve({**BASE, "learner_process": "off"}), cpu, cpu)
    with pytest.raises(QmixError, match="learner_process=on needs num_envs=1"):
        overlap.wanted(resolve({**BASE, "num_envs": 8, "learner_process": "on"}), cpu, cpu)


def test_a_one_cpu_share_does_not_start_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as a sweep gives a trial of one CPU
    assert overlap.usable_cpus() == 1
    assert not overlap.wanted(resolve({**BASE, "learner_process": "auto"}), cpu, cpu)


def test_logged_memory_counts_the_learner_process(tmp_path):
    from qmix.system import resident_mib
    from qmix.trainer import perf_metrics

    tr = trainer(tmp_path, "run", learner_process="on")
    try:
        train_to(tr, 40)  # a few updates: the learner process has started (it is not waited for)
        assert tr.counters.updates > 0
        own = resident_mib()
        if own is None:
            pytest.skip("resident memory is read from /proc (Linux)")
        child = resident_mib(tr.buffer.pid)
        assert child > 50  # an interpreter with torch loaded
        logged = perf_metrics(1.0, torch.device("cpu"), tr.buffer.pid)["perf/rss_mib"]
        assert logged >= own + child - 5
    finally:
        tr.close()


def test_large_episodes_and_networks_do_not_block_the_two_processes(tmp_path):
    """An episode insert (megabytes of 27-agent observations) and an update's result (a wide
    agent network) both larger than the socket's buffer, sent at the same time: neither side may
    wait on the other forever."""
    import threading

    cfg = resolve({**BASE, "env": "micro:27m_vs_30m", "seed": 1, "rnn_hidden_dim": 256, "batch_size": 2, "buffer_size": 64,
                   "learner_process": "on", "env_args": {"compile": False}})
    tr = Trainer(cfg, tmp_path / "run")
    try:
        def go():
            while tr.counters.updates < 12:
                tr.train_step()

        worker = threading.Thread(target=go, daemon=True)
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive(), "the main and learner processes are blocked on each other"
    finally:
        if not worker.is_alive():
            tr.close()


def test_checkpoint_buffer_is_written_by_the_learner_process(tmp_path):
    from qmix import checkpoint as ckpt

    tr = trainer(tmp_path, "run", learner_process="on")
    try:
        train_to(tr, 301)
        expected = frozen(tr._state())["buffer"]
        path = tr.save_checkpoint()
        saved = ckpt.load(path)["buffer"]
        assert_same(saved, expected, "buffer")
        # a refused write is an OSError here (the checkpoint code turns it into a warning) and
        # the learner process goes on
        with pytest.raises(OSError):
            tr.buffer.write_buffer(tmp_path / "no such directory" / "buffer.pt")
        train_to(tr, 400)
        assert tr.counters.updates > 0
    finally:
        tr.close()


def test_a_resumed_buffer_is_converted_to_the_runs_storage_type(tmp_path):
    """As in one process (EpisodeBuffer.load_state_dict), a saved buffer resumed with another
    buffer_obs_dtype is converted."""
    first = trainer(tmp_path, "first", learner_process="on")
    train_to(first, 120)
    saved = frozen(first._state())
    first.close()
    resumed = Trainer(resolve({**BASE, "learner_process": "on", "buffer_obs_dtype": "bfloat16"}),
                      tmp_path / "resumed", resume_state=saved)
    try:
        buffer = frozen(resumed._state())["buffer"]
        assert buffer["obs"].dtype == torch.bfloat16
        assert torch.equal(buffer["obs"], saved["buffer"]["obs"].to(torch.bfloat16))
        assert torch.equal(buffer["actions"], saved["buffer"]["actions"])
    finally:
        resumed.close()


def test_the_command_line_is_parsed_without_torch():
    """`qmix ...` parses its command line and starts a learner process before loading torch."""
    import subprocess
    import sys

    code = ("import sys; from qmix.cli import build_parser, _prestart_learner; "
            "build_parser().parse_args(['bench', 'train', 'lbf-epymarl']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_when_the_command_line_starts_one_early(monkeypatch):
    from qmix import launch

    monkeypatch.setattr(launch, "usable_cpus", lambda: 2)
    monkeypatch.setattr(launch.os.path, "exists", lambda path: False)
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    base = {"num_envs": 1, "t_max": 50_000, "learner_process": "auto", "device": "auto"}
    assert launch.likely(base)
    assert launch.likely({**base, "device": "cpu", "buffer_device": "cpu"})
    assert launch.likely({**base, "t_max": 100, "learner_process": "on"})
    assert not launch.likely({**base, "t_max": 100})
    assert not launch.likely({**base, "num_envs": 8})
    assert not launch.likely({**base, "learner_process": "off"})
    assert not launch.likely({**base, "device": "cuda"})
    assert not launch.likely({**base, "t_max": "soon"})  # unvalidated values: no guess
    monkeypatch.setattr(launch.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert not launch.likely(base)  # device=auto on a GPU machine: probably the GPU
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    monkeypatch.setattr(launch, "usable_cpus", lambda: 1)
    assert launch.likely({**base, "learner_process": "on"}) and not launch.likely(base)


def test_a_prestarted_learner_process_is_taken_or_ended(tmp_path, monkeypatch):
    from qmix import launch
    from qmix.cli import main

    started = []
    real = launch.start
    monkeypatch.setattr(launch, "start", lambda: started.append(real()) or started[-1])
    # used: the command line starts it, the trainer takes it (no second start)
    out = tmp_path / "run"
    args = ["train", "--env", "matrix:two-step", "--quiet", "--out", str(out), "num_envs=1",
            "learner_process=on", "t_max=300", "test_interval=1000", "use_tensorboard=false", "device=cpu"]
    assert main(args) == 0 and (out / "summary.json").exists()
    assert len(started) == 1 and started[0][0].poll() is not None and launch.take_prestarted() is None
    # not used: a trainer that learns in its own process ends it at once
    launch.prestart({"num_envs": 1, "learner_process": "on", "device": "cpu"})
    assert len(started) == 2
    tr = trainer(tmp_path, "serial", learner_process="off")
    assert started[1][0].poll() is not None and launch.take_prestarted() is None and not tr.overlap
    tr.close()


def test_a_command_that_fails_leaves_no_learner_process(tmp_path, monkeypatch):
    from qmix import launch
    from qmix.cli import main

    started = []
    real = launch.start
    monkeypatch.setattr(launch, "start", lambda: started.append(real()) or started[-1])
    code = main(["train", "--env", "matrix:two-step", "--quiet", "--out", str(tmp_path / "run"), "num_envs=1",
                 "learner_process=on", "t_max=300", "device=cpu", "env_args.nonsense=1"])
    assert code == 2 and len(started) == 1
    assert started[0][0].poll() is not None and launch.take_prestarted() is None


def test_what_follows_an_update_is_queued_behind_it_in_the_serial_order():
    """finish(then_target, then_next) sends the update due now (when none runs ahead), then the
    target update, then the next update, and only then waits for the answer."""
    import numpy as np

    from qmix.overlap import LearnerProcess

    sent = []
    lp = LearnerProcess.__new__(LearnerProcess)
    lp.capacity, lp.episodes_in, lp.in_flight, lp._done, lp.busy_s = 10, 4, False, None, 0.0
    lp.learner = type("L", (), {"flat": torch.zeros(3)})()
    lp._send = sent.append

    def answer(kind):
        sent.append(("<wait>",))
        return ("done", {"loss": 1.0}, np.ones(3, np.float32), 0.01)

    lp._receive = answer
    assert lp.finish(then_target=True, then_next=True) == {"loss": 1.0}
    assert sent == [("update", 4, None), ("target",), ("update", 5, 4), ("<wait>",)]
    assert lp.in_flight and torch.equal(lp.learner.flat, torch.ones(3))
    sent.clear()
    lp.finish()  # the update in flight: nothing to send before the wait
    assert sent == [("<wait>",)] and not lp.in_flight
