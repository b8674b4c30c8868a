"""gtn.compat: facebookresearch/gtn's API on the core, against brute force (path enumeration) and the core."""
import ctypes
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import gtn as core
import gtn.compat as gtn
from strategies import logsumexp

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers
def build(n, arcs, starts=(0,), accepts=None, calc_grad=True):
    """A compat graph: ``arcs`` as (src, dst, ilabel, olabel, weight)."""
    accepts = (n - 1,) if accepts is None else accepts
    g = gtn.Graph(calc_grad)
    for i in range(n):
        g.add_node(i in starts, i in accepts)
    for a in arcs:
        g.add_arc(*a)
    return g


def copy(g):
    """An independent copy (no gradient link, unlike gtn.clone)."""
    w = g.weights_to_list()
    return build(g.num_nodes(), [(g.src_node(a), g.dst_node(a), g.ilabel(a), g.olabel(a), w[a])
                                 for a in range(g.num_arcs())], g.start(), g.accept())


def paths(g):
    """Every successful path (the graph must be acyclic): (arc list, score)."""
    w = g.weights_to_list()
    out = []

    def walk(node, arcs, score):
        if g.is_accept(node):
            out.append((list(arcs), score))
        for a in g.out(node):
            walk(g.dst_node(a), arcs + [a], score + w[a])

    for s in g.start():
        walk(s, [], 0.0)
    return out


def relation(g):
    """{(input string, output string) without epsilons: log-sum-exp of the scores of its paths}."""
    groups = {}
    for arcs, score in paths(g):
        key = (tuple(g.ilabel(a) for a in arcs if g.ilabel(a) != gtn.epsilon),
               tuple(g.olabel(a) for a in arcs if g.olabel(a) != gtn.epsilon))
        groups.setdefault(key, []).append(score)
    return {k: logsumexp(v) for k, v in groups.items()}


@st.composite
def dags(draw, max_nodes=6, max_arcs=10, labels=3, transducer=True, eps=True):
    """Random acyclic compat graphs that facebookresearch/gtn can score: node 0 is a start node, every other
    node is a start node or has an arc from a lower node; several start and accept nodes."""
    n = draw(st.integers(1, max_nodes))
    starts = {0} | {i for i in range(1, n) if draw(st.booleans()) and draw(st.booleans())}
    accepts = {i for i in range(n) if draw(st.booleans())} or {n - 1}
    lab = st.integers(-1 if eps else 0, labels - 1)
    arcs = []
    for d in range(1, n):
        if d not in starts:
            s = draw(st.integers(0, d - 1))
            i = draw(lab)
            arcs.append((s, d, i, draw(lab) if transducer else i, draw(st.floats(-3, 3))))
    if n > 1:
        for _ in range(draw(st.integers(0, max_arcs))):
            s = draw(st.integers(0, n - 2))
            d = draw(st.integers(s + 1, n - 1))
            i = draw(lab)
            arcs.append((s, d, i, draw(lab) if transducer else i, draw(st.floats(-3, 3))))
    return build(n, arcs, starts, accepts)


def core_fsa(g, transducer=False):
    """An independent translation to a core Fsa (k2 text with a super-start and a super-final), for
    checking compat against the core. Transducer labels: epsilon -> 0, l -> l + 2, super-start arcs 1:1."""
    n = g.num_nodes()
    w = g.weights_to_list()
    lab = (lambda x: 0 if x == gtn.epsilon else x + 2) if transducer else (lambda x: 1)
    aux = (lambda x: f" {0 if x == gtn.epsilon else x + 2}") if transducer else (lambda x: "")
    lines = [f"0 {s + 1} 1{' 1' if transducer else ''} 0.0" for s in g.start()]
    lines += [f"{g.src_node(a) + 1} {g.dst_node(a) + 1} {lab(g.ilabel(a))}{aux(g.olabel(a))} {w[a]!r}"
              for a in range(g.num_arcs())]
    lines += [f"{a + 1} {n + 1} -1{' -1' if transducer else ''} 0.0" for a in g.accept()]
    lines.sort(key=lambda s: int(s.split()[0]))
    return core.Fsa.from_str("\n".join(lines + [str(n + 1)]) + "\n", acceptor=not transducer)


# ---------------------------------------------------------------------------------------------- Graph
def test_graph_construction_and_accessors():
    g = gtn.Graph(False)
    g.add_node(True)
    g.add_node()
    g.add_node()
    g.add_node()
    g.add_node(False, True)
    g.add_arc(0, 1, 0)
    g.add_arc(0, 2, 1)
    g.add_arc(src_node=1, dst_node=2, label=0)
    g.add_arc(1, 1, ilabel=1, olabel=2, weight=2.1)
    g.add_arc(2, 3, 2)
    assert (g.num_nodes(), g.num_arcs(), g.num_start(), g.num_accept()) == (5, 5, 1, 1)
    assert g.labels_to_list() == [0, 1, 0, 1, 2] and g.labels_to_list(False) == [0, 1, 0, 2, 2]
    assert g.start() == [0] and g.accept() == [4] and g.is_start(0) and not g.is_start(1) and g.is_accept(4)
    assert g.out(1) == [2, 3] and g.in_(2) == [1, 2] and g.num_in(1) == 2 and g.num_out(0) == 2
    assert (g.src_node(3), g.dst_node(3), g.ilabel(3), g.olabel(3)) == (1, 1, 1, 2)
    assert g.weight(3) == pytest.approx(2.1) and not g.calc_grad
    np.testing.assert_allclose(g.weights_to_list(), [0, 0, 0, 2.1, 0], rtol=1e-6)
    ptr = g.weights()  # an address, read with ctypes as facebookresearch/gtn's users do
    np.testing.assert_allclose(np.frombuffer((ctypes.c_float * 5).from_address(ptr), np.float32),
                               [0, 0, 0, 2.1, 0], rtol=1e-6)
    new = np.array([1.1, -3.4, 0, 0.5, 0], dtype=np.float32)
    for form in (new.tolist(), new, torch.from_numpy(new), new.__array_interface__["data"][0]):
        g.set_weights(np.zeros(5, np.float32))
        g.set_weights(form)
        np.testing.assert_allclose(g.weights_to_numpy(), new)
    g.set_weight(0, 7.0)
    assert g.weights_to_list()[0] == 7.0
    g.make_accept(3)
    assert g.accept() == [4, 3]


