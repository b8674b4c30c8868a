"""gtn.fsa: construction, validation (every rule raises FsaError naming the arc / FSA), properties, dtype and
autograd plumbing, per-arc attributes through arc maps, FsaVec batching."""
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gtn
from gtn.fsa import as_vec, from_arcs, index_arcs, like, per_fsa, ragged_range, validate
from strategies import find_cycle_oracle, fsa_vecs, fsas

LAW = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------------- construction
def test_from_tensors_and_lists_agree():
    arcs = torch.tensor([[0, 1, 3], [0, 1, 4], [1, 2, -1]])
    a = gtn.Fsa(arcs, torch.tensor([0.5, 1.0, -2.0]))
    b = gtn.Fsa([(0, 1, 3, 0.5), (0, 1, 4, 1.0), (1, 2, -1, -2.0)])
    c = gtn.Fsa([(0, 1, 3), (0, 1, 4), (1, 2, -1)], scores=[0.5, 1.0, -2.0])
    assert a == b == c
    assert a.num_states == 3 and a.num_arcs == 3 and a.dtype == torch.float32 and a.is_acceptor
    assert a.labels.tolist() == [3, 4, -1] and a.arcs.dtype == torch.int64
    d = gtn.Fsa(arcs.to(torch.int32), dtype=torch.float64)
    assert d.arcs.dtype == torch.int64 and d.dtype == torch.float64 and d.scores.tolist() == [0.0, 0.0, 0.0]
    t = gtn.Fsa(arcs, aux_labels=[7, 8, -1])
    assert not t.is_acceptor and t.aux_labels.tolist() == [7, 8, -1]
    e = gtn.Fsa([(0, 1, 2)], num_states=4)  # extra states beyond the last arc; the final state is 3
    assert e.num_states == 4
    with pytest.raises(gtn.FsaError, match="does not enter the final state 3"):
        gtn.Fsa([(0, 1, -1)], num_states=4)


def test_sorting_by_source_state_keeps_scores_and_attrs():
    arcs = [(1, 3, -1), (0, 1, 5), (2, 3, -1), (0, 2, 6), (1, 2, 7)]
    f = gtn.Fsa(arcs, scores=[1.0, 2.0, 3.0, 4.0, 5.0], aux_labels=[-1, 50, -1, 60, 70],
                seg=torch.tensor([10, 20, 30, 40, 50]))
    assert f.arcs[:, 0].tolist() == [0, 0, 1, 1, 2]
    # stable: within a source state the given order is kept; everything else follows the arcs
    assert f.arcs.tolist() == [[0, 1, 5], [0, 2, 6], [1, 3, -1], [1, 2, 7], [2, 3, -1]]
    assert f.scores.tolist() == [2.0, 4.0, 1.0, 5.0, 3.0]
    assert f.aux_labels.tolist() == [50, 60, -1, 70, -1]
    assert f.seg.tolist() == [20, 40, 10, 50, 30]


def test_sorting_keeps_autograd():
    s = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    f = gtn.Fsa([(1, 2, -1), (0, 1, 4), (0, 2, -1)], s)
    (f.scores * torch.tensor([1.0, 10.0, 100.0])).sum().backward()
    assert s.grad.tolist() == [100.0, 1.0, 10.0]


