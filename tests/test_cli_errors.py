"""Every user error: one line on stderr, exit code 2, no traceback, nothing destroyed."""

import json

import pytest

from qmix.cli import main

FAST = ["--env", "matrix:two-step", "t_max=200", "test_interval=100", "use_tensorboard=false", "--quiet"]


def run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


CASES = [
    (["train", "lrr=0.1"], "did you mean lr"),
    (["train", "lr=abc"], "lr must be a number"),
    (["train", "gamma=1.5"], "gamma must be in (0, 1.0]"),
    (["train", "batch_size=0"], "batch_size must be >= 1"),
    (["train", "double_q=maybe"], "double_q must be true or false"),
    (["train", "mixer=qplex"], "mixer must be one of"),
    (["train", "--env", "foo:bar"], "unknown env family 'foo'"),
    (["train", "--env", "micr:3m"], "did you mean micro"),
    (["train", "--env", "nocolon"], "is not of the form family:name"),
    (["train", "--env", "matrix:four-step"], "unknown matrix game"),
    (["train", "--env", "matrix:two-step", "env_args.k=1"], "unknown env_args key 'k'"),
    (["train", "--alg", "qmixx"], "did you mean qmix"),
    (["train", "epsilon_start=0.1", "epsilon_finish=0.5"], "must not exceed epsilon_start"),
    (["train", "batch_size=64", "buffer_size=32"], "must not exceed buffer_size"),
    (["train", "noequals"], "is not of the form key=value"),
    (["train", "--device", "tpu"], "device must be auto, cpu, cuda"),
    (["train", "--config", "/nonexistent.yaml"], "does not exist"),
    (["train", "--bogus-flag"], "unrecognized arguments"),
    (["evaluate", "/nonexistent/run"], "does not exist"),
    (["train", "--resume", "/nonexistent/run"], "no config.yaml"),
    (["bench", "learner", "lr=3"], "apply to qmix bench train, env and act only"),
    (["bench", "env", "micro:3m", "lr=3"], "takes env args only (env_args.NAME=value), not lr=3"),
    (["bench", "env", "env_args.compile=true"], "needs an env id"),
    (["bench", "env", "micro:3m", "env_args.bogus=1"], "bogus"),
    (["bench", "train", "vmas-spread", "bogus_key=1"], "unknown config key 'bogus_key'"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_user_error_is_one_line_exit_2(capsys, monkeypatch, tmp_path, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, argv)
    assert list(tmp_path.iterdir()) == []  # nothing written (no half-made runs/ directory)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qmix: error: ")
    assert message in lines[0]
    assert "Traceback" not in err


def test_existing_run_dir_is_never_overwritten(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "precious.txt").write_text("keep me")
    code, _, err = run(capsys, ["train", *FAST, "--out", str(run_dir)])
    assert code == 2 and "already exists" in err
    assert (run_dir / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in run_dir.iterdir()) == ["precious.txt"]


def test_corrupt_checkpoint_gives_one_line(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(run_dir)]) == 0
    capsys.readouterr()
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    state = run_dir / "checkpoints" / latest / "state.pt"
    good = state.read_bytes()
    for bad in (b"not a checkpoint", good[: len(good) // 2], b""):
        state.write_bytes(bad)
        for argv in (["evaluate", str(run_dir)], ["train", "--resume", str(run_dir)]):
            code, _, err = run(capsys, argv)
            assert code == 2, err
            assert len(err.strip().splitlines()) == 1 and "corrupt" in err, err
    # the rest of the run directory is untouched
    assert (run_dir / "config.yaml").exists() and (run_dir / "metrics.jsonl").exists()


def test_not_a_checkpoint(capsys, tmp_path):
    f = tmp_path / "x.pt"
    import torch

    torch.save({"hello": 1}, f)
    code, _, err = run(capsys, ["evaluate", str(f)])
    assert code == 2 and "not a qmix checkpoint" in err


def test_resume_cannot_change_the_run(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(run_dir)]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, ["train", "--resume", str(run_dir), "lr=0.1"])
    assert code == 2 and "cannot be changed when resuming" in err
    code, _, err = run(capsys, ["train", "--resume", str(run_dir), "--env", "matrix:climbing"])
    assert code == 2 and "--env cannot be given with --resume" in err


def test_evaluate_json_contract(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(run_dir)]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, ["evaluate", str(run_dir), "--episodes", "5", "--json"])
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"episodes", "return_mean", "return_std", "win_rate", "ep_length_mean"}
    assert result["episodes"] == 5 and result["ep_length_mean"] == 2.0
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/latest"):
        assert (run_dir / name).exists(), name
    assert list(run_dir.glob("events.*")) == []  # tensorboard was switched off


def test_runs_of_earlier_versions_still_load(tmp_path):
    """A key an earlier version wrote into config.yaml and that changed nothing (``compile``) is
    dropped on resume; typed by a user, it is an error."""
    import yaml

    from qmix.config import resolve, to_yaml
    from qmix.errors import QmixError
    from qmix.trainer import load_run_config

    data = yaml.safe_load(to_yaml(resolve({"env": "matrix:two-step"})))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**data, "compile": False}))
    assert load_run_config(tmp_path).env == "matrix:two-step"
    with pytest.raises(QmixError, match="unknown config key 'compile'"):
        resolve({"compile": True})


def test_bench_train_reports_rates_and_costs(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code, _, err = run(capsys, ["bench", "train", "micro-3m", "test_episodes=0", "batch_size=2",
                                "env_args.compile=false", "--steps", "800", "--threads", "1", "--json", str(out)])
    assert code == 0, err
    row = json.loads(out.read_text())["results"][0]
    assert row["steps"] >= 800 and row["steps_per_s"] > 0
    for key in ("act_us_per_step", "env_us_per_step", "store_us_per_step", "learn_ms_per_update",
                "time_env_pct", "peak_rss_mib"):
        assert row[key] >= 0, key
    assert row["learn_ms_per_update"] > 0 and row["updates"] > 0


def test_bench_train_reports_the_learner_process(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code, _, err = run(capsys, ["bench", "train", "micro-3m", "test_episodes=0", "batch_size=2", "num_envs=1",
                                "learner_process=on", "env_args.compile=false", "--steps", "600", "--threads", "1",
                                "--json", str(out)])
    assert code == 0, err
    row = json.loads(out.read_text())["results"][0]
    assert row["learner_process"] is True and row["updates"] > 0
    assert row["learner_process_ms_per_update"] > 0 and 0 < row["learner_process_busy_pct"] <= 100


def test_the_command_ends_fast_with_everything_of_the_run_written(tmp_path):
    """The ``qmix`` command ends without the interpreter's teardown: its run directory is
    complete (the last metrics line, the TensorBoard events, the summary, the checkpoint), and its
    exit codes are those of ``main`` (0; 2 with one line for a user error)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "qmix.cli", "train", "--env", "matrix:two-step", "--out", str(out),
                           "t_max=600", "test_interval=300", "log_interval=300", "checkpoint_interval=300",
                           "use_tensorboard=true", "device=cpu", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["t_env"] >= 600
    assert json.loads((out / "summary.json").read_text())
    assert any((out / "checkpoints").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    steps = [e.step for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
    assert steps and max(steps) >= 600
    bad = subprocess.run([sys.executable, "-m", "qmix.cli", "train", "lr=abc"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "lr must be a number" in bad.stderr
