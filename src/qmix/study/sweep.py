"""Studies: a grid of ordinary ``qmix train`` runs, run as Ray tasks (or one after another).

A sweep file names a base config and a grid (algorithms x envs x override variants x seeds).
Every trial is a ``qmix train`` subprocess writing its own run directory, so a trial is exactly
what a user would have run by hand, and resuming a trial is ``qmix train --resume``.

Study directory layout::

    study.yaml          the resolved sweep (name, base config, grid) -- what makes this study
    trials.json         one entry per trial (id, alg, env, seed, overrides)
    configs/<id>.yaml   the config file each trial is started with (base + its overrides)
    runs/<id>/          the trial's run directory (config.yaml, metrics.jsonl, summary.json, ...)
    logs/<id>.log       the trial's console output, one header line per attempt

The driver never writes into run directories; a trial is finished when its summary.json says
``"finished": true``. To stop, the driver creates ``.stop`` in the study directory: every trial
task polls for it and sends SIGTERM to its ``qmix train`` process, which checkpoints and exits.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from qmix.config import merge_config, nest_dotted
from qmix.errors import QmixError

GRID_AXES = ("alg", "env", "seed")
_FILE_KEYS = {"name", "study_dir", "base_config", "base", "grid"}
_GRID_KEYS = {"alg", "algs", "env", "envs", "seed", "seeds", "overrides"}
STOP_FILE = ".stop"
STOP_GRACE_S = 300.0  # how long a stopped trial may take to write its checkpoint before SIGKILL

NO_RAY = ("qmix sweep runs its trials as Ray tasks but Ray is not installed: run "
          "`pip install 'qmix[sweep]'`, or add --local to run the trials one after another on this machine.")


# --------------------------------------------------------------------------- the sweep file
@dataclass
class Trial:
    id: str
    alg: str
    env: str
    seed: int
    overrides: dict = field(default_factory=dict)  # on top of the base: the env's own keys, then the variant
    variant: str = ""  # the variant as text ("lr=0.001"), empty for the base config

    @property
    def label(self) -> str:
        return f"{self.alg} {self.variant}".strip()


@dataclass
class Study:
    name: str
    dir: Path
    base: dict
    grid: dict  # alg: [...], env: [...], seed: [...], overrides: [{...}, ...]
    trials: list[Trial]
    source: str = ""  # the sweep file it came from

    # paths
    def run_dir(self, t: Trial) -> Path:
        return self.dir / "runs" / t.id

    def log_path(self, t: Trial) -> Path:
        return self.dir / "logs" / f"{t.id}.log"

    def config_path(self, t: Trial) -> Path:
        return self.dir / "configs" / f"{t.id}.yaml"

    def resolved(self) -> dict:
        """What identifies the study (compared when the study directory already exists)."""
        return {"name": self.name, "base": self.base, "grid": self.grid,
                "trials": [asdict(t) for t in self.trials]}


def _as_list(value, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _variant_text(overrides: dict, prefix: str = "") -> str:
    parts = []
    for k, v in overrides.items():
        if isinstance(v, dict):
            parts.append(_variant_text(v, f"{prefix}{k}."))
        else:
            parts.append(f"{prefix}{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")
    return ",".join(p for p in parts if p)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-")


def _variants(spec, where: str) -> list[dict]:
    """``overrides`` as a list of mappings (variants) or a mapping of key -> list (their product)."""
    if spec is None:
        return [{}]
    if isinstance(spec, dict):
        keys = list(spec)
        values = [_as_list(spec[k], k) for k in keys]
        for k, v in zip(keys, values):
            if not v:
                raise QmixError(f"{where}: overrides.{k} has no values.")
        return [nest_dotted(dict(zip(keys, combo)), where) for combo in itertools.product(*values)]
    if isinstance(spec, list):
        out = []
        for i, v in enumerate(spec):
            if v is None:
                v = {}
            if not isinstance(v, dict):
                raise QmixError(f"{where}: overrides[{i}] must be a mapping of config keys; got {v!r}.")
            out.append(nest_dotted(v, where))
        return out or [{}]
    raise QmixError(f"{where}: overrides must be a list of mappings or a mapping of key -> list of values.")


def load_sweep(path: str | os.PathLike, study_dir: str | os.PathLike | None = None) -> Study:
    """Read and check a sweep file; returns the study (nothing is written)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise QmixError(f"sweep file {path} does not exist.") from None
    except yaml.YAMLError as e:
        raise QmixError(f"sweep file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    where = f"sweep file {path}"
    if not isinstance(data, dict):
        raise QmixError(f"{where} must hold a mapping with at least a 'grid' key.")
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise QmixError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FILE_KEYS))}.")
    grid = data.get("grid")
    if not isinstance(grid, dict):
        raise QmixError(f"{where} needs a 'grid' mapping (alg, env, seed and optional overrides).")
    unknown = sorted(set(grid) - _GRID_KEYS)
    if unknown:
        raise QmixError(f"{where}: unknown grid key(s) {', '.join(unknown)}; allowed: alg, env, seed, overrides.")

    base: dict = {}
    if data.get("base_config"):
        from qmix.config import load_yaml_file

        base_path = Path(data["base_config"])
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        base = nest_dotted(load_yaml_file(str(base_path)), where)
    extra = data.get("base") or {}
    if not isinstance(extra, dict):
        raise QmixError(f"{where}: 'base' must be a mapping of config keys.")
    extra = nest_dotted(extra, where)
    base = merge_config(base, extra)
    clash = sorted(set(base) & set(GRID_AXES))
    if clash:
        raise QmixError(f"{where}: {', '.join(clash)} belong in the grid, not in the base config.")

    def axis(*names):
        values = []
        for n in names:
            values += _as_list(grid.get(n), n)
        return values

    algs = [str(a) for a in axis("alg", "algs")] or ["qmix"]
    envs, env_overrides = [], {}
    for e in axis("env", "envs"):
        if isinstance(e, dict):  # {matrix:climbing: {t_max: 3000}}: keys for this env only
            if len(e) != 1 or not isinstance(next(iter(e.values())) or {}, dict):
                raise QmixError(f"{where}: an env entry is an id or a one-key mapping {{id: {{key: value}}}}; got {e!r}.")
            (e, extra_env), = e.items()
            env_overrides[str(e)] = nest_dotted(extra_env or {}, where)
            clash = sorted(set(env_overrides[str(e)]) & set(GRID_AXES))
            if clash:
                raise QmixError(f"{where}: {', '.join(clash)} cannot be set per env.")
        envs.append(str(e))
    if len(set(envs)) != len(envs):
        raise QmixError(f"{where}: the env list repeats an env.")
    if not envs:
        raise QmixError(f"{where}: the grid names no env (grid: env: [matrix:two-step, ...]).")
    seed_spec = grid.get("seed", grid.get("seeds"))
    if isinstance(seed_spec, int) and not isinstance(seed_spec, bool):
        seeds = list(range(1, seed_spec + 1))  # seeds: 5 means seeds 1..5
    else:
        seeds = _as_list(seed_spec, "seed") or [1]
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool):
            raise QmixError(f"{where}: seeds must be integers (or one integer N for seeds 1..N); got {s!r}.")
    if len(set(seeds)) != len(seeds):
        raise QmixError(f"{where}: the seed list repeats a seed.")
    variants = _variants(grid.get("overrides"), where)
    for v in variants:
        clash = sorted(set(v) & set(GRID_AXES))
        if clash:
            raise QmixError(f"{where}: {', '.join(clash)} belong in the grid axes, not in overrides.")

    trials: list[Trial] = []
    seen: set[str] = set()
    for env in envs:
        for alg in algs:
            for vi, variant in enumerate(variants):
                text = _variant_text(variant)
                for seed in seeds:
                    parts = [_slug(env.replace(":", "_")), _slug(alg)]
                    if text:
                        parts.append(_slug(text)[:60])
                    parts.append(f"s{seed}")
                    tid = "__".join(parts)
                    if tid in seen:
                        tid = "__".join(parts[:-1] + [f"v{vi}", parts[-1]])
                    if tid in seen:
                        raise QmixError(f"{where}: the grid repeats a cell ({alg}, {env}, seed {seed}, {text or 'base'}).")
                    seen.add(tid)
                    overrides = copy.deepcopy(env_overrides.get(env, {}))
                    for k, v in variant.items():
                        overrides[k] = {**overrides[k], **v} if k == "env_args" and isinstance(overrides.get(k), dict) \
                            else copy.deepcopy(v)
                    trials.append(Trial(tid, alg, env, int(seed), overrides, text))

    name = str(data.get("name") or path.stem)
    if study_dir is None:
        study_dir = data.get("study_dir") or Path("studies") / _slug(name)
    grid_resolved = {"alg": algs, "env": envs, "env_overrides": env_overrides, "seed": seeds, "overrides": variants}
    return Study(name, Path(study_dir).absolute(), base, grid_resolved, trials, str(path))


