"""The training loop: collect -> store -> learn -> test -> log -> checkpoint.

Every iteration steps all ``num_envs`` copies once. Finished episodes go to the replay buffer;
one learner update runs per ``episodes_per_update`` finished episodes once the buffer holds a
batch; the target networks are copied every ``target_update_interval`` episodes (pymarl's rule).
A checkpoint holds the complete state (networks, targets, optimiser, buffer, in-flight episodes,
environment state, RNG states, counters), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qmix import checkpoint as ckpt
from qmix import launch, overlap
from qmix.buffer import EpisodeBuffer
from qmix.config import Config, from_stored, resolve, to_yaml
from qmix.controller import EpsilonSchedule
from qmix.envs import make
from qmix.errors import QmixError
from qmix.learner import Learner
from qmix.modules import build_agent, build_mixer, native
from qmix.rollout import FinishedEpisodes, Runner
from qmix.system import configure_allocator, resident_mib


# A log window in which at least this many learner updates were all non-finite stops the run.
STALL_UPDATES = 10


def derive_seed(seed: int, stream: int) -> int:
    """A well-mixed 31-bit seed for one purpose (``stream``) of a run (splitmix64's finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 1) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) & 0x7FFF_FFFF


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise QmixError(f"device {name} was requested but CUDA is not available; use --device cpu.")
    return torch.device(name)


def _available_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class Counters:
    t_env: int = 0  # environment steps (summed over copies)
    episode: int = 0  # finished training episodes
    updates: int = 0
    episodes_since_update: int = 0
    last_target_update_episode: int = 0
    last_test_t: int = -(10**18)  # test at the start, as pymarl does
    last_log_t: int = 0
    last_checkpoint_t: int = 0
    metrics_lines: int = 0  # lines in metrics.jsonl (restored on resume)
    time_s: float = 0.0  # training wall time, summed over sessions


@dataclass
class Accumulator:
    """Training statistics since the last log line (host-side)."""

    episodes: FinishedEpisodes = field(default_factory=FinishedEpisodes)
    learner: dict = field(default_factory=dict)  # name -> list of 0-d tensors

    def add_learner(self, stats: dict) -> None:
        for k, v in stats.items():
            self.learner.setdefault(k, []).append(v)


def episode_metrics(prefix: str, eps: FinishedEpisodes) -> dict:
    out = {}
    if not len(eps):
        return out
    returns = np.asarray(eps.returns, dtype=np.float64)
    out[f"{prefix}/return_mean"] = float(returns.mean())
    out[f"{prefix}/return_std"] = float(returns.std())
    out[f"{prefix}/ep_length_mean"] = float(np.mean(eps.lengths))
    out[f"{prefix}/episodes"] = len(eps)
    for k, v in eps.info.items():
        name = "win_rate" if k == "battle_won" else f"{k}_mean"
        out[f"{prefix}/{name}"] = float(np.mean(v))
    return out


def _env_state(env) -> Any:
    """``env.get_state()`` if it can be pickled into a checkpoint, else None."""
    try:
        state = env.get_state()
        pickle.dumps(state)
        return state
    except (NotImplementedError, TypeError, pickle.PicklingError, AttributeError):
        return None


def needs_kernels(cfg) -> bool:
    """Whether a learner of ``cfg`` has a use for the native kernels: a GRU agent or the QMIX mixer."""
    return cfg.agent == "rnn" or cfg.mixer == "qmix"


def configure_kernels(mode: str, device: torch.device, needed: bool = True) -> str | None:
    """The native kernels for a CPU learner (:mod:`qmix.modules.native`), built once per machine;
    not loaded where they have no use (``needed=False``: an MLP agent without the QMIX mixer).

    Returns a warning if ``auto`` falls back to the PyTorch path; QmixError if ``on`` cannot build.
    """
    if device.type != "cpu" or not needed:
        native.configure("off")
        return None
    if mode != "off" and not native.is_built():
        print("qmix: building the native kernels (once per machine, about 30 s; native_kernels=off skips it)",
              file=sys.stderr, flush=True)
    try:
        return native.configure(mode)
    except RuntimeError as exc:
        raise QmixError(f"{exc}; set native_kernels=auto or off to train without it.") from None


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume_state: dict | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        configure_allocator()
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        self.device = resolve_device(cfg.device)
        buffer_device = self.device if cfg.buffer_device == "auto" else resolve_device(cfg.buffer_device)
        self.overlap = False
        try:
            self.overlap = overlap.wanted(cfg, self.device, buffer_device)
        finally:
            if not self.overlap:
                launch.drop_prestarted()  # one the command line started for a run that will not use it
        started = overlap.start() if self.overlap else None  # it loads while the set-up below runs
        try:
            self._build(cfg, buffer_device, resume_state, started)
        except BaseException:
            if started is not None:
                overlap.discard(started)
            raise
        self.stop_signal: int | None = None

    def _build(self, cfg: Config, buffer_device: torch.device, resume_state: dict | None, started) -> None:
        torch.manual_seed(cfg.seed)
        # Env copies are seeded seed, seed+1, ... so each run's envs get a well-mixed base seed:
        # runs with seeds 1 and 2 must not share 15 of their 16 battles' random streams. The test
        # env has its own, so testing never changes the training data.
        self.env = make(cfg.env, num_envs=cfg.num_envs, seed=derive_seed(cfg.seed, 0), device=self.device,
                        **cfg.env_args)
        test_envs = cfg.test_num_envs or max(1, min(cfg.test_episodes, 32))
        self.test_env = make(cfg.env, num_envs=test_envs, seed=derive_seed(cfg.seed, 1), device=self.device,
                             **cfg.env_args)
        info = self.env.info
        self.info = info
        # After the environments: an error in their arguments comes before a first-run kernel build.
        self.kernel_warning = configure_kernels(cfg.native_kernels, self.device, needs_kernels(cfg))
        agent = build_agent(cfg, info.obs_dim, info.n_agents, info.n_actions).to(self.device)
        mixer = build_mixer(cfg, info.n_agents, info.state_dim)
        mixer = mixer.to(self.device) if mixer is not None else None
        self.learner = Learner(cfg, agent, mixer, info.n_actions)
        if not self.overlap:
            self.learner.build_optimizer()  # now, not inside the first update (a learner process builds its own)

        need = EpisodeBuffer.nbytes(cfg.buffer_size, info.episode_limit, info.n_agents, info.obs_dim,
                                    info.state_dim, info.n_actions, cfg.buffer_obs_dtype)
        have = _available_memory(buffer_device)
        if have is not None and need > 0.9 * have:
            raise QmixError(
                f"the replay buffer needs {need / 2**30:.2f} GiB but only {have / 2**30:.2f} GiB is free on "
                f"{buffer_device}; lower buffer_size or set buffer_obs_dtype=float16."
            )
        self.buffer_bytes = need
        if self.overlap:
            torch.set_num_threads(1)  # acting only here; the learner process has the other cores
            self.buffer = None  # the learner process's, started below
        else:
            self.buffer = EpisodeBuffer(cfg.buffer_size, info.episode_limit, info.n_agents, info.obs_dim,
                                        info.state_dim, info.n_actions, buffer_device, cfg.buffer_obs_dtype)
        # Separate generators: acting (on the env's device) and replay sampling (CPU).
        self.act_gen = torch.Generator(device=self.env.device).manual_seed(cfg.seed)
        self.test_gen = torch.Generator(device=self.env.device).manual_seed(cfg.seed + 1)
        self.sample_gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.runner = Runner(cfg, self.env, agent, self.act_gen)
        self.test_runner = Runner(cfg, self.test_env, agent, self.test_gen)
        self.epsilon = EpsilonSchedule(cfg.epsilon_start, cfg.epsilon_finish, cfg.epsilon_anneal_steps)
        self.counters = Counters()
        self.acc = Accumulator()
        self.last_test: dict = {}
        self.best_test: dict = {}
        self.env_state_warning = ""
        self.resume_warning = ""
        buffer_state = self._restore(resume_state) if resume_state is not None else None
        if self.overlap:
            self.buffer = overlap.LearnerProcess(cfg, info, self.learner, buffer_state, self.sample_gen, started)

    # ----------------------------------------------------------------- state
    def _state(self, for_checkpoint: bool = False) -> dict:
        """Everything a resume needs. ``for_checkpoint``: with a learner process, the replay buffer
        is a function that has that process write its file (the buffer never crosses over)."""
        env_state, test_env_state = _env_state(self.env), _env_state(self.test_env)
        if env_state is None:
            self.env_state_warning = "environment state could not be saved; resume starts fresh episodes"
        elif test_env_state is None:
            self.env_state_warning = "test environment state could not be saved; tests after resume play other episodes"
        c = self.counters
        keep_buffer = self.cfg.checkpoint_buffer
        if not self.overlap:
            buffer = self.buffer.state_dict() if keep_buffer else None
        else:  # first, as it also brings this process's learner and sampler up to the serial state
            direct = for_checkpoint and keep_buffer
            buffer = self.buffer.state(keep_buffer and not direct)["buffer"]
            if direct:
                buffer = self.buffer.write_buffer
        return {
            "config": self.cfg.to_dict(),
            "env_info": self.info.as_dict(),
            "counters": vars(c).copy(),
            "learner": self.learner.state_dict(),
            "runner": self.runner.state_dict() if env_state is not None else None,
            "env_state": env_state,
            "test_env_state": test_env_state,
            "buffer": buffer,
            "rng": {
                "act": self.act_gen.get_state(),
                "test": self.test_gen.get_state(),
                "sample": self.sample_gen.get_state(),
                "torch": torch.get_rng_state(),
            },
            "accumulator": {"episodes": self.acc.episodes, "learner": {k: [float(x) for x in v]
                                                                       for k, v in self.acc.learner.items()}},
            "last_test": self.last_test,
            "best_test": self.best_test,
        }

    def _restore(self, state: dict) -> dict | None:
        """Load a checkpoint; returns its replay buffer's state where the learner process, not yet
        started, is to load it."""
        saved = state["env_info"]
        if saved != self.info.as_dict():
            raise QmixError(f"the checkpoint was made for env sizes {saved}, but {self.cfg.env} has "
                            f"{self.info.as_dict()}.")
        self.learner.load_state_dict(state["learner"])
        self.counters = Counters(**state["counters"])
        if state["buffer"] is not None and self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        elif state.get("buffer_dropped"):
            self.resume_warning = ("this checkpoint's replay buffer was removed (checkpoint_keep_buffers); "
                                   "training goes on from an empty buffer")
        self.act_gen.set_state(state["rng"]["act"])
        self.test_gen.set_state(state["rng"]["test"])
        self.sample_gen.set_state(state["rng"]["sample"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["env_state"] is not None:
            self.env.set_state(state["env_state"])
            self.runner.load_state_dict(state["runner"])
        if state.get("test_env_state") is not None:  # absent from checkpoints of earlier versions
            self.test_env.set_state(state["test_env_state"])
        acc = state["accumulator"]
        self.acc = Accumulator(acc["episodes"], {k: [torch.tensor(x) for x in v] for k, v in acc["learner"].items()})
        self.last_test, self.best_test = state["last_test"], state["best_test"]
        return state["buffer"]

    def save_checkpoint(self) -> Path:
        c = self.counters
        c.last_checkpoint_t = c.t_env
        return ckpt.save(self.run_dir, c.t_env, self._state(for_checkpoint=True), keep=self.cfg.checkpoint_keep,
                         keep_buffers=self.cfg.checkpoint_keep_buffers)

    # ----------------------------------------------------------------- steps
    def test(self) -> dict:
        eps = self.test_runner.run_episodes(self.cfg.test_episodes, epsilon=0.0)
        return episode_metrics("test", eps)

    def train_step(self) -> None:
        """One iteration: every copy steps once; learn as many times as finished episodes allow."""
        cfg, c = self.cfg, self.counters
        buffer = self.buffer
        if self.overlap and not buffer.in_flight and c.episodes_since_update + 1 >= cfg.episodes_per_update \
                and len(buffer) + 1 >= cfg.batch_size:
            buffer.start_next()  # the update the next finished episode triggers runs while it is played
        finished = self.runner.collect(1, self.epsilon(c.t_env), buffer)
        c.t_env += self.env.num_envs
        if len(finished):
            c.episode += len(finished)
            c.episodes_since_update += len(finished)
            self.acc.episodes.extend(finished)
        while c.episodes_since_update >= cfg.episodes_per_update:
            c.episodes_since_update -= cfg.episodes_per_update
            if not buffer.can_sample(cfg.batch_size):
                continue
            t0 = time.perf_counter()
            if self.overlap:  # the learner process's answer: "learn" is the time waited for it
                t1 = t0
                # What follows this update in the serial order (the target update below, the next
                # update at the next call's start) is decided now from the same counters and
                # queued behind it, so the learner process need not wait for this answer first.
                last = c.episodes_since_update < cfg.episodes_per_update
                then_target = last and self._target_update_due()
                then_next = last and c.t_env < cfg.t_max and c.episodes_since_update + 1 >= cfg.episodes_per_update \
                    and len(buffer) + 1 >= cfg.batch_size
                self.acc.add_learner(buffer.finish(then_target, then_next))
                if then_target:
                    c.last_target_update_episode = c.episode
            else:
                batch = buffer.sample(cfg.batch_size, self.sample_gen).to(self.device)
                t1 = time.perf_counter()
                self.acc.add_learner(self.learner.update(batch))
            self.runner.timing["sample"] += t1 - t0
            self.runner.timing["learn"] += time.perf_counter() - t1
            c.updates += 1
        if self._target_update_due():
            (buffer if self.overlap else self.learner).hard_update_targets()
            c.last_target_update_episode = c.episode

    def _target_update_due(self) -> bool:
        c = self.counters
        return self.cfg.target_update_tau == 0 and \
            c.episode - c.last_target_update_episode >= self.cfg.target_update_interval

    def close(self) -> None:
        """End the environments and the learner process (the networks stay usable here)."""
        if self.overlap:
            if self.buffer.alive():
                self.buffer.state(with_buffer=False)  # the learner here takes the final networks
            self.buffer.close()
        self.env.close()
        self.test_env.close()

    def train_metrics(self) -> dict:
        out = episode_metrics("train", self.acc.episodes)
        for k, v in self.acc.learner.items():
            # one stack where the first lives: the statistics can sit on two devices (a resumed run's
            # restored ones and nonfinite_updates on the CPU, the rest where the learner runs)
            first = torch.as_tensor(v[0])
            out[k] = float(torch.stack([torch.as_tensor(x).to(first.device) for x in v]).float().mean())
        out["epsilon"] = self.epsilon(self.counters.t_env)
        out["updates"] = self.counters.updates
        self.acc = Accumulator()
        return out


class RunLogger:
    """metrics.jsonl (one JSON object per event) and TensorBoard, with the same scalars."""

    def __init__(self, run_dir: Path, use_tensorboard: bool, keep_lines: int | None, purge_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        if keep_lines is not None and self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)[:keep_lines]
            tmp = self.path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(lines))
            os.replace(tmp, self.path)
        self.file = open(self.path, "a")
        self.lines = keep_lines or 0
        self.tb = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir), purge_step=purge_step)
            except ImportError:
                self.tb = None

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.lines += 1
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("t_env", "episode") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["t_env"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def default_run_dir(cfg: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.env.replace(":", "_").replace("/", "_")
    return Path("runs") / f"{name}_{cfg.alg}_seed{cfg.seed}_{stamp}"


class _Progress:
    """Live progress: a rich bar on a terminal, a plain line per log event otherwise."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled = enabled
        self.live = None
        self.total = total
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.live = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.completed:,}/{task.total:,} steps"),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=False)
            self.task = self.live.add_task("train", total=total, completed=start, status="")
            self.live.start()

    def update(self, t_env: int, status: str) -> None:
        if self.live is not None:
            self.live.update(self.task, completed=min(t_env, self.total), status=status)

    def line(self, text: str, warning: bool = False) -> None:
        """Print ``text`` above the bar; a ``warning`` is shown even when ``progress`` is off (on
        standard error when there is no bar)."""
        if not (self.enabled or warning):
            return
        if self.live is not None:
            self.live.console.print(text)
        else:
            print(text, file=sys.stderr if warning else sys.stdout, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def perf_metrics(sps: float, device: torch.device, learner_pid: int | None = None) -> dict:
    """Throughput and memory since the last log line, for watching long runs: ``perf/steps_per_s``
    (env steps per second of wall time), ``perf/rss_mib`` (resident memory, Linux only, the
    learner process's included) and, on CUDA, ``perf/cuda_mib`` (the most memory torch held on
    the GPU since the last log line)."""
    out = {"perf/steps_per_s": round(sps, 1)}
    rss = resident_mib()
    if rss is not None and learner_pid is not None:
        rss += resident_mib(learner_pid) or 0.0
    if rss is not None:
        out["perf/rss_mib"] = round(rss, 1)
    if device.type == "cuda":
        out["perf/cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        torch.cuda.reset_peak_memory_stats(device)
    return out


def _status(tr: Trainer, sps: float) -> str:
    c = tr.counters
    parts = [f"{sps:,.0f} steps/s", f"ep {c.episode:,}", f"eps {tr.epsilon(c.t_env):.2f}"]
    if tr.last_test:
        parts.append(f"test return {tr.last_test.get('test/return_mean', float('nan')):.2f}")
        if "test/win_rate" in tr.last_test:
            parts.append(f"win {tr.last_test['test/win_rate']:.0%}")
    return " | ".join(parts)


def run_training(cfg: Config, run_dir: Path, resume_state: dict | None = None,
                 trainer: Trainer | None = None) -> dict:
    """Train until ``cfg.t_max`` (or a signal), writing everything into ``run_dir``."""
    trainer = trainer or Trainer(cfg, run_dir, resume_state)
    c = trainer.counters
    resumed = resume_state is not None
    # A fresh start keeps no metrics lines (a resumed run directory that never reached its first
    # checkpoint starts over); a resumed one keeps exactly those written before its checkpoint.
    logger = RunLogger(run_dir, cfg.use_tensorboard, c.metrics_lines if resumed else 0,
                       purge_step=c.t_env + 1 if resumed else None)
    progress = _Progress(cfg.progress, cfg.t_max, c.t_env)
    if not resumed:
        progress.line(f"qmix: training {cfg.alg} on {cfg.env} (seed {cfg.seed}) -> {run_dir}  "
                      f"[{trainer.info.n_agents} agents, {trainer.info.n_actions} actions, "
                      f"buffer {trainer.buffer_bytes / 2**20:.0f} MiB on {trainer.buffer.device}"
                      f"{', native kernels' if native.active() else ''}"
                      f"{', learning in a second process' if trainer.overlap else ''}]")
        if cfg.env_args.get("compile"):
            progress.line("qmix: the simulator is compiled at its first steps (cached on disk for later runs; "
                          "env_args.compile=false skips it)")
    else:
        progress.line(f"qmix: resuming {run_dir} at step {c.t_env:,}")
        if trainer.resume_warning:
            progress.line(f"qmix: warning: {trainer.resume_warning}.", warning=True)
    if trainer.kernel_warning:
        progress.line(f"qmix: warning: {trainer.kernel_warning}.", warning=True)

    previous = {}

    def on_signal(signum, frame):
        trainer.stop_signal = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)

    start_wall = time.perf_counter()
    base_time = c.time_s
    last_t, last_wall = c.t_env, start_wall
    sps = 0.0
    updates_at_log, stalled = c.updates, None

    def record(extra: dict) -> dict:
        return {"t_env": c.t_env, "episode": c.episode, "time_s": round(base_time + time.perf_counter() - start_wall, 3),
                **extra}

    try:
        while True:
            if c.t_env - c.last_test_t >= cfg.test_interval or c.t_env >= cfg.t_max:
                if cfg.test_episodes > 0 and c.last_test_t != c.t_env:
                    c.last_test_t = c.t_env
                    trainer.last_test = trainer.test()
                    for k in ("test/return_mean", "test/win_rate"):
                        if k in trainer.last_test and trainer.last_test[k] >= trainer.best_test.get(k, -math.inf):
                            trainer.best_test[k] = trainer.last_test[k]
                    logger.log(record(trainer.last_test))
                    progress.line(f"  t_env {c.t_env:>10,}  " + _status(trainer, sps))
            if c.t_env >= cfg.t_max:
                break
            if trainer.stop_signal is not None:
                break
            trainer.train_step()
            if c.t_env - c.last_log_t >= cfg.log_interval:
                c.last_log_t = c.t_env
                now = time.perf_counter()
                sps = (c.t_env - last_t) / max(now - last_wall, 1e-9)
                since, last_t, last_wall = last_t, c.t_env, now
                metrics = trainer.train_metrics()
                logger.log(record({**metrics, **perf_metrics(sps, trainer.device,
                                                              trainer.buffer.pid if trainer.overlap else None)}))
                progress.update(c.t_env, _status(trainer, sps))
                window, updates_at_log = c.updates - updates_at_log, c.updates
                if window >= STALL_UPDATES and metrics.get("nonfinite_updates") == 1.0:
                    stalled = (f"every learner update of the last {window} (since step {since:,}) "
                               "had an inf or NaN loss or gradient, so none was applied: the replay data or the "
                               "networks hold inf/NaN (check the environment's rewards and observations, or "
                               "lower lr). The run stopped; its checkpoint holds the last finite networks: "
                               f"{run_dir / 'checkpoints'}.")
                    break
            if cfg.checkpoint_interval > 0 and c.t_env - c.last_checkpoint_t >= cfg.checkpoint_interval:
                c.metrics_lines = logger.lines
                c.time_s = base_time + time.perf_counter() - start_wall
                try:
                    trainer.save_checkpoint()
                except QmixError as exc:  # e.g. a full disk: keep training, try again next time
                    progress.line(f"qmix: warning: {exc} Training goes on; the next checkpoint tries again.", warning=True)
        c.metrics_lines = logger.lines
        c.time_s = base_time + time.perf_counter() - start_wall
        trainer.save_checkpoint()
    finally:
        progress.close()
        logger.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        trainer.close()

    if stalled is not None:
        raise QmixError(stalled)
    wall = c.time_s
    summary = {
        "env": cfg.env,
        "alg": cfg.alg,
        "seed": cfg.seed,
        "t_env": c.t_env,
        "episodes": c.episode,
        "updates": c.updates,
        "wall_time_s": round(wall, 2),
        "steps_per_s": round(c.t_env / wall, 1) if wall > 0 else None,
        "final_test": trainer.last_test,
        "best_test": trainer.best_test,
        "finished": trainer.stop_signal is None,
    }
    if trainer.env_state_warning:
        summary["note"] = trainer.env_state_warning
    if trainer.stop_signal is None:
        tmp = run_dir / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, run_dir / "summary.json")
        progress.line(f"qmix: done in {wall:,.0f} s; summary in {run_dir / 'summary.json'}")
    else:
        name = signal.Signals(trainer.stop_signal).name
        progress.line(f"qmix: stopped by {name} at step {c.t_env:,}; checkpoint saved. "
                      f"Continue with: qmix train --resume {run_dir}")
    summary["signal"] = trainer.stop_signal
    return summary


def check_new_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise QmixError(f"{run_dir} already exists and is not empty; choose another --out, "
                        f"or continue it with `qmix train --resume {run_dir}`.")


def prepare_new_run(cfg: Config, run_dir: Path) -> Path:
    check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(to_yaml(cfg))
    os.replace(tmp, run_dir / "config.yaml")
    return run_dir


def load_run_config(run_dir: Path) -> Config:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise QmixError(f"{run_dir} is not a qmix run directory (no config.yaml).")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise QmixError(f"{path} is not valid YAML; the run cannot be resumed.") from None
    if not isinstance(data, dict):
        raise QmixError(f"{path} does not hold a config mapping.")
    return from_stored(data)


def train(alg: str = "qmix", env: str = "micro:3m", seed: int = 1, out: str | None = None,
          resume: str | None = None, **overrides) -> dict:
    """Train (or resume) a run; returns the summary (also written to ``summary.json``).

    ``overrides`` are config keys (see :class:`qmix.config.Config`), e.g. ``t_max=200_000``.
    """
    if resume is not None:
        run_dir = Path(resume)
        saved = load_run_config(run_dir)
        allowed = {"t_max", "progress", "use_tensorboard", "torch_threads", "native_kernels", "device", "buffer_device",
                   "checkpoint_interval", "checkpoint_keep", "checkpoint_keep_buffers", "test_interval",
                   "log_interval"}
        bad = sorted(set(overrides) - allowed)
        if bad:
            raise QmixError(f"{', '.join(bad)} cannot be changed when resuming (it would change the run); "
                            f"allowed: {', '.join(sorted(allowed))}.")
        cfg = resolve(overrides, base=saved.to_dict())
        state = ckpt.load(run_dir) if ckpt.has_checkpoint(run_dir) else None
        if cfg.t_max != saved.t_max:  # a longer run: record the new budget
            tmp = run_dir / ".config.yaml.tmp"
            tmp.write_text(to_yaml(cfg))
            os.replace(tmp, run_dir / "config.yaml")
        return run_training(cfg, run_dir, state)
    cfg = resolve({"alg": alg, "env": env, "seed": seed, **overrides})
    run_dir = Path(out) if out else default_run_dir(cfg)
    check_new_run_dir(run_dir)
    # Build everything first (envs, networks, buffer): a user error there leaves no run directory.
    trainer = Trainer(cfg, run_dir)
    prepare_new_run(cfg, run_dir)
    return run_training(cfg, run_dir, trainer=trainer)
