"""On a GPU (skipped without one): the learner, the micro simulator, training, checkpoints and
resumes on ``--device cuda`` do what they do on the CPU."""

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import qmix  # noqa: E402
from qmix.bench.learner import LearnerShapes, bench_config, build_pair, random_batch  # noqa: E402
from qmix.config import resolve  # noqa: E402
from qmix.envs.registry import make  # noqa: E402
from qmix.trainer import Trainer  # noqa: E402


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_an_update_on_the_gpu_is_the_cpu_update(optimizer):
    s, cfg = LearnerShapes(8, 20, 3, 12, 5, 16), bench_config(optimizer=optimizer, native_kernels="off")
    batch = random_batch(s)
    cpu, _ = build_pair(s, cfg, "cpu", seed=1)
    gpu, _ = build_pair(s, cfg, "cuda", seed=1)
    for p, q in zip(cpu.params, gpu.params):
        assert torch.equal(p, q.cpu())
    gpu_batch = random_batch(s, device="cuda")
    for _ in range(3):
        a, b = cpu.update(batch), gpu.update(gpu_batch)
        assert abs(float(a["loss"]) - float(b["loss"])) <= 1e-4 * max(1.0, abs(float(a["loss"])))
    for p, q in zip(cpu.params, gpu.params):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-4, atol=1e-5)


def test_micro_steps_the_same_battles_on_the_gpu():
    """Same seed, same actions: the GPU simulator's battles are the CPU simulator's (to float
    rounding of positions and health)."""
    cpu = make("micro:3m", num_envs=16, seed=3, compile=False)
    gpu = make("micro:3m", num_envs=16, seed=3, device="cuda", compile=False)
    obs_c, state_c, avail_c = cpu.reset()
    obs_g, state_g, avail_g = gpu.reset()
    torch.testing.assert_close(obs_g.cpu(), obs_c, rtol=1e-4, atol=1e-4)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        actions = torch.multinomial(avail_c.reshape(-1, avail_c.shape[-1]).float(), 1, generator=g).view(avail_c.shape[:-1])
        rc, rg = cpu.step(actions), gpu.step(actions.cuda())
        assert rg.obs.device.type == "cuda"
        torch.testing.assert_close(rg.obs.cpu(), rc.obs, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(rg.reward.cpu(), rc.reward, rtol=1e-3, atol=1e-3)
        assert torch.equal(rg.terminated.cpu(), rc.terminated) and torch.equal(rg.avail.cpu(), rc.avail)
        ended = rc.terminated | rc.truncated
        if ended.any():
            obs_c, state_c, avail_c = cpu.reset(ended)
            gpu.reset(ended.cuda())
        else:
            avail_c = rc.avail


def test_training_on_the_gpu_keeps_everything_there(tmp_path):
    cfg = resolve({"alg": "qmix", "env": "micro:3m", "device": "cuda", "num_envs": 8, "t_max": 1500,
                   "batch_size": 8, "buffer_size": 64, "test_episodes": 4, "progress": False,
                   "use_tensorboard": False, "checkpoint_interval": 0, "env_args": {"compile": False}})
    tr = Trainer(cfg, tmp_path / "run")
    assert not tr.overlap and tr.buffer.obs.device.type == "cuda" and tr.runner.obs.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in tr.learner.params)
    while tr.counters.t_env < cfg.t_max:
        tr.train_step()
    assert tr.counters.updates > 0
    stats = tr.train_metrics()
    assert all(v == v for v in stats.values() if isinstance(v, float))  # no NaN
    assert "test/return_mean" in tr.test()
    tr.close()


def test_a_gpu_run_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    summary = qmix.train(env="micro:3m", seed=2, out=str(out), device="cuda", t_max=1200, num_envs=8,
                         batch_size=8, buffer_size=64, test_interval=600, test_episodes=4, log_interval=300,
                         checkpoint_interval=600, progress=False, use_tensorboard=False,
                         env_args={"compile": False})
    assert summary["t_env"] >= 1200
    assert (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    summary = qmix.train(resume=str(out), t_max=1800)
    assert summary["t_env"] >= 1800
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["t_env"] >= 1800 and any("perf/cuda_mib" in r for r in rows if r["t_env"] > 1200)
