"""Structural operations: union, concat, closure, remove_epsilon, invert, project.

Every operation builds its output arcs from input arcs and records, for each output arc, the input arc it came
from (the *arc map*, ``-1`` for arcs that did not exist in the input, which get score 0). Scores, ``aux_labels``
and every extra per-arc attribute follow by indexing (`Fsa._derive`), so autograd needs no custom code.
All operations take an `Fsa` or an `FsaVec` and are vectorized over the whole batch: each is a handful of
tensor ops over all arcs of all members at once, with output positions computed arithmetically (no Python
loop over arcs, states or members; `remove_epsilon`'s torch path loops only over the lengths of epsilon
paths, and on CPU a numba kernel does the whole removal in one call, `gtn.kernels.structure_numba`).

The outputs keep k2's conventions: state 0 is the start state, the last state is the single final state, only
``-1`` arcs enter it, arcs are sorted by source state. New arcs use label 0 (epsilon), with ``aux_label`` 0 on
transducers.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch

from .fsa import Fsa, FsaError, FsaVec, _concat_arc_data, as_vec, like, ragged_range, select

__all__ = ["union", "concat", "closure", "remove_epsilon", "invert", "project"]

Graph = Union[Fsa, FsaVec]


# ---------------------------------------------------------------------------------------------------- helpers
def _splits(counts: torch.Tensor) -> torch.Tensor:
    """Row splits ``[0, c0, c0+c1, ...]`` from counts."""
    out = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    out[1:] = torch.cumsum(counts, 0)
    return out


def _exclusive_cumsum(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def _place(total: int, parts) -> List[torch.Tensor]:
    """Output columns of ``total`` arcs assembled from ``parts = [(positions, [col0, col1, ...]), ...]`` by
    scattering each part to its computed positions (``out[pos] = col``): arc order without a sort."""
    outs = []
    for c in range(len(parts[0][1])):
        ref = parts[0][1][c]
        out = torch.empty(total, dtype=ref.dtype, device=ref.device)
        for pos, cols in parts:
            out[pos] = cols[c]
        outs.append(out)
    return outs


def _promote(v: FsaVec) -> FsaVec:
    """An acceptor seen as the transducer with ``aux_labels == labels`` (for mixing kinds in union/concat)."""
    if v.aux_labels is not None:
        return v
    return FsaVec._from_parts(v.arcs, v.scores, v.arc_splits, v.state_splits, v.labels.clone(), v._attrs)


def _cat(vecs: Sequence[FsaVec]) -> FsaVec:
    """Concatenate batches (members of ``vecs[0]``, then of ``vecs[1]``, ...) in one `FsaVec`.

    Scores are promoted to a common dtype and stay connected for autograd. Acceptors are promoted to
    transducers when the kinds are mixed. A per-arc attribute that only some operands have is filled with 0
    on the arcs of the others (as k2 fills arcs that have no source); its trailing shape must agree."""
    vecs = list(vecs)
    if any(v.aux_labels is not None for v in vecs):
        vecs = [_promote(v) for v in vecs]
    proto = {}
    for i, v in enumerate(vecs):
        for k, t in v._attrs.items():
            if k not in proto:
                proto[k] = (i, t)
            elif tuple(t.shape[1:]) != tuple(proto[k][1].shape[1:]):
                raise FsaError(f"attribute {k!r} has per-arc shape {tuple(t.shape[1:])} in operand {i} but "
                               f"{tuple(proto[k][1].shape[1:])} in operand {proto[k][0]}")
    names = set(proto)
    if any(set(v._attrs) != names for v in vecs):
        filled = []
        for v in vecs:
            attrs = dict(v._attrs)
            for k, (_, t) in proto.items():
                if k not in attrs:
                    attrs[k] = torch.zeros((v.num_arcs,) + tuple(t.shape[1:]), dtype=t.dtype, device=v.device)
            filled.append(FsaVec._from_parts(v.arcs, v.scores, v.arc_splits, v.state_splits, v.aux_labels, attrs))
        vecs = filled
    if len(vecs) == 1:
        return vecs[0]
    dev = vecs[0].device
    arcs, scores, aux, attrs = _concat_arc_data(vecs, names)
    arc_splits = _splits(torch.cat([v.arcs_per_fsa.to(dev) for v in vecs]))
    state_splits = _splits(torch.cat([v.states_per_fsa.to(dev) for v in vecs]))
    return FsaVec._from_parts(arcs, scores, arc_splits, state_splits, aux, attrs)


def _build(v: FsaVec, src_local, dst_local, labels, arc_map, arc_fsa, num_states, eps_mask=None,
           scores=None) -> FsaVec:
    """Assemble the output batch from per-arc columns (already sorted by (member, src)).

    ``eps_mask`` marks arcs that came from an input arc but are relabelled epsilon: their aux_label becomes 0.
    Arcs with ``arc_map == -1`` get score 0, aux_label 0 and attribute value 0 (via `index_arcs`)."""
    arcs = torch.stack([src_local, dst_local, labels], 1) if labels.numel() else \
        torch.zeros(0, 3, dtype=torch.int64, device=v.device)
    arc_splits = _splits(torch.bincount(arc_fsa, minlength=num_states.numel()))
    out = v._derive(arcs, arc_map, arc_splits, _splits(num_states), scores=scores, kind=FsaVec)
    if out.aux_labels is not None:
        aux = out.aux_labels
        if eps_mask is not None:
            aux = torch.where(eps_mask, torch.zeros_like(aux), aux)
        # new arcs into the final state (arc map -1) carry aux_label -1, as every -1 arc must
        aux = torch.where(labels == -1, torch.full_like(aux, -1), aux)
        object.__setattr__(out, "aux_labels", aux)
    return out


def _broadcast(graphs: Sequence[Graph], what: str):
    """Operands as FsaVecs of one common length N (an `Fsa` is repeated N times); returns (vecs, any_vec)."""
    graphs = list(graphs)
    for i, g in enumerate(graphs):
        if not isinstance(g, (Fsa, FsaVec)):
            raise FsaError(f"{what}: operand {i} is a {type(g).__name__}, expected an Fsa or FsaVec")
    sizes = {len(g) for g in graphs if isinstance(g, FsaVec)}
    if len(sizes) > 1:
        raise FsaError(f"{what}: FsaVec operands have different batch sizes {sorted(sizes)}")
    n = sizes.pop() if sizes else 1
    vecs = []
    for g in graphs:
        v = as_vec(g)
        if isinstance(g, Fsa) and n != 1:
            v = select(v, torch.zeros(n, dtype=torch.int64, device=v.device))
        vecs.append(v)
    return vecs, bool(any(isinstance(g, FsaVec) for g in graphs))


def _one(result: FsaVec) -> Fsa:
    """A one-member result as an `Fsa`."""
    return Fsa._from_parts(result.arcs, result.scores, result.arc_splits, result.state_splits,
                           result.aux_labels, result._attrs, result._prop)


def _flatten_args(graphs) -> List[Graph]:
    if len(graphs) == 1 and isinstance(graphs[0], (list, tuple)):
        return list(graphs[0])
    return list(graphs)


# ---------------------------------------------------------------------------------------------------- union
def _union_groups(v: FsaVec, group: torch.Tensor, num_groups: int) -> FsaVec:
    """Union of the members of ``v`` by group (``group[m]``: the output member of input member m; members of
    a group are taken in index order). Output member g: a new start state 0 with an epsilon arc (score 0) to
    the start of each of its members that has a final state; the members' final states merge into one new
    final state. Output positions are computed arithmetically (no sort)."""
    dev = v.device
    M = len(v)
    n = v.states_per_fsa
    ok = n >= 2
    kept = torch.where(ok, n - 1, torch.zeros_like(n))  # a member's final state is replaced by the group's
    morder = torch.sort(group, stable=True).indices  # members by (group, index): small (one entry per member)
    rank = torch.empty_like(morder)
    rank[morder] = torch.arange(M, device=dev)
    per_group = torch.zeros(num_groups, dtype=torch.int64, device=dev).index_add_(0, group, kept)
    group_states = per_group + 2
    # offset of member m's states in its group: 1 + states kept by the members before it in the same group
    off = torch.empty_like(kept)
    off[morder] = 1 + _exclusive_cumsum(kept[morder]) - _exclusive_cumsum(per_group)[group[morder]]
    final = group_states - 1
    # output arc positions: per group, its epsilon arcs, then its members' arcs in member order
    A = v.arcs_per_fsa
    n_eps = torch.zeros(num_groups, dtype=torch.int64, device=dev).index_add_(0, group, ok.to(torch.int64))
    arcs_g = torch.zeros(num_groups, dtype=torch.int64, device=dev).index_add_(0, group, A)
    out_start = _exclusive_cumsum(n_eps + arcs_g)
    ok_before = torch.empty_like(kept)
    ok_before[morder] = _exclusive_cumsum(ok[morder].to(torch.int64)) - _exclusive_cumsum(n_eps)[group[morder]]
    arcs_before = torch.empty_like(kept)
    arcs_before[morder] = _exclusive_cumsum(A[morder]) - _exclusive_cumsum(arcs_g)[group[morder]]
    em = torch.nonzero(ok).view(-1)  # epsilon arcs from the new start to each member's start
    e_pos = out_start[group[em]] + ok_before[em]
    af = v.arc_fsa
    src, dst, lab = v.arcs[:, 0], v.arcs[:, 1], v.arcs[:, 2]
    a_grp = group[af]
    ids = torch.arange(v.num_arcs, device=dev)
    a_pos = out_start[a_grp] + n_eps[a_grp] + arcs_before[af] + ids - v.arc_splits[:-1][af]
    a_dst = torch.where(lab == -1, final[a_grp], dst + off[af])
    zeros = torch.zeros_like(em)
    cols = _place(int((n_eps + arcs_g).sum()), [
        (e_pos, [zeros, off[em], zeros, torch.full_like(em, -1), group[em]]),
        (a_pos, [src + off[af], a_dst, lab, ids, a_grp])])
    return _build(v, cols[0], cols[1], cols[2], cols[3], cols[4], group_states)


def union(*graphs) -> Graph:
    """Union of FSAs: accepts every path of every operand, with its score.

    * ``union(a, b, ...)`` (or ``union([a, b, ...])``) of `Fsa` objects gives an `Fsa`; with `FsaVec`
      operands (all of the same length N; an `Fsa` operand is used for every member) it gives an `FsaVec` of
      N unions, member by member.
    * ``union(vec)`` with a single `FsaVec` gives one `Fsa`: the union of all its members (as k2's
      ``union``).

    Construction (OpenFst's, also k2's): a new start state 0 with an epsilon arc (label 0, score 0, arc map -1)
    to each operand's start state; the operands' final states merge into the new final state. Operands with
    fewer than 2 states (empty languages) contribute nothing. Acceptors and transducers may be mixed (an
    acceptor is read as a transducer with equal input and output labels); a per-arc attribute missing from
    an operand is 0 on its arcs. Differentiable: output scores are input scores gathered by the arc map.
    """
    graphs = _flatten_args(graphs)
    if not graphs:
        raise FsaError("union needs at least one graph")
    if len(graphs) == 1 and isinstance(graphs[0], FsaVec):
        v = graphs[0]
        res = _union_groups(v, torch.zeros(len(v), dtype=torch.int64, device=v.device), 1)
        return _one(res)
    vecs, batched = _broadcast(graphs, "union")
    k, n = len(vecs), len(vecs[0])
    cat = _cat(vecs)  # operand-major: member j of operand i is cat member i*n + j, which joins group j
    res = _union_groups(cat, torch.arange(k * n, device=cat.device) % n, n)
    return res if batched else _one(res)


# ---------------------------------------------------------------------------------------------------- concat
def _concat2(a: FsaVec, b: FsaVec) -> FsaVec:
    """Member-wise concatenation of two batches of equal length."""
    n = len(a)
    v = _cat([a, b])  # member i of a is v's member i, member i of b is v's member n + i
    ns = v.states_per_fsa
    na, nb = ns[:n], ns[n:]
    a_states = torch.where(na >= 2, na - 1, torch.ones_like(na))  # an empty a: one dead start state
    b_ok = nb >= 2
    b_states = torch.where(b_ok, nb, torch.ones_like(nb))  # an empty b: just a final state, no arcs into it
    out_states = a_states + b_states
    af = v.arc_fsa
    pair = torch.where(af < n, af, af - n)
    is_a = af < n
    src, dst, lab = v.arcs[:, 0], v.arcs[:, 1], v.arcs[:, 2]
    into_b = is_a & (lab == -1)  # a's final arcs become epsilon arcs into b's start
    keep = ~into_b | b_ok[pair]  # ... unless b accepts nothing
    shift = torch.where(is_a, torch.zeros_like(src), a_states[pair])
    new_src = src + shift
    new_dst = torch.where(into_b, a_states[pair], dst + shift)
    new_lab = torch.where(into_b, torch.zeros_like(lab), lab)
    # output positions: per pair, a's kept arcs then b's arcs, each in their order
    kept_per_member = torch.bincount(af[keep], minlength=2 * n)
    rank = torch.cumsum(keep.to(torch.int64), 0) - 1 - _exclusive_cumsum(kept_per_member)[af]
    per_pair = kept_per_member[:n] + kept_per_member[n:]
    pos = _exclusive_cumsum(per_pair)[pair] + torch.where(is_a, torch.zeros_like(rank), kept_per_member[:n][pair]) \
        + rank
    sel = torch.nonzero(keep).view(-1)
    cols = _place(int(per_pair.sum()), [(pos[sel], [new_src[sel], new_dst[sel], new_lab[sel], sel, pair[sel],
                                                    into_b[sel]])])
    return _build(v, cols[0], cols[1], cols[2], cols[3], cols[4], out_states, eps_mask=cols[5])


def concat(*graphs) -> Graph:
    """Concatenation: accepts ``x1 x2 ...`` for paths ``x1`` of the first operand, ``x2`` of the second, ...,
    with the sum of their scores.

    ``concat(a, b, c)`` or ``concat([a, b, c])``; `FsaVec` operands of one length N are concatenated member
    by member (an `Fsa` operand is used for every member). Construction: the ``-1`` arcs of the left operand
    become epsilon arcs (label 0, aux_label 0, same score and arc map) into the right operand's start state,
    whose states follow the left operand's (the left final state disappears). An operand with fewer than two
    states makes the result accept nothing (a valid FSA with no successful path). Differentiable."""
    graphs = _flatten_args(graphs)
    if not graphs:
        raise FsaError("concat needs at least one graph")
    vecs, batched = _broadcast(graphs, "concat")
    res = vecs[0]
    if len(vecs) == 1:
        res = _build(res, res.arcs[:, 0], res.arcs[:, 1], res.labels, torch.arange(res.num_arcs, device=res.device),
                     res.arc_fsa, res.states_per_fsa)
    for v in vecs[1:]:
        res = _concat2(res, v)
    return res if batched else _one(res)


# ---------------------------------------------------------------------------------------------------- closure
def closure(fsa: Graph, plus: bool = False) -> Graph:
    """Kleene closure: ``fsa*`` (zero or more repetitions, so the empty string is accepted with score 0), or
    ``fsa+`` with ``plus=True`` (one or more).

    Star (as OpenFst's): a new start state 0 with a ``-1`` arc (score 0) to the new final state and an epsilon
    arc (score 0) to the old start state; every ``-1`` arc of ``fsa`` becomes an epsilon arc back to state 0
    (same score and arc map). Plus: the states stay; every ``-1`` arc is kept and also copied as an epsilon arc
    back to the start state. Either way each path of the result is one sequence of paths of ``fsa``, so no
    path is counted twice, even when ``fsa``'s start state has entering arcs (k2's ``closure``, which redirects
    the final arcs to the old start state, would accept strings that are not in the closure then).

    The result is cyclic, so `forward_score` refuses it; use it inside `compose`/`intersect_dense`. If
    ``fsa`` accepts the empty string through epsilon arcs, the result has epsilon cycles. An FSA with fewer
    than 2 states (empty language) gives the FSA of the empty string (star) or itself (plus).
    Differentiable; works on `Fsa` and `FsaVec`."""
    v = as_vec(fsa)
    dev = v.device
    n = v.states_per_fsa
    ok = n >= 2
    af = v.arc_fsa
    src, dst, lab = v.arcs[:, 0], v.arcs[:, 1], v.arcs[:, 2]
    fin = lab == -1
    arc_map = torch.arange(v.num_arcs, device=dev)
    if plus:
        # each final arc is followed by its copy, an epsilon arc back to the start (order by src is kept)
        ci = torch.nonzero(fin).view(-1)
        f64 = fin.to(torch.int64)
        pos = arc_map + torch.cumsum(f64, 0) - f64
        cols = _place(v.num_arcs + ci.numel(), [
            (pos, [src, dst, lab, arc_map, af, torch.zeros_like(fin)]),
            (pos[ci] + 1, [src[ci], torch.zeros_like(ci), torch.zeros_like(ci), ci, af[ci],
                           torch.ones_like(ci, dtype=torch.bool)])])
        return like(_build(v, cols[0], cols[1], cols[2], cols[3], cols[4], n, eps_mask=cols[5]), fsa)
    out_states = torch.where(ok, n + 1, torch.full_like(n, 2))
    members = torch.arange(len(v), device=dev)
    # per member: the hub's arcs (0 -eps-> 1 for non-empty members, then 0 -(-1)-> final), then the arcs of
    # fsa shifted by one state, its -1 arcs turned into epsilon arcs back to the hub
    n_hub = 1 + ok.to(torch.int64)
    out_start = _exclusive_cumsum(n_hub + v.arcs_per_fsa)
    e = members[ok]
    cols = _place(int((n_hub + v.arcs_per_fsa).sum()), [
        (out_start[e], [torch.zeros_like(e), torch.ones_like(e), torch.zeros_like(e), torch.full_like(e, -1), e,
                        torch.zeros_like(e, dtype=torch.bool)]),
        (out_start + n_hub - 1, [torch.zeros_like(members), out_states - 1, torch.full_like(members, -1),
                                 torch.full_like(members, -1), members, torch.zeros_like(members, dtype=torch.bool)]),
        (out_start[af] + n_hub[af] + arc_map - v.arc_splits[:-1][af],
         [src + 1, torch.where(fin, torch.zeros_like(dst), dst + 1), torch.where(fin, torch.zeros_like(lab), lab),
          arc_map, af, fin])])
    return like(_build(v, cols[0], cols[1], cols[2], cols[3], cols[4], out_states, eps_mask=cols[5]), fsa)


# ---------------------------------------------------------------------------------------------------- invert / project
def invert(fsa: Graph) -> Graph:
    """Swap input and output labels of a transducer (an acceptor is returned as a copy). Differentiable;
    ``invert(invert(x)) == x``. Arcs stay sorted by source state (arc-sortedness by label is not kept)."""
    v = as_vec(fsa)
    ident = torch.arange(v.num_arcs, device=v.device)
    if v.aux_labels is None:
        return like(v._derive(v.arcs.clone(), ident, v.arc_splits, v.state_splits, kind=FsaVec), fsa)
    arcs = torch.stack([v.arcs[:, 0], v.arcs[:, 1], v.aux_labels], 1)
    out = v._derive(arcs, ident, v.arc_splits, v.state_splits, kind=FsaVec)
    object.__setattr__(out, "aux_labels", v.labels.clone())
    return like(out, fsa)


def project(fsa: Graph, side: str = "input") -> Graph:
    """The acceptor of one side of a transducer: ``side="input"`` keeps ``labels``, ``side="output"`` makes
    ``aux_labels`` the labels (gtn's ``project_input`` / ``project_output``, OpenFst's ``project``). Scores
    and attributes follow; an acceptor is returned as a copy. Differentiable."""
    if side in ("input", "ilabel", "labels"):
        out_side = False
    elif side in ("output", "olabel", "aux_labels"):
        out_side = True
    else:
        raise FsaError(f"project: side must be 'input' or 'output', got {side!r}")
    v = as_vec(fsa)
    ident = torch.arange(v.num_arcs, device=v.device)
    if out_side and v.aux_labels is not None:
        arcs = torch.stack([v.arcs[:, 0], v.arcs[:, 1], v.aux_labels], 1)
    else:
        arcs = v.arcs.clone()
    out = v._derive(arcs, ident, v.arc_splits, v.state_splits, kind=FsaVec)
    object.__setattr__(out, "aux_labels", None)
    return like(out, fsa)


# ---------------------------------------------------------------------------------------------------- remove_epsilon
def _seg_logsumexp(values: torch.Tensor, seg: torch.Tensor, nseg: int) -> torch.Tensor:
    """Log-sum-exp of ``values`` per segment id (``-inf`` for empty or all ``-inf`` segments), differentiable,
    never NaN: the max is taken on detached values and empty sums are kept out of the log's gradient."""
    m = torch.full((nseg,), float("-inf"), dtype=values.dtype, device=values.device)
    m = m.scatter_reduce(0, seg, values.detach(), reduce="amax", include_self=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.zeros(nseg, dtype=values.dtype, device=values.device).index_add(0, seg, torch.exp(values - m[seg]))
    pos = s > 0
    return torch.where(pos, torch.log(torch.where(pos, s, torch.ones_like(s))) + m, torch.full_like(s, float("-inf")))


def _seg_max(values: torch.Tensor, seg: torch.Tensor, nseg: int) -> torch.Tensor:
    """Max of ``values`` per segment id (tropical plus), differentiable with one winner per segment: the first
    entry that attains the max (the library's tie rule: the lowest index), so the gradient is 0 / 1."""
    v = values.detach()
    m = torch.full((nseg,), float("-inf"), dtype=v.dtype, device=v.device)
    m = m.scatter_reduce(0, seg, v, reduce="amax", include_self=True)
    hit = v == m.index_select(0, seg)
    idx = torch.arange(v.numel(), device=v.device)
    win = torch.full((nseg,), v.numel(), dtype=torch.int64, device=v.device)
    win = win.scatter_reduce(0, seg[hit], idx[hit], reduce="amin", include_self=True)
    return values.index_select(0, win)


def _dedupe(p, q, w, num_states, tropical: bool = False):
    """Merge entries with the same (p, q) by log-sum-exp (max when ``tropical``); sorted by (p, q)."""
    key = p * num_states + q
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    plus = _seg_max if tropical else _seg_logsumexp
    return uniq // num_states, uniq % num_states, plus(w, inv, uniq.numel())


def _epsilon_cycle_state(src, dst, num_states) -> int:
    """A state on a cycle of the graph (src, dst) (global ids), found by peeling sources and sinks."""
    alive = torch.ones(num_states, dtype=torch.bool, device=src.device)
    while True:  # at most num_states rounds, each vectorized over the arcs
        live = alive[src] & alive[dst]
        indeg = torch.bincount(dst[live], minlength=num_states)
        outdeg = torch.bincount(src[live], minlength=num_states)
        drop = alive & ((indeg == 0) | (outdeg == 0))
        if not bool(drop.any()):
            break
        alive &= ~drop
    # every live state has a live successor; walking num_states steps from any of them ends on a cycle
    live = alive[src] & alive[dst]
    succ = torch.full((num_states,), -1, dtype=torch.int64, device=src.device)
    succ[src[live]] = dst[live]
    s = int(torch.nonzero(alive)[0, 0])
    steps = 1
    while steps < num_states:  # pointer doubling: log2(num_states) vectorized rounds
        succ = torch.where(succ >= 0, succ[succ.clamp(min=0)], succ)
        steps *= 2
    return int(succ[s])


def remove_epsilon(fsa: Graph, connect: bool = True, semiring: str = "log", backend: str = "auto") -> Graph:
    """Remove epsilon arcs, preserving the weighted language exactly in the chosen semiring.

    ``semiring="log"`` (the default) keeps every label string's forward score (and the total forward score);
    ``semiring="tropical"`` keeps every label string's best-path (Viterbi) score (and `viterbi_score`). Each
    is exact in its own semiring only: parallel epsilon paths are merged by log-sum-exp in the first, by max
    in the second (whose gradient goes to one path, see below), so the log result can score
    a string's best path higher than the input does, and the tropical result under-counts forward scores.

    Epsilon arcs are those with label 0 (and, for a transducer, ``aux_label`` 0 too, as OpenFst's
    ``rmepsilon``; transducer arcs with only one epsilon side are kept). For every state p, the epsilon closure
    ``E(p) = {(q, w)}`` holds the semiring sum ``w`` (log-sum-exp or max) of the scores of all epsilon paths
    p -> q (the empty path gives ``(p, 0)``). Each non-epsilon arc ``q -> r`` (label l, score s) and each
    ``(q, w)`` in ``E(p)`` give an output arc ``p -> r`` with label l and score ``w + s``; its arc map points
    at the non-epsilon arc (so ``aux_labels`` and attributes come from it; those of the epsilon arcs are
    dropped). States entered only by epsilon arcs become inaccessible: with ``connect=True`` (the default, as
    OpenFst's ``rmepsilon``) the result is trimmed as by `gtn.connect` (a member without a successful path
    becomes the empty FSA); with ``connect=False`` the state numbering of the input is kept.

    Every successful path of the input corresponds to one output path with the same labels (its epsilon runs
    folded into the next non-epsilon arc), and the output arc scores are semiring sums over the folded runs,
    so the semiring's score of every label string is unchanged. Half-precision scores are accumulated in
    float32 and the result is cast back. Gradients flow to the input scores: each output arc's gradient goes to
    its non-epsilon arc and, through ``w``, to the epsilon arcs (log: in proportion to their share of the
    paths' weight; tropical: along the winning path, the one of fewest arcs among the best, then the lowest
    last arc).

    Cycles: the non-epsilon part of the graph may be cyclic (the result is then exact as well). Cycles made of
    epsilon arcs only would need infinite sums (log) or a shortest-distance closure (tropical); they raise
    `FsaError` naming a state on such a cycle.

    ``backend``: ``"auto"`` (the numba kernel `gtn.kernels.structure_numba` on CPU when numba imports and
    kernels are enabled, else torch), ``"numba"`` or ``"torch"``: the library's one policy,
    `gtn.kernels.select`. Both give the same graph (states, arc order, arc map) and scores (tropical bitwise,
    log to rounding); the kernel's backward is once-differentiable (use ``"torch"`` for higher derivatives).

    Complexity. The kernel: per state p, a depth-first search over the epsilon arcs it reaches (pruned, with
    ``connect``, at states that cannot reach the final state) and one pass over them in topological order,
    then the output arcs; O(states + arcs + closure arcs + output arcs), as OpenFst's ``rmepsilon``. The torch
    path computes the closure level by level (epsilon paths of length k from paths of length k-1, merging equal
    (p, q) pairs at each level): O(L * C * d) for L = the longest epsilon path, C = the number of (p, q)
    closure pairs and d = the epsilon out-degree. Either way the output has one arc per (closure pair,
    non-epsilon arc leaving q); a chain of k epsilon arcs gives O(k^2) pairs, as with any epsilon-removal
    algorithm that keeps the state set."""
    if semiring not in ("log", "tropical"):
        raise FsaError(f"remove_epsilon: semiring must be 'log' or 'tropical', got {semiring!r}")
    from . import kernels
    backend = kernels.check_backend(backend, "remove_epsilon")
    v = as_vec(fsa)
    k = kernels.select("structure_numba", v.device, v.dtype, backend, "remove_epsilon")
    res = _remove_epsilon_numba(k, v, fsa, connect, semiring) if k is not None else \
        _remove_epsilon_torch(v, fsa, connect, semiring)
    return like(res, fsa)


def _raise_epsilon_cycle(v: FsaVec, fsa: Graph, semiring: str):
    """`FsaError` naming a state on a cycle of epsilon arcs (and its member, for a batch)."""
    dev = v.device
    eps = v.labels == 0
    if v.aux_labels is not None:
        eps &= v.aux_labels == 0
    s = _epsilon_cycle_state(v.src_global[eps], v.dst_global[eps], v.total_states)
    m = int(torch.searchsorted(v.state_splits, torch.tensor(s, device=dev), right=True)) - 1
    where = f"FSA {m} of the batch: " if isinstance(fsa, FsaVec) else ""
    raise FsaError(f"remove_epsilon: {where}state {s - int(v.state_splits[m])} lies on a cycle of "
                   f"epsilon arcs; its {semiring}-semiring closure is not computed (epsilon cycles "
                   "are refused in both semirings)")


class _EpsilonScores(torch.autograd.Function):
    """The output scores of the numba removal (computed in its forward); backward = the kernel's backward."""

    @staticmethod
    def forward(ctx, scores, k, out_sc, saved, tropical):
        ctx.k, ctx.saved, ctx.tropical = k, saved, tropical
        ctx.save_for_backward(scores)
        return torch.from_numpy(out_sc)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        from .kernels import compute_dtype
        (scores,) = ctx.saved_tensors
        cd = compute_dtype(scores.dtype)
        sc = scores.detach().to(cd).contiguous().numpy()
        grad = ctx.k.remove_epsilon_backward(g.to(cd).contiguous().numpy(), ctx.saved, sc, ctx.tropical)
        return torch.from_numpy(grad).to(scores.dtype), None, None, None, None


def _remove_epsilon_numba(k, v: FsaVec, fsa: Graph, connect: bool, semiring: str) -> FsaVec:
    """`remove_epsilon` by the numba kernel (`gtn.kernels.structure_numba`): the same graph as the torch path."""
    import numpy as np
    from .kernels import compute_dtype
    cd = compute_dtype(v.dtype)
    tropical = semiring == "tropical"
    sc = v.scores.detach().to(cd).contiguous().numpy()
    aux = np.zeros(0, np.int64) if v.aux_labels is None else v.aux_labels.contiguous().numpy()
    grad = v.scores.requires_grad and torch.is_grad_enabled()
    res = k.remove_epsilon(v.arcs.contiguous().numpy(), aux, v.state_splits.numpy(), v.arc_splits.numpy(), sc,
                           connect, tropical, grad)
    if not res[0]:
        _raise_epsilon_cycle(v, fsa, semiring)
    out_arcs, out_map = torch.from_numpy(res[1]), torch.from_numpy(res[2])
    if grad:
        saved = (res[2],) + tuple(res[6:])
        scores = _EpsilonScores.apply(v.scores, k, res[3], saved, tropical)
    else:
        scores = torch.from_numpy(res[3])
    if scores.dtype != v.dtype:
        scores = scores.to(v.dtype)
    return v._derive(out_arcs, out_map, torch.from_numpy(res[5]), torch.from_numpy(res[4]), scores=scores,
                     kind=FsaVec)


def _remove_epsilon_torch(v: FsaVec, fsa: Graph, connect: bool, semiring: str) -> FsaVec:
    """`remove_epsilon` in torch ops, level by level over the epsilon path lengths: the reference (and the
    path on every non-CPU device) that the numba kernel is tested against."""
    tropical = semiring == "tropical"
    dev = v.device
    S = v.total_states
    from .kernels import compute_dtype
    cd = compute_dtype(v.dtype)  # half precision: accumulate in float32
    src, dst, lab = v.src_global, v.dst_global, v.labels
    eps = lab == 0
    if v.aux_labels is not None:
        eps &= v.aux_labels == 0
    ei = torch.nonzero(eps).view(-1)
    ni = torch.nonzero(~eps).view(-1)
    e_src, e_dst = src[ei], dst[ei]
    e_sc = v.scores[ei].to(cd)
    e_splits = _splits(torch.bincount(e_src, minlength=S))
    # closure pairs, level by level: level 0 is the empty path (p, p, 0)
    p = torch.arange(S, device=dev)
    q = p
    w = torch.zeros(S, dtype=cd, device=dev)
    P, Q, W = [p], [q], [w]
    max_len = int(v.states_per_fsa.max()) if len(v) else 0
    level = 0
    while ei.numel() and p.numel():
        cnt = e_splits[q + 1] - e_splits[q]
        idx = ragged_range(e_splits[q], cnt)
        if idx.numel() == 0:
            break
        level += 1
        if level > max_len:
            _raise_epsilon_cycle(v, fsa, semiring)
        pair = torch.repeat_interleave(torch.arange(p.numel(), device=dev), cnt, output_size=idx.numel())
        p, q, w = _dedupe(p[pair], e_dst[idx], w[pair] + e_sc[idx], S, tropical)
        P.append(p), Q.append(q), W.append(w)
    if len(P) > 1:
        p, q, w = _dedupe(torch.cat(P), torch.cat(Q), torch.cat(W), S, tropical)
    else:
        p, q, w = P[0], Q[0], W[0]
    # output arcs: each closure pair (p, q, w) times the non-epsilon arcs leaving q
    n_src = src[ni]
    n_splits = _splits(torch.bincount(n_src, minlength=S))
    cnt = n_splits[q + 1] - n_splits[q]
    k = ragged_range(n_splits[q], cnt)
    pair = torch.repeat_interleave(torch.arange(p.numel(), device=dev), cnt, output_size=k.numel())
    arc_map = ni[k]
    out_src_g = p[pair]
    state_fsa = torch.repeat_interleave(torch.arange(len(v), device=dev), v.states_per_fsa, output_size=S)
    out_fsa = state_fsa[out_src_g]
    base = v.state_splits[:-1][out_fsa]
    scores = (w[pair] + v.scores[arc_map].to(cd)).to(v.dtype)
    res = _build(v, out_src_g - base, v.arcs[arc_map, 1], lab[arc_map], arc_map, out_fsa, v.states_per_fsa,
                 scores=scores)
    if connect:
        from .topology import connect as _connect
        res = _connect(res)
    return res
