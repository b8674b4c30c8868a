"""The paper's criteria (gtn.losses): values, zeros, signs and gradients against brute-force path enumeration."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import gtn
from gtn import losses as L

SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), max_examples=200)
NEG_INF = float("-inf")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def interpretation_graph(gen, n=4, K=3, extra=4):
    """A random segmentation-like DAG: states 0..n-1, arcs i -> j (i < j) labelled 1..K, one -1 arc."""
    rows = [(i, i + 1, int(torch.randint(1, K + 1, (1,), generator=gen))) for i in range(n - 2)]
    for _ in range(extra):
        i = int(torch.randint(0, n - 2, (1,), generator=gen))
        j = int(torch.randint(i + 1, n - 1, (1,), generator=gen))
        rows.append((i, j, int(torch.randint(1, K + 1, (1,), generator=gen))))
    rows.append((n - 2, n - 1, -1))
    return gtn.Fsa(torch.tensor(rows), torch.randn(len(rows), generator=gen, dtype=torch.float64))


def paths(g):
    """Every successful path of an acyclic Fsa: (arc indices, label sequence, score)."""
    arcs, sc = g.arcs.tolist(), g.scores.tolist()
    out = []

    def walk(state, taken):
        if state == g.num_states - 1:
            out.append((taken, [arcs[i][2] for i in taken if arcs[i][2] > 0], sum(sc[i] for i in taken)))
            return
        for i, (s, d, _) in enumerate(arcs):
            if s == state:
                walk(d, taken + [i])

    walk(0, [])
    return out


def lse(xs):
    if not xs:
        return NEG_INF
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def case(seed, B=3):
    gen = torch.Generator().manual_seed(seed)
    gs = [interpretation_graph(gen, n=int(torch.randint(3, 6, (1,), generator=gen))) for _ in range(B)]
    targets = []
    for g in gs:
        ps = paths(g)
        targets.append(ps[int(torch.randint(0, len(ps), (1,), generator=gen))][1])  # a reachable answer
    return gtn.FsaVec(gs), gs, targets


@settings(**SETTINGS)
@given(seed=st.integers(0, 2 ** 31 - 1))
def test_criteria_against_brute_force(seed):
    """Laws: each criterion equals its definition over enumerated paths; the discriminative ones are >= 0;
    the compose route equals the pre-composed route."""
    G, gs, targets = case(seed, B=2)
    T = gtn.linear_fsa(targets, dtype=torch.float64)
    C = gtn.compose(G, T)
    got = {f.__name__: f(G, T, reduction="none") for f in
           (L.viterbi_loss, L.discriminative_viterbi_loss, L.forward_loss, L.discriminative_forward_loss)}
    pre = {f.__name__: f(G, constrained=C, reduction="none") for f in
           (L.discriminative_viterbi_loss, L.discriminative_forward_loss)}
    for b, (g, t) in enumerate(zip(gs, targets)):
        ps = paths(g)
        good = [s for _, lab, s in ps if lab == t]
        every = [s for _, _, s in ps]
        want = {"viterbi_loss": -max(good), "discriminative_viterbi_loss": max(every) - max(good),
                "forward_loss": -lse(good), "discriminative_forward_loss": lse(every) - lse(good)}
        for k, v in want.items():
            assert math.isclose(float(got[k][b]), v, rel_tol=1e-9, abs_tol=1e-9), (k, b)
            if k in pre:
                assert float(pre[k][b]) == float(got[k][b])
        assert float(got["discriminative_viterbi_loss"][b]) >= 0
        assert float(got["discriminative_forward_loss"][b]) >= 0


@settings(**SETTINGS)
@given(seed=st.integers(0, 2 ** 31 - 1))
def test_discriminative_viterbi_gradient_signs(seed):
    """Law: the gradient w.r.t. the scores is +1 on arcs only on the best path, -1 on arcs only on the best
    correct path, 0 elsewhere (the paper's +1/-1 w.r.t. penalties, negated)."""
    G, gs, targets = case(seed, B=2)
    G.requires_grad_()
    L.discriminative_viterbi_loss(G, gtn.linear_fsa(targets, dtype=torch.float64), reduction="sum").backward()
    off = 0
    for g, t in zip(gs, targets):
        ps = paths(g)
        best = max(ps, key=lambda p: p[2])[0]
        corr = max((p for p in ps if p[1] == t), key=lambda p: p[2])[0]
        want = torch.zeros(g.num_arcs, dtype=torch.float64)
        want[best] += 1
        want[corr] -= 1
        assert torch.equal(G.scores.grad[off:off + g.num_arcs], want)
        off += g.num_arcs


def test_zero_exactly_for_a_single_correct_path():
    g = gtn.Fsa([(0, 1, 2, -0.3), (1, 2, 1, -1.7), (2, 3, -1, 0.1)], dtype=torch.float64).requires_grad_()
    t = gtn.linear_fsa([2, 1], dtype=torch.float64)
    for f in (L.discriminative_viterbi_loss, L.discriminative_forward_loss):
        loss = f(g, t)
        assert float(loss.detach()) == 0.0
        loss.backward()
        assert (g.scores.grad == 0).all()
        g.scores.grad = None
    assert torch.allclose(L.viterbi_loss(g, t), torch.tensor(1.9, dtype=torch.float64))
    assert torch.allclose(L.forward_loss(g, t), torch.tensor(1.9, dtype=torch.float64))
    assert float(L.rejection_confidence(g).detach()) == 1.0


def test_impossible_target_is_inf_without_nan():
    g = gtn.Fsa([(0, 1, 2, -0.3), (0, 1, 3, -1.0), (1, 2, -1, 0.0)], dtype=torch.float64).requires_grad_()
    t = gtn.linear_fsa([1], dtype=torch.float64)
    for f in (L.viterbi_loss, L.discriminative_viterbi_loss, L.forward_loss, L.discriminative_forward_loss):
        loss = f(g, t)
        assert loss == float("inf")
        loss.backward()
        assert not torch.isnan(g.scores.grad).any() and (g.scores.grad == 0).all()
        g.scores.grad = None


@settings(**SETTINGS)
@given(seed=st.integers(0, 2 ** 31 - 1))
def test_rejection_confidence_is_answer_posterior(seed):
    """Law: confidence = posterior probability of the Viterbi answer's label sequence, in (0, 1]."""
    G, gs, _ = case(seed, B=2)
    conf = L.rejection_confidence(G)
    for b, g in enumerate(gs):
        ps = paths(g)
        answer = max(ps, key=lambda p: p[2])[1]
        want = math.exp(lse([s for _, lab, s in ps if lab == answer]) - lse([s for _, _, s in ps]))
        assert math.isclose(float(conf[b]), want, rel_tol=1e-9)
        assert 0 < float(conf[b]) <= 1


def test_gradcheck_and_reductions():
    G, gs, targets = case(5, B=2)
    T = gtn.linear_fsa(targets, dtype=torch.float64)
    sc = G.scores.detach().clone().requires_grad_(True)

    def f(sc):
        g = G.detach()
        g.scores = sc
        return L.discriminative_forward_loss(g, T, reduction="none")

    assert torch.autograd.gradcheck(f, (sc,))
    none = L.forward_loss(G, T, reduction="none")
    assert torch.allclose(L.forward_loss(G, T, reduction="sum"), none.sum())
    assert torch.allclose(L.forward_loss(G, T), none.mean())
    assert L.forward_loss(gs[0], gtn.linear_fsa(targets[0], dtype=torch.float64), reduction="none").shape == ()
    with pytest.raises(gtn.FsaError):
        L.forward_loss(G)
    with pytest.raises(gtn.FsaError):
        L.forward_loss(G, T, constrained=gtn.compose(G, T))
    with pytest.raises(ValueError):
        L.forward_loss(G, T, reduction="avg")
