"""qmix's flat-parameter optimisers take torch.optim's steps, bit for bit, and share its state format."""

import copy

import pytest
import torch

from qmix.errors import QmixError
from qmix.optim import FlatAdam, FlatRMSprop, fused_adam_available


def pair(kind: str, n: int = 300):
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(n))
    b = torch.nn.Parameter(a.detach().clone())
    if kind == "adam":
        if not fused_adam_available(a):
            pytest.skip("this torch has no fused Adam kernel on the CPU")
        return a, FlatAdam(a, lr=5e-4, eps=1e-8), b, torch.optim.Adam([b], lr=5e-4, eps=1e-8, fused=True)
    return a, FlatRMSprop(a, lr=5e-4, alpha=0.99, eps=1e-5), b, \
        torch.optim.RMSprop([b], lr=5e-4, alpha=0.99, eps=1e-5, foreach=False)


def steps(a, ours, b, theirs, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(k):
        grad = torch.randn(a.shape, generator=g) * torch.rand((), generator=g) * 10
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()


def same_state(ours, theirs):
    x, y = ours.state_dict(), theirs.state_dict()
    assert x["param_groups"] == y["param_groups"]
    assert x["state"].keys() == y["state"].keys()
    for k, v in y["state"][0].items():
        assert torch.equal(x["state"][0][k], v), k
        assert x["state"][0][k].dtype == v.dtype and x["state"][0][k].device == v.device


@pytest.mark.parametrize("kind", ["rmsprop", "adam"])
def test_steps_and_state_are_torch_optims(kind):
    a, ours, b, theirs = pair(kind)
    assert ours.state_dict() == theirs.state_dict() | {"state": {}}  # fresh: no state yet
    steps(a, ours, b, theirs, 25, seed=1)
    assert torch.equal(a, b)
    same_state(ours, theirs)


@pytest.mark.parametrize("kind", ["rmsprop", "adam"])
def test_state_moves_between_torch_and_qmix_both_ways(kind):
    a, ours, b, theirs = pair(kind)
    steps(a, ours, b, theirs, 7, seed=2)
    # swap: each continues from the other's saved state
    a2, ours2, b2, theirs2 = pair(kind)
    with torch.no_grad():
        a2.copy_(a)
        b2.copy_(b)
    ours2.load_state_dict(copy.deepcopy(theirs.state_dict()))
    theirs2.load_state_dict(copy.deepcopy(ours.state_dict()))
    steps(a2, ours2, b2, theirs2, 9, seed=3)
    steps(a, ours, b, theirs, 9, seed=3)
    assert torch.equal(a2, a) and torch.equal(b2, b) and torch.equal(a, b)
    same_state(ours2, theirs2)


def test_a_state_with_settings_qmix_does_not_implement_is_refused():
    a, ours, b, theirs = pair("rmsprop")
    saved = ours.state_dict()
    saved["param_groups"][0]["momentum"] = 0.9
    with pytest.raises(QmixError, match="momentum=0.9"):
        ours.load_state_dict(saved)
    two = {"state": {}, "param_groups": [{"lr": 1.0, "params": [0, 1]}]}
    with pytest.raises(QmixError, match="exactly one"):
        ours.load_state_dict(two)
