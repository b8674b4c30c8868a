"""Laws of gtn.scoring against brute-force path enumeration and OpenFst (tests/strategies.py)."""
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gtn
from gtn import scoring
from strategies import (NEG_INF, arc_posteriors_oracle, best_paths_oracle, enumerate_paths, find_cycle_oracle,
                        forward_oracle, fsa_vecs, fsas, logsumexp, members, openfst_shortest_distance,
                        tie_rule_oracle, viterbi_oracle)

LAW = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
SMALL = dict(max_states=10, max_paths=60, max_fsas=3)


def close(a, b, tol=1e-9):
    """Equal, both -inf, or within tol (relative to max(1, |b|))."""
    a, b = (float(x.detach()) if torch.is_tensor(x) else float(x) for x in (a, b))
    if math.isinf(b) or math.isinf(a):
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(b))


def _require_numba():
    """numba is a dependency: a kernel that does not import is a broken install, not a reason to skip."""
    from gtn.kernels import scoring_numba
    assert scoring_numba.available(), "numba (a dependency of torch-gtn) does not import"


@pytest.fixture(params=["numba", "torch"])
def both_paths(request):
    """Run a test with the numba kernels and with the pure-torch DP."""
    if request.param == "numba":
        _require_numba()
    old = scoring.use_numba()
    scoring.use_numba(request.param == "numba")
    yield request.param
    scoring.use_numba(old)


# ------------------------------------------------------------------------------------------ brute-force laws
@LAW
@given(fsa_vecs(top_sorted=None, transducer=None, **SMALL))
def test_scores_equal_brute_force_and_batch_equals_members(v):
    fwd, vit = gtn.forward_score(v), gtn.viterbi_score(v)
    assert fwd.shape == vit.shape == (len(v),)
    assert not torch.isnan(fwd).any() and not torch.isnan(vit).any()
    for i, f in enumerate(members(v)):
        fo, vo = forward_oracle(f), viterbi_oracle(f)
        assert close(fwd[i], fo), (fwd[i], fo)  # forward = log-sum-exp over all paths
        assert close(vit[i], vo), (vit[i], vo)  # viterbi = max over paths
        assert float(vit[i]) <= float(fwd[i]) + 1e-12  # viterbi <= forward
        one_f, one_v = gtn.forward_score(f), gtn.viterbi_score(f)
        assert one_f.shape == () and one_v.shape == ()
        assert torch.equal(one_f, fwd[i]) and torch.equal(one_v, vit[i])  # batch = per-member, exactly


@LAW
@given(fsa_vecs(top_sorted=None, transducer=None, **SMALL), st.lists(st.floats(-3, 3), min_size=5, max_size=5))
def test_forward_gradient_equals_brute_force_posteriors(v, w):
    v.requires_grad_()
    wt = torch.tensor(w[:len(v)], dtype=v.dtype)
    (gtn.forward_score(v) * wt).sum().backward()
    g = v.scores.grad
    assert not torch.isnan(g).any()
    post = torch.cat([torch.tensor(arc_posteriors_oracle(f), dtype=torch.float64) for f in v])
    want = post * wt[v.arc_fsa]
    assert torch.allclose(g, want, atol=1e-9, rtol=1e-9), (g, want)
    assert torch.allclose(gtn.arc_posteriors(v), post, atol=1e-9, rtol=1e-9)


@LAW
@given(fsas(top_sorted=True, max_states=12, max_paths=100))
def test_posteriors_across_each_cut_sum_to_one(f):
    post = gtn.arc_posteriors(f)
    has_path = float(gtn.forward_score(f)) > NEG_INF
    src, dst = f.arcs[:, 0], f.arcs[:, 1]
    for k in range(f.num_states - 1):  # cut between states <= k and > k of a top-sorted FSA
        s = float(post[(src <= k) & (dst > k)].sum())
        assert abs(s - (1.0 if has_path else 0.0)) < 1e-9, (k, s)