def test_graph_bad_input_raises():
    g = build(2, [(0, 1, 0, 0, 1.0)])
    with pytest.raises(ValueError, match="not a node"):
        g.add_arc(0, 5, 1)
    with pytest.raises(ValueError, match="epsilon"):
        g.add_arc(0, 1, -2)
    with pytest.raises(ValueError, match="3 weights for 1 arcs"):
        g.set_weights([1.0, 2.0, 3.0])
    g.add_arc(0, 1, 2)
    with pytest.raises(ValueError, match="exactly one"):
        g.item()
    with pytest.raises(ValueError, match="exactly one arc"):
        gtn.negate(g)
    with pytest.raises(ValueError):
        gtn.add(g, gtn.scalar_graph(1.0))


def test_arc_sort_keeps_arc_indices():
    g = build(2, [(0, 1, 2, 0, 1.0), (0, 1, 0, 2, 2.0), (0, 1, 1, 1, 3.0)])
    g.arc_sort()
    assert g.out(0) == [1, 2, 0] and g.ilabel_sorted() and not g.olabel_sorted()
    g.arc_sort(True)
    assert g.out(0) == [0, 2, 1] and g.olabel_sorted()
    assert g.weights_to_list() == [1.0, 2.0, 3.0]


def test_creations():
    g = gtn.scalar_graph(0.25, False)
    assert (g.num_nodes(), g.num_arcs(), g.labels_to_list(), g.item(), g.calc_grad) == (2, 1, [-1], 0.25, False)
    M, N = 3, 4
    g = gtn.linear_graph(M, N)
    assert g.num_nodes() == M + 1 and g.num_arcs() == M * N and g.calc_grad
    assert g.labels_to_list() == [j for _ in range(M) for j in range(N)]
    assert [g.src_node(a) for a in range(M * N)] == [a // N for a in range(M * N)]
    # its forward score is the sum over frames of the log-sum-exp of the frame
    x = torch.randn(M, N)
    g.set_weights(x.flatten().tolist())
    assert gtn.forward_score(g).item() == pytest.approx(float(torch.logsumexp(x, 1).sum()), abs=1e-5)


# ---------------------------------------------------------------------------------------------- scores
@settings(max_examples=150, deadline=None)
@given(dags())
def test_forward_score_and_gradient_brute_force(g):
    ps = paths(g)
    expected = logsumexp(s for _, s in ps)
    f = gtn.forward_score(g)
    if expected == -math.inf:
        assert f.item() == -math.inf
    else:
        assert f.item() == pytest.approx(expected, abs=1e-4)
        assert f.item() == pytest.approx(float(core.forward_score(core_fsa(g))), abs=1e-5)
    gtn.backward(f)
    post = [0.0] * g.num_arcs()
    for arcs, s in ps:
        for a in arcs:
            post[a] += math.exp(s - expected) if expected > -math.inf else 0.0
    np.testing.assert_allclose(g.grad().weights_to_list(), post, atol=1e-4)


@settings(max_examples=150, deadline=None)
@given(dags())
def test_viterbi_score_and_path_brute_force(g):
    ps = paths(g)
    best = max((s for _, s in ps), default=-math.inf)
    v = gtn.viterbi_score(g)
    assert v.item() == pytest.approx(best, abs=1e-4)
    assert v.item() == pytest.approx(float(core.viterbi_score(core_fsa(g))), abs=1e-5)
    p = gtn.viterbi_path(g)
    if not ps:
        assert p.num_nodes() == 0
        return
    assert sum(p.weights_to_list()) == pytest.approx(best, abs=1e-4)
    # the path is one of g's best paths: same labels and weights, arc by arc
    w = g.weights_to_list()
    cands = [arcs for arcs, s in ps if abs(s - best) < 1e-4 and len(arcs) == p.num_arcs()]
    assert any([g.ilabel(a) for a in arcs] == p.labels_to_list() and
               [g.olabel(a) for a in arcs] == p.labels_to_list(False) and
               np.allclose([w[a] for a in arcs], p.weights_to_list(), atol=1e-6) for arcs in cands)
    # gradients: 1 on the arcs of the path viterbi_path chose (both break ties the same way)
    gtn.backward(gtn.viterbi_score(g))
    grad = g.grad().weights_to_list()
    assert sum(grad) == p.num_arcs() and set(grad) <= {0.0, 1.0}
    assert sorted(g.labels_to_list()[a] for a in range(g.num_arcs()) if grad[a]) == sorted(p.labels_to_list())


def test_viterbi_ties_broken_as_facebookresearch_gtn():
    """The first best accept node (in accept order), then at each node the first best arc of its in-list."""
    g = build(4, [(0, 1, 0, 0, 1.0), (0, 1, 1, 1, 1.0), (1, 3, 2, 2, 1.0), (0, 2, 3, 3, 1.0), (2, 3, 4, 4, 1.0),
                  (1, 2, 5, 5, 0.0)], accepts=(3,))
    gtn.backward(gtn.viterbi_score(g))
    assert g.grad().weights_to_list() == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert gtn.viterbi_path(g).labels_to_list() == [0, 2]
    h = build(2, [(0, 1, 1, 1, 0.0), (0, 1, 0, 0, 0.0)], accepts=(1,))
    assert gtn.viterbi_path(h).labels_to_list() == [1]
    h.arc_sort()  # the in-list changes order, and so does the choice
    assert gtn.viterbi_path(h).labels_to_list() == [0]
    a = build(3, [(0, 1, 0, 0, 2.0), (0, 2, 1, 1, 2.0)], accepts=())
    a.make_accept(2)
    a.make_accept(1)  # accept order [2, 1]: node 2 comes first
    assert a.accept() == [2, 1] and gtn.viterbi_path(a).labels_to_list() == [1]


def test_forward_score_cases():
    # two start nodes, two accept nodes, a dead end, an empty graph, a lone start-and-accept node
    g = build(3, [(0, 1, 0, 0, -5), (0, 2, 0, 0, 1), (1, 2, 0, 0, 2)], starts=(0, 1))
    assert gtn.forward_score(g).item() == pytest.approx(math.log(math.exp(1) + math.exp(-3) + math.exp(2)))
    assert gtn.viterbi_score(g).item() == 2.0
    g = build(3, [(0, 1, 0, 0, 2), (0, 2, 0, 0, 2), (1, 2, 0, 0, 2)], accepts=(1, 2))
    assert gtn.forward_score(g).item() == pytest.approx(math.log(2 * math.exp(2) + math.exp(4)))
    g = build(3, [(0, 1, 0, 0, 2), (0, 2, 0, 0, 2)])
    assert gtn.forward_score(g).item() == 2.0
    gtn.backward(gtn.forward_score(g))
    assert g.grad().weights_to_list() == [0.0, 1.0]
    assert gtn.forward_score(gtn.Graph()).item() == -math.inf
    one = gtn.Graph()
    one.add_node(True, True)
    assert gtn.forward_score(one).item() == 0.0
    assert gtn.equal(gtn.viterbi_path(one), one) and gtn.equal(gtn.viterbi_path(gtn.Graph()), gtn.Graph())
    # all paths -inf: -inf with zero gradients (facebookresearch/gtn: NaN gradients)
    g = build(2, [(0, 1, 0, 0, -math.inf), (0, 1, 1, 1, -math.inf)])
    f = gtn.forward_score(g)
    gtn.backward(f)
    assert f.item() == -math.inf and g.grad().weights_to_list() == [0.0, 0.0]


def test_forward_score_gradient_when_last_node_is_a_dead_end():
    # facebookresearch/gtn's backward only reaches arcs whose nodes all lead, by out-degree, to processed
    # nodes; here its gradients were all zero. Ours are the arc posteriors.
    g = build(4, [(0, 1, 0, 0, 1.0), (0, 1, 1, 1, 2.0), (1, 2, 0, 0, 0.5), (1, 3, 0, 0, 0.0)], accepts=(2,))
    gtn.backward(gtn.forward_score(g))
    p = [math.exp(1) / (math.exp(1) + math.exp(2)), math.exp(2) / (math.exp(1) + math.exp(2)), 1.0, 0.0]
    np.testing.assert_allclose(g.grad().weights_to_list(), p, rtol=1e-5)


@pytest.mark.parametrize("arcs", [
    [(0, 0, 1, 1, 0.0)],                                            # self-loop on a start-and-accept node
    [(0, 1, 0, 0, 0.0), (1, 2, 0, 0, 0.0), (1, 1, 0, 0, 0.0)],      # internal self-loop
    [(0, 1, 0, 0, 0.0), (1, 2, 0, 0, 0.0), (2, 2, 0, 0, 0.0)],      # self-loop on the accept node
    [(0, 1, 0, 0, 0.0), (1, 2, 0, 0, 0.0), (2, 0, 0, 0, 0.0)],      # cycle
    [(0, 2, 0, 0, 0.0), (1, 2, 0, 0, 0.0)],                         # node 1: no incoming arc, not a start
])
def test_scoring_raises_where_facebookresearch_gtn_raises(arcs):
    n = 1 + max(max(a[0], a[1]) for a in arcs)
    g = build(n, arcs, accepts=(n - 1,)) if n > 1 else build(1, arcs, accepts=(0,))
    for fn in (gtn.forward_score, gtn.viterbi_score, gtn.viterbi_path):
        with pytest.raises(ValueError, match="cycle"):
            fn(g)


def test_plus_inf_and_nan_weights():
    # +inf on a successful path: +inf (our core refuses +inf scores, compat handles it), zero gradients
    g = build(2, [(0, 1, 0, 0, math.inf), (0, 1, 1, 1, 0.0)])
    f = gtn.forward_score(g)
    gtn.backward(f)
    assert f.item() == math.inf and gtn.viterbi_score(g).item() == math.inf
    assert g.grad().weights_to_list() == [0.0, 0.0]
    p = gtn.viterbi_path(g)
    assert p.labels_to_list() == [0] and p.weights_to_list() == [math.inf]
    # +inf on a dead end changes nothing
    g = build(3, [(0, 2, 0, 0, math.inf), (0, 1, 1, 1, 0.5)], accepts=(1,))
    assert gtn.forward_score(g).item() == 0.5 and gtn.viterbi_path(g).weights_to_list() == [0.5]
    g = build(2, [(0, 1, 0, 0, math.nan)])
    with pytest.raises(ValueError, match="NaN"):
        gtn.forward_score(g)


def test_batched_lists_equal_one_by_one():
    gs = [gtn.linear_graph(3, 4) for _ in range(5)]
    for g in gs:
        g.set_weights(torch.randn(12).tolist())
    outs = gtn.forward_score(gs)
    gtn.backward(outs, [True])
    for g, o in zip(gs, outs):
        h = gtn.clone(g)
        assert gtn.forward_score(h).item() == pytest.approx(o.item(), abs=1e-5)
    grads = [g.grad().weights_to_list() for g in gs]
    for g in gs:
        g.zero_grad()
        gtn.backward(gtn.forward_score(g))
    for g, gr in zip(gs, grads):
        np.testing.assert_allclose(g.grad().weights_to_list(), gr, atol=1e-6)
    assert [v.item() for v in gtn.viterbi_score(gs)] == [gtn.viterbi_score(g).item() for g in gs]


# ---------------------------------------------------------------------------------------------- compose
@settings(max_examples=120, deadline=None)
@given(dags(max_nodes=4, max_arcs=5, labels=2), dags(max_nodes=4, max_arcs=5, labels=2))
def test_compose_relation_brute_force(g1, g2):
    """compose(g1, g2) weighs each (x, z) by log-sum over y of g1(x, y) + g2(y, z) (epsilons dropped)."""
    r1, r2 = relation(g1), relation(g2)
    expected = {}
    for (x, y), s1 in r1.items():
        for (y2, z), s2 in r2.items():
            if y == y2:
                expected.setdefault((x, z), []).append(s1 + s2)
    expected = {k: logsumexp(v) for k, v in expected.items()}
    c = gtn.compose(g1, g2)
    got = relation(c)
    assert set(got) == set(expected)
    for k in expected:
        assert got[k] == pytest.approx(expected[k], abs=1e-4)
    # the forward score agrees with the core's composition of the same FSAs
    ref = float(core.forward_score(core.compose(core_fsa(g1, True), core_fsa(g2, True))))
    got_f = gtn.forward_score(c).item()
    if expected:
        assert got_f == pytest.approx(logsumexp(expected.values()), abs=1e-4)
        assert got_f == pytest.approx(ref, abs=1e-4)
    else:
        assert got_f == ref == -math.inf and c.num_nodes() == 0


@settings(max_examples=60, deadline=None)
@given(dags(max_nodes=4, max_arcs=5, labels=2), dags(max_nodes=4, max_arcs=5, labels=2))
def test_compose_gradient_brute_force(g1, g2):
    """d forward(compose(g1, g2)) / d weight: numerical differences (double precision brute force)."""
    c = gtn.compose(g1, g2)
    if c.num_nodes() == 0:
        return
    gtn.backward(gtn.forward_score(c))
    for g, which in ((g1, 0), (g2, 1)):
        w0 = g.weights_to_list()
        for a in range(g.num_arcs()):
            def total(delta):
                w = list(w0)
                w[a] += delta
                h = gtn.clone(g)
                h.set_weights(w)
                pair = (h, g2) if which == 0 else (g1, h)
                return logsumexp(relation(gtn.compose(*pair)).values())
            num = (total(1e-2) - total(-1e-2)) / 2e-2
            assert g.grad().weights_to_list()[a] == pytest.approx(num, abs=2e-3)


def test_compose_examples():
    # a path through first (3 symbols, 4 frames) and second (0+ 1+)
    first = build(5, [(i, i + 1, j, j, float(j)) for i in range(4) for j in range(3)])
    second = build(3, [(0, 1, 0, 0, 3.5), (1, 1, 0, 0, 2.5), (1, 2, 1, 1, 1.5), (2, 2, 1, 1, 4.5)])
    c = gtn.compose(first, second)
    exp = build(7, [(0, 1, 0, 0, 3.5), (1, 2, 0, 0, 2.5), (1, 4, 1, 1, 2.5), (2, 3, 0, 0, 2.5),
                    (2, 5, 1, 1, 2.5), (4, 5, 1, 1, 5.5), (3, 6, 1, 1, 2.5), (5, 6, 1, 1, 5.5)])
    assert gtn.isomorphic(c, exp) and gtn.isomorphic(gtn.intersect(first, second), exp)
    gtn.backward(c)  # the gradient of every composed arc is 1: each input arc gets its count of uses
    assert first.grad().weights_to_list() == [1, 0, 0, 1, 1, 0, 1, 2, 0, 0, 2, 0]
    assert second.grad().weights_to_list() == [1, 2, 3, 2]
    # epsilon on the output of the first graph, and on the input of the second
    g1 = build(2, [(0, 0, 0, gtn.epsilon, 1.0), (0, 1, 1, 2, 0.0)])
    g2 = build(2, [(0, 1, 2, 3, 0.0)])
    assert gtn.equal(gtn.compose(g1, g2), build(2, [(0, 0, 0, gtn.epsilon, 1.0), (0, 1, 1, 3, 0.0)]))
    g1 = build(2, [(0, 1, 1, 2, 0.0)])
    g2 = build(2, [(0, 1, 2, 3, 0.0), (1, 1, gtn.epsilon, 0, 2.0)])
    assert gtn.equal(gtn.compose(g1, g2), build(2, [(0, 1, 1, 3, 0.0), (1, 1, gtn.epsilon, 0, 2.0)]))
    # Mohri's example (Weighted Automata Algorithms, fig. 7): a:a b:ε c:ε d:d with a:d ε:e d:a
    a, b, cc, d, e = range(5)
    g1 = build(5, [(0, 1, a, a, 0.0), (1, 2, b, -1, 0.0), (2, 3, cc, -1, 0.0), (3, 4, d, d, 0.0)])
    g2 = build(4, [(0, 1, a, d, 0.0), (1, 2, -1, e, 0.0), (2, 3, d, a, 0.0)])
    exp = build(5, [(0, 1, a, d, 0.0), (1, 2, b, e, 0.0), (2, 3, cc, -1, 0.0), (3, 4, d, a, 0.0)])
    random.seed(0)
    assert gtn.rand_equivalent(gtn.compose(g1, g2), exp)
    assert relation(gtn.compose(g1, g2)) == {((a, b, cc, d), (d, e, a)): 0.0}
    # empty results
    h1 = build(2, [(0, 1, 0, 0, 0.0)], accepts=())
    h2 = build(2, [(0, 1, 0, 0, 0.0), (0, 1, 0, 0, 0.0)])
    assert gtn.equal(gtn.compose(h1, h2), gtn.Graph()) and gtn.equal(gtn.compose(gtn.Graph(), gtn.Graph()), gtn.Graph())


def test_compose_cycles():
    g1 = build(2, [(0, 0, 0, 0, 0.0), (0, 1, 1, 1, 0.0), (1, 1, 2, 2, 0.0)])
    g2 = build(3, [(0, 1, 0, 0, 0.0), (1, 1, 0, 0, 0.0), (1, 2, 1, 1, 0.0)])
    assert gtn.isomorphic(gtn.compose(g1, g2), build(3, [(0, 1, 0, 0, 0.0), (1, 1, 0, 0, 0.0), (1, 2, 1, 1, 0.0)]))
    g1.arc_sort(True)
    g2.arc_sort()
    assert gtn.isomorphic(gtn.compose(g1, g2), build(3, [(0, 1, 0, 0, 0.0), (1, 1, 0, 0, 0.0), (1, 2, 1, 1, 0.0)]))


# ---------------------------------------------------------------------------------------------- structure
def test_scalar_arithmetic_and_gradients():
    g1, g2 = gtn.scalar_graph(3.0), gtn.scalar_graph(4.0)
    r = gtn.negate(g1)
    assert r.item() == -3.0
    gtn.backward(r)
    assert g1.grad().item() == -1.0
    g1.zero_grad()
    r = gtn.subtract(g1, g2)
    assert r.item() == -1.0
    gtn.backward(r)
    assert (g1.grad().item(), g2.grad().item()) == (1.0, -1.0)
    g1.zero_grad(), g2.zero_grad()
    gtn.backward(gtn.add(gtn.add(g1, g2), g1))
    assert (g1.grad().item(), g2.grad().item()) == (2.0, 1.0)
    nograd = gtn.scalar_graph(4.0, False)
    g1.zero_grad()
    gtn.backward(gtn.add(g1, nograd))
    assert g1.grad().item() == 1.0
    with pytest.raises(RuntimeError, match="disabled"):
        nograd.grad()


def test_clone_and_projections():
    g = build(3, [(0, 1, 0, 1, 2.0), (1, 2, 2, -1, 1.0), (0, 2, 1, 1, 3.0)])
    assert gtn.equal(gtn.clone(g), g)
    assert gtn.project_input(g).labels_to_list(False) == [0, 2, 1]
    assert gtn.project_output(g).labels_to_list() == [1, -1, 1]
    c = gtn.clone(g)
    gtn.backward(gtn.forward_score(c))
    assert gtn.equal(c.grad(), g.grad())  # the clone's gradient flows back to the original


@settings(max_examples=60, deadline=None)
@given(st.lists(dags(max_nodes=4, max_arcs=4), min_size=1, max_size=3))
def test_union_and_concat_against_core(gs):
    u = gtn.union(gs)
    assert u.num_nodes() == sum(g.num_nodes() for g in gs) and u.num_start() == sum(g.num_start() for g in gs)
    ref = core.forward_score(core.union(*[core_fsa(g) for g in gs]))
    assert gtn.forward_score(u).item() == pytest.approx(float(ref), abs=1e-4)
    c = gtn.concat(gs)
    ref = core.forward_score(core.concat(*[core_fsa(g) for g in gs]))
    assert gtn.forward_score(c).item() == pytest.approx(float(ref), abs=1e-4)
    # gradients of the union reach each member as its own posteriors, scaled by its share
    gtn.backward(gtn.forward_score(u))
    tot = gtn.forward_score(u).item()
    for g in gs:
        f = gtn.forward_score(copy(g)).item()
        share = math.exp(f - tot) if f > -math.inf else 0.0
        h = copy(g)
        gtn.backward(gtn.forward_score(h))
        np.testing.assert_allclose(g.grad().weights_to_list(),
                                   np.array(h.grad().weights_to_list()) * share if g.num_arcs() else [],
                                   atol=1e-4)


def test_concat_and_union_layout():
    one = build(1, [], starts=(0,), accepts=(0,))
    assert gtn.equal(gtn.concat([]), one)
    assert gtn.rand_equivalent(gtn.concat([one, one, one]), one)
    g1 = build(3, [(0, 1, 0, 0, 0.0), (0, 2, 1, 1, 0.0)], accepts=(1, 2))
    g2 = build(3, [(0, 2, 2, 2, 0.0), (1, 2, 3, 3, 0.0)], starts=(0, 1))
    c = gtn.concat(g1, g2)
    assert c.num_nodes() == 6 and c.num_arcs() == 8 and c.start() == [0] and c.accept() == [5]
    assert relation(c) == {((x, y), (x, y)): 0.0 for x in (0, 1) for y in (2, 3)}
    assert gtn.equal(gtn.union([g1]), g1) and gtn.equal(gtn.union([]), gtn.Graph())
    loop = build(1, [(0, 0, 2, 2, 0.0)], accepts=(0,))
    u = gtn.union([build(2, [(0, 1, 1, 1, 0.0)]), gtn.Graph(), loop])
    assert gtn.isomorphic(u, build(3, [(0, 1, 1, 1, 0.0), (2, 2, 2, 2, 0.0)], starts=(0, 2), accepts=(1, 2)))


def test_closure():
    assert gtn.equal(gtn.closure(gtn.Graph()), build(1, [], accepts=(0,)))
    g = build(4, [(0, 2, 0, 0, 0.0), (0, 3, 1, 2, 2.1), (1, 2, 0, 1, 1.0), (1, 3, 1, 3, 3.1)],
              starts=(0, 1), accepts=(2, 3))
    c = gtn.closure(g)
    assert c.num_nodes() == 5 and c.num_arcs() == 8 and c.start() == [0] and c.accept() == [0]
    # the closure's score of a string is that of the core's closure (composed with the string)
    for word in ([], [0], [1, 0], [0, 0, 1]):
        lin = gtn.Graph()
        for i in range(len(word) + 1):
            lin.add_node(i == 0, i == len(word))
        for i, x in enumerate(word):
            lin.add_arc(i, i + 1, x)
        got = gtn.forward_score(gtn.compose(lin, gtn.project_input(c))).item()
        lab = core.Fsa.from_str("\n".join([f"0 {s + 1} 0 0.0" for s in g.start()] +
                                          [f"{g.src_node(a) + 1} {g.dst_node(a) + 1} {g.ilabel(a) + 2} "
                                           f"{g.weights_to_list()[a]!r}" for a in range(g.num_arcs())] +
                                          [f"{a + 1} 5 -1 0.0" for a in g.accept()] + ["5"]) + "\n")
        ref = core.forward_score(core.compose(core.linear_fsa([x + 2 for x in word]), core.closure(lab)))
        assert got == pytest.approx(float(ref), abs=1e-4)


@settings(max_examples=100, deadline=None)
@given(dags(max_nodes=6, max_arcs=8, labels=2), st.data())
def test_remove_keeps_the_relation(g, data):
    """With weightless epsilon:epsilon arcs, remove keeps every (input, output) string pair and its best
    score (paths through several epsilon routes may merge, so log-sums may shrink, never the maxima)."""
    eps = gtn.epsilon
    w = g.weights_to_list()
    for a in range(g.num_arcs()):
        if g.ilabel(a) == eps and g.olabel(a) == eps:  # (eps:x and x:eps arcs are kept as they are)
            w[a] = 0.0
    g.set_weights(w)
    r = gtn.remove(g)
    assert all(not (r.ilabel(a) == eps and r.olabel(a) == eps) for a in range(r.num_arcs()))
    best = {}
    for arcs, sc in paths(g):
        key = (tuple(g.ilabel(a) for a in arcs if g.ilabel(a) != eps),
               tuple(g.olabel(a) for a in arcs if g.olabel(a) != eps))
        best[key] = max(best.get(key, -math.inf), sc)
    got = {}
    for arcs, sc in paths(r):
        key = (tuple(r.ilabel(a) for a in arcs if r.ilabel(a) != eps),
               tuple(r.olabel(a) for a in arcs if r.olabel(a) != eps))
        got[key] = max(got.get(key, -math.inf), sc)
    assert set(got) == set(best)
    for k in best:
        assert got[k] == pytest.approx(best[k], abs=1e-5)


def test_remove():
    eps = gtn.epsilon
    g = build(3, [(0, 1, eps, eps, 0.0), (1, 2, 0, 0, 0.0)], calc_grad=False)
    r = gtn.remove(g, eps)
    assert gtn.equal(r, build(2, [(0, 1, 0, 0, 0.0)])) and not r.calc_grad
    g = build(3, [(0, 1, 2, 1, 0.0), (1, 2, 0, 1, 0.0)])
    assert gtn.equal(gtn.remove(g, 2, 1), build(2, [(0, 1, 0, 1, 0.0)]))
    g = build(2, [(0, 1, 0, 1, 0.0), (0, 1, 1, 1, 0.0)])
    assert gtn.equal(gtn.remove(g), g)
    g = build(4, [(0, 1, 0, 0, 0.0), (0, 2, 1, 1, 0.0), (1, 3, eps, eps, 0.0), (2, 3, eps, eps, 0.0)])
    assert gtn.equal(gtn.remove(g), build(3, [(0, 1, 0, 0, 0.0), (0, 2, 1, 1, 0.0)], accepts=(1, 2)))
    g = build(5, [(0, 1, 0, 0, 0.0), (1, 2, eps, eps, 0.0), (2, 3, eps, eps, 0.0), (2, 4, 1, 1, 0.0),
                  (3, 4, 2, 2, 0.0), (1, 4, 0, 0, 0.0)])
    assert gtn.equal(gtn.remove(g), build(3, [(0, 1, 0, 0, 0.0), (1, 2, 0, 0, 0.0), (1, 2, 1, 1, 0.0),
                                               (1, 2, 2, 2, 0.0)]))
    # kept arcs keep their weights and gradients; weighted removed arcs are refused
    g = build(3, [(0, 1, eps, eps, 0.0), (1, 2, 0, 0, 1.5)])
    r = gtn.remove(g)
    assert r.weights_to_list() == [1.5]
    gtn.backward(gtn.forward_score(r))
    assert g.grad().weights_to_list() == [0.0, 1.0]
    with pytest.raises(ValueError, match="nonzero"):
        gtn.remove(build(3, [(0, 1, eps, eps, 0.5), (1, 2, 0, 0, 1.5)]))


# ---------------------------------------------------------------------------------------------- autograd
def test_backward_retain_graph_and_seed():
    g1, g2 = gtn.scalar_graph(3.0), gtn.scalar_graph(3.0)
    r = gtn.add(g1, g2)
    gtn.backward(r)
    with pytest.raises(ValueError, match="twice"):
        gtn.backward(r)
    g1.zero_grad(), g2.zero_grad()
    r = gtn.add(g1, g2)
    gtn.backward(r, True)
    g1.zero_grad(), g2.zero_grad(), r.zero_grad()
    gtn.backward(r, retain_graph=True)
    assert g1.grad().weights_to_list() == [1.0] and r.grad().item() == 1.0
    g1.zero_grad(), g2.zero_grad()
    deltas = build(2, [(0, 1, 0, 0, 7.0)])
    gtn.backward(gtn.add(g1, g2), deltas)
    assert (g1.grad().item(), g2.grad().item()) == (7.0, 7.0)
    # gradients accumulate until zero_grad
    gtn.backward(gtn.add(g1, g2))
    assert g1.grad().item() == 8.0


def test_calc_grad_flags():
    g1 = gtn.Graph(False)
    g1.calc_grad = True
    g1.add_node(True)
    g1.add_node(False, True)
    g1.add_arc(0, 1, 1, 1, 1.0)
    g2 = gtn.Graph(True)
    g2.calc_grad = False
    g2.add_node(True)
    g2.add_node(False, True)
    g2.add_arc(0, 0, 1, 1, 1.0)
    gtn.backward(gtn.add(g1, g2))
    assert g1.grad().item() == 1.0 and g1.is_grad_available()
    with pytest.raises(RuntimeError):
        g2.grad()
    g = gtn.linear_graph(2, 2)
    assert not g.is_grad_available()
    with pytest.raises(RuntimeError, match="not calculated"):
        g.grad()
    gtn.backward(gtn.forward_score(g))
    assert g.is_grad_available()


def test_numerical_gradient_of_a_viterbi_path_union():
    g = build(5, [(0, 1, 0, 0, 2), (0, 2, 1, 1, 1), (1, 2, 0, 0, 2), (2, 3, 0, 0, 1), (2, 3, 1, 1, 3),
                  (1, 4, 0, 0, 2), (2, 4, 1, 1, 3), (3, 4, 0, 0, 2)], starts=(0, 1), accepts=(3, 4))
    gtn.backward(gtn.viterbi_path(g))
    assert g.grad().weights_to_list() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    g.zero_grad()

    def fn(h):
        return gtn.forward_score(gtn.union([gtn.viterbi_path(h) for _ in range(3)]))

    gtn.backward(fn(g))
    w0 = g.weights_to_list()
    for a in range(g.num_arcs()):
        hi, lo = list(w0), list(w0)
        hi[a] += 1e-3
        lo[a] -= 1e-3
        h1, h2 = gtn.clone(g), gtn.clone(g)
        h1.set_weights(hi)
        h2.set_weights(lo)
        assert g.grad().weights_to_list()[a] == pytest.approx((fn(h1).item() - fn(h2).item()) / 2e-3, abs=1e-2)


def test_parallel_map_and_for():
    ins1 = [gtn.scalar_graph(k) for k in (1.0, 2.0, 3.0)]
    ins2 = [gtn.scalar_graph(k) for k in (1.0, 2.0, 3.0)]
    outs = gtn.parallel_map(gtn.add, ins1, ins2)
    assert [o.item() for o in outs] == [2.0, 4.0, 6.0]
    assert all(gtn.equal(o, gtn.negate(i)) for o, i in zip(gtn.parallel_map(gtn.negate, ins1), ins1))
    lists = [ins1, ins1]
    assert all(gtn.equal(o, gtn.concat(ins1)) for o in gtn.parallel_map(gtn.concat, lists))
    gtn.parallel_map(gtn.backward, outs, [gtn.scalar_graph(5.0)], [False])
    assert [g.grad().item() for g in ins1] == [5.0] * 3
    seen = []
    gtn.parallel_for(lambda b: seen.append(b), range(4))
    assert seen == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="lengths"):
        gtn.parallel_map(gtn.add, ins1, ins2[:2])