# ---------------------------------------------------------------------------------------------------- validation
BAD = [
    (dict(arcs=[(0, 5, 1, 0.0), (1, 2, -1, 0.0)], num_states=3), r"arc 0 \(0 -> 5\) refers to a state that does not exist"),
    (dict(arcs=[(0, 1, 1, 0.0), (-1, 2, -1, 0.0)]), r"arc 1 \(-1 -> 2\) refers to a state that does not exist"),
    (dict(arcs=[(0, 1, -1, 0.0), (1, 2, -1, 0.0)]), r"arc 0 \(0 -> 1\) has label -1 but does not enter the final state 2"),
    (dict(arcs=[(0, 1, 1, 0.0), (1, 2, 4, 0.0)]), r"arc 1 \(1 -> 2\) enters the final state 2 with label 4"),
    (dict(arcs=[(0, 1, 1, float("nan")), (1, 2, -1, 0.0)]), r"arc 0 \(0 -> 1\) has a NaN score"),
    (dict(arcs=[(0, 1, 1, float("inf")), (1, 2, -1, 0.0)]), r"arc 0 \(0 -> 1\) has score \+inf"),
    (dict(arcs=[(0, 1, -2, 0.0), (1, 2, -1, 0.0)]), r"arc 0 has label -2"),
    (dict(arcs=[(0, 1, -1, 0.0)], num_states=1), r"refers to a state that does not exist"),
    (dict(arcs=[(0, 0, 1, 0.0)], num_states=1), r"needs at least 2 states"),
    (dict(arcs=torch.zeros(0, 3, dtype=torch.int64), num_states=-1), r"num_states must be >= 0, got -1"),
    (dict(arcs=[(0, 1, 1), (1, 2, -1)], aux_labels=[3, 0]), r"arc 1 enters the final state with aux_label 0"),
    (dict(arcs=[(0, 1, 1), (1, 2, -1)], aux_labels=[-1, -1]), r"arc 0 has aux_label -1"),
    (dict(arcs=torch.zeros(2, 3)), r"arcs must be an integer tensor"),
    (dict(arcs=torch.tensor([[0, 1, -1]]), scores=torch.tensor([1])), r"scores must be a floating tensor"),
    (dict(arcs=torch.tensor([[0, 1, -1]]), aux_labels=torch.tensor([-1.0])), r"aux_labels must be an integer tensor"),
    (dict(arcs=torch.tensor([[0, 1]])), r"arcs must have shape \[num_arcs, 3\]"),
    (dict(arcs=torch.tensor([[0, 1, -1]]), scores=torch.zeros(2)), r"scores must have shape \[num_arcs\]=\[1\]"),
    (dict(arcs=torch.tensor([[0, 1, -1]]), aux_labels=torch.tensor([-1, 2])), r"aux_labels must have shape \[1\]"),
    (dict(arcs=torch.tensor([[0, 1, -1]]), seg=torch.zeros(3)), r"per-arc attribute 'seg' must have first dimension num_arcs=1"),
    (dict(arcs=[(0, 1, 1), (1, 2, -1, 0.5)]), r"mixed arc tuple lengths"),
    (dict(arcs=[(0, 1)]), r"each arc is \(src, dst, label\)"),
    (dict(arcs=[(0, 1.5, -1)]), r"must be integers"),
    (dict(arcs=[(0, 1, -1, 0.0)], scores=[0.0]), r"scores given twice"),
]


@pytest.mark.parametrize("kwargs,msg", BAD, ids=[m for _, m in BAD])
def test_bad_input_raises_fsa_error(kwargs, msg):
    with pytest.raises(gtn.FsaError, match=msg):
        gtn.Fsa(**kwargs)
    assert issubclass(gtn.FsaError, ValueError)


def test_leaving_the_final_state_is_refused():
    # an arc out of the final state can only be written with label -1 into the final state itself
    with pytest.raises(gtn.FsaError, match="leaves the final state 2"):
        gtn.Fsa([(0, 2, -1, 0.0), (2, 2, -1, 0.0)])


