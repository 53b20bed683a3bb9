"""The native (C++) kernels, the GRU recurrence and QMIX's mixing: they build where a C++ compiler
exists, compute what the PyTorch path computes (values and gradients, checked against float64),
keep NaN visible, and the learner gives the same loss and gradients with them as without them."""

import shutil

import pytest
import torch

from qmix.modules import gru as G
from qmix.modules import native
from qmix.modules.packing import EpisodePacking

HAVE_CXX = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
pytestmark = pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler on this machine")


@pytest.fixture
def kernel():
    saved = dict(native._state)
    assert native.configure("on") is None  # builds (first time, ~30 s) or loads the cached library
    yield native.module()
    native._state.update(saved)


def _episodes(seed=0, B=6, T=11, R=3, I=5, H=8, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([11, 3, 11, 7, 1, 6])[:B]
    packing = EpisodePacking(lengths, T)
    gru = torch.nn.GRU(I, H)
    with torch.no_grad():
        for p in gru.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    x = torch.randn(packing.rows, R, I, generator=g)
    return packing, gru, x


def _run(gru, x, packing, dtype, upstream):
    """Outputs and gradients (weights and input) of gru_packed in ``dtype``."""
    params = [p.detach().to(dtype).clone().requires_grad_() for p in gru.parameters()]  # w_ih, w_hh, b_ih, b_hh
    xi = x.detach().to(dtype).clone().requires_grad_()
    out = G.gru_packed(xi, packing.counts, params[0], params[2], params[1], params[3])
    (out * upstream.to(dtype)).sum().backward()
    return out.detach().double(), [p.grad.double() for p in params] + [xi.grad.double()]


# With large weights (3.0: many saturated gates) float32 errors grow for both paths alike: over 20
# seeds the worst relative errors were 2.0e-4 (native) and 2.0e-4 (PyTorch) at 3.0, 5e-7 at 0.5.
@pytest.mark.parametrize("scale,rel", [(0.5, 1e-6), (3.0, 3e-4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_native_is_as_accurate_as_the_float32_pytorch_path(kernel, scale, rel, seed):
    """Against float64, the native kernel's error is of the order of PyTorch's own float32 error."""
    packing, gru, x = _episodes(seed=seed, scale=scale)
    upstream = torch.randn(packing.rows, x.shape[1], gru.hidden_size, generator=torch.Generator().manual_seed(seed))
    got, got_grads = _run(gru, x, packing, torch.float32, upstream)  # native (float32 CPU)
    saved = dict(native._state)
    native.configure("off")
    plain, plain_grads = _run(gru, x, packing, torch.float32, upstream)
    want, want_grads = _run(gru, x, packing, torch.float64, upstream)
    native._state.update(saved)
    for g, p, w in zip([got, *got_grads], [plain, *plain_grads], [want, *want_grads]):
        err, plain_err = (g - w).abs().max().item(), (p - w).abs().max().item()
        assert err <= 4 * plain_err + rel * max(1.0, w.abs().max().item()), (err, plain_err)


def test_native_is_really_used_and_packed_like_nn_gru(kernel):
    """Per episode, the packed native GRU equals nn.GRU run on that episode alone."""
    packing, gru, x = _episodes()
    calls = []
    real = kernel.gru_forward

    class Spy:
        def __getattr__(self, name):
            return getattr(kernel, name)

        def gru_forward(self, *args):
            calls.append(1)
            return real(*args)

    native._state["module"] = Spy()
    with torch.no_grad():
        out = packing.unpack(G.gru_packed(x, packing.counts, gru.weight_ih_l0, gru.bias_ih_l0,
                                          gru.weight_hh_l0, gru.bias_hh_l0))
        xs = packing.unpack(x)
        for b, L in enumerate(packing_lengths(packing)):
            expected = gru(xs[b, :L])[0]
            assert torch.allclose(out[b, :L], expected, atol=1e-6)
            assert (out[b, L:] == 0).all()
    assert calls, "the native kernel was not called"


def packing_lengths(packing):
    return torch.bincount(packing.episode, minlength=packing.B).tolist()


def test_pair_equals_two_single_passes(kernel):
    packing, online, x = _episodes(seed=1)
    _, target, x_t = _episodes(seed=2)
    w = [online.weight_ih_l0, online.bias_ih_l0, online.weight_hh_l0, online.bias_hh_l0]
    w_t = [p.detach() for p in (target.weight_ih_l0, target.bias_ih_l0, target.weight_hh_l0, target.bias_hh_l0)]
    upstream = torch.randn(packing.rows, x.shape[1], online.hidden_size)
    x.requires_grad_()  # the input's gradient as well
    h, h_t = G.gru_packed_pair(x, x_t, packing.counts, w, w_t)
    assert not h_t.requires_grad
    (h * upstream).sum().backward()
    grads = [p.grad.clone() for p in w + [x]]
    for p in w + [x]:
        p.grad = None
    h1 = G.gru_packed(x, packing.counts, *w)
    (h1 * upstream).sum().backward()
    with torch.no_grad():
        h1_t = G.gru_packed(x_t, packing.counts, *w_t)
    assert torch.equal(h, h1) and torch.equal(h_t, h1_t)
    for g, p in zip(grads, w + [x]):
        assert torch.equal(g, p.grad)


def test_nan_stays_visible_and_extremes_stay_finite(kernel):
    packing, gru, x = _episodes()
    w = [gru.weight_ih_l0, gru.bias_ih_l0, gru.weight_hh_l0, gru.bias_hh_l0]
    with torch.no_grad():
        huge = G.gru_packed(x * 1e4, packing.counts, *w)  # saturated sigmoids: finite, within [-1, 1]
        assert torch.isfinite(huge).all() and huge.abs().max() <= 1
        bad = x.clone()
        bad[0, 0, 0] = float("nan")  # first step of the longest episode: its whole future is NaN
        out = G.gru_packed(bad, packing.counts, *w)
    assert torch.isnan(out[0, 0]).all()
    assert torch.isfinite(out[1:packing.counts[0]]).all()  # other episodes' rows at step 0


def test_learner_loss_and_gradients_match_pytorch_path(kernel):
    from qmix.bench.learner import LearnerShapes, bench_config, build_pair, random_batch

    s = LearnerShapes(8, 20, 3, 12, 6, 20)
    cfg = bench_config()
    batch = random_batch(s, seed=3)
    results = []
    for mode in ("on", "off"):
        native.configure(mode)
        ours, _ = build_pair(s, cfg, seed=4)
        loss, _ = ours.loss(batch)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in ours.params]))
    (l_on, g_on), (l_off, g_off) = results
    assert l_on == pytest.approx(l_off, rel=1e-5)
    for a, b in zip(g_on, g_off):
        assert torch.allclose(a, b, atol=1e-5 * max(1.0, b.abs().max().item()))


def test_modes_off_auto_on(monkeypatch):
    saved = dict(native._state)
    try:
        native.configure("off")
        assert native.module() is None
        with pytest.raises(ValueError):
            native.configure("fast")

        def broken():
            raise RuntimeError("compiler exploded\nmore detail")

        monkeypatch.setattr(native, "_build", broken)
        monkeypatch.setattr(native, "_load_cached", lambda: None)
        native._state.update(module=None, error=None, tried=False)
        note = native.configure("auto")
        assert note and "compiler exploded" in note and "\n" not in note
        assert native.module() is None
        with pytest.raises(RuntimeError, match="could not be built"):
            native.configure("on")
    finally:
        native._state.clear()
        native._state.update(saved)


def test_extension_name_depends_on_machine_and_source():
    name = native.extension_name()
    assert name.startswith("qmix_native_") and name == native.extension_name()


def _broken_build():
    raise RuntimeError("no C++ compiler found (c++, g++ or clang++)")


@pytest.fixture
def unbuildable(monkeypatch):
    saved = dict(native._state)
    monkeypatch.setattr(native, "_build", _broken_build)
    monkeypatch.setattr(native, "_load_cached", lambda: None)  # as on a machine without a build
    native._state.update(module=None, error=None, tried=False)
    yield
    native._state.clear()
    native._state.update(saved)


FAST = ["--env", "matrix:two-step", "t_max=200", "test_interval=100", "use_tensorboard=false", "device=cpu"]


def test_train_with_native_on_that_cannot_build_is_one_line_and_creates_nothing(unbuildable, tmp_path, capsys):
    from qmix.cli import main

    out = tmp_path / "run"
    code = main(["train", *FAST, "native_kernels=on", "--quiet", "--out", str(out)])
    # (after the "building" notice where no kernel was built on this machine before)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "building the native kernels" not in line]
    assert code == 2 and len(err) == 1 and "native kernels could not be built" in err[0], err
    assert "native_kernels=auto or off" in err[0] and not out.exists()


def test_train_with_native_auto_that_cannot_build_warns_and_trains(unbuildable, tmp_path, capsys):
    from qmix.cli import main

    out = tmp_path / "run"
    code = main(["train", *FAST, "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and (out / "summary.json").exists()
    assert "using the PyTorch path" in captured.out + captured.err
    assert native.module() is None


@pytest.mark.parametrize("text,value", [("on", "on"), ("off", "off"), ("auto", "auto")])
def test_native_kernels_on_off_survive_yaml_parsing(text, value):
    from qmix.config import parse_overrides, resolve

    assert resolve(parse_overrides([f"native_kernels={text}"])).native_kernels == value


def test_kernel_entry_points_accept_tensors_that_require_grad(kernel):
    """Called directly with grad enabled (the side-by-side pair runs on OpenMP worker threads,
    whose grad mode is their own): no autograd error, outputs carry no graph."""
    H = 8
    torch.manual_seed(0)
    gi = torch.randn(10, 3 * H, requires_grad=True)
    w = torch.randn(H + 1, 3 * H, requires_grad=True)
    b = torch.randn(H, requires_grad=True)
    rows = [4, 3, 2, 1]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out, gates, out_t = kernel.gru_forward_pair(gi, w, b, True, gi, w, b, rows)
        single, _ = kernel.gru_forward(gi, w, b, rows, True)
    finally:
        torch.set_num_threads(threads)
    assert not out.requires_grad and torch.equal(out, single) and torch.equal(out_t, single)


def test_a_build_killed_midway_does_not_block_later_runs(kernel):
    """torch's builder guards a build with a lock file that a killed build leaves behind; a later
    process must not wait on it forever. The build also compiles the cached copy of the source, so
    a checkout at another path reuses the same build."""
    import subprocess
    import sys

    directory = native.build_dir()
    (directory / "lock").touch()  # as left by a build killed mid-way
    code = "from qmix.modules import native; print(native.configure('on'), native.active())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "True"]
    assert not (directory / "lock").exists()
    assert str(directory / "native_kernels.cpp") in (directory / "build.ninja").read_text()


def test_runs_without_a_gru_or_qmix_never_load_or_build_the_kernels(unbuildable, tmp_path, capsys):
    """An MLP agent with VDN has no use for the kernels: no build, no warning, even with
    native_kernels=on. With the QMIX mixer it has (and an unbuildable kernel is then reported)."""
    from qmix.cli import main

    out = tmp_path / "run"
    code = main(["train", "--alg", "vdn", *FAST, "agent=mlp", "native_kernels=on", "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and (out / "summary.json").exists()
    assert "native" not in captured.out + captured.err
    assert not native._state["tried"] and native.module() is None
    code = main(["train", *FAST, "agent=mlp", "native_kernels=on", "--quiet", "--out", str(tmp_path / "qmix")])
    assert code == 2 and "native kernels could not be built" in capsys.readouterr().err


def _mixing_inputs(N, n, E, seed, strided):
    """Hypernetwork outputs as QMixer.forward passes them (w1 [N, n E], b1, w_final [N, E],
    v [N, 1]); ``strided``: column slices of one wider array, as 1-layer hypernetworks give."""
    g = torch.Generator().manual_seed(seed)
    qs = torch.randn(N, n, generator=g) * 3
    if strided:
        wide = torch.randn(N, n * E + 2 * E + 1 + 3, generator=g) * 2
        w1, b1, wf, v = wide[:, 3:].split([n * E, E, E, 1], -1)
    else:
        w1, b1, wf, v = (torch.randn(N, k, generator=g) * 2 for k in (n * E, E, E, 1))
    w1[0, :2] = 0.0  # abs' gradient at 0 is 0, as torch's
    wf[1, 0] = 0.0
    return [x.clone() if not strided else x for x in (qs, w1, b1, wf, v)]


def _mixing(inputs, dtype, upstream):
    """QMixer's mixing (forward and gradients) on these hypernetwork outputs, in ``dtype``."""
    from qmix.modules.mixers import QMixer

    qs, w1, b1, wf, v = (x.detach().to(dtype).requires_grad_() for x in inputs)
    n, E = qs.shape[1], b1.shape[1]
    mixer = QMixer(n, 3, embed_dim=E).to(dtype)
    mixer.hypernets = lambda state: [w1, wf, b1, v]
    out = mixer(qs, torch.zeros(qs.shape[0], 3, dtype=dtype))
    (out * upstream.to(dtype)).sum().backward()
    return out.detach().double(), [x.grad.double() for x in (qs, w1, b1, wf, v)]


@pytest.mark.parametrize("N,n,E,strided", [(300, 3, 32, False), (257, 1, 8, True), (64, 5, 20, True), (50, 27, 32, False)])
def test_native_mixing_is_as_accurate_as_the_float32_pytorch_path(kernel, N, n, E, strided):
    """QMIX's mixing by the kernel: values and gradients (utilities and every hypernetwork output)
    within float32 rounding of float64, as the PyTorch path is; any agent count and embedding width,
    inputs with row strides."""
    inputs = _mixing_inputs(N, n, E, seed=N, strided=strided)
    upstream = torch.randn(N, generator=torch.Generator().manual_seed(1))
    got, got_grads = _mixing(inputs, torch.float32, upstream)
    saved = dict(native._state)
    native.configure("off")
    plain, plain_grads = _mixing(inputs, torch.float32, upstream)
    want, want_grads = _mixing(inputs, torch.float64, upstream)
    native._state.update(saved)
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-5 * scale and (plain - want).abs().max() <= 1e-5 * scale
    for a, p, w in zip(got_grads, plain_grads, want_grads):
        tol = 1e-5 * max(w.abs().max().item(), 1.0)
        assert (a - w).abs().max() <= tol and (p - w).abs().max() <= tol
    assert torch.equal(got_grads[1][0, :2], torch.zeros(2, dtype=torch.float64))  # sgn(0) = 0


def test_native_mixing_keeps_nan_visible_and_is_used_by_the_learner(kernel, monkeypatch):
    inputs = _mixing_inputs(40, 3, 8, seed=0, strided=False)
    inputs[1][5, 4] = float("nan")
    inputs[2][7, 1] = float("nan")
    out, grads = _mixing(inputs, torch.float32, torch.ones(40))
    assert out[5].isnan() and out[7].isnan() and out[[0, 6, 8]].isfinite().all()
    assert grads[0][5].isnan().any() and grads[0][0].isfinite().all()
    # The learner's QMIX update goes through the kernel's mixing (online with gradients, target without).
    from qmix.bench.learner import LearnerShapes, bench_config, build_pair, random_batch

    calls = []
    real = native.module()

    class Spy:
        def __getattr__(self, name):
            if name.startswith("mix_"):
                calls.append(name)
            return getattr(real, name)

    learner, _ = build_pair(LearnerShapes(4, 6, 2, 5, 3, 7), bench_config(), seed=0)
    monkeypatch.setitem(native._state, "module", Spy())
    learner.update(random_batch(LearnerShapes(4, 6, 2, 5, 3, 7)))
    assert sorted(calls) == ["mix_backward", "mix_forward", "mix_forward"]


def test_a_built_library_loads_without_torchs_builder(kernel, tmp_path, monkeypatch):
    """Once built, a process loads the library from torch's extension cache directly (torch's
    builder, which imports setuptools, is not loaded); a file there that does not load sends
    configure to the builder's path instead."""
    import subprocess
    import sys

    code = ("import sys, torch; from qmix.modules import native; from qmix.trainer import configure_kernels; "
            "print(configure_kernels('on', torch.device('cpu')), native.active(), "
            "'torch.utils.cpp_extension' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "True", "False"]
    assert native._cached_library() == native.build_dir() / f"{native.extension_name()}.so"

    bogus = tmp_path / "lib.so"
    bogus.write_bytes(b"not a library")
    monkeypatch.setattr(native, "_cached_library", lambda: bogus)
    assert native._load_cached() is None
    built = object()
    monkeypatch.setattr(native, "_build", lambda: built)
    monkeypatch.setitem(native._state, "tried", False)
    monkeypatch.setitem(native._state, "module", None)
    assert native.configure("on") is None and native.module() is built
