"""DenseFsaVec, intersect_dense and the fused frame loop (dense_forward_score), numba and torch paths."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import gtn
from gtn import dense as D

NEG_INF = float("-inf")
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), max_examples=200)
BACKENDS = ["numba", "torch"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: torch's intra-op thread pool only adds latency (badly so on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------ generators
def random_graph(gen, n_states, n_arcs, C, dtype=torch.float64, neg_inf=False):
    """A random epsilon-free graph (cycles and self-loops allowed) with states 0..n_states-1 (last = final)."""
    final = n_states - 1
    rows = []
    for _ in range(n_arcs):
        src = int(torch.randint(0, final, (1,), generator=gen))
        if float(torch.rand(1, generator=gen)) < 0.3:
            rows.append((src, final, -1))
        else:
            rows.append((src, int(torch.randint(0, final, (1,), generator=gen)),
                         int(torch.randint(0, C, (1,), generator=gen))))
    rows.append((0, final, -1)) if not any(r[2] == -1 for r in rows) else None
    sc = torch.randn(len(rows), generator=gen, dtype=dtype)
    if neg_inf and len(rows) > 1:
        sc[int(torch.randint(0, len(rows), (1,), generator=gen))] = NEG_INF
    return gtn.Fsa(torch.tensor(rows), sc, num_states=n_states)


def random_case(seed, shared=False, B=None, T=None, C=None, neg_inf=False, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    B = B or int(torch.randint(1, 4, (1,), generator=gen))
    T = T if T is not None else int(torch.randint(0, 5, (1,), generator=gen))
    C = C or int(torch.randint(1, 4, (1,), generator=gen))
    graphs = [random_graph(gen, int(torch.randint(2, 5, (1,), generator=gen)),
                           int(torch.randint(1, 8, (1,), generator=gen)), C, dtype, neg_inf)
              for _ in range(1 if shared else B)]
    g = graphs[0] if shared else gtn.FsaVec(graphs)
    lp = torch.randn(B, T, C, generator=gen, dtype=dtype)
    if neg_inf and lp.numel():
        lp.view(-1)[int(torch.randint(0, lp.numel(), (1,), generator=gen))] = NEG_INF
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    return g, lp, lengths


def brute_force(graph, lp, L):
    """(forward, viterbi) of one graph against frames lp[:L] by enumerating every alignment path."""
    arcs = graph.arcs.tolist()
    sc = graph.scores.tolist()
    totals = []

    def walk(state, t, acc):
        for i, (s, d, l) in enumerate(arcs):
            if s != state:
                continue
            if t == L and l == -1:
                totals.append(acc + sc[i])
            elif t < L and l >= 0:
                walk(d, t + 1, acc + sc[i] + float(lp[t, l]))

    if graph.num_states:
        walk(0, 0, 0.0)
    finite = [x for x in totals if x > NEG_INF]
    if not finite:
        return NEG_INF, NEG_INF
    m = max(finite)
    return m + math.log(sum(math.exp(x - m) for x in finite)), m


def _logaddexp(a, b):
    m = max(a, b)
    return m if m == NEG_INF else m + math.log(math.exp(a - m) + math.exp(b - m))


def members(g, B):
    return [g] * B if isinstance(g, gtn.Fsa) else list(g)


# ------------------------------------------------------------------------------------------------ DenseFsaVec
def test_dense_fsavec_validation():
    lp = torch.zeros(2, 3, 4)
    d = gtn.DenseFsaVec(lp, [3, 1])
    assert (len(d), d.num_frames, d.num_symbols) == (2, 3, 4)
    assert d.lengths.tolist() == [3, 1]
    assert gtn.DenseFsaVec(lp).lengths.tolist() == [3, 3]
    with pytest.raises(gtn.FsaError, match="shape"):
        gtn.DenseFsaVec(torch.zeros(3, 4), [3])
    with pytest.raises(gtn.FsaError, match="floating"):
        gtn.DenseFsaVec(torch.zeros(2, 3, 4, dtype=torch.int64))
    with pytest.raises(gtn.FsaError, match="sequence 1 .* length 4"):
        gtn.DenseFsaVec(lp, [3, 4])
    with pytest.raises(gtn.FsaError, match="one entry per sequence"):
        gtn.DenseFsaVec(lp, [3])
    bad = lp.clone()
    bad[1, 0, 2] = float("nan")
    with pytest.raises(gtn.FsaError, match=r"log_probs\[1, 0, 2\]"):
        gtn.DenseFsaVec(bad, [3, 1])
    bad[1, 0, 2] = 0
    bad[1, 2, 2] = float("nan")  # in a padded frame: ignored
    gtn.DenseFsaVec(bad, [3, 1])


def test_label_out_of_range_and_batch_mismatch():
    g = gtn.Fsa([(0, 0, 5), (0, 1, -1)])
    d = gtn.DenseFsaVec(torch.zeros(2, 3, 4))
    with pytest.raises(gtn.FsaError, match="label 5"):
        gtn.dense_forward_score(g, d)
    with pytest.raises(gtn.FsaError, match="3 FSAs"):
        gtn.intersect_dense(gtn.FsaVec([gtn.Fsa([(0, 1, -1)])] * 3), d)


# ------------------------------------------------------------------------------------------------ fused scores
@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@settings(**SETTINGS)
@given(seed=st.integers(0, 2 ** 31 - 1), shared=st.booleans(), neg_inf=st.booleans())
def test_fused_score_equals_brute_force(seed, shared, neg_inf):
    """Law: dense_forward_score = log-sum-exp (max) over every alignment path, on both backends."""
    g, lp, lengths = random_case(seed, shared=shared, neg_inf=neg_inf)
    d = gtn.DenseFsaVec(lp, lengths)
    want = [brute_force(m, lp[b], int(lengths[b])) for b, m in enumerate(members(g, lp.shape[0]))]
    for backend in BACKENDS:
        fw = gtn.dense_forward_score(g, d, backend=backend)
        vi = gtn.dense_forward_score(g, d, log_semiring=False, backend=backend)
        for b, (f, v) in enumerate(want):
            assert torch.allclose(fw[b], torch.tensor(f, dtype=fw.dtype), rtol=1e-9, atol=1e-9, equal_nan=False), \
                (backend, b, fw, want)
            assert torch.allclose(vi[b], torch.tensor(v, dtype=vi.dtype), rtol=1e-9, atol=1e-9), (backend, b)


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@settings(**SETTINGS)
@given(seed=st.integers(0, 2 ** 31 - 1), shared=st.booleans(), log=st.booleans(), neg_inf=st.booleans())
def test_numba_equals_torch(seed, shared, log, neg_inf):
    """Law: the numba kernels and the torch frame loop give the same scores and gradients."""
    g, lp, lengths = random_case(seed, shared=shared, neg_inf=neg_inf)
    out = []
    for backend in BACKENDS:
        sc = g.scores.detach().clone().requires_grad_(True)
        x = lp.clone().requires_grad_(True)
        gg = g.clone()
        gg.scores = sc
        z = gtn.dense_forward_score(gg, gtn.DenseFsaVec(x, lengths), log_semiring=log, backend=backend)
        w = torch.linspace(0.5, 1.5, z.numel(), dtype=z.dtype)
        torch.where(torch.isfinite(z), z * w, torch.zeros_like(z)).sum().backward()
        out.append((z.detach(), sc.grad, x.grad))
    (z1, s1, x1), (z2, s2, x2) = out
    assert torch.allclose(z1, z2, rtol=1e-10, atol=1e-10, equal_nan=False)
    assert torch.allclose(s1, s2, rtol=1e-8, atol=1e-10) and torch.allclose(x1, x2, rtol=1e-8, atol=1e-10)
    for t in (s1, x1):
        assert not torch.isnan(t).any()


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("log", [True, False])
def test_gradcheck(backend, log):
    for seed in range(6):
        g, lp, lengths = random_case(seed, shared=seed % 2 == 0, B=2, T=3, C=3)
        sc = g.scores.detach().clone().requires_grad_(True)
        x = lp.clone().requires_grad_(True)

        def f(sc, x):
            gg = g.clone()
            gg.scores = sc
            z = gtn.dense_forward_score(gg, gtn.DenseFsaVec(x, lengths), log_semiring=log, backend=backend)
            return torch.where(torch.isfinite(z), z, torch.zeros_like(z))

        assert torch.autograd.gradcheck(f, (sc, x), eps=1e-6, atol=1e-5)


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_path_gives_minus_inf_and_zero_grads(backend):
    # the graph needs at least 3 frames; the second sequence has 2
    g = gtn.Fsa([(0, 1, 1), (1, 2, 1), (2, 2, 0), (2, 3, 1), (3, 4, -1)], dtype=torch.float64)
    g.requires_grad_()
    lp = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    for log in (True, False):
        z = gtn.dense_forward_score(g, gtn.DenseFsaVec(lp, [4, 2]), log_semiring=log, backend=backend)
        assert torch.isfinite(z[0]) and z[1] == NEG_INF
        z[1:].sum().backward()
        assert (lp.grad == 0).all() and (g.scores.grad == 0).all()
        lp.grad = None
        g.scores.grad = None


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_scores_fall_back_to_log_domain(backend):
    """Emissions spanning far more than exp(-700) (unnormalised, x1000): the scaled kernel must hand the
    sequence to the log kernel and still agree with brute force and with the other backend."""
    for seed in range(10):
        g, lp, lengths = random_case(seed, B=3, T=4, C=3)
        lp = lp * 1000.0
        gs = g.clone()
        gs.scores = g.scores * 500.0
        d = gtn.DenseFsaVec(lp, lengths)
        z = gtn.dense_forward_score(gs, d, backend=backend)
        for b, m in enumerate(members(gs, 3)):
            f, _ = brute_force(m, lp[b], int(lengths[b]))
            assert torch.allclose(z[b], torch.tensor(f, dtype=z.dtype), rtol=1e-9, atol=1e-7), (seed, b)
        if backend == "numba":
            _numba_vs_torch(gs, lp, lengths)


def _numba_vs_torch(g, lp, lengths, log=True):
    out = []
    for backend in BACKENDS:
        sc = g.scores.detach().clone().requires_grad_(True)
        x = lp.clone().requires_grad_(True)
        gg = g.clone()
        gg.scores = sc
        z = gtn.dense_forward_score(gg, gtn.DenseFsaVec(x, lengths), log_semiring=log, backend=backend)
        w = torch.linspace(0.5, 1.5, z.numel(), dtype=z.dtype)
        torch.where(torch.isfinite(z), z * w, torch.zeros_like(z)).sum().backward()
        out.append((z.detach(), sc.grad, x.grad))
    (z1, s1, x1), (z2, s2, x2) = out
    assert torch.allclose(z1, z2, rtol=1e-10, atol=1e-10)
    assert torch.allclose(s1, s2, rtol=1e-7, atol=1e-9) and torch.allclose(x1, x2, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("fwd,bwd", [(0.5, 1e-290), (1e-4, 1e-290), (1e-290, 0.5), (1e-290, 1e-2), (1e-290, 1e-6)])
def test_scaled_kernel_fallbacks(monkeypatch, fwd, bwd):
    """Raising the underflow thresholds forces the scaled kernels to hand sequences to the log kernels, in the
    forward or part-way through the backward; results must not change."""
    monkeypatch.setitem(D._TINY, "forward", fwd)
    monkeypatch.setitem(D._TINY, "backward", bwd)
    for seed in range(12):
        g, lp, lengths = random_case(seed, shared=seed % 2 == 0, T=4)
        _numba_vs_torch(g, lp, lengths)
    targets = torch.randint(1, 5, (3, 6), generator=torch.Generator().manual_seed(0))
    lp = torch.randn(3, 20, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).log_softmax(-1)
    _numba_vs_torch(gtn.ctc_graph(targets.tolist(), dtype=torch.float64), lp, torch.tensor([20, 17, 12]))


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_long_sequences_numba_matches_torch_float32():
    """CTC-sized problem in float32 (exercises the scaled kernel and float32 gradient output)."""
    torch.manual_seed(0)
    B, T, C, U = 4, 60, 6, 12
    targets = torch.randint(1, C, (B, U))
    graphs = gtn.ctc_graph(targets.tolist())
    lp = torch.randn(B, T, C).log_softmax(-1)
    res = []
    for backend in BACKENDS:
        x = lp.clone().requires_grad_(True)
        z = gtn.dense_forward_score(graphs, gtn.DenseFsaVec(x, [60, 50, 40, 30]), backend=backend)
        z.sum().backward()
        res.append((z.detach(), x.grad))
    assert torch.allclose(res[0][0], res[1][0], rtol=1e-5)
    assert torch.allclose(res[0][1], res[1][1], atol=1e-5)
    assert res[0][1].dtype == torch.float32


def sparse_label_case(seed, B=3, T=9, C=40, used=5, dtype=torch.float64):
    """Random graphs that read only ``used`` of ``C`` emission columns (a different subset per graph), and
    emissions laid out ``[T, B, C]`` as `ctc_loss` gives them (seen as ``[B, T, C]``: not contiguous)."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(B):
        g = random_graph(gen, int(torch.randint(2, 6, (1,), generator=gen)), int(torch.randint(2, 12, (1,),
                         generator=gen)), used, dtype)
        cols = torch.randperm(C, generator=gen)[:used]
        arcs = g.arcs.clone()
        arcs[:, 2] = torch.where(arcs[:, 2] >= 0, cols[arcs[:, 2].clamp(min=0)], arcs[:, 2])
        graphs.append(gtn.Fsa(arcs, g.scores, num_states=g.num_states))
    lp = torch.randn(T, B, C, generator=gen, dtype=dtype).log_softmax(-1).transpose(0, 1)
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    return gtn.FsaVec(graphs), lp, lengths


