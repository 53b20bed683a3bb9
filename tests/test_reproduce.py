"""benchmarks/reproduce.py without epymarl: it runs qmix with epymarl's settings and reports."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lbforaging")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"


def test_reproduce_runs_qmix_with_epymarl_settings(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "lbf", "--steps", "200", "--seeds", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "lbf.json").read_text())
    (run,) = result["runs"]
    assert run["name"] == "ours seed 3" and run["tests"][0][0] == 0
    assert "standardise_rewards=true" in run["command"] and "env_args.avail_masks=false" in run["command"]
    assert "| 0k |" in done.stdout
    config = (tmp_path / "lbf_ours_seed3" / "config.yaml").read_text()
    assert "agent: mlp" in config and "optimizer: adam" in config


def test_table_lines_up_tests_logged_a_few_steps_late():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    runs = [{"name": "epymarl seed 1", "wall_s": 60, "tests": [(50, 0.1), (50061, 0.2)]},
            {"name": "ours seed 1", "wall_s": 30, "tests": [(0, 0.0), (50000, 0.3), (100000, 0.4)]}]
    lines = reproduce.table(runs).splitlines()
    assert lines[2] == "| 0k | 0.100 | 0.000 |"
    assert lines[3] == "| 50k | 0.200 | 0.300 |"
    assert lines[4] == "| 100k | - | 0.400 |"
