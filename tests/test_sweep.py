"""Studies: sweep files, Ray and --local execution, interruption and resume, plots and reports."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from qmix.errors import QmixError
from qmix.study import stats
from qmix.study.sweep import NO_RAY, load_sweep, prepare_study, run_sweep

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = {"t_max": 3000, "test_interval": 500, "checkpoint_interval": 500, "use_tensorboard": False}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["OMP_NUM_THREADS"] = "1"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


# ----------------------------------------------------------------------------- statistics
def test_iqm_hand_numbers():
    # n=8: drop 2 from each end -> mean(3, 4, 100, 200)
    assert stats.iqm([400, 1, 3, 100, 2, 200, 300, 4]) == pytest.approx(76.75)
    # n=5: drop 1 from each end -> mean(2, 3, 4)
    assert stats.iqm([1, 2, 3, 4, 1000]) == pytest.approx(3.0)
    # n<4: nothing dropped
    assert stats.iqm([1, 2, 6]) == pytest.approx(3.0)
    # along an axis
    np.testing.assert_allclose(stats.iqm(np.array([[1, 10], [2, 20], [3, 30], [100, 1000]]), axis=0), [2.5, 25.0])


def test_t_interval_hand_numbers():
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, t(0.975, 2) = 4.303
    half = 4.303 / np.sqrt(3)
    assert (lo, hi) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert stats.t_interval([5.0]) == (5.0, 5.0)


def test_bootstrap_ci():
    lo, hi = stats.bootstrap_ci([2.0, 2.0, 2.0, 2.0])
    assert lo == hi == 2.0
    lo, hi = stats.bootstrap_ci([0.0, 1.0])  # resampled means are 0, 0.5 or 1
    assert lo == 0.0 and hi == 1.0
    x = np.random.default_rng(1).normal(10.0, 1.0, size=50)
    lo, hi = stats.bootstrap_ci(x)
    assert lo < x.mean() < hi and hi - lo < 1.0
    lo, hi = stats.bootstrap_ci(np.stack([x, x + 5]).T)  # per point, [n_seeds, points]
    assert lo.shape == (2,) and lo[1] == pytest.approx(lo[0] + 5)
    med_lo, med_hi = stats.bootstrap_ci([1.0, 2.0, 3.0, 4.0, 100.0], "median")
    assert 1.0 <= med_lo <= 3.0 <= med_hi <= 100.0


def test_interpolate_never_extrapolates():
    out = stats.interpolate([0, 500, 1000], [0.0, 1.0, 0.0], [0, 250, 750, 1000, 1500])
    np.testing.assert_allclose(out[:4], [0.0, 0.5, 0.5, 0.0])
    assert np.isnan(out[4])


# ----------------------------------------------------------------------------- sweep files
def test_sweep_file_grid(tmp_path):
    f = _write(tmp_path / "s.yaml", {"name": "g", "base": {"t_max": 1000, "env_args.foo": 1},
                                     "grid": {"alg": ["qmix", "vdn"], "env": ["matrix:two-step", "matrix:climbing"],
                                              "seed": 3, "overrides": {"lr": [0.001, 0.0005]}}})
    study = load_sweep(f, tmp_path / "study")
    assert len(study.trials) == 2 * 2 * 3 * 2
    assert study.base == {"t_max": 1000, "env_args": {"foo": 1}}
    assert sorted({t.seed for t in study.trials}) == [1, 2, 3]
    assert len({t.id for t in study.trials}) == len(study.trials)
    assert {t.label for t in study.trials} == {"qmix lr=0.001", "qmix lr=0.0005", "vdn lr=0.001", "vdn lr=0.0005"}
    bad = _write(tmp_path / "bad.yaml", {"grid": {"env": ["matrix:two-step"], "sed": [1]}})
    with pytest.raises(QmixError, match="unknown grid key"):
        load_sweep(bad)
    bad = _write(tmp_path / "bad2.yaml", {"base": {"seed": 3}, "grid": {"env": ["matrix:two-step"]}})
    with pytest.raises(QmixError, match="belong in the grid"):
        load_sweep(bad)


def test_different_sweep_file_into_same_study_is_refused(tmp_path):
    f = _write(tmp_path / "a.yaml", {"base": TINY, "grid": {"alg": ["qmix"], "env": ["matrix:two-step"], "seed": [1]}})
    study = load_sweep(f, tmp_path / "study")
    prepare_study(study)
    assert (tmp_path / "study" / "trials.json").is_file() and (tmp_path / "study" / "study.yaml").is_file()
    prepare_study(load_sweep(f, tmp_path / "study"))  # the same sweep again: fine
    g = _write(tmp_path / "b.yaml", {"base": TINY, "grid": {"alg": ["qmix"], "env": ["matrix:two-step"], "seed": [1, 2]}})
    with pytest.raises(QmixError, match="holds a different study") as e:
        run_sweep(str(g), study_dir=str(tmp_path / "study"), local=True)
    assert "\n" not in str(e.value)


def test_without_ray_the_error_names_local_and_pip(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    f = _write(tmp_path / "a.yaml", {"base": TINY, "grid": {"env": ["matrix:two-step"]}})
    with pytest.raises(QmixError) as e:
        run_sweep(str(f), study_dir=str(tmp_path / "study"))
    assert str(e.value) == NO_RAY
    assert "--local" in NO_RAY and "pip install 'qmix[sweep]'" in NO_RAY
    assert not (tmp_path / "study").exists()


# ----------------------------------------------------------------------------- running studies
def test_local_sweep_reports_a_crashing_trial_and_finishes_the_others(tmp_path, capsys):
    f = _write(tmp_path / "crash.yaml", {"name": "crash", "base": {**TINY, "t_max": 1000},
                                         "grid": {"alg": ["vdn"], "env": ["matrix:two-step"], "seed": [1],
                                                  "overrides": [{"lr": -1.0}, {}]}})
    result = run_sweep(str(f), study_dir=str(tmp_path / "study"), local=True, tty=False)
    assert len(result["finished"]) == 1 and len(result["failed"]) == 1
    failed = result["failed"][0]
    assert "lr=-1" in failed["id"] and failed["returncode"] == 2
    assert "lr must be" in failed["error"]
    assert Path(failed["log"]).is_file() and "lr must be" in Path(failed["log"]).read_text()
    out = capsys.readouterr().out
    assert "failed" in out and failed["log"] in out
    ok = tmp_path / "study" / "runs" / result["finished"][0]
    assert json.loads((ok / "summary.json").read_text())["finished"] is True


@pytest.fixture(scope="module")
def interrupted_study(tmp_path_factory):
    """qmix and vdn x seeds 1, 2 on matrix:two-step on a local Ray instance (2 CPUs), one trial
    at a time: SIGINT the sweep once the first trial finished and the second is mid-run, then
    run the same command again."""
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("study")
    sweep = _write(root / "two_step.yaml", {"name": "tiny", "base": TINY,
                                            "grid": {"alg": ["qmix", "vdn"], "env": ["matrix:two-step"], "seed": [1, 2]}})
    study_dir = root / "study"
    cmd = [sys.executable, "-m", "qmix.cli", "sweep", str(sweep), "--study-dir", str(study_dir),
           "--num-cpus", "2", "--max-concurrent", "1"]
    study = load_sweep(sweep, study_dir)
    first, second = (study.run_dir(t) for t in study.trials[:2])
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sent = False
    try:
        while proc.poll() is None and time.monotonic() - t0 < 150:
            if (first / "summary.json").is_file() and (second / "metrics.jsonl").is_file():
                lines = (second / "metrics.jsonl").read_text().splitlines()
                if any(json.loads(ln)["t_env"] >= 500 for ln in lines if ln.strip()):
                    proc.send_signal(signal.SIGINT)
                    sent = True
                    break
            time.sleep(0.1)
        out1, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sent, f"the first trial never finished before the sweep ended:\n{proc.stdout and out1}"
    after_stop = {
        "rc": proc.returncode, "out": out1,
        "finished": sorted(p.parent.name for p in study_dir.glob("runs/*/summary.json")),
        "second_checkpoint": (second / "checkpoints" / "latest").is_file(),
        "second_summary": (second / "summary.json").is_file(),
        "files": {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in study_dir.glob("runs/*/*")
                  if p.parent.joinpath("summary.json").is_file() and p.is_file()},
    }
    time.sleep(0.05)
    run2 = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
    return {"study": study, "dir": study_dir, "after_stop": after_stop, "rerun": run2, "second": second,
            "duration_s": time.monotonic() - t0}


def test_interrupt_then_rerun_skips_finished_and_resumes_the_rest(interrupted_study):
    s = interrupted_study
    a = s["after_stop"]
    assert a["rc"] == 130, a["out"]
    assert "stopped; run the same command again to resume" in a["out"]
    n_trials = len(s["study"].trials)
    assert 1 <= len(a["finished"]) < n_trials, a["out"]
    assert a["files"], "no finished trial files were recorded"
    # The trial running at Ctrl-C wrote a checkpoint (SIGTERM -> checkpoint, exit 143) and no summary.
    assert a["second_checkpoint"] and not a["second_summary"], a["out"]

    run2 = s["rerun"]
    assert run2.returncode == 0, run2.stdout
    assert f"{len(a['finished'])} already finished" in run2.stdout
    assert f"{n_trials - len(a['finished'])} finished, {len(a['finished'])} skipped" in run2.stdout
    for t in s["study"].trials:
        summary = json.loads((s["study"].run_dir(t) / "summary.json").read_text())
        assert summary["finished"] is True and summary["t_env"] >= 3000
    # Finished trials were not touched: same bytes, same modification times.
    for path, (mtime, data) in a["files"].items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data, path
    # The interrupted trial continued from its checkpoint instead of starting over.
    log = (s["dir"] / "logs" / f"{s['second'].name}.log").read_text()
    assert "--resume" in log and "resuming" in log
    assert not (s["dir"] / ".stop").exists()


def test_plot_of_the_study(interrupted_study, tmp_path):
    from qmix.study.plot import plot_runs

    out = tmp_path / "curves.png"
    fig = plot_runs([interrupted_study["dir"]], out=str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 1  # one env
    ax = axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == ["qmix", "vdn"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["qmix", "vdn"]
    assert "matrix:two-step" in ax.get_title() and "2 seeds" in ax.get_title()
    assert ax.get_xlabel() == "environment steps (t_env)" and "return" in ax.get_ylabel()
    for ln in ax.get_lines():
        x = np.asarray(ln.get_xdata(), dtype=float)
        assert x[0] == 0 and x[-1] >= 3000 and np.isfinite(np.asarray(ln.get_ydata(), dtype=float)).all()
    assert len(ax.collections) == 2  # one confidence band per line
    svg = tmp_path / "curves.svg"
    plot_runs([interrupted_study["dir"]], out=str(svg), agg="median", metric="test/return_mean")
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


def test_report_of_the_study(interrupted_study):
    from qmix.study.report import report

    rows = list(csv.DictReader(io.StringIO(report([interrupted_study["dir"]], fmt="csv"))))
    assert [(r["env"], r["algorithm"], r["metric"]) for r in rows] == [
        ("matrix:two-step", "qmix", "test/return_mean"), ("matrix:two-step", "vdn", "test/return_mean")]
    for r in rows:
        assert int(r["n_seeds"]) == 2 and int(r["n_finished"]) == 2 and int(r["steps"]) >= 3000
        assert float(r["best_mean"]) >= float(r["final_mean"]) - 1e-9
        assert float(r["final_std"]) >= 0 and float(r["wall_time_s"]) > 0
    # the final means match the summaries
    for r in rows:
        finals = [json.loads((interrupted_study["study"].run_dir(t) / "summary.json").read_text())
                  ["final_test"]["test/return_mean"] for t in interrupted_study["study"].trials if t.alg == r["algorithm"]]
        assert float(r["final_mean"]) == pytest.approx(np.mean(finals), abs=1e-4)
    md = report([interrupted_study["dir"]], fmt="md")
    assert md.count("\n") == 4 and "| matrix:two-step | qmix |" in md
    tex = report([interrupted_study["dir"]], fmt="latex")
    assert "\\toprule" in tex and "return\\_mean" in tex


def test_cli_register_adds_the_three_commands(tmp_path, capsys):
    import argparse

    from qmix.study.cli import register

    parser = argparse.ArgumentParser(prog="qmix")
    sub = parser.add_subparsers(dest="command")
    commands: dict = {}
    register(sub, commands)
    assert set(commands) == {"sweep", "plot", "report"}
    f = _write(tmp_path / "a.yaml", {"base": TINY, "grid": {"alg": ["qmix", "iql"], "env": ["matrix:climbing"], "seed": 2}})
    args = parser.parse_args(["sweep", str(f), "--study-dir", str(tmp_path / "s"), "--dry-run"])
    assert commands[args.command](args) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and "matrix_climbing__iql__s2" in out