# ---------------------------------------------------------------------------------------------- rand, cmp
def test_sample_paths_and_gradients():
    g = build(3, [(0, 0, 0, 0, 0.0), (0, 1, 1, 1, 0.0), (1, 0, 2, 2, 0.0), (1, 2, 3, 3, 0.0)])
    random.seed(1)
    for _ in range(20):
        g.zero_grad()
        p = gtn.sample(g)
        labels = p.labels_to_list()
        assert labels and labels[-1] == 3  # every path ends with the arc into the accept node
        counts = [0.0] * 4
        for x in labels:
            counts[x] += 1
        gtn.backward(p)
        assert g.grad().weights_to_list() == counts
    assert gtn.sample(build(2, [(0, 1, 0, 0, 0.0)], accepts=())).num_nodes() == 0


def test_equal_isomorphic_rand_equivalent():
    g1 = build(2, [(0, 1, 0, 0, 0.0)])
    g2 = gtn.Graph()
    g2.add_node(False, True)
    g2.add_node(True)
    g2.add_arc(1, 0, 0)
    assert gtn.equal(g1, build(2, [(0, 1, 0, 0, 0.0)])) and not gtn.equal(g1, g2) and gtn.isomorphic(g1, g2)
    assert not gtn.isomorphic(g1, build(2, [(0, 1, 0, 0, 1.0)]))
    random.seed(2)
    a = build(3, [(0, 1, 0, 0, 1.0), (1, 2, 1, 1, 1.0)])
    b = build(2, [(0, 1, 0, 0, 0.5)])
    ab = gtn.concat(b, build(2, [(0, 1, 1, 1, 1.5)]))
    assert gtn.rand_equivalent(a, ab) and not gtn.isomorphic(a, ab)
    assert not gtn.rand_equivalent(a, gtn.concat(b, build(2, [(0, 1, 1, 1, 1.0)])))