def test_narrow_columns_plan():
    """The plan keeps, per sequence, the distinct labels of its graph (ascending, padded with column 0) and
    relabels the arcs into them; graphs that read more than half of the symbols are left alone."""
    g = gtn.FsaVec([gtn.Fsa([(0, 1, 7), (1, 1, 3), (1, 2, -1)]), gtn.Fsa([(0, 1, 9), (1, 2, -1)])])
    plan = D._Plan(g, gtn.DenseFsaVec(torch.zeros(2, 4, 10)))
    cols = plan.narrow_columns()
    assert cols.tolist() == [[3, 7], [9, 0]] and plan.C == 2
    assert plan.lab.tolist() == [1, 0, -1, 0, -1]
    shared = gtn.Fsa([(0, 1, 1), (1, 1, 2), (1, 2, -1), (0, 2, -1)])
    plan = D._Plan(shared, gtn.DenseFsaVec(torch.zeros(3, 4, 4)))  # 2 of 4 columns: narrowed, for each sequence
    assert plan.narrow_columns().tolist() == [[1, 2]] * 3
    assert plan.lab.tolist() == [lab - 1 if lab >= 0 else -1 for lab in shared.labels.tolist()]
    assert D._Plan(shared, gtn.DenseFsaVec(torch.zeros(3, 4, 3))).narrow_columns() is None  # 2 of 3 columns


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_narrowed_columns_equal_the_lattice_route(dtype):
    """Law: with graphs that read few of many symbols (the frame loops run on the gathered columns), scores
    and gradients equal the lattice route's (`forward_score(intersect_dense(...))`, which reads every column
    through its own gather), on both backends; the emission gradient is laid out like the emissions."""
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    for seed in range(8):
        g, lp, lengths = sparse_label_case(seed, dtype=dtype)
        assert D._Plan(g, gtn.DenseFsaVec(lp, lengths)).narrow_columns() is not None
        ref = None
        for route in ("lattice", "numba", "torch"):
            sc = g.scores.detach().clone().requires_grad_(True)
            x = lp.detach().clone().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)
            gg = g.clone()
            gg.scores = sc
            d = gtn.DenseFsaVec(x, lengths)
            if route == "lattice":
                z = gtn.forward_score(gtn.intersect_dense(gg, d))
            else:
                z = gtn.dense_forward_score(gg, d, backend=route)
            w = torch.linspace(0.5, 1.5, z.numel(), dtype=z.dtype)
            torch.where(torch.isfinite(z), z * w, torch.zeros_like(z)).sum().backward()
            got = (z.detach(), sc.grad, x.grad)
            if ref is None:
                ref = got
                continue
            assert x.grad.stride() == x.stride() and x.grad.dtype == dtype, route
            for a, b in zip(got, ref):
                assert torch.allclose(a, b, **tol), (seed, route, (a - b).abs().max())


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@pytest.mark.parametrize("log", [True, False])
def test_checkpoint_boundaries(log):
    """The scaled kernels keep alpha every S = floor(sqrt(frames)) frames and recompute the rest in the
    backward: lengths on, just before and just after a checkpoint (S = 7 here), 0 and 1 frames."""
    targets = torch.randint(1, 5, (6, 5), generator=torch.Generator().manual_seed(3))
    g = gtn.ctc_graph(targets.tolist(), dtype=torch.float64)
    lp = torch.randn(6, 49, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).log_softmax(-1)
    _numba_vs_torch(g, lp, torch.tensor([49, 48, 43, 42, 14, 13]), log=log)
    short = gtn.Fsa([(0, 0, 1), (0, 1, -1)], dtype=torch.float64)
    _numba_vs_torch(short, lp[:3, :7], torch.tensor([0, 1, 7]), log=log)


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_underflow_is_certified_not_recomputed(monkeypatch):
    """Emissions spanning hundreds of nats over long targets: the scaled forward sees products below 1e-290
    and marks the sequences; the backward pass certifies them (posterior mass of every frame far above the
    underflow) -- run in the forward with the gradient when one is wanted, as a check-only pass without --
    so no sequence goes to the log-domain kernels, and the results equal the torch frame loop (log domain
    throughout) and torch's own ctc_loss."""
    from gtn.kernels import dense_numba as K
    seen = {}
    lin = K.dense_forward_lin

    def spy_lin(*a):
        lin(*a)
        seen["flag"] = a[-2].copy()

    def no_log(*a):
        raise AssertionError("a sequence went to the log-domain kernels")

    T, C, U = 60, 300, 20
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(T, 3, C, generator=g, dtype=torch.float64) * 40
    targets = torch.randint(1, C, (3, U), generator=g)
    il, tl = torch.tensor([T, T - 5, T - 17]), torch.tensor([U, U - 3, U - 7])
    res = []
    for backend in ("numba", "torch"):
        with monkeypatch.context() as m:
            if backend == "numba":
                m.setattr(K, "dense_forward_lin", spy_lin)
                m.setattr(K, "dense_forward", no_log)
                m.setattr(K, "dense_backward_log", no_log)
            x = logits.clone().requires_grad_(True)
            loss = gtn.ctc_loss(x.log_softmax(-1), targets, il, tl, reduction="none", backend=backend)
            loss.sum().backward()
        res.append((loss.detach(), x.grad))
        if backend == "numba":  # without gradients: the marked totals are certified by the check-only pass
            with monkeypatch.context() as m, torch.no_grad():
                m.setattr(K, "dense_forward_lin", spy_lin)
                m.setattr(K, "dense_forward", no_log)
                seen.clear()
                inference = gtn.ctc_loss(logits.log_softmax(-1), targets, il, tl, reduction="none",
                                         backend="numba")
            assert seen["flag"].all() and torch.equal(inference, loss.detach())
    assert seen["flag"].all()
    x = logits.clone().requires_grad_(True)
    ref = torch.nn.functional.ctc_loss(x.log_softmax(-1), targets, il, tl, reduction="none")
    ref.sum().backward()
    for loss, grad in res:
        assert torch.allclose(loss, ref.detach(), rtol=1e-10) and torch.allclose(grad, x.grad, rtol=1e-7, atol=1e-9)


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@pytest.mark.parametrize("shared", [False, True])
def test_threads_split_the_batch(monkeypatch, shared):
    """With several torch threads the scaled kernels run on parts of the batch in parallel (each with its own
    scratch and graph-score gradient, summed after): the same scores and gradients as one thread, eager
    posteriors (emission gradient wanted) and the lazy backward (a shared graph's scores need a gradient)."""
    monkeypatch.setattr(D, "_PARALLEL_WORK", 0)
    gen = torch.Generator().manual_seed(5)
    targets = torch.randint(1, 6, (7, 9), generator=gen)
    g = gtn.ctc_graph([1, 2, 2, 3], dtype=torch.float64) if shared else gtn.ctc_graph(targets.tolist(),
                                                                                       dtype=torch.float64)
    g.scores = torch.randn(g.num_arcs, dtype=torch.float64, generator=gen) * 0.1
    lp = torch.randn(7, 30, 6, dtype=torch.float64, generator=gen).log_softmax(-1)
    lengths = torch.tensor([30, 29, 25, 30, 18, 22, 21])
    res = []
    n = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            sc = g.scores.detach().clone().requires_grad_(True)
            x = lp.clone().requires_grad_(True)
            gg = g.clone()
            gg.scores = sc
            z = gtn.dense_forward_score(gg, gtn.DenseFsaVec(x, lengths), backend="numba")
            (z * torch.linspace(0.5, 1.5, 7, dtype=z.dtype)).sum().backward()
            res.append((z.detach(), x.grad, sc.grad))
    finally:
        torch.set_num_threads(n)
    (z1, x1, s1), (z2, x2, s2) = res
    assert torch.equal(z1, z2) and torch.equal(x1, x2) and torch.allclose(s1, s2, rtol=1e-12, atol=1e-14)
    assert torch.isfinite(z1).all() and (s1 != 0).any()


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_retained_graph_differentiates_twice():
    """The kernels' saved arrays go through save_for_backward and the plan's index arrays are dropped after
    the backward: a retained graph must still give the same gradient a second time."""
    targets = torch.randint(1, 50, (2, 4), generator=torch.Generator().manual_seed(0))
    x = torch.randn(12, 2, 60, dtype=torch.float64).requires_grad_(True)
    for backend in BACKENDS:
        loss = gtn.ctc_loss(x.log_softmax(-1), targets, [12, 10], [4, 3], backend=backend)
        g1, = torch.autograd.grad(loss, x, retain_graph=True)
        g2, = torch.autograd.grad(loss, x)
        assert torch.equal(g1, g2)


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_env_var_forces_torch(monkeypatch):
    from gtn import kernels
    cpu = torch.device("cpu")
    assert D._select("numba", cpu, torch.float32) is not None  # numba is a dependency: the "numba" tests ran it
    old = kernels.use_numba()
    kernels.use_numba(False)
    try:
        assert D._select("auto", cpu, torch.float32) is None
    finally:
        kernels.use_numba(old)
    # the old variable still works for "auto", and says once that it is deprecated
    monkeypatch.setenv("GTN_DENSE_BACKEND", "torch")
    monkeypatch.setattr(kernels, "_WARNED", set())
    with pytest.warns(DeprecationWarning, match="GTN_DENSE_BACKEND is deprecated"):
        assert D._select("auto", cpu, torch.float32) is None
    assert D._select("numba", cpu, torch.float32) is not None  # an explicit backend="numba" still runs the kernels