@LAW
@given(fsa_vecs(top_sorted=None, transducer=None, attr=True, **SMALL))
def test_viterbi_path_is_a_best_path(v):
    v.requires_grad_()
    p = gtn.viterbi_path(v)
    vs = gtn.viterbi_score(v)
    assert isinstance(p, gtn.FsaVec) and len(p) == len(v)
    vs.sum().backward()
    grad = v.scores.grad.clone()
    v.scores.grad = None
    for i, (f, q) in enumerate(zip(v, p)):
        best = best_paths_oracle(f)
        if not best:
            assert q.num_states == 0 and q.num_arcs == 0 and float(vs[i].detach()) == NEG_INF
            assert bool((grad[v.arc_splits[i]:v.arc_splits[i + 1]] == 0).all())
            continue
        arcs = q.idx.tolist()  # the attribute followed the arc map: input arc of each path arc
        assert arcs in best  # a real path, with the best score
        assert q.num_states == len(arcs) + 1
        assert q.arcs[:, 0].tolist() == list(range(len(arcs))) and q.arcs[:, 1].tolist() == list(range(1, len(arcs) + 1))
        assert torch.equal(q.labels, f.labels[arcs]) and torch.equal(q.seg, f.seg[arcs])
        if f.aux_labels is not None:
            assert torch.equal(q.aux_labels, f.aux_labels[arcs])
        assert close(q.scores.sum(), vs[i], 1e-12)
        # the Viterbi gradient is the indicator of exactly this path
        ind = torch.zeros(f.num_arcs, dtype=v.dtype)
        ind[arcs] = 1
        assert torch.equal(grad[v.arc_splits[i]:v.arc_splits[i + 1]], ind)
    # the path's scores stay connected to the input's
    p.scores.sum().backward()
    assert torch.equal(v.scores.grad, grad)


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@LAW
@given(fsa_vecs(integer_scores=True, neg_inf=True, max_states=10, top_sorted=None, transducer=None),
       st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_viterbi_ties_follow_the_documented_rule(v, dtype):
    """Law with integer scores (ties everywhere): viterbi_path and the Viterbi gradient pick, on both
    backends, the best path whose arcs read backwards from the final state come first in arc order."""
    v = v.to(dtype)
    v.set_attr("k", torch.arange(v.num_arcs))  # follows the arc map: the input arc of each path arc
    for backend in ("numba", "torch"):
        x = v.detach().requires_grad_()
        p = gtn.viterbi_path(x, backend=backend)
        gtn.viterbi_score(x, backend=backend).sum().backward()
        for i, f in enumerate(v):
            want = tie_rule_oracle(best_paths_oracle(f))
            o = int(v.arc_splits[i])
            ind = torch.zeros(f.num_arcs, dtype=dtype)
            if want is not None:
                ind[want] = 1
                assert (p[i].k - o).tolist() == want, (backend, i)
            else:
                assert p[i].num_arcs == 0
            assert torch.equal(x.scores.grad[o:o + f.num_arcs], ind), (backend, i)


# ------------------------------------------------------------------------------------------ OpenFst cross-check
@LAW
@given(fsas(top_sorted=None, max_states=20, max_paths=10 ** 6, epsilon=True))
def test_agrees_with_openfst_log_and_tropical(f):
    fwd, vit = float(gtn.forward_score(f)), float(gtn.viterbi_score(f))
    o_log = openfst_shortest_distance(f, "log")  # log64 arcs, but OpenFst prints weights with 9 digits
    o_trop = openfst_shortest_distance(f, "tropical")  # float32 weights in OpenFst
    assert close(fwd, o_log, 1e-7), (fwd, o_log)
    assert close(vit, o_trop, 1e-5), (vit, o_trop)


def test_openfst_text_round_trip_scores():
    f = gtn.Fsa.from_str("0 1 1 0.5\n0 1 2 -1.5\n1 2 3 0.25\n0 2 4 -2\n2 3 -1 0.125\n3\n", dtype=torch.float64)
    g = gtn.Fsa.from_openfst(f.to_openfst(), dtype=torch.float64)
    assert close(gtn.forward_score(g), gtn.forward_score(f), 1e-12)
    assert close(gtn.viterbi_score(g), gtn.viterbi_score(f), 1e-12)
    want = logsumexp([0.5 + 0.25 + 0.125, -1.5 + 0.25 + 0.125, -2 + 0.125])
    assert close(gtn.forward_score(f), want, 1e-12)


# ------------------------------------------------------------------------------------------ gradcheck
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(fsa_vecs(max_fsas=2, neg_inf=False, no_path=False, max_states=7, max_paths=30, top_sorted=None))
def test_gradcheck_forward_and_viterbi(v):
    assume(bool((gtn.forward_score(v) > NEG_INF).all()))
    sc = v.scores.detach().clone().requires_grad_()

    def fwd(s):
        v.scores = s
        return gtn.forward_score(v)

    assert torch.autograd.gradcheck(fwd, (sc,), eps=1e-6, atol=1e-6)
    # Viterbi: only away from ties (best path ahead of the runner-up by more than the step)
    for f in v:
        scores = sorted((s for _, s in enumerate_paths(f)), reverse=True)
        assume(len(scores) < 2 or scores[0] - scores[1] > 1e-3)

    def vit(s):
        v.scores = s
        return gtn.viterbi_score(v)

    assert torch.autograd.gradcheck(vit, (sc,), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ numba vs torch
@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@LAW
@given(fsa_vecs(top_sorted=None, transducer=None, **SMALL), st.sampled_from([torch.float32, torch.float64]))
def test_numba_and_torch_paths_agree(v, dtype):
    _require_numba()
    v = v.to(dtype)
    old = scoring.use_numba()
    res = []
    try:
        for flag in (True, False):
            scoring.use_numba(flag)
            x = v.detach().requires_grad_()
            fwd = gtn.forward_score(x)
            (fwd * torch.arange(1, len(v) + 1, dtype=dtype)).sum().backward()
            vit = gtn.viterbi_score(x)
            res.append([fwd.detach(), x.scores.grad, vit.detach(), gtn.forward_scores(x), gtn.backward_scores(x),
                        gtn.forward_scores(x, log_semiring=False), gtn.backward_scores(x, log_semiring=False),
                        gtn.arc_posteriors(x), gtn.viterbi_path(x).arcs])
    finally:
        scoring.use_numba(old)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for a, b in zip(*res):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert not torch.isnan(a).any()
        assert torch.allclose(a.double(), b.double(), atol=tol, rtol=tol), (a, b)


# ------------------------------------------------------------------------------------------ plan builders
_PLAN_FIELDS = ("S", "A", "N", "valid", "start_pos", "final_pos", "order", "pos", "arc_fsa", "src_pos", "dst_pos",
                "fperm", "bperm", "f_src", "f_dst", "b_src", "b_dst")


def _assert_same_plan(pk, pt):
    """Every field of two plans is identical (values and dtypes), including the derived ones."""
    for name in _PLAN_FIELDS:
        a, b = getattr(pk, name), getattr(pt, name)
        if isinstance(a, int):
            assert a == b, name
        else:
            assert a.dtype == b.dtype and torch.equal(a, b), (name, a, b)
    assert pk._splits[0] == pt._splits[0]
    for a, b in zip(pk._splits[1:], pt._splits[1:]):
        assert torch.equal(a, b), (pk._splits, pt._splits)
    for lk, lt in zip(pk.levels(), pt.levels()):  # the torch DP's per-depth slices
        assert len(lk) == len(lt)
        for a, b in zip(lk, lt):
            assert a[:4] == b[:4] and torch.equal(a[4], b[4]) and torch.equal(a[5], b[5])
    for a, b in zip(pk.numba_arrays(), pt.numba_arrays()):  # kernel-made vs derived by torch
        assert a.dtype == b.dtype and (a == b).all()


def _kernel_plan(x):
    p = scoring._Plan(x, kernel=scoring._kernels(backend="numba"))
    assert p._numba is not None  # built by the kernel (the torch builder leaves the sweep arrays for later)
    return p


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@LAW
@given(fsa_vecs(top_sorted=None, transducer=None, max_states=12, max_fsas=4))
def test_plan_kernel_equals_torch_builder(v):
    """The one-pass numba plan builder gives exactly the torch builder's plan (and Kahn's levels)."""
    _require_numba()
    x = v.detach()  # a graph with its own cache
    pk = _kernel_plan(x)
    pt = scoring._Plan(v.detach(), use_kernel=False)
    assert pt._numba is None
    _assert_same_plan(pk, pt)
    from gtn.topology import _kahn_torch
    level, L = x._cache["kahn"]  # the kernel leaves Kahn's levels for state_batches / top_sort
    want = _kahn_torch(gtn.fsa.as_vec(v))
    assert torch.equal(level, want) and L == (int(want.max()) + 1 if want.numel() else 0)


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_plan_builders_agree_on_corner_cases():
    """One-state and empty members, arcs into the start state, a permuted numbering, an all-empty batch."""
    _require_numba()
    one = gtn.Fsa(torch.zeros(0, 3, dtype=torch.int64), num_states=1)
    empty = gtn.Fsa(torch.zeros(0, 3, dtype=torch.int64), num_states=0)
    # state 3 (no entering arcs, so depth 0) has an arc into the start state, whose depth is then 1
    back = gtn.Fsa([(0, 2, 1, 0.5), (1, 4, -1, 0.0), (2, 1, 3, -1.0), (2, 4, -1, 0.25), (3, 0, 2, 1.0)])
    lin = gtn.linear_fsa([1, 2, 3])
    for x in (one, empty, back, lin, gtn.FsaVec([one, back, empty, lin, one]), gtn.FsaVec([empty, empty])):
        _assert_same_plan(_kernel_plan(x.detach()), scoring._Plan(x.detach(), use_kernel=False))
    for flag in (True, False):  # and the scores through either builder
        old = scoring.use_numba()
        scoring.use_numba(flag)
        try:
            tot = gtn.forward_score(gtn.FsaVec([one, back, empty, lin]))
        finally:
            scoring.use_numba(old)
        want = math.log(math.exp(0.5 + 0.25) + math.exp(0.5 - 1.0 + 0.0))  # 0->2->4 and 0->2->1->4
        assert tot[0] == NEG_INF and tot[2] == NEG_INF and tot[3] == 0.0 and close(tot[1], want, 1e-6)


# ------------------------------------------------------------------------------------------ per-state scores
def _partial_path_scores(f):
    """Per state: the scores of all paths start -> state, and of all paths state -> final (plain DFS)."""
    n = f.num_states
    sc = f.scores.detach().double().tolist()
    out = [[] for _ in range(n)]
    for i, (s, d, _) in enumerate(f.arcs.tolist()):
        out[s].append((i, d))
    to_state = [[] for _ in range(n)]
    from_state = [[] for _ in range(n)]
    for q in range(n):
        stack = [(q, 0.0)]
        while stack:
            s, acc = stack.pop()
            if q == 0:
                to_state[s].append(acc)
            if s == n - 1:
                from_state[q].append(acc)
            for i, d in out[s]:
                stack.append((d, acc + sc[i] if sc[i] != NEG_INF else NEG_INF))
    return to_state, from_state


@LAW
@given(fsa_vecs(top_sorted=None, **SMALL), st.booleans())
def test_forward_and_backward_state_scores(v, log):
    a = gtn.forward_scores(v, log_semiring=log)
    b = gtn.backward_scores(v, log_semiring=log)
    tot = gtn.forward_score(v) if log else gtn.viterbi_score(v)
    assert a.shape == b.shape == (v.total_states,)
    for i, f in enumerate(v):
        s0 = int(v.state_splits[i])
        if f.num_states < 2:
            assert float(tot[i]) == NEG_INF
            continue
        assert close(a[s0 + f.num_states - 1], tot[i], 1e-12)  # alpha at the final state
        assert close(b[s0], tot[i], 1e-12)  # beta at the start state
        # alpha / beta of every state = the semiring sum over partial paths from the start / to the final
        sums = _partial_path_scores(f)
        red = logsumexp if log else (lambda xs: max(xs, default=NEG_INF))
        for q in range(f.num_states):
            assert close(a[s0 + q], red(sums[0][q]), 1e-9), (q, a[s0 + q], sums[0][q])
            assert close(b[s0 + q], red(sums[1][q]), 1e-9), (q, b[s0 + q], sums[1][q])
    # alpha + beta of a state <= total (the paths through a state are a subset)
    ok = (a > NEG_INF) & (b > NEG_INF)
    per_state_tot = tot[torch.repeat_interleave(torch.arange(len(v)), v.states_per_fsa)]
    assert bool(((a + b)[ok] <= per_state_tot[ok] + 1e-9).all())


# ------------------------------------------------------------------------------------------ edge cases
def test_no_path_gives_minus_inf_and_zero_grads():
    f = gtn.Fsa([(0, 1, 1, 0.5), (1, 2, 2, 1.0), (0, 2, 3, 2.0)], num_states=4)  # final 3 unreachable
    empty = gtn.Fsa(torch.zeros(0, 3, dtype=torch.int64), num_states=0)
    dead = gtn.Fsa([(0, 1, 1, float("-inf")), (1, 2, -1, 0.0)])  # the only path scores -inf
    good = gtn.Fsa([(0, 1, 1, 0.5), (1, 2, -1, 0.25)])
    v = gtn.FsaVec([f, empty, dead, good]).requires_grad_()
    for fn in (gtn.forward_score, gtn.viterbi_score):
        v.scores.grad = None
        t = fn(v)
        assert t[:3].tolist() == [NEG_INF] * 3 and close(t[3], 0.75, 1e-6)
        t.sum().backward()  # d(-inf)/d(score): zero, never NaN
        g = v.scores.grad
        assert not torch.isnan(g).any()
        assert g[:5].tolist() == [0.0] * 5 and g[5:].tolist() == [1.0, 1.0]
    for x in (f, empty, dead):
        assert float(gtn.forward_score(x)) == NEG_INF
        assert gtn.viterbi_path(x).num_states == 0
    assert gtn.arc_posteriors(v)[:5].tolist() == [0.0] * 5


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_extreme_scores(both_paths):
    # +-1e30 and -inf arcs: exact results, no NaN, no overflow to inf
    for dtype in (torch.float32, torch.float64):
        f = gtn.Fsa([(0, 1, 1, 1e30), (0, 1, 2, -1e30), (0, 1, 3, float("-inf")), (1, 2, -1, -1e30),
                     (0, 2, -1, 5.0)], dtype=dtype).requires_grad_()
        t = gtn.forward_score(f)
        # paths: 1e30 - 1e30 = 0, -2e30, -inf, and 5
        assert close(t, math.log1p(math.exp(5.0)), 1e-6) and t.dtype == dtype
        t.backward()
        p0 = 1 / (1 + math.exp(5.0))
        # arcs are sorted by source state: 0->1 (1e30), 0->1 (-1e30), 0->1 (-inf), 0->2 (5), 1->2 (-1e30)
        assert torch.allclose(f.scores.grad, torch.tensor([p0, 0.0, 0.0, 1 - p0, p0], dtype=dtype))
        g = gtn.Fsa([(0, 1, 1, 1e30), (1, 2, -1, 0.0)], dtype=dtype).requires_grad_()
        t = gtn.forward_score(g)
        assert float(t.detach()) == float(torch.tensor(1e30, dtype=dtype))
        t.backward()
        assert g.scores.grad.tolist() == [1.0, 1.0]
        h = gtn.Fsa([(0, 1, 1, -1e30), (0, 1, 2, -1e30), (1, 2, -1, 0.0)], dtype=dtype).requires_grad_()
        t = gtn.viterbi_score(h)
        t.backward()
        assert float(t.detach()) == float(torch.tensor(-1e30, dtype=dtype))
        assert h.scores.grad.tolist() == [1.0, 0.0, 1.0]  # tie: the lowest-numbered arc


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_cyclic_input_raises_naming_a_cycle_state(both_paths):
    f = gtn.Fsa([(0, 1, 1), (1, 2, 2), (2, 3, 3), (3, 1, 4), (3, 4, -1)])
    for fn in (gtn.forward_score, gtn.viterbi_score, gtn.viterbi_path, gtn.forward_scores, gtn.arc_posteriors):
        with pytest.raises(gtn.FsaError, match=r"state [123] lies on a cycle"):
            fn(f)
    g = gtn.Fsa([(0, 1, 1), (1, 2, -1)])
    with pytest.raises(gtn.FsaError, match=r"FSA 2 of the batch: state [123] lies on a cycle"):
        gtn.forward_score(gtn.FsaVec([g, g, f]))
    loop = gtn.Fsa([(0, 0, 1), (0, 1, -1)])
    with pytest.raises(gtn.FsaError, match=r"state 0 lies on a cycle"):
        gtn.viterbi_score(loop)


@LAW
@given(fsa_vecs(acyclic=False, force_cycle=True, max_states=10))
def test_cyclic_random_raises(v):
    cyc = [(i, find_cycle_oracle(f)) for i, f in enumerate(v)]
    assume(any(c for _, c in cyc))
    with pytest.raises(gtn.FsaError) as e:
        gtn.forward_score(v)
    msg = str(e.value)
    i = int(msg.split("FSA ")[1].split(" ")[0])
    s = int(msg.split("state ")[1].split(" ")[0])
    assert s in dict(cyc)[i]


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_device_and_double_scores(dtype, both_paths):
    f = gtn.Fsa([(0, 1, 1, 0.1), (0, 1, 2, 0.7), (1, 2, 3, -0.2), (0, 2, 4, 0.3), (2, 3, -1, 0.05)],
                dtype=dtype).requires_grad_()
    v = gtn.FsaVec([f, f])
    for fn in (gtn.forward_score, gtn.viterbi_score):
        t = fn(f)
        assert t.dtype == dtype and t.device == f.device and t.shape == ()
        assert fn(v).shape == (2,)
        d = fn(f, use_double_scores=True)
        assert d.dtype == torch.float64
        want = fn(f.detach().double())
        assert close(d, want, 1e-12)
        f.scores.grad = None
        d.backward()
        assert f.scores.grad.dtype == dtype
    assert gtn.forward_scores(f).dtype == dtype and gtn.arc_posteriors(f).dtype == dtype
    assert gtn.forward_scores(f, use_double_scores=True).dtype == torch.float64
    assert gtn.viterbi_path(f).scores.dtype == dtype


def test_double_scores_more_accurate_for_long_float32_chain():
    # 3000 arcs of 0.1 (not exact in float32): float64 accumulation stays close to the exact sum
    n = 3000
    f = gtn.linear_fsa([1] * n, torch.full((n,), 0.1, dtype=torch.float32))
    exact = float(torch.full((n,), 0.1, dtype=torch.float32).double().sum())
    assert abs(float(gtn.forward_score(f, use_double_scores=True)) - exact) < 1e-6
    assert abs(float(gtn.viterbi_score(f, use_double_scores=True)) - exact) < 1e-6
    assert abs(float(gtn.forward_score(f)) - exact) > 1e-5  # float32 accumulation drifts


def test_plan_is_cached():
    f = gtn.linear_fsa([1, 2, 3])
    gtn.forward_score(f)
    plan = f._cache["score_plan"]
    f.scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(gtn.forward_score(f)) == 10.0  # new scores, same topology: the cached plan is reused
    assert f._cache["score_plan"] is plan


def test_readme_example():
    a = gtn.Fsa.from_str("0 1 1 0.5\n0 1 2 1.5\n1 2 -1 0.0\n2\n").requires_grad_()
    b = gtn.Fsa.from_str("0 1 3 -1.0\n1 2 4 0.25\n1 2 5 0.75\n2 3 -1 0.0\n3\n").requires_grad_()
    scores = gtn.forward_score(gtn.FsaVec([a, b]))
    scores.sum().backward()
    assert torch.allclose(scores, torch.tensor([math.log(math.exp(0.5) + math.exp(1.5)),
                                                -1.0 + math.log(math.exp(0.25) + math.exp(0.75))]))
    assert torch.allclose(a.scores.grad[:2].sum(), torch.tensor(1.0))
    assert a.scores.grad[1] > a.scores.grad[0]


# ------------------------------------------------------------------------------------------ linear_fsa
def test_linear_fsa():
    f = gtn.linear_fsa([3, 1, 2])
    assert isinstance(f, gtn.Fsa) and f.num_states == 5
    assert f.arcs.tolist() == [[0, 1, 3], [1, 2, 1], [2, 3, 2], [3, 4, -1]]
    assert float(gtn.forward_score(f)) == 0.0
    s = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    g = gtn.linear_fsa([3, 1, 2], s)
    t = gtn.forward_score(g)
    t.backward()
    assert float(t.detach()) == 3.5 and s.grad.tolist() == [1.0, 1.0, 1.0]
    v = gtn.linear_fsa([[1, 2], [], [4]])
    assert isinstance(v, gtn.FsaVec) and v.num_states.tolist() == [4, 2, 3]
    assert gtn.forward_score(v).tolist() == [0.0, 0.0, 0.0]
    assert gtn.linear_fsa([1], [0.5, 0.25]).scores.tolist() == [0.5, 0.25]
    with pytest.raises(gtn.FsaError):
        gtn.linear_fsa([1, -1])
    with pytest.raises(gtn.FsaError):
        gtn.linear_fsa([1, 2], [0.5])
    with pytest.raises(gtn.FsaError, match=r"labels\[1\] is 2"):
        gtn.linear_fsa([[1], 2])


@LAW
@given(st.lists(st.integers(0, 9), max_size=12))
def test_linear_fsa_accepts_exactly_its_labels(labels):
    f = gtn.linear_fsa(labels)
    paths = enumerate_paths(f)
    assert len(paths) == 1
    assert [int(f.labels[i]) for i in paths[0][0]] == labels + [-1]
    p = gtn.viterbi_path(f)
    assert torch.equal(p.arcs, f.arcs)


# ------------------------------------------------------------------------------------------ half precision
@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@LAW
@given(fsa_vecs(top_sorted=None, transducer=None, dtype=torch.float32, **SMALL),
       st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_precision_accumulates_in_float32(v, dtype):
    """Law: half-precision scores give, on both backends, the float32 results of the same (rounded) scores,
    cast to the input dtype: totals, gradients, per-state scores, posteriors and the best path."""
    h = v.to(dtype)
    ref = h.to(torch.float32)
    for backend in ("numba", "torch"):
        x, r = h.detach().requires_grad_(), ref.detach().requires_grad_()
        for fn in (gtn.forward_score, gtn.viterbi_score):
            got, want = fn(x, backend=backend), fn(r, backend=backend)
            assert got.dtype == dtype and torch.equal(got, want.to(dtype)), (backend, fn)
            got.sum().backward(), want.sum().backward()
            assert x.scores.grad.dtype == dtype and torch.equal(x.scores.grad, r.scores.grad.to(dtype))
            x.scores.grad = r.scores.grad = None
        for fn in (gtn.forward_scores, gtn.backward_scores, gtn.arc_posteriors):
            got, want = fn(x, backend=backend), fn(r, backend=backend)
            assert got.dtype == dtype and torch.equal(got, want.to(dtype)), (backend, fn)
        assert torch.equal(gtn.viterbi_path(x, backend=backend).arcs, gtn.viterbi_path(r, backend=backend).arcs)
        assert gtn.forward_score(x, use_double_scores=True, backend=backend).dtype == torch.float64
