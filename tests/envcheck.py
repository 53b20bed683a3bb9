"""Shared helpers for the environment adapter tests."""

import torch


def rollout(env, steps=60, seed=0):
    """Random available actions from a seeded generator; ended copies are reset with a mask.

    Returns every tensor seen, in order, so two rollouts can be compared exactly.
    """
    g = torch.Generator().manual_seed(seed)
    obs, state, avail = env.reset()
    seen = [obs, state, avail]
    for _ in range(steps):
        logits = torch.rand(avail.shape, generator=g).masked_fill(~avail, -1.0)
        res = env.step(logits.argmax(-1))
        avail = res.avail
        seen += [res.obs, res.state, res.avail, res.reward, res.terminated, res.truncated]
        ended = res.terminated | res.truncated
        if ended.any():
            obs, state, avail = env.reset(ended)
            seen += [obs, state, avail]
    return seen


def same(a, b):
    """Two rollouts are identical, tensor for tensor."""
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