# ------------------------------------------------------------------------------------------------ the lattice
def lattice_scores(lat):
    """(forward, viterbi) per member of a lattice by a plain loop over its states (state order = frame order,
    a topological order)."""
    out = []
    for m in lat:
        n = m.num_states
        if n == 0:
            out.append((NEG_INF, NEG_INF))
            continue
        fw = [NEG_INF] * n
        vi = [NEG_INF] * n
        fw[0] = vi[0] = 0.0
        arcs, sc = m.arcs.tolist(), m.scores.tolist()
        for s in range(n):
            for i, (a, d, _) in enumerate(arcs):
                if a == s:
                    assert d > s, "lattice states must be in topological order"
                    fw[d] = _logaddexp(fw[d], fw[s] + sc[i])
                    vi[d] = max(vi[d], vi[s] + sc[i])
        out.append((fw[-1], vi[-1]))
    return out


@settings(**SETTINGS)
@given(seed=st.integers(0, 2 ** 31 - 1), shared=st.booleans())
def test_intersect_dense_lattice(seed, shared):
    """Laws: the lattice's paths are exactly the alignments (same forward/Viterbi score as brute force and as
    the fused path); every state is accessible and co-accessible; arc attributes point at the right inputs."""
    g, lp, lengths = random_case(seed, shared=shared, neg_inf=seed % 3 == 0)
    B = lp.shape[0]
    lat = gtn.intersect_dense(g, gtn.DenseFsaVec(lp, lengths))
    assert isinstance(lat, gtn.FsaVec) and len(lat) == B
    fused = gtn.dense_forward_score(g, gtn.DenseFsaVec(lp, lengths))
    got = lattice_scores(lat)
    for b, m in enumerate(members(g, B)):
        f, v = brute_force(m, lp[b], int(lengths[b]))
        assert math.isclose(got[b][0], f, rel_tol=1e-9, abs_tol=1e-9) or got[b][0] == f == NEG_INF
        assert math.isclose(got[b][1], v, rel_tol=1e-9, abs_tol=1e-9) or got[b][1] == v == NEG_INF
        assert math.isclose(float(fused[b]), f, rel_tol=1e-9, abs_tol=1e-9) or float(fused[b]) == f
    # structure: sorted by (member, src); labels/scores consistent with graph_arc and frame
    if lat.num_arcs:
        assert bool((lat.src_global[1:] >= lat.src_global[:-1]).all())
        ga, fr = lat.graph_arc, lat.frame
        gv = gtn.fsa.as_vec(g)
        assert torch.equal(lat.labels, gv.labels[ga])
        seq = lat.arc_fsa
        em = torch.where(lat.labels >= 0, lp[seq, fr.clamp(max=max(lp.shape[1] - 1, 0)), lat.labels.clamp(min=0)]
                         if lp.shape[1] else torch.zeros_like(lat.scores), torch.zeros_like(lat.scores))
        assert torch.allclose(lat.scores, gv.scores[ga] + em)
        assert bool((fr[lat.labels == -1] == lengths[seq[lat.labels == -1]]).all())
        assert bool((fr[lat.labels >= 0] < lengths[seq[lat.labels >= 0]]).all())
    # accessible and co-accessible: each non-start state has an entering arc, each non-final a leaving arc
    for m in lat:
        if m.num_states:
            ent = torch.zeros(m.num_states, dtype=torch.bool)
            lea = torch.zeros(m.num_states, dtype=torch.bool)
            ent[m.arcs[:, 1]] = True
            lea[m.arcs[:, 0]] = True
            assert bool(ent[1:].all()) and bool(lea[:-1].all())


