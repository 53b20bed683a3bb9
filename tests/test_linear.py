"""qmix.modules.linear: F.linear's values and gradients, whichever orientation its products take."""

import pytest
import torch
import torch.nn.functional as F

from qmix.modules.linear import linear


@pytest.mark.parametrize("lead,inp,out,bias", [
    ((50, 2), 15, 64, "vector"),   # few inputs: the weight gradient as (x^T g)^T
    ((40,), 64, 6, "vector"),      # few outputs: the forward product feature-major
    ((7, 3), 30, 192, "vector"),
    ((9,), 64, 64, None),
    ((5, 2), 15, 64, "rows"),      # a per-row addend (the agent input's looked-up rows)
    ((33,), 64, 1, "vector"),
    ((4, 3), 200, 12, "vector"),
])
def test_linear_is_f_linear(lead, inp, out, bias):
    g = torch.Generator().manual_seed(inp * out)
    x = torch.randn(*lead, inp, generator=g, requires_grad=True)
    w = torch.randn(out, inp, generator=g, requires_grad=True)
    b = None if bias is None else torch.randn(*((out,) if bias == "vector" else (*lead, out)), generator=g,
                                              requires_grad=True)
    want = F.linear(x, w) + (0 if b is None else b)
    got = linear(x, w, b)
    upstream = torch.randn(want.shape, generator=g)
    params = [t for t in (x, w, b) if t is not None]
    assert got.shape == want.shape and got.is_contiguous() and got._base is None
    assert torch.allclose(got, want, atol=1e-5)
    for a, c in zip(torch.autograd.grad(got, params, upstream), torch.autograd.grad(want, params, upstream)):
        assert a.shape == c.shape and torch.allclose(a, c, atol=1e-4)


def test_in_place_after_it_and_no_grad():
    x, w, b = torch.randn(8, 2, 15), torch.randn(64, 15, requires_grad=True), torch.randn(64, requires_grad=True)
    y = F.relu(linear(x, w, b), inplace=True)  # as the agent's layers use it
    y.sum().backward()
    want_w = torch.autograd.grad(F.relu(F.linear(x, w, b)).sum(), w)[0]
    assert torch.allclose(w.grad, want_w, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(linear(x, w, b), F.linear(x, w, b), atol=1e-5)
