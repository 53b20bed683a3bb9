"""micro: sanity win rates of scripted policies, rendering, and the env speed benchmark."""

import pytest
import torch

from qmix.bench.env import run_env_bench
from qmix.envs import make
from qmix.envs.micro.scripted import focus_fire_actions, random_actions


def win_rate(policy: str, n: int = 300, name: str = "3m") -> float:
    env = make(f"micro:{name}", num_envs=n, seed=11)
    _, _, avail = env.reset()
    gen = torch.Generator().manual_seed(0)
    done = torch.zeros(n, dtype=torch.bool)
    won = torch.zeros(n)
    for _ in range(env.info.episode_limit):
        actions = random_actions(avail, gen) if policy == "random" else focus_fire_actions(env, avail)
        r = env.step(actions)
        avail = r.avail
        ended = (r.terminated | r.truncated) & ~done
        won += r.info["battle_won"] * ended
        done |= ended
        if done.all():
            break
    assert done.all()
    return won.mean().item()


def test_random_rarely_wins_and_focus_fire_mostly_wins_3m():
    assert win_rate("random") <= 0.05
    assert win_rate("focus") >= 0.8


def test_focus_fire_actions_are_available():
    env = make("micro:MMM2", num_envs=16, seed=0)
    _, _, avail = env.reset()
    for _ in range(30):
        actions = focus_fire_actions(env, avail)
        assert avail.gather(2, actions[..., None]).all()
        r = env.step(actions)
        _, _, avail = env.reset(r.terminated | r.truncated)


def test_render_writes_gif(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    env = make("micro:1c3s5z", num_envs=2, seed=0)
    _, _, avail = env.reset()
    frames = [env.render_frame(1)]
    for _ in range(4):
        r = env.step(focus_fire_actions(env, avail))
        avail = r.avail
        frames.append(env.render_frame(1))
    assert frames[-1]["pos"].shape == (18, 2) and frames[-1]["step"] == 4
    path = tmp_path / "battle.gif"
    env.write_animation(frames, str(path))
    data = path.read_bytes()
    assert data[:6] == b"GIF89a" and len(data) > 1000


def test_env_bench_rows():
    rows = run_env_bench("micro:3m", [2, 8], steps=5, device="cpu", seed=0)
    assert [r["num_envs"] for r in rows] == [2, 8]
    assert all(r["env_steps_per_s"] > 0 and r["steps"] == 5 for r in rows)
    rows = run_env_bench("matrix:two-step", [4], steps=4, device="cpu", seed=0)
    assert rows[0]["episodes"] == 8  # every copy ends after two steps and is reset
