"""micro with ``env_args.compile``: the compiled simulator plays the same battles, and a compiler
that fails falls back to the uncompiled one with a warning."""

import pickle
import warnings

import pytest
import torch

from qmix.envs import make
from qmix.envs.micro.env import _COMPILED
from qmix.system import compile_methods


def _play(env, steps, seed=0, reset=True):
    """Random available actions; every step's outputs, cloned."""
    g = torch.Generator().manual_seed(seed)
    avail = env.reset()[2] if reset else env.avail_actions()
    out = []
    for _ in range(steps):
        actions = torch.multinomial(avail.reshape(-1, avail.shape[-1]).float(), 1, generator=g)
        r = env.step(actions.view(avail.shape[:2]))
        out.append((r.obs.clone(), r.state.clone(), r.reward.clone(), r.avail.clone(), r.terminated.clone(),
                    r.truncated.clone(), {k: v.clone() for k, v in r.info.items()}))
        _, _, avail = env.reset(r.terminated | r.truncated)
    return out


def test_compiled_simulator_plays_the_same_battles():
    # 25 steps of 3m with random play: units fight, die and battles end within it. Fused kernels
    # may round in another order than the uncompiled ops, hence a float tolerance.
    eager = _play(make("micro:3m", num_envs=4, seed=3), 25)
    compiled = _play(make("micro:3m", num_envs=4, seed=3, compile=True), 25)
    ended = 0
    for a, b in zip(eager, compiled):
        for x, y in zip(a[:3], b[:3]):
            torch.testing.assert_close(y, x, rtol=0, atol=1e-4)
        for x, y in zip(a[3:6], b[3:6]):
            assert torch.equal(x, y)
        assert a[6].keys() == b[6].keys() and all(torch.equal(a[6][k], b[6][k]) for k in a[6])
        ended += int((a[4] | a[5]).sum())
    assert ended > 0  # the comparison covered battle ends and resets


def test_failing_compiler_falls_back_to_uncompiled(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    env = make("micro:3m", num_envs=2, seed=1, compile=True)
    with pytest.warns(RuntimeWarning, match=r"micro:3m \(env_args.compile\): torch.compile failed .*no C\+\+ compiler"):
        fallback = _play(env, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not on every call or for every method
        fallback += _play(env, 14, seed=1)
    assert not any(name in vars(env) for name in _COMPILED)
    reference = make("micro:3m", num_envs=2, seed=1)
    eager = _play(reference, 1) + _play(reference, 14, seed=1)
    for a, b in zip(eager, fallback):
        assert all(torch.equal(x, y) for x, y in zip(a[:6], b[:6]))


def test_errors_of_the_method_itself_propagate(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # "compiled" = the function

    class Thing:
        def bad(self, x):
            raise ValueError(f"bad input {x}")

    thing = Thing()
    compile_methods(thing, ("bad",), "test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the method is at fault
        with pytest.raises(ValueError, match="bad input 3"):
            thing.bad(3)
    assert "bad" in vars(thing)  # still the compiled one


def test_compiled_env_state_checkpoints_and_restores():
    env = make("micro:3m", num_envs=2, seed=4, compile=True)
    _play(env, 12)
    saved = pickle.loads(pickle.dumps(env.get_state()))  # as a checkpoint stores it
    assert not any(name in saved for name in _COMPILED)
    original = _play(env, 20, seed=5, reset=False)
    restored_env = make("micro:3m", num_envs=2, seed=0, compile=True)
    restored_env.set_state(saved)
    restored = _play(restored_env, 20, seed=5, reset=False)
    for a, b in zip(original, restored):
        assert all(torch.equal(x, y) for x, y in zip(a[:6], b[:6]))
