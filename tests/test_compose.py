"""Tests of gtn.compose / gtn.intersect / gtn.constrained_forward_score.

Oracle: OpenFst (pywrapfst) ``compose`` with its default (sequence) filter, on random transducers with
epsilons on both sides. k2's final ``-1`` arcs become a fresh ordinary label ``FINAL`` on both sides (and the
last state the only OpenFst final state), so the ``-1`` arcs match each other exactly as in gtn and only the
real epsilons go through OpenFst's filter. Costs are ``-scores``.
"""
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import gtn
from gtn.compose import _coaccessible_torch
from gtn.fsa import validate
from strategies import NEG_INF, enumerate_paths, fsa_vecs, fsas, logsumexp, members, tie_rule_oracle

import pywrapfst as fst  # OpenFst, the oracle: from pynini, in the "test" extra

torch.set_num_threads(1)
N = 200  # examples per law
SETTINGS = dict(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck))
FINAL = 99  # OpenFst label standing for k2's -1


# ---------------------------------------------------------------------------------------------------- oracles
def to_fst(f: gtn.Fsa, arc_type: str):
    """pywrapfst VectorFst of ``f`` (-1 -> FINAL, costs = -scores; -inf arcs left out: OpenFst's zero)."""
    wt = {"log64": "log64", "standard": "tropical"}[arc_type]
    o = fst.VectorFst(arc_type=arc_type)
    n = f.num_states
    for _ in range(n):
        o.add_state()
    if n:
        o.set_start(0)
        o.set_final(n - 1, fst.Weight.one(wt))
    olab = (f.aux_labels if f.aux_labels is not None else f.labels).tolist()
    for (s, d, l), ol, w in zip(f.arcs.tolist(), olab, f.scores.detach().double().tolist()):
        if w == NEG_INF:
            continue
        m = lambda x: FINAL if x == -1 else x  # noqa: E731
        o.add_arc(s, fst.Arc(m(l), m(ol), fst.Weight(wt, -w), d))
    return o


def fst_total(o, wt: str) -> float:
    """Total weight of an OpenFst result, as a score (-inf when empty)."""
    if o.num_states() == 0 or o.start() == -1:
        return NEG_INF
    d = fst.shortestdistance(o, reverse=True, delta=1e-12)  # cyclic results: converge tightly
    if len(d) == 0:
        return NEG_INF
    return -float(str(d[o.start()]))


def fst_compose(a: gtn.Fsa, b: gtn.Fsa, arc_type: str):
    A, B = to_fst(a, arc_type), to_fst(b, arc_type)
    A.arcsort("olabel")
    B.arcsort("ilabel")
    return fst.compose(A, B)


def fst_count_paths(o) -> int:
    """Successful paths of an acyclic OpenFst result (plain DP with memo)."""
    if o.num_states() == 0 or o.start() == -1:
        return 0
    memo = {}
    zero = fst.Weight.zero(o.weight_type())

    def count(s):
        if s not in memo:
            c = 0 if o.final(s) == zero else 1
            for arc in o.arcs(s):
                c += count(arc.nextstate)
            memo[s] = c
        return memo[s]
    return count(o.start())


def count_paths(f: gtn.Fsa) -> int:
    """Successful paths of an acyclic gtn result (DP in the counting semiring)."""
    n = f.num_states
    if n < 2:
        return 0
    out = defaultdict(list)
    for s, d, _ in f.arcs.tolist():
        out[s].append(d)
    memo = {n - 1: 1}

    def count(s):
        if s not in memo:
            memo[s] = sum(count(d) for d in out[s])
        return memo[s]
    return count(0)


def real_total(f: gtn.Fsa) -> float:
    """Forward score of a possibly cyclic FSA by a linear solve in the real semiring (needs a convergent
    geometric series: tests keep scores low). ``log(((I - W)^-1)[0, final])``."""
    n = f.num_states
    if n < 2:
        return NEG_INF
    W = np.zeros((n, n))
    for (s, d, _), w in zip(f.arcs.tolist(), f.scores.detach().double().tolist()):
        W[s, d] += math.exp(w)
    x = np.linalg.solve(np.eye(n) - W, np.eye(n)[:, n - 1])
    return math.log(x[0]) if x[0] > 0 else NEG_INF