def test_intersect_dense_gradients_match_fused():
    for seed in range(8):
        g, lp, lengths = random_case(seed, shared=seed % 2 == 1, B=3, T=4, C=3)
        grads = []
        for route in ("lattice", "fused"):
            sc = g.scores.detach().clone().requires_grad_(True)
            x = lp.clone().requires_grad_(True)
            gg = g.clone()
            gg.scores = sc
            d = gtn.DenseFsaVec(x, lengths)
            z = gtn.forward_score(gtn.intersect_dense(gg, d)) if route == "lattice" else gtn.dense_forward_score(gg, d)
            torch.where(torch.isfinite(z), z, torch.zeros_like(z)).sum().backward()
            grads.append((z.detach(), sc.grad, x.grad))
        (z1, s1, x1), (z2, s2, x2) = grads
        assert torch.allclose(z1, z2, rtol=1e-9, atol=1e-9)
        assert torch.allclose(s1, s2, atol=1e-9) and torch.allclose(x1, x2, atol=1e-9)


def test_intersect_dense_gradcheck():
    g, lp, lengths = random_case(3, B=2, T=3, C=3)
    sc = g.scores.detach().clone().requires_grad_(True)
    x = lp.clone().requires_grad_(True)

    def f(sc, x):
        gg = g.clone()
        gg.scores = sc
        lat = gtn.intersect_dense(gg, gtn.DenseFsaVec(x, lengths))
        return lat.scores

    assert torch.autograd.gradcheck(f, (sc, x))


