"""Laws of the structural operations (gtn.structure): union, concat, closure, remove_epsilon, invert, project.

Oracles: brute-force path enumeration from tests/strategies.py on acyclic graphs; for cyclic graphs (closure,
remove_epsilon on cyclic input) a dense real-semiring solve ``total = [(I - M)^-1]_{0, final}``, written in
torch so that it also gives gradients; and OpenFst (pywrapfst, log64 arc type) for union/concat/closure.
"""
import math
from collections import defaultdict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gtn
from gtn.fsa import validate
from gtn.structure import closure, concat, invert, project, remove_epsilon, union
from strategies import enumerate_paths, find_cycle_oracle, forward_oracle, fsa_vecs, fsas, logsumexp

LAW = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
NEG_INF = float("-inf")

small = fsas(max_states=8, max_paths=30)
small_any = fsas(max_states=8, max_paths=30, transducer=None)


def close(x, y, tol=1e-9):
    if x == NEG_INF or y == NEG_INF:
        return x == y
    return abs(x - y) <= tol * (1 + abs(y))


def with_scores(f: gtn.Fsa, scores: torch.Tensor) -> gtn.Fsa:
    return gtn.Fsa(f.arcs, scores, f.aux_labels, num_states=f.num_states, **f.attrs)


def dense_total(f: gtn.Fsa) -> torch.Tensor:
    """log of the sum over all successful paths (cyclic graphs too, when the sum converges), differentiable:
    solves (I - M) x = e_final in the real semiring, M[s, d] = sum of exp(score) over arcs s -> d."""
    n = f.num_states
    if n < 2:
        return torch.tensor(NEG_INF, dtype=torch.float64)
    sc = f.scores.double()
    M = torch.zeros(n, n, dtype=torch.float64).index_put((f.arcs[:, 0], f.arcs[:, 1]), torch.exp(sc),
                                                         accumulate=True)
    e = torch.zeros(n, dtype=torch.float64)
    e[n - 1] = 1.0
    x = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - M, e)
    return torch.log(x[0])


def language(f: gtn.Fsa, semiring: str = "log"):
    """Weighted language of an acyclic graph: label string (epsilon symbols dropped) -> log-sum-exp score
    (``semiring="tropical"``: the best path's score). Transducer strings are sequences of (label, aux_label)
    pairs; (0, 0) is the epsilon pair."""
    lab = f.labels.tolist()
    aux = None if f.aux_labels is None else f.aux_labels.tolist()
    out = defaultdict(list)
    for arcs, s in enumerate_paths(f):
        if aux is None:
            key = tuple(lab[i] for i in arcs if lab[i] > 0)
        else:
            key = tuple((lab[i], aux[i]) for i in arcs if lab[i] != -1 and (lab[i], aux[i]) != (0, 0))
        out[key].append(s)
    plus = logsumexp if semiring == "log" else max
    return {k: plus(v) for k, v in out.items()}


def same_language(x, y, tol=1e-7):
    return set(x) == set(y) and all(close(x[k], y[k], tol) for k in x)


def to_openfst(f: gtn.Fsa, arc_type: str = "log64"):
    """A pywrapfst FST (``"log64"``, or ``"standard"``: tropical, float32 weights) with the same weighted
    language (labels 0 and -1 are OpenFst's epsilon)."""
    import pywrapfst as fst
    o = fst.VectorFst(arc_type=arc_type)
    wt = o.weight_type()
    n = f.num_states
    o.add_states(max(n, 1))
    o.set_start(0)
    if n >= 2:
        o.set_final(n - 1, fst.Weight.one(wt))
    aux = f.labels if f.aux_labels is None else f.aux_labels
    for (s, d, l), a, w in zip(f.arcs.tolist(), aux.tolist(), f.scores.double().tolist()):
        if w != NEG_INF:
            o.add_arc(s, fst.Arc(max(l, 0), max(a, 0), fst.Weight(wt, -w), d))
    return o


