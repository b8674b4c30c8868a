"""Laws of gtn.topology: find_cycle, state_batches, top_sort, arc_sort, connect (against plain-Python BFS/DFS)."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import gtn
from gtn.topology import accessible, coaccessible, find_cycle, state_batches
from strategies import (accessible_oracle, coaccessible_oracle, enumerate_paths, find_cycle_oracle, fsa_vecs,
                        fsas, members)

SMALL = dict(max_states=14, max_fsas=3)
LAW = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


def _path_multiset(fsa, attr="idx"):
    """Successful paths as sorted tuples of (labels, original arc ids via attribute, score)."""
    out = []
    lab = fsa.labels.tolist()
    ids = getattr(fsa, attr).tolist()
    for p, s in enumerate_paths(fsa):
        out.append((tuple(lab[i] for i in p), tuple(ids[i] for i in p), s))
    return sorted(out)


@LAW
@given(fsa_vecs(acyclic=False, force_cycle=True, transducer=None, **SMALL))
def test_find_cycle_names_a_state_on_a_cycle(v):
    for i, f in enumerate(members(v)):
        on = find_cycle_oracle(f)
        r = find_cycle(f)
        assert (r is None) == (not on)
        if r is not None:
            assert r in on
            assert not f.is_acyclic
        else:
            assert f.is_acyclic
    r = find_cycle(v)
    if r is None:
        assert all(not find_cycle_oracle(f) for f in v)
    else:
        assert r[1] in find_cycle_oracle(v[r[0]])


@LAW
@given(fsa_vecs(top_sorted=False, transducer=None, **SMALL))
def test_state_batches_are_a_topological_layering(v):
    batches = state_batches(v)
    level = torch.full((v.total_states,), -1, dtype=torch.int64)
    for k, b in enumerate(batches):
        assert bool((level[b] == -1).all())  # each state in exactly one batch
        level[b] = k
    assert bool((level >= 0).all())
    if v.num_arcs:
        assert bool((level[v.src_global] < level[v.dst_global]).all())
        # depth: every state of batch k > 0 has an entering arc from batch k-1
        has_prev = torch.zeros(v.total_states, dtype=torch.bool)
        tight = level[v.src_global] == level[v.dst_global] - 1
        has_prev[v.dst_global[tight]] = True
        assert bool((has_prev | (level == 0)).all())


@LAW
@given(fsa_vecs(acyclic=False, force_cycle=True, max_states=12, max_fsas=3))
def test_state_batches_cyclic_raises_naming_state_and_member(v):
    r = find_cycle(v)
    if r is None:
        return
    with pytest.raises(gtn.FsaError, match=rf"FSA {r[0]} of the batch: state {r[1]} lies on a cycle"):
        state_batches(v)


@LAW
@given(fsa_vecs(top_sorted=False, transducer=None, attr=True, **SMALL))
def test_top_sort_keeps_paths_and_sorts(v):
    v.set_attr("gidx", torch.arange(v.num_arcs))
    s = gtn.top_sort(v)
    assert isinstance(s, gtn.FsaVec) and s.is_top_sorted
    assert torch.equal(s.num_states, v.num_states)
    for a, b in zip(v, s):
        assert _path_multiset(a) == _path_multiset(b)
    # scores and attributes follow the arc map
    assert torch.equal(s.scores, v.scores[s.gidx]) and torch.equal(s.seg, v.seg[s.gidx])
    if v.aux_labels is not None:
        assert torch.equal(s.aux_labels, v.aux_labels[s.gidx])


@LAW
@given(fsas(top_sorted=False))
def test_top_sort_fsa_returns_fsa(f):
    s = gtn.top_sort(f)
    assert isinstance(s, gtn.Fsa) and s.is_top_sorted and s.num_states == f.num_states


def test_top_sort_cyclic_raises():
    f = gtn.Fsa([(0, 1, 1), (1, 2, 2), (2, 1, 3), (2, 3, -1)])
    with pytest.raises(gtn.FsaError, match="state [12] lies on a cycle"):
        gtn.top_sort(f)


@LAW
@given(fsa_vecs(acyclic=False, transducer=None, attr=True, **SMALL))
def test_arc_sort(v):
    v.set_attr("gidx", torch.arange(v.num_arcs))
    s = gtn.arc_sort(v)
    assert s.is_arc_sorted
    assert torch.equal(s.arc_splits, v.arc_splits) and torch.equal(s.state_splits, v.state_splits)
    # a permutation of the arcs within each state; everything follows
    g = s.gidx
    assert sorted(g.tolist()) == list(range(v.num_arcs))
    assert torch.equal(s.arcs, v.arcs[g]) and torch.equal(s.scores, v.scores[g]) and torch.equal(s.seg, v.seg[g])
    assert torch.equal(s.src_global, v.src_global[g])
    if v.aux_labels is not None:
        assert torch.equal(s.aux_labels, v.aux_labels[g])
    # k2's order by brute force: per state, (label as unsigned 32-bit, dst), stable
    u = lambda l: l % 2 ** 32  # noqa: E731
    want = sorted(range(v.num_arcs), key=lambda i: (int(v.src_global[i]), u(int(v.labels[i])), int(v.arcs[i, 1]), i))
    assert g.tolist() == want
    # is_arc_sorted is the same order: sorted exactly when arc_sort changes nothing
    assert v.is_arc_sorted == (want == list(range(v.num_arcs)))


def test_arc_sort_puts_final_arcs_last_as_k2():
    """k2 compares labels as unsigned 32-bit integers: epsilon 0 first, the final label -1 last (k2.intersect
    refuses arcs sorted with -1 first)."""
    f = gtn.Fsa([(0, 2, -1, 0.5), (0, 1, 3, 1.0), (0, 1, 0, 2.0), (1, 2, -1, 0.0)])
    s = gtn.arc_sort(f)
    assert s.arcs[:3, 2].tolist() == [0, 3, -1] and s.scores[:3].tolist() == [2.0, 1.0, 0.5]
    assert s.is_arc_sorted and not f.is_arc_sorted


@LAW
@given(fsa_vecs(acyclic=False, transducer=None, attr=True, **SMALL))
def test_connect_keeps_exactly_useful_states(v):
    v.set_attr("gidx", torch.arange(v.num_arcs))
    c = gtn.connect(v)
    assert isinstance(c, gtn.FsaVec) and len(c) == len(v)
    acc, co = accessible(v), coaccessible(v)
    for i, (f, g) in enumerate(zip(v, c)):
        a, b = accessible_oracle(f), coaccessible_oracle(f)
        s0 = int(v.state_splits[i])
        assert acc[s0:s0 + f.num_states].tolist() == a
        assert co[s0:s0 + f.num_states].tolist() == b
        keep = [x and y for x, y in zip(a, b)]
        if f.num_states == 0 or not (keep[0] and keep[-1]):
            assert g.num_states == 0 and g.num_arcs == 0
            continue
        assert g.num_states == sum(keep)
        old = [s for s in range(f.num_states) if keep[s]]
        # each kept arc is an arc between kept states, renumbered in order; all such arcs are kept
        want = [j for j, (s, d, _) in enumerate(f.arcs.tolist()) if keep[s] and keep[d]]
        got = (g.gidx - int(v.arc_splits[i])).tolist()
        assert sorted(got) == want
        for (s, d, l), j in zip(g.arcs.tolist(), got):
            fs, fd, fl = f.arcs[j].tolist()
            assert (old[s], old[d], l) == (fs, fd, fl)
        assert torch.equal(g.scores, f.scores[got])
        # the result is trim: everything accessible and co-accessible
        assert all(accessible_oracle(g)) and all(coaccessible_oracle(g))


@LAW
@given(fsas(max_paths=100, max_states=14))
def test_connect_keeps_the_paths(f):
    f.set_attr("idx", torch.arange(f.num_arcs))
    g = gtn.connect(f)
    assert isinstance(g, gtn.Fsa)
    assert _path_multiset(f) == _path_multiset(g)


def test_connect_no_path_gives_empty_fsa():
    f = gtn.Fsa([(0, 1, 1, 0.5), (1, 2, 2, 0.1)], num_states=4)  # nothing enters final state 3
    g = gtn.connect(f)
    assert g.num_states == 0 and g.num_arcs == 0
    empty = gtn.Fsa(torch.zeros(0, 3, dtype=torch.int64), num_states=0)
    assert gtn.connect(empty).num_states == 0


def test_connect_cyclic_example():
    # 0 -> 1 <-> 2 -> 6 (final); 3 is a dead end; 4 is isolated; 5 is not accessible
    f = gtn.Fsa([(0, 1, 1), (1, 2, 2), (2, 1, 3), (2, 6, -1), (1, 3, 4), (5, 2, 5)], num_states=7)
    g = gtn.connect(f)
    assert g.num_states == 4
    assert g.arcs.tolist() == [[0, 1, 1], [1, 2, 2], [2, 1, 3], [2, 3, -1]]


@LAW
@given(fsa_vecs(acyclic=False, transducer=None, **SMALL) | fsa_vecs(top_sorted=False, **SMALL))
def test_kahn_numba_and_torch_agree(v):
    from gtn.kernels import topology_numba
    from gtn.topology import _kahn_torch
    assert topology_numba.available(), "numba (a dependency of torch-gtn) does not import"
    lt = _kahn_torch(v)
    ln = topology_numba.levels(v)
    assert torch.equal(lt, ln)
    assert bool((lt < 0).any()) == (find_cycle(v) is not None)


@LAW
@given(fsa_vecs(acyclic=False, transducer=None, **SMALL) | fsa_vecs(top_sorted=False, **SMALL))
def test_reachable_numba_and_torch_agree(v):
    from gtn.kernels import topology_numba
    from gtn.topology import _reachable_torch
    assert topology_numba.available(), "numba (a dependency of torch-gtn) does not import"
    starts, finals = v.start_states, v.final_states
    for seeds, forward in ((starts[starts >= 0], True), (finals[finals >= 0], False),
                           (torch.arange(v.total_states)[::3], True), (torch.arange(v.total_states)[1::4], False)):
        assert torch.equal(_reachable_torch(v, seeds, forward), topology_numba.reachable(v, seeds, forward))