def tropical_total(f: gtn.Fsa) -> float:
    """Best path score of a possibly cyclic FSA whose scores are all <= 0 (Bellman-Ford)."""
    n = f.num_states
    if n < 2:
        return NEG_INF
    best = [NEG_INF] * n
    best[0] = 0.0
    arcs = list(zip(f.arcs.tolist(), f.scores.detach().double().tolist()))
    for _ in range(n):
        for (s, d, _), w in arcs:
            if best[s] + w > best[d]:
                best[d] = best[s] + w
    return best[n - 1]


def close(x: float, y: float, tol: float = 1e-6) -> bool:
    if x == NEG_INF or y == NEG_INF:
        return x == y
    return abs(x - y) <= tol * max(1.0, abs(x), abs(y))


def lowered(f: gtn.Fsa, lo: float = -4.0, hi: float = -2.0) -> gtn.Fsa:
    """The same graph with scores mapped into [lo, hi] (keeps -inf): cyclic totals then converge."""
    s = f.scores.detach()
    fin = torch.isfinite(s)
    span = s[fin].abs().max() if bool(fin.any()) else torch.tensor(1.0, dtype=s.dtype)
    g = f.clone()
    g.scores = torch.where(fin, lo + (hi - lo) * (s.abs() / span.clamp(min=1e-9)), s)
    return g


def both_impls(a, b, **kw):
    """Compose with the torch reference and the numba kernel; they must agree exactly."""
    c_t = gtn.compose(a, b, backend="torch", **kw)
    c_n = gtn.compose(a, b, backend="numba", **kw)
    if kw.get("return_arc_maps"):
        assert torch.equal(c_t[1], c_n[1]) and torch.equal(c_t[2], c_n[2])
        assert c_t[0] == c_n[0]
    else:
        assert c_t == c_n
    return c_n


small = dict(max_states=7, num_labels=3, max_paths=30)
transducers = fsas(transducer=None, epsilon=True, **small)


# ---------------------------------------------------------------------------------------------------- laws
@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@settings(**SETTINGS)
@given(transducers, transducers)
def test_matches_openfst_acyclic(a, b):
    """Forward (log) and Viterbi (tropical) scores and the number of successful paths equal OpenFst's
    compose on random acyclic transducers/acceptors with epsilons on both sides; torch == numba."""
    c = both_impls(a, b)
    validate(c)
    assert c.is_acceptor == (a.is_acceptor and b.is_acceptor)
    o_log = fst_compose(a, b, "log64")
    assert close(float(gtn.forward_score(c)), fst_total(o_log, "log64"))
    assert close(float(gtn.viterbi_score(c)), fst_total(fst_compose(a, b, "standard"), "tropical"), 1e-4)
    # path counts: -inf arcs are OpenFst zeros (left out there), so count on the finite part
    fin = lambda f: gtn.Fsa(f.arcs[torch.isfinite(f.scores)], f.scores[torch.isfinite(f.scores)],  # noqa: E731
                            None if f.aux_labels is None else f.aux_labels[torch.isfinite(f.scores)],
                            num_states=f.num_states)
    assert count_paths(gtn.compose(fin(a), fin(b))) == fst_count_paths(fst_compose(fin(a), fin(b), "log64"))
    # trimmed: every state accessible and co-accessible; empty when there is no common path
    if c.num_states:
        assert c.num_arcs > 0
        assert bool(_coaccessible_torch(c.src_global, c.dst_global, c.final_states, c.num_states).all())


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@settings(**SETTINGS)
@given(fsas(transducer=None, epsilon=True, acyclic=False, force_cycle=True, **small),
       fsas(transducer=None, epsilon=True, acyclic=False, **small))