def openfst_language(o, semiring: str, acceptor: bool):
    """Weighted language of an acyclic OpenFst FST, enumerated path by path (as `language`): label string ->
    semiring sum of the path scores (-cost), final weights included; epsilons (0, or the pair (0, 0)) dropped."""
    import pywrapfst as fst
    zero = fst.Weight.zero(o.weight_type())
    out = defaultdict(list)
    if o.start() < 0:
        return {}
    stack = [(o.start(), (), 0.0)]
    while stack:
        s, key, score = stack.pop()
        fw = o.final(s)
        if fw != zero:
            out[key].append(score - float(str(fw)))
        for arc in o.arcs(s):
            sym = arc.ilabel if acceptor else (arc.ilabel, arc.olabel)
            k = key if sym in (0, (0, 0)) else key + (sym,)
            stack.append((arc.nextstate, k, score - float(str(arc.weight))))
    plus = logsumexp if semiring == "log" else max
    return {k: plus(v) for k, v in out.items()}


def openfst_total(o) -> float:
    """Total weight by OpenFst (its text form of a weight has 9 significant digits: compare with 1e-8)."""
    import pywrapfst as fst
    d = fst.shortestdistance(o, reverse=True, delta=1e-12)
    return -float(str(d[o.start()])) if o.start() < len(d) else NEG_INF


# ---------------------------------------------------------------------------------------------------- union
@LAW
@given(small_any, small_any)
def test_union_law(a, b):
    u = union(a, b)
    validate(u)
    assert isinstance(u, gtn.Fsa)
    fa, fb = forward_oracle(a), forward_oracle(b)
    assert close(forward_oracle(u), logsumexp([fa, fb]))
    assert close(gtn.forward_score(u).item(), torch.logaddexp(gtn.forward_score(a), gtn.forward_score(b)).item(), 1e-9)
    assert len(enumerate_paths(u)) == len(enumerate_paths(a)) + len(enumerate_paths(b))
    if (a.aux_labels is None) == (b.aux_labels is None):
        la, lb, lu = language(a), language(b), language(u)
        merged = {k: logsumexp([la.get(k, NEG_INF), lb.get(k, NEG_INF)]) for k in set(la) | set(lb)}
        assert same_language(lu, merged)
    assert close(forward_oracle(u), openfst_total(to_openfst(a).union(to_openfst(b))), 1e-7)


@LAW
@given(fsa_vecs(max_fsas=4, max_states=7, max_paths=20))
def test_union_of_a_batch_is_k2_union(v):
    u = union(v)
    assert isinstance(u, gtn.Fsa)
    validate(u)
    assert close(forward_oracle(u), logsumexp(forward_oracle(m) for m in v))
    assert u == union(*list(v)) == union(list(v))


@LAW
@given(st.integers(1, 3).flatmap(lambda n: st.tuples(fsa_vecs(min_fsas=n, max_fsas=n, max_states=6, max_paths=20),
                                                     fsa_vecs(min_fsas=n, max_fsas=n, max_states=6, max_paths=20),
                                                     fsas(max_states=6, max_paths=10))))
def test_union_batched_equals_per_member(args):
    v, w, f = args
    u = union(v, w, f)
    assert isinstance(u, gtn.FsaVec) and len(u) == len(v)
    for i in range(len(v)):
        assert u[i] == union(v[i], w[i], f)


# ---------------------------------------------------------------------------------------------------- concat
@LAW
@given(small_any, small_any)
def test_concat_law(a, b):
    c = concat(a, b)
    validate(c)
    fa, fb = forward_oracle(a), forward_oracle(b)
    assert close(forward_oracle(c), fa + fb if NEG_INF not in (fa, fb) else NEG_INF)
    assert close(gtn.forward_score(c).item(), (gtn.forward_score(a) + gtn.forward_score(b)).item(), 1e-9)
    assert len(enumerate_paths(c)) == len(enumerate_paths(a)) * len(enumerate_paths(b))
    assert close(forward_oracle(c), openfst_total(to_openfst(a).concat(to_openfst(b))), 1e-7)
    if (a.aux_labels is None) == (b.aux_labels is None):
        la, lb = language(a), language(b)
        want = defaultdict(list)
        for x, sx in la.items():
            for y, sy in lb.items():
                want[x + y].append(sx + sy)
        assert same_language(language(c), {k: logsumexp(s) for k, s in want.items()})


