"""Topology: state batches by depth (Kahn's algorithm, level by level), cycle finding, top_sort, arc_sort,
connect (accessible and co-accessible states).

Everything works on the whole batch at once: each Kahn level / BFS step is a handful of tensor operations
over the arcs leaving the current frontier (found through ``state_arc_splits``, the CSR row splits of the
arcs by source state). The Python loop runs over levels (the depth of the graph), never over states or arcs.
On CPU, Kahn's algorithm and the reachability search behind `connect` run in numba twins
(`gtn.kernels.topology_numba`, one O(S + A) pass each) when numba imports; `gtn.kernels.use_numba(False)` or ``GTN_NO_NUMBA=1`` forces the torch version.
Results that depend only on the arcs (not the scores) are cached on the graph object (``x._cache``), so
scoring the same graph again does not redo the topology.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch

from . import kernels
from .fsa import Fsa, FsaError, FsaVec, as_vec, like, ragged_range

__all__ = ["find_cycle", "state_batches", "top_sort", "arc_sort", "connect", "accessible", "coaccessible"]


def _leaving_arcs(v: FsaVec, states: torch.Tensor) -> torch.Tensor:
    """Indices of the arcs leaving the given global states (arcs are sorted by (member, src))."""
    splits = v.state_arc_splits
    starts = splits[states]
    return ragged_range(starts, splits[states + 1] - starts)


def _kahn(x: Union[Fsa, FsaVec], backend: str = "auto") -> Tuple[torch.Tensor, int]:
    """Kahn's algorithm over the whole batch (cached on ``x``).

    Returns ``(level, num_levels)``: ``level[s]`` is the depth of global state s (the longest path from a
    state without entering arcs), ``-1`` for states on or after a cycle. The torch version takes one
    vectorized step per depth; on CPU a numba twin (`gtn.kernels.topology_numba`) does one O(S + A) pass."""
    c = x._cache
    if "kahn" in c:
        return c["kahn"]
    v = as_vec(x)
    k = kernels.select("topology_numba", v.device, None, backend, "top_sort")
    level = k.levels(v) if k is not None else _kahn_torch(v)
    res = (level, int(level.max()) + 1 if level.numel() else 0)
    c["kahn"] = res
    return res


def _kahn_torch(v: FsaVec) -> torch.Tensor:
    """Level-by-level Kahn's algorithm: each step removes the current frontier and finds the states whose
    entering arcs are now all removed (the next depth). The reference for the numba twin."""
    S = v.total_states
    dev = v.device
    dst = v.dst_global
    indeg = torch.bincount(dst, minlength=S) if v.num_arcs else torch.zeros(S, dtype=torch.int64, device=dev)
    level = torch.full((S,), -1, dtype=torch.int64, device=dev)
    frontier = torch.nonzero(indeg == 0).squeeze(1)
    owner = torch.empty(S, dtype=torch.int64, device=dev)  # scratch for de-duplication without sorting
    k = 0
    while frontier.numel():
        level[frontier] = k
        arcs = _leaving_arcs(v, frontier)
        if arcs.numel() == 0:
            break
        d = dst[arcs]
        indeg.index_add_(0, d, torch.full_like(d, -1))
        cand = d[indeg.index_select(0, d) == 0]  # a state appears once per arc from the frontier
        # keep one copy of each state, in O(len(cand)): the copy whose index was written last
        i = torch.arange(cand.numel(), device=dev)
        owner.index_put_((cand,), i)
        frontier = cand[owner.index_select(0, cand) == i]
        k += 1
    return level


def _cycle_state(x: Union[Fsa, FsaVec]) -> Optional[Tuple[int, int]]:
    """``(member, local state)`` of a state on a cycle, or None when acyclic (vectorized, cached)."""
    c = x._cache
    if "cycle" in c:
        return c["cycle"]
    level, _ = _kahn(x)
    rest = level < 0
    if not bool(rest.any()):
        c["cycle"] = None
        return None
    v = as_vec(x)
    S = v.total_states
    # Every state Kahn could not remove has a predecessor that was not removed either. Following one such
    # predecessor (the lowest) from any remaining state enters a cycle within S steps; pointer doubling
    # takes those steps for all states at once.
    src, dst = v.src_global, v.dst_global
    m = rest[src] & rest[dst]
    pred = torch.arange(S, device=v.device)
    big = torch.full((S,), S, dtype=torch.int64, device=v.device)
    best = big.scatter_reduce(0, dst[m], src[m], "amin")
    pred = torch.where(rest & (best < S), best, pred)
    for _ in range(max(1, S).bit_length() + 1):
        pred = pred[pred]
    s = int(pred[int(torch.nonzero(rest)[0, 0])])
    member = int(torch.searchsorted(v.state_splits, torch.tensor(s, device=v.device), right=True)) - 1
    res = (member, s - int(v.state_splits[member]))
    c["cycle"] = res
    return res


def find_cycle(x: Union[Fsa, FsaVec]):
    """A state on a cycle, or None when ``x`` is acyclic.

    For an `Fsa` the state number; for an `FsaVec` a tuple ``(member, state)`` (state local to the member)."""
    r = _cycle_state(x)
    if r is None:
        return None
    return r[1] if isinstance(x, Fsa) else r


def _raise_if_cyclic(x, what: str) -> None:
    r = _cycle_state(x)
    if r is not None:
        where = f"FSA {r[0]} of the batch: " if isinstance(x, FsaVec) else ""
        raise FsaError(f"{where}state {r[1]} lies on a cycle; {what} needs an acyclic FSA")


def state_batches(x: Union[Fsa, FsaVec]) -> List[torch.Tensor]:
    """States grouped by topological depth across the whole batch (k2's state batches).

    Returns a list of 1-D int64 tensors of *global* state ids, each sorted (member i's state s is
    ``state_splits[i] + s``): batch k holds the states whose longest incoming path from a state without
    entering arcs has k arcs, so every arc goes from an earlier batch to a later one. Raises `FsaError`
    naming a state on a cycle (and the member of a batch) when ``x`` is cyclic."""
    _raise_if_cyclic(x, "state_batches")
    level, L = _kahn(x)
    if L == 0:
        return []
    order = torch.sort(level, stable=True).indices  # by depth, then by state id
    return list(torch.split(order, torch.bincount(level, minlength=L).tolist()))


def _reachable(v: FsaVec, seeds: torch.Tensor, forward: bool) -> torch.Tensor:
    """Bool mask of the global states reachable from ``seeds`` (along arcs, or against them). On CPU a numba
    twin (`gtn.kernels.topology_numba.reachable`) does one O(S + A) search."""
    k = kernels.select("topology_numba", v.device, None, "auto", "connect")
    if k is not None:
        return k.reachable(v, seeds, forward)
    return _reachable_torch(v, seeds, forward)


def _reachable_torch(v: FsaVec, seeds: torch.Tensor, forward: bool) -> torch.Tensor:
    """One vectorized step per BFS frontier; the reference for the numba twin."""
    S = v.total_states
    dev = v.device
    seen = torch.zeros(S, dtype=torch.bool, device=dev)
    if forward:
        nxt, splits, order = v.dst_global, v.state_arc_splits, None
    else:
        # CSR of the arcs by destination state
        order = torch.sort(v.dst_global, stable=True).indices
        counts = torch.bincount(v.dst_global, minlength=S) if v.num_arcs else torch.zeros(S, dtype=torch.int64,
                                                                                            device=dev)
        splits = torch.zeros(S + 1, dtype=torch.int64, device=dev)
        splits[1:] = torch.cumsum(counts, 0)
        nxt = v.src_global[order]
    frontier = seeds
    seen[frontier] = True
    while frontier.numel():
        starts = splits[frontier]
        arcs = ragged_range(starts, splits[frontier + 1] - starts)
        if arcs.numel() == 0:
            break
        d = nxt[arcs]
        frontier = torch.unique(d[~seen[d]])
        seen[frontier] = True
    return seen


def accessible(x: Union[Fsa, FsaVec]) -> torch.Tensor:
    """Bool mask over global states: reachable from its member's start state (cycles allowed)."""
    v = as_vec(x)
    st = v.start_states
    return _reachable(v, st[st >= 0], True)


def coaccessible(x: Union[Fsa, FsaVec]) -> torch.Tensor:
    """Bool mask over global states: its member's final state is reachable from it (cycles allowed)."""
    v = as_vec(x)
    fi = v.final_states
    return _reachable(v, fi[fi >= 0], False)


def _renumber(v: FsaVec, new_of_old: torch.Tensor, keep_state: torch.Tensor, keep_arc: torch.Tensor,
              template, props=None):
    """Rebuild ``v`` with states renumbered (``new_of_old``: new local id of each kept global state) and only
    the kept arcs; arcs re-sorted stably by (member, new src)."""
    dev = v.device
    arc_idx = torch.nonzero(keep_arc).squeeze(1)
    fsa_of_arc = v.arc_fsa[arc_idx]
    nsrc = new_of_old[v.src_global[arc_idx]]
    ndst = new_of_old[v.dst_global[arc_idx]]
    ns = torch.zeros(v.num_fsas, dtype=torch.int64, device=dev)
    state_fsa = torch.repeat_interleave(torch.arange(v.num_fsas, device=dev), v.states_per_fsa,
                                        output_size=v.total_states)
    ns.index_add_(0, state_fsa[keep_state], torch.ones_like(state_fsa[keep_state]))
    # stable sort by (member, new src): new src < states of the member, so member * max_states + src is exact
    width = int(ns.max()) + 1 if ns.numel() else 1
    key = fsa_of_arc * width + nsrc
    if key.numel() < 2 or bool((key[1:] >= key[:-1]).all()):
        # already in order (connect keeps the states' relative order): no sort, no gathers
        arc_map = arc_idx
        arcs = torch.stack([nsrc, ndst, v.arcs[arc_map, 2]], 1)
    else:
        order = torch.sort(key, stable=True).indices
        arc_map = arc_idx[order]
        arcs = torch.stack([nsrc[order], ndst[order], v.arcs[arc_map, 2]], 1)
    na = torch.bincount(fsa_of_arc, minlength=v.num_fsas) if arc_idx.numel() else torch.zeros_like(ns)
    zero = torch.zeros(1, dtype=torch.int64, device=dev)
    out = v._derive(arcs, arc_map, torch.cat([zero, torch.cumsum(na, 0)]), torch.cat([zero, torch.cumsum(ns, 0)]),
                    props=props, kind=FsaVec)
    return like(out, template)


def top_sort(x: Union[Fsa, FsaVec]):
    """Renumber states so that every arc goes from a lower to a higher state (start stays 0, final last).

    States are ordered by depth (`state_batches`), ties by their old number. All states are kept; the only
    arcs dropped are arcs *into the start state*, which in an acyclic graph can only come from states not
    accessible from the start (so no successful path uses them). Scores, aux_labels and attributes follow
    through the arc map. Raises `FsaError` naming a state on a cycle when ``x`` is cyclic."""
    _raise_if_cyclic(x, "top_sort")
    v = as_vec(x)
    S = v.total_states
    dev = v.device
    level, _ = _kahn(x)
    state_fsa = torch.repeat_interleave(torch.arange(v.num_fsas, device=dev), v.states_per_fsa, output_size=S)
    rank = level + 1
    rank[v.start_states[v.start_states >= 0]] = 0
    rank[v.final_states[v.final_states >= 0]] = S + 1
    # order by (member, rank, old id): two stable sorts over states
    ids = torch.arange(S, device=dev)
    o1 = torch.sort(rank, stable=True).indices
    o2 = o1[torch.sort(state_fsa[o1], stable=True).indices]
    new_of_old = torch.empty(S, dtype=torch.int64, device=dev)
    new_of_old[o2] = ids - v.state_splits[:-1][state_fsa[o2]]
    keep_arc = v.arcs[:, 1] != 0
    out = _renumber(v, new_of_old, torch.ones(S, dtype=torch.bool, device=dev), keep_arc, x)
    return out


def _k2_label_key(labels: torch.Tensor) -> torch.Tensor:
    """Labels as k2 compares them in arc_sort: as unsigned 32-bit integers, so the final label -1 (0xFFFFFFFF)
    sorts after every other label (epsilon 0 first)."""
    return labels & 0xFFFFFFFF


def arc_sort(x: Union[Fsa, FsaVec]):
    """Sort the arcs of each state by (label, dst) in k2's order: labels compared as unsigned 32-bit integers,
    so ``-1`` arcs come last (k2's ``intersect`` and ``arc_sort`` use this order; `Fsa.is_arc_sorted` checks
    it). Stable: equal arcs keep their order.

    States are not renumbered; scores, aux_labels and attributes follow through the arc map."""
    v = as_vec(x)
    if v.num_arcs == 0:
        return x
    o = torch.sort(v.arcs[:, 1], stable=True).indices
    o = o[torch.sort(_k2_label_key(v.arcs[o, 2]), stable=True).indices]
    o = o[torch.sort(v.src_global[o], stable=True).indices]
    out = v._derive(v.arcs[o], o, v.arc_splits, v.state_splits, kind=FsaVec)
    return like(out, x)


def connect(x: Union[Fsa, FsaVec]):
    """Keep only states that are accessible (from the start) and co-accessible (reach the final state).

    Works on cyclic graphs too (a BFS, one vectorized step per frontier). Kept states keep their relative
    order (so start stays 0 and final stays last); a member with no successful path becomes the empty FSA
    (0 states, 0 arcs). Scores, aux_labels and attributes follow through the arc map."""
    v = as_vec(x)
    S = v.total_states
    dev = v.device
    keep = accessible(v) & coaccessible(v)
    # a member whose start or final state is dropped has no successful path: drop all its states
    ok = torch.zeros(v.num_fsas, dtype=torch.bool, device=dev)
    ne = v.states_per_fsa > 0
    ok[ne] = keep[v.start_states[ne]] & keep[v.final_states[ne]]
    state_fsa = torch.repeat_interleave(torch.arange(v.num_fsas, device=dev), v.states_per_fsa, output_size=S)
    keep &= ok[state_fsa]
    # new local id = number of kept states of the same member before it
    csum = torch.cumsum(keep.to(torch.int64), 0) - keep.to(torch.int64)
    first = torch.zeros(v.num_fsas, dtype=torch.int64, device=dev)
    if S:
        starts = v.state_splits[:-1].clamp(max=S - 1)
        first = torch.where(ne, csum[starts], first)
    new_of_old = csum - first[state_fsa]
    keep_arc = keep[v.src_global] & keep[v.dst_global] if v.num_arcs else torch.zeros(0, dtype=torch.bool,
                                                                                       device=dev)
    return _renumber(v, new_of_old, keep, keep_arc, x)