def test_matches_openfst_cyclic(a, b):
    """Cycles (epsilon cycles included) in both inputs: the total weight of the (possibly cyclic) result, by
    a linear solve (log) and Bellman-Ford (tropical), equals OpenFst's shortestdistance of its compose."""
    a, b = lowered(a), lowered(b)
    c = both_impls(a, b)
    validate(c)
    assert close(real_total(c), fst_total(fst_compose(a, b, "log64"), "log64"), 1e-7)
    assert close(tropical_total(c), fst_total(fst_compose(a, b, "standard"), "tropical"), 1e-4)


@settings(**SETTINGS)
@given(transducers, transducers, transducers)
def test_associative(a, b, c):
    """(a o b) o c and a o (b o c) have the same forward score."""
    left = gtn.forward_score(gtn.compose(gtn.compose(a, b), c))
    right = gtn.forward_score(gtn.compose(a, gtn.compose(b, c)))
    assert close(float(left), float(right))


def strings(f: gtn.Fsa):
    """Label string (epsilons and -1 dropped) -> list of path scores, by brute force."""
    out = defaultdict(list)
    lab = f.labels.tolist()
    for path, score in enumerate_paths(f):
        out[tuple(lab[i] for i in path if lab[i] > 0)].append(score)
    return out


@settings(**SETTINGS)
@given(fsas(epsilon=True, **small))
def test_intersect_self_doubles(a):
    """intersect(a, a) pairs the paths of a with equal label strings: its forward score is
    logsumexp over strings x of 2 * logsumexp(paths of x), and its Viterbi score is 2 * viterbi(a) (the best
    path paired with itself) — for any acceptor, epsilons and several paths per string included."""
    c = gtn.intersect(a, a)
    by_string = strings(a)
    want = logsumexp(2 * logsumexp(v) for v in by_string.values())
    assert close(float(gtn.forward_score(c)), want)
    want_v = 2 * max((max(v) for v in by_string.values()), default=NEG_INF)
    assert close(float(gtn.viterbi_score(c)), want_v)


@settings(**SETTINGS)
@given(transducers, st.lists(st.integers(1, 3), max_size=3), st.booleans())
def test_project_then_linear_selects(t, y, output_side):
    """compose(project(t, side), linear_fsa(y)) keeps exactly the paths of t whose (epsilon-free) label
    string on that side is y: its forward score is their logsumexp (brute force), and
    constrained_forward_score says the same."""
    side = "output" if output_side else "input"
    p = gtn.project(t, side)
    lin = gtn.linear_fsa(y, dtype=t.dtype)
    c = gtn.compose(p, lin)
    lab = (t.aux_labels if output_side and t.aux_labels is not None else t.labels).tolist()
    want = logsumexp(s for path, s in enumerate_paths(t) if [lab[i] for i in path if lab[i] > 0] == list(y))
    assert close(float(gtn.forward_score(c)), want)
    assert close(float(gtn.constrained_forward_score(p, lin)), want)


@settings(**dict(SETTINGS, max_examples=N))
@given(fsas(transducer=True, epsilon=True, neg_inf=False, **small),
       fsas(transducer=None, epsilon=True, neg_inf=False, **small))