@LAW
@given(st.integers(1, 3).flatmap(lambda n: st.tuples(fsa_vecs(min_fsas=n, max_fsas=n, max_states=5, max_paths=12),
                                                     fsa_vecs(min_fsas=n, max_fsas=n, max_states=5, max_paths=12),
                                                     fsas(max_states=5, max_paths=4))))
def test_concat_batched_equals_per_member(args):
    v, w, f = args
    c = concat(v, f, w)
    assert isinstance(c, gtn.FsaVec) and len(c) == len(v)
    validate(c)
    for i in range(len(v)):
        assert c[i] == concat(v[i], f, w[i]) == concat(concat(v[i], f), w[i])


# ---------------------------------------------------------------------------------------------------- closure
@LAW
@given(fsas(max_states=8, max_paths=30, transducer=None, score_range=2.0), st.booleans(), st.floats(-3.0, -0.05))
def test_closure_law(a, plus, target):
    """On acyclic a with forward score F < 0: forward(a*) = -log(1 - e^F), forward(a+) = F - log(1 - e^F)
    (geometric series over the number of repetitions), with gradients; and OpenFst's closure agrees."""
    a = a.double()
    F = forward_oracle(a)
    if F != NEG_INF:  # every path has exactly one -1 arc: shifting them sets the total to `target`
        shift = torch.where(a.labels == -1, torch.tensor(target - F, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
        a = with_scores(a, a.scores + shift)
        F = target
    c = closure(a, plus=plus)
    validate(c)
    if find_cycle_oracle(c):
        with pytest.raises(gtn.FsaError, match="cycl"):  # scoring refuses the cyclic closure
            gtn.forward_score(c)
    tot = openfst_total(to_openfst(c))  # OpenFst sums the cyclic graph by iteration (delta 1e-12)
    if F == NEG_INF:
        assert tot == (NEG_INF if plus else 0.0)
        return
    want = F - math.log1p(-math.exp(F)) if plus else -math.log1p(-math.exp(F))
    assert close(tot, want, 1e-8)
    assert close(dense_total(c).item(), want, 1e-6)
    assert close(openfst_total(to_openfst(a).closure("plus" if plus else "star")), want, 1e-8)
    # gradients: d forward(a*) / d a.scores equals that of the closed form
    s1 = a.scores.clone().requires_grad_()
    dense_total(closure(with_scores(a, s1), plus=plus)).backward()
    s2 = a.scores.clone().requires_grad_()
    fa = dense_total(with_scores(a, s2))
    (fa - torch.log1p(-torch.exp(fa)) if plus else -torch.log1p(-torch.exp(fa))).backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-5, atol=1e-8)


def test_closure_accepts_empty_string_and_repetitions():
    a = gtn.Fsa([(0, 1, 7, -1.0), (1, 2, -1, -0.5)], dtype=torch.float64)
    star = closure(a)
    # the empty string: a 0 -> final path of score 0
    assert [(l, s) for (src, d, l), s in zip(star.arcs.tolist(), star.scores.tolist())
            if src == 0 and d == star.num_states - 1] == [(-1, 0.0)]
    assert dense_total(star).item() == pytest.approx(-math.log1p(-math.exp(-1.5)))
    plus = closure(a, plus=True)
    assert dense_total(plus).item() == pytest.approx(-1.5 - math.log1p(-math.exp(-1.5)))
    # a start state with an entering arc: the closure must not accept the cycle without a's final arc
    b = gtn.Fsa([(0, 1, 1, -1.0), (1, 0, 2, -1.0), (0, 2, 3, -1.0), (2, 3, -1, 0.0)], dtype=torch.float64)
    fb = dense_total(b).item()
    assert dense_total(closure(b)).item() == pytest.approx(-math.log1p(-math.exp(fb)))


@LAW
@given(fsa_vecs(max_fsas=3, max_states=8, transducer=None, attr=True), st.booleans())
def test_closure_batched_equals_per_member(v, plus):
    c = closure(v, plus=plus)
    validate(c)
    for i in range(len(v)):
        assert c[i] == closure(v[i], plus=plus)


# ---------------------------------------------------------------------------------------------------- remove_epsilon
@LAW
@given(fsas(max_states=10, max_paths=40, transducer=None, num_labels=3))
def test_remove_epsilon_law(a):
    r = remove_epsilon(a, connect=False)
    validate(r)
    assert r.num_states == a.num_states
    rc = remove_epsilon(a)  # trimmed: what gtn.connect gives
    assert rc == gtn.connect(r)
    if r.aux_labels is None:
        assert not bool((r.labels == 0).any())
    else:
        assert not bool(((r.labels == 0) & (r.aux_labels == 0)).any())
    assert close(forward_oracle(r), forward_oracle(a), 1e-7)
    assert close(gtn.forward_score(r).item(), gtn.forward_score(a).item(), 1e-9)
    assert same_language(language(r), language(a))


@LAW
@given(fsas(max_states=10, max_paths=40, transducer=None, num_labels=3), st.sampled_from(["log", "tropical"]),
       st.booleans())
def test_remove_epsilon_exact_in_its_semiring(a, semiring, integer):
    """Law, each semiring: every label string keeps its score (log-sum-exp, or the best path's) — brute force
    on the input and the output — and the output agrees with OpenFst's ``rmepsilon`` in the same semiring
    (arc type log64, or standard = tropical with float32 weights). Integer scores make ties common."""
    if integer:
        a = with_scores(a, torch.where(torch.isinf(a.scores), a.scores, a.scores.round()))
    r = remove_epsilon(a, semiring=semiring)
    validate(r)
    want = language(a, semiring)
    assert same_language(language(r, semiring), want)
    tot = gtn.forward_score if semiring == "log" else gtn.viterbi_score
    assert close(tot(r).item(), tot(a).item(), 1e-9)
    arc_type, tol = ("log64", 1e-7) if semiring == "log" else ("standard", 1e-5)
    o = to_openfst(a, arc_type)
    o.rmepsilon()
    finite = {k: w for k, w in want.items() if w > NEG_INF}  # OpenFst drops the arcs of cost +inf
    assert same_language(openfst_language(o, semiring, a.aux_labels is None), finite, tol)


def test_remove_epsilon_each_semiring_is_exact_only_in_its_own():
    """Two parallel epsilon paths 0 -> 1 (scores 0 and 0) then a labelled arc: the log result merges them into
    log 2, which raises the best path's score; the tropical result keeps 0, and under-counts the forward score."""
    a = gtn.Fsa([(0, 1, 0, 0.0), (0, 2, 0, 0.0), (2, 1, 0, 0.0), (1, 3, 5, 0.0), (3, 4, -1, 0.0)],
                dtype=torch.float64)
    lg, tr = remove_epsilon(a), remove_epsilon(a, semiring="tropical")
    assert gtn.viterbi_score(a).item() == 0.0 and gtn.viterbi_score(tr).item() == 0.0
    assert close(gtn.viterbi_score(lg).item(), math.log(2))
    assert close(gtn.forward_score(lg).item(), math.log(2)) and gtn.forward_score(tr).item() == 0.0
    with pytest.raises(gtn.FsaError, match="semiring must be 'log' or 'tropical'"):
        remove_epsilon(a, semiring="max")


@LAW
@given(fsas(max_states=10, max_paths=40, num_labels=3, neg_inf=False))
def test_remove_epsilon_tropical_viterbi_gradient(a):
    """Law (continuous scores, so one best path): the Viterbi gradient through the tropical removal is the
    input's own Viterbi gradient (1 on the arcs of the best path, epsilon arcs included)."""
    s1 = a.scores.clone().requires_grad_()
    v1 = gtn.viterbi_score(remove_epsilon(with_scores(a, s1), semiring="tropical"))
    s2 = a.scores.clone().requires_grad_()
    v2 = gtn.viterbi_score(with_scores(a, s2))
    assert close(v1.item(), v2.item())
    if math.isfinite(v2.item()):
        v1.backward(), v2.backward()
        assert torch.equal(s1.grad, s2.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("semiring", ["log", "tropical"])
def test_remove_epsilon_half_precision(dtype, semiring):
    """Half precision: accumulated in float32, returned in the input dtype, equal to the float32 result rounded."""
    a = gtn.Fsa([(0, 1, 0, 0.25), (0, 2, 0, 0.5), (1, 2, 0, -0.75), (2, 3, 4, 1.0), (1, 3, 7, 0.5),
                 (3, 4, -1, 0.0)])
    r = remove_epsilon(a.to(dtype), semiring=semiring)
    assert r.dtype == dtype
    assert torch.equal(r.scores, remove_epsilon(a, semiring=semiring).scores.to(dtype))


@LAW
@given(fsas(min_states=2, max_states=8, acyclic=False, transducer=None, num_labels=2, neg_inf=True))
def test_remove_epsilon_cyclic(a):
    """Cyclic input: exact when the epsilon arcs form no cycle; an epsilon cycle raises FsaError naming a state
    on it. Scores are made very negative so that the total converges."""
    a = with_scores(a.double(), -3.0 - a.scores.double().abs())
    eps = (a.labels == 0) if a.aux_labels is None else (a.labels == 0) & (a.aux_labels == 0)
    n = a.num_states
    # states on an epsilon cycle: s reaches itself through epsilon arcs (transitive closure of a bool matrix)
    R = torch.zeros(n, n, dtype=torch.bool)
    R[a.arcs[eps, 0], a.arcs[eps, 1]] = True
    reach = R.clone()
    for _ in range(n):
        reach = reach | ((reach.double() @ R.double()) > 0)
    on_cycle = torch.nonzero(reach.diagonal()).view(-1).tolist()
    if on_cycle:
        with pytest.raises(gtn.FsaError, match="cycle of epsilon arcs") as e:
            remove_epsilon(a)
        state = int(str(e.value).split("state ")[1].split()[0])
        assert state in on_cycle
        return
    r = remove_epsilon(a)
    validate(r)
    assert close(dense_total(r).item(), dense_total(a).item(), 1e-9)


@LAW
@given(fsas(max_states=6, max_paths=20, neg_inf=False, num_labels=2, transducer=None))
def test_remove_epsilon_gradients(a):
    """gradcheck of the output scores, and d forward / d scores is the same before and after."""
    a = a.double()
    if a.num_arcs == 0:
        return
    build = lambda s: remove_epsilon(with_scores(a, s), connect=False).scores  # noqa: E731
    assert torch.autograd.gradcheck(build, (a.scores.clone().requires_grad_(),), fast_mode=True)
    s1 = a.scores.clone().requires_grad_()
    t1 = dense_total(remove_epsilon(with_scores(a, s1)))
    s2 = a.scores.clone().requires_grad_()
    t2 = dense_total(with_scores(a, s2))
    if math.isfinite(t2.item()):
        t1.backward(), t2.backward()
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-7, atol=1e-10)


def test_remove_epsilon_no_nan_with_neg_inf():
    a = gtn.Fsa([(0, 1, 0, NEG_INF), (1, 2, 0, NEG_INF), (0, 2, 0, NEG_INF), (2, 3, 5, 0.0), (3, 4, -1, 0.0)],
                dtype=torch.float64)
    s = a.scores.clone().requires_grad_()
    r = remove_epsilon(with_scores(a, s))
    torch.where(torch.isfinite(r.scores), r.scores, torch.zeros_like(r.scores)).sum().backward()
    assert not torch.isnan(s.grad).any()
    assert not torch.isnan(r.scores).any()


@LAW
@given(fsa_vecs(max_fsas=3, max_states=8, transducer=None, attr=True))
def test_remove_epsilon_batched_equals_per_member(v):
    r = remove_epsilon(v)
    validate(r)
    for i in range(len(v)):
        assert r[i].equal(remove_epsilon(v[i]), rtol=1e-12, atol=1e-12)


def test_remove_epsilon_attributes_come_from_the_labelled_arc():
    a = gtn.Fsa([(0, 1, 0, 0.5), (1, 2, 7, 1.0), (0, 2, 8, 2.0), (2, 3, -1, 0.0)], seg=torch.tensor([10, 11, 12, 13]))
    r = remove_epsilon(a, connect=False)
    got = sorted(zip(r.arcs.tolist(), r.seg.tolist(), r.scores.tolist()))
    assert got == [([0, 2, 7], 11, 1.5), ([0, 2, 8], 12, 2.0), ([1, 2, 7], 11, 1.0), ([2, 3, -1], 13, 0.0)]
    r = remove_epsilon(a)  # state 1 is entered only by the epsilon arc: trimmed
    got = sorted(zip(r.arcs.tolist(), r.seg.tolist(), r.scores.tolist()))
    assert got == [([0, 1, 7], 11, 1.5), ([0, 1, 8], 12, 2.0), ([1, 2, -1], 13, 0.0)]


def test_remove_epsilon_epsilon_cycle_names_state():
    a = gtn.Fsa([(0, 1, 3, 0.0), (1, 2, 0, 0.0), (2, 1, 0, 0.0), (2, 3, -1, 0.0)])
    with pytest.raises(gtn.FsaError, match=r"state [12] lies on a cycle of epsilon arcs"):
        remove_epsilon(a)
    v = gtn.FsaVec([gtn.Fsa([(0, 1, -1, 0.0)]), a])
    with pytest.raises(gtn.FsaError, match=r"FSA 1 of the batch: state [12]"):
        remove_epsilon(v)


def _rmeps_result(v, backend, semiring, connect, weights):
    """remove_epsilon on ``backend``: (result, d loss / d input scores) for loss = sum(weights * finite output
    scores), or the FsaError message."""
    x = v.detach().requires_grad_()
    try:
        r = remove_epsilon(x, connect=connect, semiring=semiring, backend=backend)
    except gtn.FsaError as e:
        return str(e), None
    w = weights[: r.num_arcs].to(r.dtype)
    fin = torch.isfinite(r.scores)
    (torch.where(fin, r.scores, torch.zeros_like(r.scores)) * w).sum().backward()
    return r, x.scores.grad


@pytest.mark.both_backends  # runs the numba kernel and the torch reference itself
@LAW
@given(st.booleans().flatmap(lambda acyclic: fsa_vecs(max_fsas=3, max_states=9, acyclic=acyclic, transducer=None,
                                                       attr=True, num_labels=3, max_paths=60)),
       st.sampled_from(["log", "tropical"]), st.booleans(), st.sampled_from([torch.float32, torch.float64,
                                                                             torch.bfloat16]),
       st.booleans(), st.integers(0, 2 ** 31 - 1))
def test_remove_epsilon_kernel_equals_reference(v, semiring, connect, dtype, integer, seed):
    """Law: the numba kernel (`gtn.kernels.structure_numba`) returns the torch reference's graph — same states,
    arc order, labels, aux_labels, attributes — with the same scores (tropical: bitwise; log: to rounding) and
    the same gradients (to rounding; with integer scores, ties everywhere, so the tropical winner rule is the
    same), or the same epsilon-cycle error; on batches of acyclic and cyclic graphs, acceptors and
    transducers, with and without connect, in float32, float64 and bfloat16."""
    if integer:  # ties everywhere (tropical winners)
        v = _vec_with_scores(v, torch.where(torch.isinf(v.scores), v.scores, v.scores.round()))
    v = v.to(dtype)
    weights = torch.rand(4096, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.25
    got, g_got = _rmeps_result(v, "numba", semiring, connect, weights)
    want, g_want = _rmeps_result(v, "torch", semiring, connect, weights)
    if isinstance(want, str):
        assert got == want
        return
    validate(got)
    assert torch.equal(got.arcs, want.arcs) and torch.equal(got.arc_splits, want.arc_splits)
    assert torch.equal(got.state_splits, want.state_splits)
    assert (got.aux_labels is None) == (want.aux_labels is None)
    if want.aux_labels is not None:
        assert torch.equal(got.aux_labels, want.aux_labels)
    assert set(got.attrs) == set(want.attrs) and all(torch.equal(got.attrs[k], want.attrs[k]) for k in want.attrs)
    assert got.dtype == want.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-2, atol=1e-2) \
        if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    if semiring == "tropical":
        assert torch.equal(got.scores, want.scores)  # the same sums in the same order, then max
    else:
        torch.testing.assert_close(got.scores, want.scores, **tol)
    # gradients sum the output arcs' shares in another order: equal to rounding (a different tropical winner
    # would move a whole weight from one arc to another)
    torch.testing.assert_close(g_got, g_want, **tol)


def _vec_with_scores(v, scores):
    """The batch ``v`` with other scores (its members rebuilt, attributes kept)."""
    return gtn.FsaVec([with_scores(f, scores[int(v.arc_splits[i]):int(v.arc_splits[i + 1])])
                       for i, f in enumerate(v)])


def test_remove_epsilon_kernel_long_epsilon_chain():
    """A chain of 300 epsilon arcs (a closure of 45,150 pairs, deeper than the kernel's small-closure sort)
    with a labelled arc from every state: the kernel and the reference agree, and the forward score is kept."""
    n = 302
    arcs = [(s, s + 1, 0, -0.01 * (s % 7)) for s in range(n - 2)]
    arcs += [(s, n - 2, 1 + s % 5, -0.5) for s in range(n - 3)] + [(n - 2, n - 1, -1, 0.0)]
    a = gtn.Fsa(arcs, dtype=torch.float64)
    for semiring in ("log", "tropical"):
        got = remove_epsilon(a, semiring=semiring, backend="numba")
        want = remove_epsilon(a, semiring=semiring, backend="torch")
        assert torch.equal(got.arcs, want.arcs)
        torch.testing.assert_close(got.scores, want.scores, rtol=1e-12, atol=1e-12)
    assert close(gtn.forward_score(remove_epsilon(a, backend="numba")).item(), gtn.forward_score(a).item(), 1e-12)


# ---------------------------------------------------------------------------------------------------- invert / project
@LAW
@given(fsa_vecs(max_fsas=3, transducer=None, attr=True), st.booleans())
def test_invert_project(v, as_fsa):
    x = v[0] if as_fsa else v
    inv = invert(x)
    assert type(inv) is type(x)
    assert invert(inv) == x
    if x.aux_labels is not None:
        assert torch.equal(inv.labels, x.aux_labels) and torch.equal(inv.aux_labels, x.labels)
    else:
        assert inv == x
    for side, want in (("input", x.labels), ("output", x.labels if x.aux_labels is None else x.aux_labels)):
        p = project(x, side)
        assert p.aux_labels is None and torch.equal(p.labels, want)
        assert torch.equal(p.arcs[:, :2], x.arcs[:, :2]) and torch.equal(p.scores, x.scores)
        assert torch.equal(p.seg, x.seg) and torch.equal(p.idx, x.idx)
        validate(p)


# ---------------------------------------------------------------------------------------------------- common
@LAW
@given(small_any, small_any, st.sampled_from(["union", "concat", "closure", "closure+", "rmeps", "invert"]))
def test_attributes_follow_and_gradcheck(a, b, op):
    """Per-arc attributes follow the arc map (an ``idx`` attribute finds each output arc's source arc; new
    arcs get 0), and gradcheck passes through every operation (float64)."""
    a = gtn.Fsa(a.arcs, a.scores.clamp(min=-50), a.aux_labels, num_states=a.num_states,
                idx=torch.arange(a.num_arcs) + 1)
    b = gtn.Fsa(b.arcs, b.scores.clamp(min=-50), b.aux_labels, num_states=b.num_states,
                idx=torch.arange(b.num_arcs) + 1001)
    fn = {"union": lambda x, y: union(x, y), "concat": lambda x, y: concat(x, y),
          "closure": lambda x, y: closure(x), "closure+": lambda x, y: closure(x, plus=True),
          "rmeps": lambda x, y: remove_epsilon(x, connect=False), "invert": lambda x, y: invert(x)}[op]
    out = fn(a, b)
    validate(out)
    src_scores = torch.cat([a.scores, b.scores])
    src_labels = torch.cat([a.labels, b.labels])
    src_dst = torch.cat([a.arcs[:, 1], b.arcs[:, 1]])
    new = out.idx == 0
    idx = torch.where(out.idx > 1000, out.idx - 1001 + a.num_arcs, out.idx - 1)[~new]
    assert bool((out.scores[new] == 0).all()) and bool((out.labels[new] <= 0).all())
    if op == "rmeps":  # the labelled arc: same label and destination
        assert torch.equal(out.labels[~new], src_labels[idx]) and torch.equal(out.arcs[~new, 1], src_dst[idx])
    else:
        assert torch.equal(out.scores[~new], src_scores[idx])
        relabelled = src_labels[idx] != out.labels[~new]
        want = src_labels[idx] if op != "invert" or a.aux_labels is None else a.aux_labels[idx]
        assert torch.equal(out.labels[~new][~relabelled], want[~relabelled]) if op != "invert" else \
            torch.equal(out.labels[~new], want)
        assert bool((src_labels[idx][relabelled] == -1).all()) and bool((out.labels[~new][relabelled] == 0).all()) \
            or op == "invert"
    if a.num_arcs + b.num_arcs == 0:
        return
    sa, sb = a.scores.double().clone().requires_grad_(), b.scores.double().clone().requires_grad_()
    f = lambda x, y: fn(with_scores(a.double(), x), with_scores(b.double(), y)).scores  # noqa: E731
    assert torch.autograd.gradcheck(f, (sa, sb), fast_mode=True)


def test_bad_operands():
    a = gtn.Fsa([(0, 1, 1, 0.0), (1, 2, -1, 0.0)])
    v2 = gtn.FsaVec([a, a])
    v3 = gtn.FsaVec([a, a, a])
    with pytest.raises(gtn.FsaError, match="different batch sizes"):
        union(v2, v3)
    with pytest.raises(gtn.FsaError, match="different batch sizes"):
        concat(v2, v3)
    with pytest.raises(gtn.FsaError, match="operand 1 is a list"):
        union(a, [a])
    b = gtn.Fsa([(0, 1, 1, 0.0), (1, 2, -1, 0.0)], seg=torch.tensor([1, 2]))
    assert concat(a, b).seg.tolist() == [0, 0, 1, 2]  # missing attributes are 0 on the other operand's arcs
    assert union(b, a).seg.tolist() == [0, 0, 1, 2, 0, 0]
    c = gtn.Fsa([(0, 1, 1, 0.0), (1, 2, -1, 0.0)], seg=torch.ones(2, 3))
    with pytest.raises(gtn.FsaError, match="attribute 'seg' has per-arc shape"):
        union(b, c)
    with pytest.raises(gtn.FsaError, match="side must be"):
        project(a, "both")
    with pytest.raises(gtn.FsaError, match="at least one"):
        union()


def test_mixed_kinds_and_dtypes():
    a = gtn.Fsa([(0, 1, 1, 0.5), (1, 2, -1, 0.0)])
    t = gtn.Fsa([(0, 1, 2, 0.25), (1, 2, -1, 0.0)], aux_labels=[9, -1], dtype=torch.float64)
    u = union(a, t)
    assert u.dtype == torch.float64 and u.aux_labels is not None
    assert sorted(zip(u.labels.tolist(), u.aux_labels.tolist())) == [(-1, -1), (-1, -1), (0, 0), (0, 0), (1, 1), (2, 9)]
    c = concat(t, a)
    assert sorted(zip(c.labels.tolist(), c.aux_labels.tolist())) == [(-1, -1), (0, 0), (1, 1), (2, 9)]


def test_empty_operands():
    empty = gtn.Fsa(torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0), num_states=0)
    dead = gtn.Fsa([(0, 1, 1, 0.0)], num_states=3)  # no path
    a = gtn.Fsa([(0, 1, 1, 0.5), (1, 2, -1, 0.0)])
    for x in (empty, dead):
        assert forward_oracle(concat(a, x)) == NEG_INF and forward_oracle(concat(x, a)) == NEG_INF
        assert forward_oracle(union(a, x)) == pytest.approx(0.5)
        validate(concat(a, x)), validate(concat(x, a)), validate(union(x, x))
    star = closure(empty)
    assert star.num_states == 2 and star.arcs.tolist() == [[0, 1, -1]] and forward_oracle(star) == 0.0
    assert closure(empty, plus=True).num_states == 0
    assert remove_epsilon(empty) == empty