def test_intersect_dense_keeps_aux_labels_and_attrs():
    topo = gtn.ctc_topo(3, dtype=torch.float64)
    topo.set_attr("tag", torch.arange(topo.num_arcs))
    lp = torch.randn(2, 3, 3, dtype=torch.float64).log_softmax(-1)
    lat = gtn.intersect_dense(topo, gtn.DenseFsaVec(lp, [3, 2]))
    assert torch.equal(lat.aux_labels, topo.aux_labels[lat.graph_arc])
    assert torch.equal(lat.tag, lat.graph_arc)
    # the standard topology is deterministic on its input: every token sequence has one path, so the forward
    # score against normalised emissions is log 1 = 0
    assert torch.allclose(gtn.forward_score(lat), torch.zeros(2, dtype=torch.float64), atol=1e-12)


def test_output_beam():
    g, lp, lengths = random_case(11, B=3, T=4, C=3)
    d = gtn.DenseFsaVec(lp, torch.tensor([4, 4, 4]))
    full = gtn.intersect_dense(g, d)
    best = gtn.dense_forward_score(g, d, log_semiring=False)
    narrow = gtn.intersect_dense(g, d, output_beam=0.0)
    wide = gtn.intersect_dense(g, d, output_beam=1e9)
    assert wide.num_arcs == full.num_arcs and narrow.num_arcs <= full.num_arcs
    # pruning never removes the best path
    assert torch.allclose(gtn.viterbi_score(narrow), best)
    assert torch.allclose(gtn.viterbi_score(full), best)
    # every kept path with beam 0 is a best path: its forward score is log(#best paths) + best
    fw = gtn.forward_score(narrow)
    assert bool((fw >= best - 1e-9).all())


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@settings(**SETTINGS)
@given(seed=st.integers(0, 2 ** 31 - 1), shared=st.booleans())
def test_viterbi_ties_follow_the_documented_rule(seed, shared):
    """Law with integer scores and emissions (ties everywhere): the dense Viterbi gradient, on both backends, is
    the one of viterbi_score on the lattice from intersect_dense (whose arcs come in (frame, graph arc) order):
    the library's one tie rule (each (frame, state) keeps its best entering arc with the lowest graph arc)."""
    g, lp, lengths = random_case(seed, shared=shared, B=3, T=4, C=3)
    g.scores = g.scores.detach().round()
    lp = lp.round()
    grads = []
    for route in ("lattice", "numba", "torch"):
        sc = g.scores.detach().clone().requires_grad_(True)
        x = lp.clone().requires_grad_(True)
        gg = g.clone()
        gg.scores = sc
        d = gtn.DenseFsaVec(x, lengths)
        z = (gtn.viterbi_score(gtn.intersect_dense(gg, d)) if route == "lattice"
             else gtn.dense_forward_score(gg, d, log_semiring=False, backend=route))
        torch.where(torch.isfinite(z), z, torch.zeros_like(z)).sum().backward()
        grads.append((z.detach(), sc.grad, x.grad))
    for z, s, x in grads[1:]:
        assert torch.equal(z, grads[0][0]) and torch.equal(s, grads[0][1]) and torch.equal(x, grads[0][2])


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(backend, dtype):
    """Half-precision emissions and scores: the float32 results of the same values, in the input dtype."""
    for seed in range(6):
        g, lp, lengths = random_case(seed, B=3, T=5, C=3, dtype=torch.float32)
        g = g.to(dtype)
        lp = lp.to(dtype)
        for log in (True, False):
            res = []
            for dt in (dtype, torch.float32):
                sc = g.scores.detach().to(dt).requires_grad_(True)
                x = lp.detach().to(dt).requires_grad_(True)
                gg = g.to(dt)
                gg.scores = sc
                z = gtn.dense_forward_score(gg, gtn.DenseFsaVec(x, lengths), log_semiring=log, backend=backend)
                torch.where(torch.isfinite(z), z, torch.zeros_like(z)).sum().backward()
                res.append((z.detach(), sc.grad, x.grad))
            (z, s, x), (z32, s32, x32) = res
            assert z.dtype == s.dtype == x.dtype == dtype
            assert torch.equal(z, z32.to(dtype)) and torch.equal(s, s32.to(dtype)) and torch.equal(x, x32.to(dtype))
    # and ctc_loss, which runs on the same frame loop
    lp = torch.randn(6, 2, 4).log_softmax(-1)
    got = gtn.ctc_loss(lp.to(dtype), torch.tensor([[1, 2], [3, 3]]), [6, 5], [2, 2], reduction="none", backend=backend)
    want = gtn.ctc_loss(lp.to(dtype).float(),
                        torch.tensor([[1, 2], [3, 3]]), [6, 5], [2, 2], reduction="none", backend=backend)
    assert got.dtype == dtype and torch.equal(got, want.to(dtype))