def _normalise(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def prepare_study(study: Study) -> None:
    """Create the study directory, or check that an existing one holds this same study."""
    d = study.dir
    trials_file = d / "trials.json"
    resolved = _normalise(study.resolved())
    if trials_file.exists():
        try:
            old = json.loads(trials_file.read_text())
        except (OSError, json.JSONDecodeError):
            raise QmixError(f"{trials_file} is unreadable; this study directory cannot be resumed.") from None
        if _normalise(old) != resolved:
            raise QmixError(
                f"{d} holds a different study (its grid or base config differs from {study.source}); "
                f"use another study_dir (or --study-dir) or remove that directory."
            )
    elif d.exists() and any(p.name != STOP_FILE for p in d.iterdir()):
        raise QmixError(f"{d} exists and is not a study directory (no trials.json); choose another study_dir.")
    for sub in ("configs", "runs", "logs"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    _atomic_write(d / "study.yaml", yaml.safe_dump(
        {"name": study.name, "sweep_file": study.source, "base": study.base, "grid": study.grid},
        sort_keys=False))
    if not trials_file.exists():
        _atomic_write(trials_file, json.dumps(resolved, indent=2) + "\n")
    for t in study.trials:
        cfg = copy.deepcopy(study.base)
        for k, v in t.overrides.items():
            cfg[k] = {**cfg[k], **v} if k == "env_args" and isinstance(cfg.get(k), dict) else v
        _atomic_write(study.config_path(t), yaml.safe_dump(cfg, sort_keys=True))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- trial state on disk
def read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_finished(run_dir: Path) -> bool:
    s = read_summary(run_dir)
    return bool(s and s.get("finished"))


def last_record(path: Path, tail_bytes: int = 8192) -> dict | None:
    """The last complete JSON line of a (possibly growing) jsonl file, reading only its tail."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            chunk = f.read()
    except OSError:
        return None
    for line in reversed(chunk.splitlines()):
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict):
            return rec
    return None


def _read_t_max(run_dir: Path, config_path: Path | None = None) -> int | None:
    for p in (Path(run_dir) / "config.yaml", config_path):
        if p is not None and p.is_file():
            try:
                data = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError:
                continue
            if "t_max" in data:
                try:
                    return int(data["t_max"])
                except (TypeError, ValueError):
                    return None
    return None


def _resolved_t_max(t: Trial, study: Study) -> int | None:
    """The trial's budget from the presets (when neither the base nor the run sets t_max)."""
    from qmix.config import resolve

    try:
        cfg = yaml.safe_load(study.config_path(t).read_text()) or {}
        return resolve({**cfg, "alg": t.alg, "env": t.env, "seed": t.seed}).t_max
    except (QmixError, OSError, yaml.YAMLError):
        return None


def last_log_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    lines = [ln for ln in lines if not ln.startswith("=== ")]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- one trial
def _set_pdeathsig():  # runs in the child before exec: SIGTERM it if its parent dies (Linux only)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run_trial(spec: dict) -> dict:
    """Run (or resume) one trial as a ``qmix train`` subprocess; the body of every Ray task.

    ``spec``: id, run_dir, log, config, alg, env, seed, stop_file (all paths absolute). Returns
    {"id", "status": finished|failed|stopped|skipped, "returncode", "log", "error"}.
    """
    run_dir, log, stop_file = Path(spec["run_dir"]), Path(spec["log"]), Path(spec["stop_file"])
    result = {"id": spec["id"], "log": str(log), "returncode": None, "error": "", "host": os.uname().nodename}
    if stop_file.exists():
        return {**result, "status": "stopped"}
    if is_finished(run_dir):
        return {**result, "status": "skipped"}
    base = [sys.executable, "-m", "qmix.cli", "train"]
    if (run_dir / "config.yaml").is_file():
        cmd = base + ["--resume", str(run_dir)]
    else:
        if run_dir.exists():  # created but never configured: nothing in it is worth keeping
            shutil.rmtree(run_dir)
        cmd = base + ["--alg", spec["alg"], "--env", spec["env"], "--seed", str(spec["seed"]),
                      "--out", str(run_dir), "--config", spec["config"]]
    env = dict(os.environ)
    import qmix

    pkg_root = str(Path(qmix.__file__).resolve().parent.parent)  # the children import this same qmix
    env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", str(max(1, int(spec.get("cpus", 1) or 1))))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {result['host']}: {' '.join(cmd[1:])}\n")
        out.flush()
        kwargs = {"preexec_fn": _set_pdeathsig} if sys.platform.startswith("linux") else {}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, **kwargs)
        stop_sent = None
        while True:
            try:
                rc = proc.wait(timeout=float(spec.get("poll_s", 0.5)))
                break
            except subprocess.TimeoutExpired:
                pass
            except KeyboardInterrupt:  # ray.cancel, or Ctrl-C in --local mode: stop gracefully too
                stop_sent = stop_sent or 0.0
            if stop_sent is None and stop_file.exists():
                stop_sent = 0.0
            if stop_sent == 0.0:
                proc.send_signal(signal.SIGTERM)
                stop_sent = time.monotonic()
            elif stop_sent and time.monotonic() - stop_sent > STOP_GRACE_S:
                proc.kill()
    result["returncode"] = rc
    if rc == 0 and is_finished(run_dir):
        return {**result, "status": "finished"}
    if stop_sent is not None and rc in (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM):
        return {**result, "status": "stopped"}
    return {**result, "status": "failed", "error": last_log_line(log)}