# ---------------------------------------------------------------------------------------------- I/O
def test_text_and_binary_io(tmp_path):
    g = build(5, [(0, 1, 0, 0, 0.5), (0, 2, 1, 1, -1.25), (1, 2, 0, 0, 0.0), (1, 1, 1, 2, 2.1), (2, 3, 2, 2, 0.0)],
              starts=(0, 2), accepts=(4, 3))
    gtn.savetxt(tmp_path / "g.txt", g)
    assert gtn.isomorphic(gtn.loadtxt(tmp_path / "g.txt"), g)
    (tmp_path / "r.txt").write_text(repr(g))
    assert gtn.isomorphic(gtn.load(tmp_path / "r.txt"), g)
    gtn.save(tmp_path / "g.bin", g)
    back = gtn.load(tmp_path / "g.bin")
    assert gtn.equal(back, g) and back.weights_to_list() == g.weights_to_list()
    # facebookresearch/gtn's numbering on loading: start nodes, accept nodes, then the rest
    (tmp_path / "h.txt").write_text("0 1\n3 4\n0 1 0 0 2\n0 2 1 1 1\n1 2 0 0 2\n2 3 0 0 1\n")
    h = gtn.loadtxt(tmp_path / "h.txt")
    assert h.num_nodes() == 5 and h.start() == [0, 1] and h.accept() == [2, 3] and h.dst_node(1) == 4
    (tmp_path / "bad.txt").write_text("0\n1\n0 1\n")
    with pytest.raises(ValueError, match="line 3"):
        gtn.loadtxt(tmp_path / "bad.txt")
    gtn.draw(g, tmp_path / "g.dot", {0: "a", 1: "b", 2: "c", -1: "e"}, {0: "x", 1: "y", 2: "z"})
    dot = (tmp_path / "g.dot").read_text()
    assert dot.startswith("digraph FST") and '1 -> 1 [label = "b:z/2.1' in dot