def test_batch_errors_name_the_member():
    acc = gtn.Fsa([(0, 1, -1, 0.0)])
    tr = gtn.Fsa([(0, 1, -1, 0.0)], aux_labels=[-1])
    with pytest.raises(gtn.FsaError, match="all be acceptors or all transducers; member 2 differs from member 0"):
        gtn.FsaVec([acc, acc, tr])
    with pytest.raises(gtn.FsaError, match=r"member 1 has attributes \['seg'\], member 0 has \[\]"):
        gtn.FsaVec([acc, gtn.Fsa([(0, 1, -1, 0.0)], seg=torch.tensor([1]))])
    with pytest.raises(gtn.FsaError, match="member 1 is list"):
        gtn.FsaVec([acc, [acc]])
    with pytest.raises(gtn.FsaError, match="at least one FSA"):
        gtn.FsaVec([])
    # a batch assembled by an algorithm (no checks) is checked by `validate`, which names the member
    arcs = torch.tensor([[0, 1, -1], [0, 1, 2], [1, 2, 2]])
    bad = from_arcs(arcs, torch.zeros(3), torch.tensor([0, 1, 3]), torch.tensor([0, 2, 5]))
    with pytest.raises(gtn.FsaError, match=re.escape("FSA 1 of the batch: arc 1 (1 -> 2) enters the final state 2 "
                                                     "with label 2")):
        validate(bad)
    with pytest.raises(gtn.FsaError, match="has a NaN score"):
        validate(from_arcs(arcs[:1], torch.tensor([float("nan")]), torch.tensor([0, 1]), torch.tensor([0, 2])))


@LAW
@given(fsa_vecs(max_fsas=4, max_states=10, transducer=None, attr=True, acyclic=False))
def test_random_graphs_validate(v):
    validate(v)
    for i, m in enumerate(v):
        validate(m)
        # breaking one arc of one member is reported for that member
        if m.num_arcs and m.num_states > 2:
            arcs = v.arcs.clone()
            j = int(v.arc_splits[i])
            arcs[j, 1] = m.num_states + 3
            broken = from_arcs(arcs, v.scores, v.arc_splits, v.state_splits, v.aux_labels)
            with pytest.raises(gtn.FsaError, match=f"FSA {i} of the batch: arc 0 .*does not exist"):
                validate(broken)
            break


# ---------------------------------------------------------------------------------------------------- properties
def test_properties():
    f = gtn.Fsa([(0, 1, 2), (0, 1, 1), (1, 2, -1)])
    assert f.is_top_sorted and f.is_acyclic and not f.is_arc_sorted
    g = gtn.Fsa([(0, 1, 1), (0, 1, 2), (1, 2, -1)])
    assert g.is_arc_sorted
    h = gtn.Fsa([(0, 2, 1), (2, 1, 1), (1, 3, -1)])
    assert not h.is_top_sorted and h.is_acyclic
    c = gtn.Fsa([(0, 1, 1), (1, 0, 1), (1, 2, -1)])
    assert not c.is_acyclic and not c.is_top_sorted
    # state 1: label 1 then -1, which is k2's order (labels compared as unsigned: -1 last)
    assert c.properties == {"acyclic": False, "top_sorted": False, "arc_sorted": True, "acceptor": True}
    assert not gtn.Fsa([(0, 2, -1), (0, 1, 1), (1, 2, -1)]).is_arc_sorted
    v = gtn.FsaVec([f, c, g])
    assert v.num_states.tolist() == [3, 3, 3] and v.num_arcs == 9 and len(v) == 3
    assert not v.is_acyclic and v.total_states == 9
    assert v.start_states.tolist() == [0, 3, 6] and v.final_states.tolist() == [2, 5, 8]
    empty = gtn.Fsa(torch.zeros(0, 3, dtype=torch.int64), num_states=0)
    assert empty.num_states == 0 and empty.num_arcs == 0 and empty.is_acyclic
    assert as_vec(empty).start_states.tolist() == [-1]


@LAW
@given(fsas(max_states=10, acyclic=False, max_arcs=15))
def test_acyclic_flag_matches_oracle(f):
    assert f.is_acyclic == (not find_cycle_oracle(f))
    assert f.is_top_sorted == all(s < d for s, d, _ in f.arcs.tolist())