def test_gradcheck(a, b):
    """d forward_score(compose(a, b)) / d scores of both inputs passes gradcheck (float64)."""
    sa, sb = a.scores.detach().clone(), b.scores.detach().clone()

    def f(xa, xb):
        a2, b2 = a.clone(), b.clone()
        a2.scores, b2.scores = xa, xb
        return gtn.forward_score(gtn.compose(a2, b2))
    xa, xb = sa.requires_grad_(), sb.requires_grad_()
    out = f(xa, xb)
    if out == NEG_INF:  # no common path: finite differences are undefined; the gradient must be zero
        out.backward()
        assert not bool(xa.grad.any()) and not bool(xb.grad.any())
        return
    torch.autograd.gradcheck(f, (xa, xb), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@settings(**SETTINGS)
@given(fsa_vecs(transducer=None, epsilon=True, acyclic=False, attr=True, min_fsas=2, max_fsas=3, **small),
       st.data())
def test_batched_equals_per_member(va, data):
    """FsaVec o FsaVec pairwise, Fsa o FsaVec and FsaVec o Fsa give, member by member, exactly the
    composition of the members (structure, labels, scores, attributes); torch == numba on batches."""
    k = len(va)
    vb = data.draw(fsa_vecs(transducer=None, epsilon=True, acyclic=False, min_fsas=k, max_fsas=k, **small))
    one = data.draw(fsas(transducer=None, epsilon=True, acyclic=False, **small))
    r = both_impls(va, vb)
    assert isinstance(r, gtn.FsaVec) and len(r) == k
    for i in range(k):
        assert r[i] == gtn.compose(va[i], vb[i])
    r = gtn.compose(one, vb)
    assert len(r) == k and all(r[i] == gtn.compose(one, vb[i]) for i in range(k))
    r = gtn.compose(va, one, backend="torch")
    assert len(r) == k and all(r[i] == gtn.compose(va[i], one) for i in range(k))


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@settings(**SETTINGS)
@given(fsas(transducer=None, epsilon=True, acyclic=False, attr=True, **small),
       fsas(transducer=None, epsilon=True, acyclic=False, attr=True, **small))
def test_arc_maps_and_attributes(a, b):
    """Scores are the sums of the mapped input scores; labels come from a (input side) and b (output side);
    attributes follow a's arc map (a's 'seg', 'idx') and b's for the names a lacks ('b_only')."""
    b = b.clone()
    b.set_attr("b_only", torch.arange(b.num_arcs) + 100)
    c, am, bm = both_impls(a, b, return_arc_maps=True)
    assert torch.equal(c.scores, gtn.index_arcs(a.scores, am, 0.0) + gtn.index_arcs(b.scores, bm, 0.0))
    assert torch.equal(c.attrs["idx"], gtn.index_arcs(a.attrs["idx"], am, 0))
    assert torch.equal(c.attrs["seg"], gtn.index_arcs(a.attrs["seg"], am, 0))
    assert torch.equal(c.attrs["b_only"], gtn.index_arcs(b.attrs["b_only"], bm, 0))
    assert torch.equal(c.labels, gtn.index_arcs(a.labels, am, 0))
    b_out = b.aux_labels if b.aux_labels is not None else b.labels
    a_out = a.aux_labels if a.aux_labels is not None else a.labels
    if c.aux_labels is not None:
        assert torch.equal(c.aux_labels, gtn.index_arcs(b_out, bm, 0))
    # each arc is a match (same label), a alone on an output epsilon, or b alone on an input epsilon
    both = (am >= 0) & (bm >= 0)
    assert torch.equal(a_out[am[both]], b.labels[bm[both]])
    assert bool((a_out[am[(am >= 0) & (bm < 0)]] == 0).all())
    assert bool((b.labels[bm[(am < 0) & (bm >= 0)]] == 0).all())
    assert bool(((am >= 0) | (bm >= 0)).all())


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@settings(**SETTINGS)
@given(fsa_vecs(transducer=None, epsilon=True, acyclic=False, min_fsas=1, max_fsas=3, **small),
       fsas(transducer=None, epsilon=True, acyclic=False, **small))
def test_kernel_hash_and_search_paths(va, b):
    """The kernel's fallbacks for big inputs — a hash table of pairs instead of the dense table, binary search
    of b's labels instead of the (state, label) table — give the same result as the torch reference."""
    import sys
    mod = sys.modules["gtn.compose"]
    old = mod._DENSE_MAX, mod._TABLE_MAX
    try:
        mod._DENSE_MAX, mod._TABLE_MAX = 0, 0
        got = gtn.compose(va, b, backend="numba")
    finally:
        mod._DENSE_MAX, mod._TABLE_MAX = old
    assert got == gtn.compose(va, b, backend="torch")


@settings(**SETTINGS)
@given(fsas(transducer=None, acyclic=False, **small))
def test_coaccessible_kernel_matches_torch(g):
    """The numba co-accessibility pre-pass (the reachability search shared with gtn.connect) equals the torch
    reference."""
    from gtn.compose import _coaccessible
    from gtn.kernels import compose_numba
    ref = _coaccessible_torch(g.src_global, g.dst_global, g.final_states, g.num_states)
    got = _coaccessible(g, compose_numba)
    assert torch.equal(ref, got)


# ---------------------------------------------------------------------------------------------------- examples
@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_epsilon_no_duplicate_paths():
    """a: x:eps then eps:y ; b: eps then y. OpenFst's filter gives exactly one path per pair of paths."""
    a = gtn.Fsa.from_str("0 1 1 0 0.5\n1 2 0 2 0.25\n2 3 -1 -1 0\n3", acceptor=False)
    b = gtn.Fsa.from_str("0 1 0 1.0\n1 2 2 2.0\n2 3 -1 0\n3")
    for impl in ("torch", "numba"):
        c = gtn.compose(a, b, backend=impl)
        assert count_paths(c) == 1
        assert float(gtn.forward_score(c)) == pytest.approx(3.75)
        assert c.to_str() == gtn.compose(a, b, backend="numba").to_str()


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_empty_result():
    for impl in ("torch", "numba"):
        c = gtn.intersect(gtn.linear_fsa([1, 2]), gtn.linear_fsa([1, 3]), backend=impl)
        assert c.num_states == 0 and c.num_arcs == 0
        validate(c)
        assert float(gtn.forward_score(c)) == NEG_INF
        v = gtn.intersect(gtn.linear_fsa([[1], [2]]), gtn.linear_fsa([2]), backend=impl)
        assert v.num_states.tolist() == [0, 3]
        fs = gtn.forward_score(v)
        assert fs[0] == NEG_INF and fs[1] == 0
    # empty inputs
    e = gtn.Fsa(torch.zeros(0, 3, dtype=torch.int64), num_states=0)
    assert gtn.compose(e, gtn.linear_fsa([1])).num_states == 0
    assert gtn.compose(gtn.linear_fsa([1]), e, backend="torch").num_states == 0


def test_empty_gradient_is_zero():
    a = gtn.linear_fsa([1, 2], dtype=torch.float64).requires_grad_()
    s = gtn.constrained_forward_score(a, gtn.linear_fsa([2]))
    assert s == NEG_INF
    s.backward()
    assert torch.equal(a.scores.grad, torch.zeros(3, dtype=torch.float64))


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_cyclic_grammar_lattice():
    """An acyclic lattice against a cyclic bigram-like grammar (the benchmark's shape), with a known total."""
    lat = gtn.Fsa.from_str("0 1 1 0.0\n0 1 2 0.0\n1 2 1 0.0\n1 2 2 0.0\n2 3 -1 0.0\n3")
    g = gtn.Fsa.from_str("0 0 1 0.0\n0 0 2 0.0\n0 1 -1 0.0\n1")
    for impl in ("torch", "numba"):
        c = gtn.intersect(lat, g, backend=impl)
        assert count_paths(c) == 4
        assert float(gtn.forward_score(c)) == pytest.approx(math.log(4))


def test_transducer_chain_example():
    """Labels: a's input side and b's output side; acceptor o transducer gives a transducer."""
    a = gtn.linear_fsa([1, 2])
    t = gtn.Fsa.from_str("0 0 1 7 0.5\n0 0 2 8 0.25\n0 1 -1 -1 0\n1", acceptor=False)
    c = gtn.compose(a, t)
    assert not c.is_acceptor
    assert c.to_str() == "0 1 1 7 0.5\n1 2 2 8 0.25\n2 3 -1 -1 0.0\n3\n"


def test_bad_input():
    t = gtn.Fsa.from_str("0 1 1 2 0\n1 2 -1 -1 0\n2", acceptor=False)
    with pytest.raises(gtn.FsaError, match="transducer"):
        gtn.intersect(t, gtn.linear_fsa([1]))
    with pytest.raises(gtn.FsaError, match="a has 2 FSAs, b has 3"):
        gtn.compose(gtn.linear_fsa([[1], [2]]), gtn.linear_fsa([[1], [2], [3]]))
    with pytest.raises(gtn.FsaError, match="Fsa or FsaVec"):
        gtn.compose("0 1 1 0", t)
    with pytest.raises(gtn.FsaError, match="compose: backend must be 'auto', 'numba' or 'torch', got 'cuda'"):
        gtn.compose(t, t, backend="cuda")


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_impl_is_a_deprecated_alias_of_backend():
    a, b = gtn.linear_fsa([1, 2]), gtn.linear_fsa([1, 2])
    with pytest.warns(DeprecationWarning, match="impl= is deprecated, use backend="):
        c = gtn.compose(a, b, impl="torch")
    assert c == gtn.compose(a, b, backend="torch")
    with pytest.warns(DeprecationWarning):
        assert gtn.intersect(a, b, impl="torch") == c
    with pytest.warns(DeprecationWarning), pytest.raises(gtn.FsaError, match="disagree"):
        gtn.compose(a, b, backend="numba", impl="torch")
    with pytest.warns(DeprecationWarning), pytest.raises(gtn.FsaError, match="backend must be"):
        gtn.compose(a, b, impl="cuda")


def test_dtype_promotion_and_grad_flow():
    a = gtn.linear_fsa([1, 2], scores=[0.5, 0.25], dtype=torch.float32).requires_grad_()
    b = gtn.Fsa.from_str("0 0 1 0.1\n0 0 2 0.2\n0 1 -1 0\n1", dtype=torch.float64).requires_grad_()
    c = gtn.intersect(a, b)
    assert c.dtype == torch.float64
    gtn.forward_score(c).backward()
    assert torch.allclose(a.scores.grad, torch.ones(3))
    assert b.scores.grad.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_bigger_lattice_all_paths_agree():
    """A lattice (20 levels x 20 states, fan-out 3) against a cyclic bigram grammar: the torch reference, the
    kernel with its dense pair table, and the kernel with a growing hash table (rehashed several times) and
    binary search give the same FSA, and the forward score equals OpenFst's."""
    import random
    import sys
    r = random.Random(1)
    L, W, K, V = 20, 20, 3, 8
    F = 1 + L * W
    lat = [(0, 1 + j, r.randint(1, V), r.uniform(-1, 1)) for j in range(W)]
    for lv in range(L - 1):
        for j in range(W):
            for _ in range(K):
                lat.append((1 + lv * W + j, 1 + (lv + 1) * W + r.randrange(W), r.randint(0, V), r.uniform(-1, 1)))
    lat += [(1 + (L - 1) * W + j, F, -1, 0.0) for j in range(W)]
    g = [(p, q, q, r.uniform(-2, 0)) for p in range(V + 1) for q in range(1, V + 1)]
    g += [(p, p, 0, -3.0) for p in range(1, V + 1)]  # epsilon self-loops: b alone may move (and cycle)
    g += [(p, V + 1, -1, 0.0) for p in range(1, V + 1)]
    A = gtn.Fsa([t[:3] for t in lat], torch.tensor([t[3] for t in lat], dtype=torch.float64), num_states=F + 1)
    G = gtn.Fsa([t[:3] for t in g], torch.tensor([t[3] for t in g], dtype=torch.float64), num_states=V + 2)
    ref = gtn.compose(A, G, backend="torch")
    assert gtn.compose(A, G, backend="numba") == ref
    mod = sys.modules["gtn.compose"]
    old = mod._DENSE_MAX, mod._TABLE_MAX
    try:
        mod._DENSE_MAX, mod._TABLE_MAX = 0, 0
        assert gtn.compose(A.clone(), G.clone(), backend="numba") == ref
    finally:
        mod._DENSE_MAX, mod._TABLE_MAX = old
    assert ref.num_states > 1000  # enough pairs for the hash table to grow from 1024 slots (twice)
    assert close(real_total(ref), fst_total(fst_compose(A, G, "log64"), "log64"), 1e-7)


# ---------------------------------------------------------------------------------------------- compose_score
def _same(x: torch.Tensor, y: torch.Tensor, tol: float = 1e-9) -> bool:
    """Equal scores, -inf where the other is -inf."""
    fin = torch.isfinite(y)
    return torch.equal(torch.isfinite(x), fin) and bool(((x - y)[fin].abs() <= tol * (1 + y[fin].abs())).all())


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(fsa_vecs(max_fsas=4, max_states=9, top_sorted=True, epsilon=False, attr=True),
       fsas(max_states=7, acyclic=False, epsilon=False), st.booleans())
def test_compose_score_fused_equals_composing_then_scoring(a, b, b_attr):
    """Law: the fused product (no composition built) gives forward_score / viterbi_score of compose(a, b), and
    viterbi_path of it (labels, scores, a's and b's attributes), for epsilon-free acyclic top-sorted a and any
    epsilon-free b (cycles included)."""
    if b_attr:
        b.set_attr("w", torch.arange(b.num_arcs, dtype=torch.int64))
    c = gtn.compose(a, b, backend="torch")
    assert _same(gtn.compose_score(a, b, backend="numba"), gtn.forward_score(c))
    vit = gtn.viterbi_score(c)
    score, path = gtn.compose_score(a, b, log_semiring=False, return_path=True, backend="numba")
    assert _same(score, vit)
    ref = gtn.viterbi_path(c)
    assert torch.equal(path.arc_splits, ref.arc_splits) and torch.equal(path.arcs, ref.arcs)
    assert torch.equal(path.scores, ref.scores)
    for k in ("seg", "idx") + (("w",) if b_attr else ()):
        assert torch.equal(getattr(path, k), getattr(ref, k))
    # the default backend takes the kernel here (the torch route under GTN_NO_NUMBA=1) and agrees with it
    assert _same(gtn.compose_score(a, b, log_semiring=False), score)
    # gradients (both inputs' scores): the forward score's are the composition's arc posteriors summed onto the
    # arcs that make each composed arc; the Viterbi score's are 1 on the best path's arcs
    w = torch.rand(len(a), dtype=torch.float64) + 0.5  # distinct weights per member: catches a mixed-up member
    for log_semiring in (True, False):
        grads = []
        for fused in (True, False):
            x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
            if fused:
                z = gtn.compose_score(x, y, log_semiring=log_semiring, backend="numba")
            else:
                c = gtn.compose(x, y, backend="torch")
                z = gtn.forward_score(c) if log_semiring else gtn.viterbi_score(c)
            (torch.where(torch.isfinite(z), z, torch.zeros_like(z)) * w).sum().backward()
            grads.append((x.scores.grad, y.scores.grad))
        (ga, gb), (ra, rb) = grads
        assert torch.allclose(ga, ra, atol=1e-9) and torch.allclose(gb, rb, atol=1e-9), log_semiring


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_compose_score_falls_back_where_the_kernel_does_not_apply():
    """Outside the kernel's conditions the default backend composes (same results as composing by hand), and
    backend='numba' refuses with the reason."""
    lin = gtn.linear_fsa([1, 2], torch.tensor([0.5, -0.25], dtype=torch.float64))
    b = gtn.Fsa.from_str("0 1 1 0.1\n1 1 2 0.2\n1 2 -1 0\n2\n", dtype=torch.float64)
    eps_a = gtn.Fsa.from_str("0 1 1 0.5\n1 2 0 0.25\n2 3 2 0\n3 4 -1 0\n4\n", dtype=torch.float64)
    unsorted = gtn.Fsa.from_str("0 2 1 0.5\n2 1 2 0.25\n1 3 -1 0\n3\n", dtype=torch.float64)  # 2 -> 1
    eps_b = gtn.Fsa.from_str("0 1 0 -1\n0 2 1 0.3\n1 2 1 0.1\n2 3 2 0.2\n3 4 -1 0\n4\n", dtype=torch.float64)
    tr = gtn.Fsa.from_str("0 1 1 1 0.5\n1 2 2 2 0\n2 3 -1 -1 0\n3\n", acceptor=False, dtype=torch.float64)
    for x, y in ((eps_a, b), (unsorted, b), (lin, eps_b), (tr, b), (lin, gtn.FsaVec([b, b]))):
        c = gtn.compose(x, y)
        assert _same(gtn.compose_score(x, y), gtn.forward_score(c))
        s, p = gtn.compose_score(x, y, log_semiring=False, return_path=True)
        assert _same(s, gtn.viterbi_score(c)) and p == gtn.viterbi_path(c)
        with pytest.raises(gtn.FsaError, match="fused kernel needs"):
            gtn.compose_score(x, y, backend="numba")
    # gradients through the kernel: those of forward_score(compose(...)), in the inputs' dtypes
    x32, b32 = lin.to(torch.float32).requires_grad_(), b.to(torch.float32).requires_grad_()
    gtn.compose_score(x32, b32).backward()
    assert x32.scores.grad.dtype == torch.float32 and b32.scores.grad.dtype == torch.float32
    x = lin.clone().requires_grad_()
    gtn.compose_score(x, b).backward()
    y = lin.clone().requires_grad_()
    gtn.forward_score(gtn.compose(y, b)).backward()
    assert torch.allclose(x.scores.grad, y.scores.grad) and bool(x.scores.grad.abs().sum() > 0)
    assert torch.allclose(x32.scores.grad.double(), x.scores.grad, atol=1e-6)
    with torch.no_grad():  # no gradient to record: the kernel
        assert _same(gtn.compose_score(x, b, backend="numba"), gtn.forward_score(gtn.compose(lin, b)))
    assert gtn.compose_score(lin, b).shape == () and gtn.compose_score(gtn.FsaVec([lin]), b).shape == (1,)


def test_compose_score_errors():
    lin = gtn.linear_fsa([1, 2])
    with pytest.raises(gtn.FsaError, match="return_path needs log_semiring=False"):
        gtn.compose_score(lin, lin, return_path=True)
    with pytest.raises(gtn.FsaError, match="backend must be"):
        gtn.compose_score(lin, lin, backend="cuda")
    with pytest.raises(gtn.FsaError, match="b must be an Fsa"):
        gtn.compose_score(lin, [1, 2])


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(fsa_vecs(max_fsas=3, max_states=8, top_sorted=True, epsilon=False, integer_scores=True, num_labels=2),
       fsas(max_states=6, epsilon=False, integer_scores=True, num_labels=2))
def test_compose_score_ties_follow_the_documented_rule(a, b):
    """Law with integer scores (ties everywhere): the fused kernel and the composing route of compose_score
    return the same best path and Viterbi gradient, the one the tie rule names by brute force: of the best
    paths of the composition, as sequences of (a arc, b arc) pairs, the one whose pairs read backwards from
    the final arc are smallest (each composed state keeps its best entering pair with the lowest a arc, then
    the lowest b arc)."""
    b_paths = enumerate_paths(b)
    res = []
    for backend in ("numba", "torch"):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        x.set_attr("ka", torch.arange(a.num_arcs))
        y.set_attr("kb", torch.arange(b.num_arcs))
        score, path = gtn.compose_score(x, y, log_semiring=False, return_path=True, backend=backend)
        score.sum().backward()
        res.append((score.detach(), path, x.scores.grad, y.scores.grad))
        for i, f in enumerate(a):
            o = int(a.arc_splits[i])
            cands = []
            for pa, sa in enumerate_paths(f):
                for pb, sb in b_paths:
                    if f.labels[pa].tolist() == b.labels[pb].tolist():
                        cands.append(([(o + ka, kb) for ka, kb in zip(pa, pb)], sa + sb))
            best = max((s for _, s in cands), default=NEG_INF)
            want = tie_rule_oracle([p for p, s in cands if s == best]) if best > NEG_INF else None
            got = list(zip(path[i].ka.tolist(), path[i].kb.tolist())) if path[i].num_arcs else None
            assert got == want, (backend, i)
    (s1, p1, ga1, gb1), (s2, p2, ga2, gb2) = res
    assert torch.equal(s1, s2.to(s1.dtype)) and torch.equal(ga1, ga2) and torch.equal(gb1, gb2)
    assert torch.equal(p1.arcs, p2.arcs) and torch.equal(p1.arc_splits, p2.arc_splits)