# ---------------------------------------------------------------------------------------------- criterion
def test_ctc_loss_against_torch_and_composition():
    torch.manual_seed(0)
    T, C, blank = 6, 5, 4
    x = torch.randn(T, C)
    target = [0, 1, 1, 2]
    em = gtn.linear_graph(T, C)
    em.set_weights(x.flatten().tolist())
    loss = gtn.criterion.ctc_loss(em, target, blank)
    xt = x.clone().requires_grad_()
    lp = xt.log_softmax(1)
    ref = torch.nn.functional.ctc_loss(lp.unsqueeze(1), torch.tensor([target]), [T], [len(target)], blank=blank,
                                       reduction="sum")
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-4)
    gtn.backward(loss)
    np.testing.assert_allclose(em.grad().weights_to_list(), xt.grad.flatten().tolist(), atol=1e-5)
    with pytest.raises(ValueError, match="linear graph"):
        gtn.criterion.ctc_loss(build(2, [(0, 1, 0, 0, 0.0)], accepts=(0,)), [0], 1)
    with pytest.raises(ValueError, match="blank"):
        gtn.criterion.ctc_loss(em, [4], blank)


# ---------------------------------------------------------------------------------------------- devices
def test_devices():
    assert gtn.cuda.is_available() == torch.cuda.is_available()
    cpu = gtn.Device(gtn.CPU)
    g = gtn.linear_graph(2, 3)
    assert g.device() == cpu and not g.is_cuda() and not cpu.is_cuda()
    h = g.to(cpu)
    gtn.backward(gtn.forward_score(h))
    assert g.is_grad_available()
    with pytest.raises(ValueError):
        gtn.Device(7)
    assert gtn.linear_graph(2, 3, cpu).calc_grad and gtn.linear_graph(2, 3, False, device=cpu).device() == cpu
    assert not gtn.scalar_graph(1.0, False, cpu).calc_grad
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            g.to(gtn.Device(gtn.CUDA, 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_cuda_graphs_score_like_cpu():
    g = build(3, [(0, 1, 0, 0, 1.0), (0, 1, 1, 1, 2.0), (1, 2, 0, 0, 0.5)])
    d = g.to(gtn.Device(gtn.CUDA, 0))
    assert d.is_cuda() and d.device().is_cuda()
    f = gtn.forward_score(gtn.compose(d, gtn.project_input(d)))
    gtn.backward(f)
    fc = gtn.forward_score(gtn.compose(g, gtn.project_input(g)))
    assert f.item() == pytest.approx(fc.item(), abs=1e-5)
    assert g.is_grad_available()  # the gradient crossed back from the device


# ---------------------------------------------------------------------------------------------- docs, examples
def test_porting_example_in_docs_runs():
    text = (ROOT / "docs" / "compat.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    port = [b for b in blocks if "import gtn.compat as gtn" in b]
    assert port, "docs/compat.md lost its porting example"
    for b in port:
        exec(compile(b, "docs/compat.md", "exec"), {})


def test_examples_train_and_loss_goes_down():
    import importlib.util
    for name in ("compat_asg", "compat_transducer"):
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        losses = mod.train(steps=8, seed=0)
        assert len(losses) == 8 and losses[-1] < losses[0] * 0.9, (name, losses)