# ---------------------------------------------------------------------------------------------------- tensors
def test_to_dtype_requires_grad_and_detach():
    f = gtn.Fsa([(0, 1, 3, 0.5), (1, 2, -1, 0.25)], w=torch.tensor([1.0, 2.0]), k=torch.tensor([1, 2]))
    f.requires_grad_()
    assert f.requires_grad and f.scores.is_leaf
    d = f.to(torch.float64)
    assert d.dtype == torch.float64 and d.w.dtype == torch.float64 and d.k.dtype == torch.int64
    assert d.arcs.dtype == torch.int64
    (d.scores * torch.tensor([2.0, 3.0], dtype=torch.float64)).sum().backward()
    assert f.grad.tolist() == [2.0, 3.0]  # the float64 copy stays connected to the float32 leaf
    assert f.double().dtype == torch.float64 and f.double().float().dtype == torch.float32
    assert f.to("cpu").device.type == "cpu" and f.cpu() == f
    assert not f.detach().requires_grad and f.detach() == f
    c = f.clone()
    assert c == f and c.scores.data_ptr() != f.scores.data_ptr()
    with pytest.raises(gtn.FsaError, match="floating point"):
        f.to(torch.int64)


def test_attributes():
    f = gtn.Fsa([(0, 1, 3, 0.5), (1, 2, -1, 0.25)])
    f.seg = torch.tensor([4, 5])
    f.set_attr("emb", torch.ones(2, 3))
    assert sorted(f.attrs) == ["emb", "seg"] and f.seg.tolist() == [4, 5]
    with pytest.raises(gtn.FsaError, match="first dimension num_arcs=2"):
        f.bad = torch.zeros(3)
    with pytest.raises(gtn.FsaError, match="reserved"):
        f.set_attr("labels", torch.zeros(2))
    with pytest.raises(AttributeError, match="structural"):
        f.arcs = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(gtn.FsaError, match="floating"):
        f.scores = torch.tensor([1, 2])
    del f.seg
    assert "seg" not in f.attrs
    with pytest.raises(AttributeError):
        f.seg
    f.note = "a plain Python attribute"  # non-tensors are ordinary attributes, not per-arc ones
    assert "note" not in f.attrs


def test_derive_moves_scores_aux_and_attributes_through_the_arc_map():
    s = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    f = gtn.Fsa([(0, 1, 5), (0, 1, 6), (1, 2, -1)], s, aux_labels=[50, 60, -1], seg=torch.tensor([7, 8, 9]),
                emb=torch.arange(6.0).view(3, 2))
    arc_map = torch.tensor([1, -1, 2, 1])
    arcs = torch.tensor([[0, 1, 6], [0, 1, 0], [1, 3, -1], [2, 3, 6]])
    out = f._derive(arcs, arc_map, torch.tensor([0, 4]), torch.tensor([0, 4]))
    assert isinstance(out, gtn.Fsa)
    assert out.scores.tolist() == [2.0, 0.0, 3.0, 2.0]
    assert out.aux_labels.tolist() == [60, 0, -1, 60]
    assert out.seg.tolist() == [8, 0, 9, 8] and out.emb.tolist() == [[2, 3], [0, 0], [4, 5], [2, 3]]
    out.scores.sum().backward()
    assert s.grad.tolist() == [0.0, 2.0, 1.0]
    assert index_arcs(torch.zeros(0), torch.tensor([-1, -1]), 7).tolist() == [7, 7]


def test_helpers():
    assert ragged_range(torch.tensor([5, 0, 10]), torch.tensor([2, 0, 3])).tolist() == [5, 6, 10, 11, 12]
    f = gtn.Fsa([(0, 1, -1, 0.0)])
    v = gtn.FsaVec([f, f])
    assert per_fsa(torch.tensor([3.0]), f).shape == () and per_fsa(torch.tensor([3.0, 4.0]), v).shape == (2,)
    assert isinstance(like(as_vec(f), f), gtn.Fsa) and like(v, v) is v