# --------------------------------------------------------------------------- executors
class _LocalExecutor:
    """Trials in this process's threads (each one a subprocess), ``max_concurrent`` at a time."""

    def __init__(self, max_concurrent: int):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=max(1, max_concurrent))
        self.limit = max(1, max_concurrent)

    def submit(self, spec):
        return self.pool.submit(run_trial, spec)

    def wait(self, handles, timeout):
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return [(h, h.result()) for h in done]

    def describe(self) -> str:
        return f"locally, {self.limit} at a time"

    def close(self):
        self.pool.shutdown(wait=True)


class _RayExecutor:
    def __init__(self, address: str | None, cpus_per_trial: float, gpus_per_trial: float, num_cpus: int | None,
                 max_concurrent: int | None):
        try:
            import ray
        except ImportError:
            raise QmixError(NO_RAY) from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                # Ray's own processes (gcs, raylet) would share the terminal's process group: let them
                # start with SIGINT ignored, so Ctrl-C reaches only this driver, which stops the trials
                # cleanly, instead of killing the Ray instance under them.
                quiet = threading.current_thread() is threading.main_thread()
                old = signal.signal(signal.SIGINT, signal.SIG_IGN) if quiet else None
                try:
                    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
                finally:
                    if quiet:
                        signal.signal(signal.SIGINT, old)
        self.remote = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=0)(run_trial)
        res = ray.cluster_resources()
        slots = int(res.get("CPU", 0) // cpus_per_trial) if cpus_per_trial > 0 else 0
        if gpus_per_trial > 0:
            slots = min(slots, int(res.get("GPU", 0) // gpus_per_trial))
        if slots == 0:
            raise QmixError(f"the Ray cluster has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs, too few "
                            f"for one trial ({cpus_per_trial:g} CPUs, {gpus_per_trial:g} GPUs); lower "
                            f"--cpus-per-trial/--gpus-per-trial.")
        self.slots = slots
        self.limit = max_concurrent or 10**9  # in flight at once; Ray's resources decide what runs
        self.resources = res

    def submit(self, spec):
        return self.remote.remote(spec)

    def wait(self, handles, timeout):
        ready, _ = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as e:  # the worker died, or the task raised: a failed trial, not a failed study
                out.append((ref, {"status": "failed", "returncode": None, "error": f"Ray task failed: "
                                  f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"}))
        return out

    def describe(self) -> str:
        cpu, gpu = self.resources.get("CPU", 0), self.resources.get("GPU", 0)
        return f"on Ray ({cpu:g} CPUs, {gpu:g} GPUs; {self.slots} trials at a time)"

    def close(self):
        if self.started_here:
            self.ray.shutdown()


# --------------------------------------------------------------------------- live summary
def _fmt_time(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _Board:
    """Trial states and progress; renders with rich on a terminal, plain lines otherwise."""

    def __init__(self, study: Study, states: dict[str, str], tty: bool, every_s: float):
        self.study, self.states, self.every_s = study, states, every_s
        self.t_max = {t.id: _read_t_max(study.run_dir(t), study.config_path(t)) or _resolved_t_max(t, study)
                      for t in study.trials}
        self.t_env: dict[str, int] = {}
        self.t_start: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.start = time.monotonic()
        self.last_plain = 0.0
        self.live = None
        self.console = None
        if tty:
            from rich.console import Console
            from rich.live import Live

            self.console = Console()
            self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()

    def poll(self):
        for t in self.study.trials:
            if self.states[t.id] in ("running", "pending", "stopped", "queued"):
                rec = last_record(self.study.run_dir(t) / "metrics.jsonl")
                if rec is not None and "t_env" in rec:
                    self.t_env[t.id] = int(rec["t_env"])
                    self.t_start.setdefault(t.id, int(rec["t_env"]))
                if self.t_max[t.id] is None or self.states[t.id] == "running":
                    self.t_max[t.id] = _read_t_max(self.study.run_dir(t), self.study.config_path(t)) or self.t_max[t.id]

    def counts(self) -> dict:
        c = {"done": 0, "running": 0, "failed": 0, "pending": 0}
        for s in self.states.values():
            key = {"finished": "done", "skipped": "done", "queued": "pending", "stopped": "pending"}.get(s, s)
            c[key] = c.get(key, 0) + 1
        return c

    def eta(self) -> float | None:
        progressed = sum(self.t_env.get(k, 0) - v for k, v in self.t_start.items())
        elapsed = time.monotonic() - self.start
        remaining = 0
        for t in self.study.trials:
            if self.states[t.id] in ("running", "pending", "queued", "stopped"):
                if self.t_max[t.id] is None:
                    return None
                remaining += max(0, self.t_max[t.id] - self.t_env.get(t.id, 0))
        if remaining == 0:
            return 0.0
        if progressed <= 0 or elapsed <= 0:
            return None
        return remaining / (progressed / elapsed)

    def _pct(self, tid) -> str:
        tm, te = self.t_max.get(tid), self.t_env.get(tid, 0)
        return f"{min(100.0, 100 * te / tm):.0f}%" if tm else f"{te:,}"

    def headline(self) -> str:
        c = self.counts()
        return (f"sweep {self.study.name}: {c['done']}/{len(self.states)} done, {c['running']} running, "
                f"{c['failed']} failed, {c['pending']} pending | elapsed {_fmt_time(time.monotonic() - self.start)}"
                f" | ETA {_fmt_time(self.eta())}")

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        table.add_column("trial", overflow="fold")
        table.add_column("state")
        table.add_column("progress", width=24)
        table.add_column("t_env", justify="right")
        rows = [t for t in self.study.trials if self.states[t.id] == "running"][:30]
        for t in rows:
            tm, te = self.t_max.get(t.id) or 0, self.t_env.get(t.id, 0)
            table.add_row(t.id, Text("running", style="cyan"), ProgressBar(total=max(tm, 1), completed=min(te, tm or te)),
                          f"{te:,}/{tm:,}" if tm else f"{te:,}")
        for t in self.study.trials:
            if self.states[t.id] == "failed":
                table.add_row(t.id, Text("failed", style="red"), "", "")
        return Group(Text(self.headline(), style="bold"), table)

    def event(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def refresh(self, force: bool = False) -> None:
        self.poll()
        if self.live is not None:
            self.live.update(self._render())
        elif force or time.monotonic() - self.last_plain >= self.every_s:
            self.last_plain = time.monotonic()
            running = [t for t in self.study.trials if self.states[t.id] == "running"]
            detail = ", ".join(f"{t.id} {self._pct(t.id)}" for t in running[:6])
            more = f", +{len(running) - 6} more" if len(running) > 6 else ""
            print(self.headline() + (f" | {detail}{more}" if detail else ""), flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()


# --------------------------------------------------------------------------- the driver
def run_sweep(sweep_file: str, *, study_dir: str | None = None, address: str | None = None, local: bool = False,
              max_concurrent: int | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
              num_cpus: int | None = None, tty: bool | None = None, refresh_s: float = 5.0) -> dict:
    """Run every unfinished trial of a sweep; returns {"study_dir", "finished", "skipped", "failed",
    "stopped", "interrupted"} (lists of trial ids; failed holds dicts with the log path)."""
    study = load_sweep(sweep_file, study_dir)
    if cpus_per_trial <= 0 and gpus_per_trial <= 0:
        raise QmixError("--cpus-per-trial must be > 0 (or give --gpus-per-trial).")
    if max_concurrent is not None and max_concurrent < 1:
        raise QmixError("--max-concurrent must be at least 1.")
    if local and address:
        raise QmixError("--local and --address are alternatives; give only one.")
    executor = _LocalExecutor(max_concurrent or 1) if local else None
    if executor is None:  # before touching the study directory: a missing Ray changes nothing on disk
        try:
            import ray  # noqa: F401
        except ImportError:
            raise QmixError(NO_RAY) from None
    prepare_study(study)
    stop_file = study.dir / STOP_FILE
    stop_file.unlink(missing_ok=True)

    states: dict[str, str] = {}
    todo: list[Trial] = []
    skipped: list[str] = []
    for t in study.trials:
        if is_finished(study.run_dir(t)):
            states[t.id] = "skipped"
            skipped.append(t.id)
        else:
            states[t.id] = "pending"
            todo.append(t)
    resumable = sum(1 for t in todo if (study.run_dir(t) / "config.yaml").is_file())

    if executor is None:
        executor = _RayExecutor(address, cpus_per_trial, gpus_per_trial, num_cpus, max_concurrent)
    tty = sys.stdout.isatty() if tty is None else tty
    print(f"qmix sweep: study {study.name} in {study.dir}: {len(study.trials)} trials, {len(skipped)} already "
          f"finished, {resumable} to resume, {len(todo) - resumable} to start; running {executor.describe()}.",
          flush=True)

    interrupted = {"flag": False}
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {}

    def on_signal(signum, frame):
        if interrupted["flag"]:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting (trials still get SIGTERM)
        interrupted["flag"] = True
        stop_file.touch()

    if main_thread:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)

    board = _Board(study, states, tty, refresh_s)
    results: dict[str, dict] = {}
    in_flight: dict = {}
    session_start = time.time()
    queue = list(todo)
    announced = False
    try:
        while queue or in_flight:
            if interrupted["flag"] and not announced:
                announced = True
                for t in queue:
                    states[t.id] = "stopped"
                queue = []
                board.event("qmix sweep: stopping; the running trials write a checkpoint and exit ...")
            while queue and len(in_flight) < executor.limit:
                t = queue.pop(0)
                spec = {"id": t.id, "alg": t.alg, "env": t.env, "seed": t.seed, "run_dir": str(study.run_dir(t)),
                        "log": str(study.log_path(t)), "config": str(study.config_path(t)),
                        "stop_file": str(stop_file), "cpus": cpus_per_trial}
                in_flight[executor.submit(spec)] = t
                states[t.id] = "queued"
            # a queued trial is "running" once its task has written its log header
            for t in in_flight.values():
                if states[t.id] == "queued":
                    try:
                        if os.path.getmtime(study.log_path(t)) >= session_start - 1:
                            states[t.id] = "running"
                    except OSError:
                        pass
            for handle, res in executor.wait(list(in_flight), timeout=1.0):
                t = in_flight.pop(handle)
                res = {"id": t.id, "log": str(study.log_path(t)), **res}
                results[t.id] = res
                status = res["status"]
                states[t.id] = {"finished": "finished", "skipped": "skipped", "stopped": "stopped"}.get(status, "failed")
                if status == "finished":
                    s = read_summary(study.run_dir(t)) or {}
                    final = s.get("final_test", {})
                    bits = [f"return {final['test/return_mean']:.3g}"] if "test/return_mean" in final else []
                    if "test/win_rate" in final:
                        bits.append(f"win rate {final['test/win_rate']:.0%}")
                    board.event(f"  done    {t.id} in {_fmt_time(s.get('wall_time_s'))}"
                                + (f" ({', '.join(bits)})" if bits else ""))
                elif status == "failed":
                    code = res.get("returncode")
                    board.event(f"  FAILED  {t.id} (exit {code}): {res.get('error') or 'no output'} "
                                f"(log: {study.log_path(t)})")
                elif status == "stopped" and res.get("returncode") is not None:
                    saved = res["returncode"] in (128 + signal.SIGTERM, 128 + signal.SIGINT)
                    board.event(f"  stopped {t.id} " + ("(checkpoint saved)" if saved else "(before training began)"))
            board.refresh()
    except KeyboardInterrupt:
        interrupted["flag"] = True
        stop_file.touch()
        board.event("qmix sweep: interrupted again; not waiting for the trials (they still checkpoint on SIGTERM).")
    finally:
        board.refresh(force=True)
        board.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            executor.close()
        finally:
            stop_file.unlink(missing_ok=True)

    finished = [k for k, s in states.items() if s == "finished"]
    failed = [{"id": k, "returncode": results.get(k, {}).get("returncode"), "error": results.get(k, {}).get("error", ""),
               "log": str(study.log_path(next(t for t in study.trials if t.id == k)))}
              for k, s in states.items() if s == "failed"]
    stopped = [k for k, s in states.items() if s in ("stopped", "pending", "queued", "running")]
    summary = {"study_dir": str(study.dir), "finished": finished, "skipped": skipped, "failed": failed,
               "stopped": stopped, "interrupted": interrupted["flag"]}
    print(f"qmix sweep: {len(finished)} finished, {len(skipped)} skipped (already finished), {len(failed)} failed, "
          f"{len(stopped)} not finished.", flush=True)
    for f in failed:
        print(f"  failed: {f['id']} (exit {f['returncode']}): {f['error'] or 'no output'} (log: {f['log']})", flush=True)
    if interrupted["flag"]:
        print("qmix sweep: stopped; run the same command again to resume.", flush=True)
    elif not failed:
        print(f"qmix sweep: all trials finished; next: qmix plot {study.dir} and qmix report {study.dir}", flush=True)
    return summary