# ---------------------------------------------------------------------------------------------------- FsaVec
def test_fsavec_len_index_iter_slices():
    fs = [gtn.Fsa([(0, 1, i + 1, float(i)), (1, 2, -1, 0.0)], seg=torch.tensor([i, i])) for i in range(4)]
    fs[2] = gtn.Fsa(torch.zeros(0, 3, dtype=torch.int64), num_states=0, seg=torch.zeros(0, dtype=torch.int64))
    v = gtn.FsaVec(fs)
    assert len(v) == 4 and v.num_states.tolist() == [3, 3, 0, 3]
    assert all(a == b for a, b in zip(v, fs)) and list(v) == fs
    assert v[-1] == fs[3] and v[2].num_states == 0
    with pytest.raises(IndexError):
        v[4]
    s = v[1:4:2]
    assert isinstance(s, gtn.FsaVec) and list(s) == [fs[1], fs[3]]
    t = v[torch.tensor([3, 0, 3])]
    assert list(t) == [fs[3], fs[0], fs[3]]
    with pytest.raises(gtn.FsaError, match="at least one"):
        v[3:1]
    with pytest.raises(gtn.FsaError, match="out of range"):
        v[torch.tensor([7])]
    assert "FsaVec(4 acceptors" in repr(v) and "Fsa(acceptor" in repr(fs[0])


def test_fsavec_dtype_promotion_and_gradients():
    a = gtn.Fsa([(0, 1, 1, 0.5), (1, 2, -1, 0.0)]).requires_grad_()
    b = gtn.Fsa([(0, 1, -1, 2.0)], dtype=torch.float64).requires_grad_()
    v = gtn.FsaVec([a, b])
    assert v.dtype == torch.float64
    # from the batch back to the members
    (v.scores * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
    assert a.grad.tolist() == [1.0, 2.0] and b.grad.tolist() == [3.0]
    # from a member slice back to the batch's scores
    w = gtn.FsaVec([a.detach(), a.detach(), b.detach().float()]).requires_grad_()
    (w[1].scores.sum() + 10 * w[2:][0].scores.sum()).backward()
    assert w.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 10.0]


@LAW
@given(fsa_vecs(max_fsas=5, max_states=10, transducer=None, attr=True), st.data())
def test_fsavec_members_round_trip(v, data):
    members = list(v)
    assert gtn.FsaVec(members) == v
    idx = data.draw(st.lists(st.integers(0, len(v) - 1), min_size=1, max_size=6))
    sel = v[torch.tensor(idx)]
    assert list(sel) == [members[i] for i in idx]
    assert int(sel.arc_splits[-1]) == sum(m.num_arcs for m in sel)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(-2, 5), st.integers(-2, 5), st.integers(-2, 4)), max_size=7),
       st.lists(st.sampled_from([0.0, 1.5, -2.0, float("-inf")]), min_size=7, max_size=7),
       st.one_of(st.none(), st.integers(-1, 7)), st.booleans())
def test_whatever_the_constructor_accepts_every_verb_takes(arcs, scores, num_states, transducer):
    """Arbitrary arc lists: the constructor accepts them or raises `FsaError`; whatever it accepts (isolated
    states, states beyond the last arc, no arcs at all) goes through the verbs without an exception other than
    `FsaError` and without a NaN."""
    a = torch.tensor(arcs, dtype=torch.int64).view(-1, 3)
    kw = {} if num_states is None else {"num_states": num_states}
    try:
        f = gtn.Fsa(a, torch.tensor(scores[:len(arcs)]), a[:, 2].clone() if transducer else None, **kw)
    except gtn.FsaError:
        return
    for verb in (gtn.forward_score, gtn.viterbi_score, gtn.connect, gtn.remove_epsilon, gtn.closure,
                 lambda x: gtn.compose(x, x), lambda x: gtn.viterbi_path(x), lambda x: x.to_str()):
        try:
            out = verb(f)
        except gtn.FsaError:  # e.g. scoring a cyclic graph: refused with a reason
            continue
        if isinstance(out, torch.Tensor):
            assert not bool(torch.isnan(out).any())
        elif isinstance(out, gtn.Fsa):
            assert not bool(torch.isnan(out.scores).any())
