"""Composition and intersection of weighted FSAs / transducers, batched and differentiable.

``compose(a, b)`` matches ``a``'s output labels (``aux_labels``, or ``labels`` for an acceptor) with ``b``'s input
labels. A state of the result is a triple ``(sa, sb, filter)``; the arcs leaving it are

* a *match*: an arc of ``a`` with output label ``l != 0`` and an arc of ``b`` with input label ``l`` (this includes
  the final ``-1`` arcs, which match each other), filter -> 0;
* ``a`` alone on an output-epsilon arc, ``b`` staying: only in filter state 0, filter stays 0;
* ``b`` alone on an input-epsilon arc, ``a`` staying: filter -> 1 (0 when ``a`` has no epsilon arc to take).

This is OpenFst's default *sequence* filter: between two matches all of ``a``'s epsilon moves come first, then
all of ``b``'s, so every pair of paths with matching label strings gives exactly one path of the result (no
duplicate epsilon paths; the forward score and the path count equal OpenFst's ``compose``). Epsilon-epsilon
matches are not made (they would duplicate the ``a``-then-``b`` sequence).

Only pairs that are accessible *and* co-accessible are kept: each input is first trimmed to its co-accessible
states (arcs into dead states are never expanded: the backward-reachability pre-pass), then the product is
expanded breadth-first from the start pair, a level at a time over the whole frontier (and the whole batch) with
label-sorted joins, and finally trimmed to the pairs from which the final pair is reachable.

The output keeps one *arc map* per input: output arc ``j`` came from ``a``'s arc ``a_map[j]`` and ``b``'s arc
``b_map[j]`` (``-1``: that side did not move). Scores are ``index_arcs(a.scores, a_map) + index_arcs(b.scores,
b_map)``, so autograd needs no custom code, and per-arc attributes follow (``a``'s, then ``b``'s that ``a`` does
not have).

Two implementations of the expansion give identical results (same state numbering and arc order): the
vectorized PyTorch one (``_expand_torch``, the reference, any device) and a numba kernel
(``gtn/kernels/compose_numba.py``, used on CPU when numba imports).

``compose_score(a, b)`` is the score of the composition (forward or Viterbi, with gradients and the best
path) without building it, for epsilon-free acceptors with a topologically numbered ``a`` (e.g. a recognizer's
graphs against a big lexicon); elsewhere it composes and scores.
"""
from __future__ import annotations

import threading
import warnings
from typing import Optional, Union

import numpy as np
import torch

from .fsa import Fsa, FsaError, FsaVec, as_vec, from_arcs, index_arcs, like, ragged_range

from . import kernels as _kernels

__all__ = ["compose", "intersect", "constrained_forward_score", "compose_score"]

Graphs = Union[Fsa, FsaVec]
# the kernel's scratch buffers, kept between calls (per thread) so that they are not page-faulted in every time
_workspace = threading.local()
_WORKSPACE_KEEP = 256 << 20  # bytes


def _backend(backend: str, impl: Optional[str], what: str) -> str:
    """The ``backend`` keyword, or the deprecated ``impl`` alias (same values), which warns."""
    if impl is not None:
        warnings.warn(f"{what}: impl= is deprecated, use backend= (the same values)", DeprecationWarning,
                      stacklevel=3)
        if backend != "auto" and backend != impl:
            raise FsaError(f"{what}: impl={impl!r} and backend={backend!r} disagree; pass backend= only")
        backend = impl
    return _kernels.check_backend(backend, what)


_TABLE_MAX = 1 << 21  # b's (state, label) table for the numba kernel: at most this many entries (16 MiB)
_DENSE_MAX = 1 << 25  # pair keys below this use the kernel's dense (lazily paged, never initialised) table


# ---------------------------------------------------------------------------------------------------- pre-pass
def _coaccessible_torch(src: torch.Tensor, dst: torch.Tensor, finals: torch.Tensor, num_states: int) -> torch.Tensor:
    """``[num_states]`` bool: states that reach one of ``finals`` (global ids; -1 ignored). Frontier-based
    backward search: each step gathers only the arcs entering the newest states."""
    dev = src.device
    co = torch.zeros(num_states, dtype=torch.bool, device=dev)
    front = finals[finals >= 0]
    if front.numel() == 0 or num_states == 0:
        return co
    co[front] = True
    order = torch.argsort(dst, stable=True)
    rsrc = src[order]
    rs = torch.zeros(num_states + 1, dtype=torch.int64, device=dev)
    rs[1:] = torch.cumsum(torch.bincount(dst, minlength=num_states), 0)
    while front.numel():
        k = ragged_range(rs[front], rs[front + 1] - rs[front])
        q = rsrc[k]
        q = torch.unique(q[~co[q]])
        co[q] = True
        front = q
    return co


def _coaccessible(g: Graphs, nb_mod) -> torch.Tensor:
    if nb_mod is not None:  # the compiled search shared with gtn.connect (one O(S + A) pass)
        from .kernels.topology_numba import reachable
        finals = g.final_states
        return reachable(as_vec(g), finals[finals >= 0], forward=False)
    return _coaccessible_torch(g.src_global, g.dst_global, g.final_states, g.total_states)


def _prep_a(g: Graphs, nb_mod) -> dict:
    """``a``'s side: arcs into co-accessible states, CSR by global source, output labels, epsilon flags."""
    key = ("compose_a", nb_mod is not None)
    hit = g._cache.get(key)
    if hit is not None and hit[0] is g.aux_labels:  # aux_labels may be reassigned by the user
        return hit[1]
    olab_all = g.aux_labels if g.aux_labels is not None else g.labels
    ns = g.total_states
    co = _coaccessible(g, nb_mod)
    keep = torch.nonzero(co[g.dst_global]).view(-1)  # the arcs into co-accessible states
    src = g.src_global[keep]
    lab = olab_all[keep]
    cnt = torch.bincount(src, minlength=ns)
    eps = torch.bincount(src[lab == 0], minlength=ns)
    p = dict(co=co, orig=keep, dst=g.dst_global[keep], lab=lab, cnt=cnt, start=torch.cumsum(cnt, 0) - cnt,
             noeps=eps == 0, alleps=(cnt > 0) & (eps == cnt))
    g._cache[key] = (g.aux_labels, p)
    return p


def _prep_b(g: Graphs, nb_mod) -> dict:
    """``b``'s side: arcs into co-accessible states sorted by (global source, input label), CSR by source, and
    the join keys ``src * mult + label + 1`` (sorted) for ``searchsorted``."""
    key = ("compose_b", nb_mod is not None)
    hit = g._cache.get(key)
    if hit is not None:
        return hit
    ns = g.total_states
    co = _coaccessible(g, nb_mod)
    keep = torch.nonzero(co[g.dst_global]).view(-1)  # the arcs into co-accessible states
    src = g.src_global[keep]
    lab = g.labels[keep]
    top = int(lab.max()) if lab.numel() else 0
    mult = top + 3  # a query label above `top` is clamped to top+1: never a real key, never the next state's
    k = src * mult + lab + 1
    order = torch.argsort(k, stable=True)
    keep, k = keep[order], k[order]
    cnt = torch.bincount(src, minlength=ns)
    p = dict(co=co, orig=keep, dst=g.dst_global[keep], lab=lab[order], cnt=cnt, start=torch.cumsum(cnt, 0) - cnt,
             key=k, top=top, mult=mult)
    if nb_mod is not None:
        # (state, label) -> first arc: one read per lookup instead of a binary search, when it is small
        w = top + 2
        if ns * w <= _TABLE_MAX and k.numel():
            t = torch.full((ns * w,), -1, dtype=torch.int64)
            first = torch.ones(k.numel(), dtype=torch.bool)
            first[1:] = k[1:] != k[:-1]
            j = torch.nonzero(first).view(-1)
            t[src[order][j] * w + p["lab"][j] + 1] = j
            p["tab"], p["tab_w"] = t, w
        else:
            p["tab"], p["tab_w"] = torch.full((1,), -1, dtype=torch.int64), 0
    g._cache[key] = p
    return p


# ---------------------------------------------------------------------------------------------------- expansion
def _expand_torch(pa, pb, m_sa, m_sb, m_fa, m_fb, nb):
    """Breadth-first expansion of the product, one level of the whole batch per iteration (vectorized over
    the frontier's pairs and their arcs). Returns the same as the numba kernel: ``(src, dst, a_map, b_map,
    states_per_member, arcs_per_member)`` with member-local ids, co-accessible pairs only, final pair last."""
    dev = m_sa.device
    M = m_sa.numel()
    i64 = dict(dtype=torch.int64, device=dev)
    live = torch.nonzero((m_sa >= 0) & (m_sb >= 0)).view(-1)
    # pair table, in id order (ids are given level by level, in discovery order inside a level)
    f_sa, f_sb, f_f, f_m = m_sa[live], m_sb[live], torch.zeros_like(live), live
    f_id = torch.arange(live.numel(), **i64)
    vkey = (f_sa * nb + f_sb) * 2  # visited keys, kept sorted, with their ids
    vkey, o = torch.sort(vkey)
    vid = f_id[o]
    P = [(f_sa, f_sb, f_f, f_m)]
    E = []  # per level: (src id, dst id, a_map, b_map)
    nxt = live.numel()
    mult, top = pb["mult"], pb["top"]
    while f_id.numel():
        F = f_id.numel()
        ar = torch.arange(F, **i64)
        # 1. a's arcs from every frontier pair, each expanded over b's arcs with the same label
        cnt = pa["cnt"][f_sa]
        ai = ragged_range(pa["start"][f_sa], cnt)
        r = torch.repeat_interleave(ar, cnt, output_size=ai.numel())
        lab = pa["lab"][ai]
        sb_r = f_sb[r]
        q = sb_r * mult + lab.clamp(max=top + 1) + 1
        lo = torch.searchsorted(pb["key"], q)
        hi = torch.searchsorted(pb["key"], q, right=True)
        is_eps = lab == 0
        n_out = torch.where(is_eps, (f_f[r] == 0).long(), hi - lo)
        rr = torch.repeat_interleave(torch.arange(ai.numel(), **i64), n_out, output_size=int(n_out.sum()))
        bj = ragged_range(torch.where(is_eps, 0, lo), n_out)
        e1 = is_eps[rr]
        src1 = r[rr]
        da1 = pa["dst"][ai[rr]]
        am1 = pa["orig"][ai[rr]]
        db1, bm1 = sb_r[rr], torch.full_like(rr, -1)
        m1 = torch.nonzero(~e1).view(-1)  # gather b only where b moved (b may have no arcs at all)
        db1[m1] = pb["dst"][bj[m1]]
        bm1[m1] = pb["orig"][bj[m1]]
        # 2. b alone on its epsilon arcs (not where a has only epsilon arcs: that pair could never finish)
        q = f_sb * mult + 1
        lo = torch.searchsorted(pb["key"], q)
        hi = torch.searchsorted(pb["key"], q, right=True)
        n2 = torch.where(pa["alleps"][f_sa], 0, hi - lo)
        src2 = torch.repeat_interleave(ar, n2, output_size=int(n2.sum()))
        bj = ragged_range(lo, n2)
        f2 = torch.where(pa["noeps"][f_sa[src2]], 0, 1)
        # candidates of a pair: its group-1 moves, then its group-2 moves (the kernel's order)
        src = torch.cat([src1, src2])
        o = torch.sort(src, stable=True).indices
        src = src[o]
        da = torch.cat([da1, f_sa[src2]])[o]
        db = torch.cat([db1, pb["dst"][bj]])[o]
        ff = torch.cat([torch.zeros_like(src1), f2])[o]
        am = torch.cat([am1, torch.full_like(src2, -1)])[o]
        bm = torch.cat([bm1, pb["orig"][bj]])[o]
        # 3. look the destination pairs up; new ones get ids in order of first occurrence
        key = (da * nb + db) * 2 + ff
        pos = torch.searchsorted(vkey, key).clamp(max=max(vkey.numel() - 1, 0))
        found = vkey[pos] == key
        did = vid[pos]
        nk = key[~found]
        u, inv = torch.unique(nk, return_inverse=True)
        first = torch.full((u.numel(),), nk.numel(), **i64).scatter_reduce_(
            0, inv, torch.arange(nk.numel(), **i64), "amin")
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), **i64)
        did = did.clone()
        did[~found] = nxt + rank[inv]
        E.append((f_id[src], did, am, bm))
        # 4. the next frontier: the new pairs, in id order
        fi = torch.nonzero(~found).view(-1)[first[order]]
        f_sa, f_sb, f_f, f_m = da[fi], db[fi], ff[fi], f_m[src[fi]]
        f_id = nxt + torch.arange(u.numel(), **i64)
        nxt += u.numel()
        P.append((f_sa, f_sb, f_f, f_m))
        vkey, o = torch.sort(torch.cat([vkey, u[order]]))
        vid = torch.cat([vid, f_id])[o]
    p_sa, p_sb, p_f, p_m = (torch.cat(t) for t in zip(*P))
    e_src, e_dst, e_a, e_b = (torch.cat(t) for t in zip(*E)) if E else (torch.zeros(0, **i64),) * 4
    # final pair of each member (filter 0), if it was reached
    fkey = (m_fa * nb + m_fb) * 2
    pos = torch.searchsorted(vkey, fkey).clamp(max=max(vkey.numel() - 1, 0))
    ok = (m_sa >= 0) & (m_sb >= 0) & (vkey.numel() > 0)
    if vkey.numel():
        ok &= vkey[pos] == fkey
    fid = torch.where(ok, vid[pos] if vkey.numel() else torch.zeros_like(pos), -1)
    co = _coaccessible_torch(e_src, e_dst, fid, nxt)
    is_final = torch.zeros(nxt, dtype=torch.bool, device=dev)
    is_final[fid[fid >= 0]] = True
    # renumber: by member, the final pair last, otherwise discovery (BFS) order
    kept = torch.nonzero(co).view(-1)
    skey = (p_m[kept] * 2 + is_final[kept].long()) * max(nxt, 1) + kept
    kept = kept[torch.argsort(skey)]
    spm = torch.bincount(p_m[kept], minlength=M)
    first_state = torch.cumsum(spm, 0) - spm
    new = torch.full((nxt,), -1, **i64)
    new[kept] = torch.arange(kept.numel(), **i64)
    keep_e = torch.nonzero(co[e_dst]).view(-1) if e_dst.numel() else e_dst
    gsrc = new[e_src[keep_e]]
    o = torch.sort(gsrc, stable=True).indices
    keep_e, gsrc = keep_e[o], gsrc[o]
    em = p_m[e_src[keep_e]]
    off = first_state[em]
    return (gsrc - off, new[e_dst[keep_e]] - off, e_a[keep_e], e_b[keep_e], spm,
            torch.bincount(em, minlength=M))


def _member_pairs(A: FsaVec, B: FsaVec, ia, ib, pa, pb):
    """Start and final pair ``(m_sa, m_sb, m_fa, m_fb)`` (global ids) of every output member (members ``ia`` of
    ``a`` and ``ib`` of ``b``); the starts are -1 where no path can exist (fewer than 2 states, dead start)."""
    ok = (A.states_per_fsa[ia] >= 2) & (B.states_per_fsa[ib] >= 2)
    m_sa, m_sb = A.state_splits[:-1][ia], B.state_splits[:-1][ib]
    ok &= pa["co"][m_sa.clamp(max=max(A.total_states - 1, 0))] if A.total_states else torch.zeros_like(ok)
    ok &= pb["co"][m_sb.clamp(max=max(B.total_states - 1, 0))] if B.total_states else torch.zeros_like(ok)
    m_sa, m_sb = torch.where(ok, m_sa, -1), torch.where(ok, m_sb, -1)
    m_fa, m_fb = A.state_splits[1:][ia] - 1, B.state_splits[1:][ib] - 1
    return m_sa, m_sb, m_fa, m_fb


def _expand_numba(nb_mod, pa, pb, A, B, ia, ib):
    """The kernel's expansion of the member pairs ``(ia[m], ib[m])``; returns ``(arcs, a_map, b_map, arc_splits,
    state_splits)``: the kernel also finds each member's start and final pair, and writes the arc tensor with
    ``a``'s input labels and the row splits (the tensor operations of `_member_pairs` and of the end of
    `compose`, which cost more than the kernel itself on small graphs)."""
    nb = max(B.total_states, 1)
    na = pa["cnt"].numel()
    dense_size = 2 * na * nb if 2 * na * nb <= _DENSE_MAX else 0
    n = lambda t: t.numpy()  # noqa: E731  (zero-copy views of CPU tensors)
    ws = _workspace.__dict__
    if "P" not in ws:
        ws.update(P=np.empty((4, 1024), np.int64), E=np.empty((4, 4096), np.int64),
                  O=np.empty((4, 4096), np.int64), dmap=np.empty(1, np.int32))
    if "np" not in pa:  # numpy views of the prepared arrays, kept with them
        pa["np"] = tuple(n(pa[k]) for k in ("start", "cnt", "dst", "lab", "orig", "noeps", "alleps"))
        pa["ilab"] = A.labels.contiguous().numpy()  # input labels of all of a's arcs (a column of its arcs)
    if "np" not in pb:
        pb["np"] = tuple(n(pb[k]) for k in ("start", "cnt", "dst", "lab", "orig"))
    out = nb_mod.compose_kernel(*pa["np"], *pb["np"], n(A.state_splits), n(B.state_splits), n(ia), n(ib),
                             n(pa["co"]), n(pb["co"]), nb, dense_size,
                             n(pb["tab"]), pb["tab_w"], ws["P"], ws["E"], ws["O"], ws["dmap"], pa["ilab"])
    ws["P"], ws["E"], ws["O"], ws["dmap"] = out[5:]
    if ws["P"].nbytes + ws["E"].nbytes + ws["O"].nbytes + ws["dmap"].nbytes > _WORKSPACE_KEEP:
        ws.clear()  # do not hold on to the memory of one huge composition
    return tuple(torch.from_numpy(x) for x in out[:5])


# ---------------------------------------------------------------------------------------------------- public
def _pairing(a: Graphs, b: Graphs, A: FsaVec, B: FsaVec):
    """Member index of ``a`` and of ``b`` for each output member: pairwise, or one Fsa against every member."""
    dev = A.device
    if isinstance(a, FsaVec) and isinstance(b, FsaVec):
        if len(a) != len(b):
            raise FsaError(f"compose: batch sizes differ: a has {len(a)} FSAs, b has {len(b)} "
                           "(an FsaVec composes pairwise with an FsaVec of the same size, or with one Fsa)")
        ia = ib = torch.arange(len(a), device=dev)
    elif isinstance(a, FsaVec):
        ia, ib = torch.arange(len(a), device=dev), torch.zeros(len(a), dtype=torch.int64, device=dev)
    elif isinstance(b, FsaVec):
        ia, ib = torch.zeros(len(b), dtype=torch.int64, device=dev), torch.arange(len(b), device=dev)
    else:
        ia = ib = torch.zeros(1, dtype=torch.int64, device=dev)
    return ia, ib


def compose(a: Graphs, b: Graphs, backend: str = "auto", return_arc_maps: bool = False, *,
            impl: Optional[str] = None):
    """Composition of ``a`` and ``b`` (acceptors or transducers): ``a``'s output labels (``aux_labels``, or
    ``labels`` for an acceptor) matched with ``b``'s input labels.

    The result has ``a``'s input labels and ``b``'s output labels (as ``aux_labels``) when either input is a
    transducer, and is an acceptor when both are. Label 0 is epsilon, handled by OpenFst's sequence filter (no
    duplicate paths: the forward score and the number of paths equal OpenFst's ``compose``); the final ``-1``
    arcs match each other. Only accessible and co-accessible states are kept (a result with no successful path
    has 0 states). States are numbered breadth-first from the start pair (state 0), the final pair last; arcs
    are sorted by source.

    Scores are ``index_arcs(a.scores, a_map) + index_arcs(b.scores, b_map)`` (differentiable through
    ``index_select``); per-arc attributes follow the same maps (``a``'s, then ``b``'s that ``a`` lacks).

    Batches: ``FsaVec`` with ``FsaVec`` pairwise (same length), or an ``Fsa`` with every member of an
    ``FsaVec`` (either side); the whole batch is expanded together. Cycles are allowed in both inputs.

    Args:
        backend: ``"auto"`` (the numba kernel on CPU when numba imports and `gtn.kernels.use_numba` allows it,
            i.e. unless ``GTN_NO_NUMBA=1``; else torch), ``"torch"`` (the vectorized reference, any device) or
            ``"numba"`` (CPU only): the library's one policy, `gtn.kernels.select`. All give identical results.
        impl: the old name of ``backend`` (deprecated: it warns).
        return_arc_maps: also return ``(a_map, b_map)``, int64 ``[num_arcs]`` (-1 where that side did not move).

    Raises:
        FsaError: a batch-size mismatch, inputs on different devices, or something that is not an FSA.
    """
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, (Fsa, FsaVec)):
            raise FsaError(f"compose: {name} must be an Fsa or FsaVec, got {type(x).__name__}")
    if a.device != b.device:
        raise FsaError(f"compose: a is on {a.device} and b on {b.device}; move them to one device")
    backend = _backend(backend, impl, "compose")
    nb_mod = _kernels.select("compose_numba", a.device, None, backend, "compose")
    A, B = as_vec(a), as_vec(b)
    ia, ib = _pairing(a, b, A, B)
    # prepared per graph and cached on the object the caller holds (as_vec makes a fresh view each call)
    pa, pb = _prep_a(a, nb_mod), _prep_b(b, nb_mod)
    # labels: a's input label where a moved (else epsilon); b's output label where b moved (else epsilon)
    if nb_mod is not None:  # (CPU, like its inputs) the kernel also writes the arc tensor, labels included
        arcs, a_map, b_map, arc_splits, state_splits = _expand_numba(nb_mod, pa, pb, A, B, ia, ib)
    else:
        m_sa, m_sb, m_fa, m_fb = _member_pairs(A, B, ia, ib, pa, pb)
        src, dst, a_map, b_map, spm, apm = _expand_torch(pa, pb, m_sa, m_sb, m_fa, m_fb, max(B.total_states, 1))
        arcs = torch.stack([src, dst, index_arcs(A.labels, a_map, 0)], 1)
        zero = torch.zeros(1, dtype=torch.int64, device=A.device)
        arc_splits, state_splits = torch.cat([zero, torch.cumsum(apm, 0)]), torch.cat([zero, torch.cumsum(spm, 0)])
    b_out = B.aux_labels if B.aux_labels is not None else B.labels
    aux = None
    if A.aux_labels is not None or B.aux_labels is not None:
        aux = index_arcs(b_out, b_map, 0)
    dtype = torch.promote_types(A.scores.dtype, B.scores.dtype)
    scores = index_arcs(A.scores.to(dtype), a_map, 0.0) + index_arcs(B.scores.to(dtype), b_map, 0.0)
    attrs = {k: index_arcs(v, a_map, 0) for k, v in A._attrs.items()}
    attrs.update({k: index_arcs(v, b_map, 0) for k, v in B._attrs.items() if k not in attrs})
    out = from_arcs(arcs, scores, arc_splits, state_splits, aux, attrs)
    res = out if (isinstance(a, FsaVec) or isinstance(b, FsaVec)) else like(out, a)
    return (res, a_map, b_map) if return_arc_maps else res


def intersect(a: Graphs, b: Graphs, backend: str = "auto", *, impl: Optional[str] = None) -> Graphs:
    """Intersection of two acceptors (their composition): the paths whose label strings both accept, with the
    scores added. Label 0 is epsilon (no duplicate paths). Batched as `compose`.

    Raises:
        FsaError: when either input is a transducer (use `compose`), or on a batch-size mismatch.
    """
    for name, x in (("a", a), ("b", b)):
        if isinstance(x, (Fsa, FsaVec)) and x.aux_labels is not None:
            raise FsaError(f"intersect: {name} is a transducer; intersect takes acceptors (use compose, or "
                           "project first)")
    return compose(a, b, backend=_backend(backend, impl, "intersect"))


def constrained_forward_score(fsa: Graphs, constraint: Graphs) -> torch.Tensor:
    """``forward_score(compose(fsa, constraint))``: the log-sum-exp of the scores of the paths of ``fsa`` whose
    output labels the ``constraint`` accepts (e.g. the target's linear FSA: the "constrained" term of a
    discriminative loss). ``-inf`` (with zero gradients) when there is no such path. Shape ``[]`` for an `Fsa`
    result, ``[num_fsas]`` for an `FsaVec`."""
    from .scoring import forward_score
    return forward_score(compose(fsa, constraint))


#: The fused scores hold one float64 score (and two ints for the path) per pair of states of a member of ``a``
#: and of ``b``; above this many pairs for the largest member, `compose_score` builds the composition instead.
PRODUCT_CELLS = 5e7


def _product_ready(A: FsaVec, B: FsaVec) -> bool:
    """The fused product's conditions (see `gtn.kernels.product_numba`): acceptors without epsilon arcs, ``a``'s
    arcs from lower to higher states, one ``b``, and a dense (a state, b state) table of bounded size."""
    if A.aux_labels is not None or B.aux_labels is not None or len(B) != 1:
        return False
    if bool((A.labels == 0).any()) or bool((B.labels == 0).any()):
        return False
    if A.num_arcs and not bool((A.arcs[:, 0] < A.arcs[:, 1]).all()):
        return False
    max_a = int(A.num_states.max()) if len(A) else 0
    return max_a * int(B.total_states) <= PRODUCT_CELLS


def compose_score(a: Graphs, b: Graphs, log_semiring: bool = True, return_path: bool = False,
                  backend: str = "auto"):
    """``forward_score(compose(a, b))`` (or ``viterbi_score`` with ``log_semiring=False``), computed without
    building the composition when that is possible; the same results and gradients either way.

    Viterbi ties follow the library's one rule (`gtn.viterbi_path`) with the composed arcs ordered by the pair
    (arc of ``a``, arc of ``b``): of the equally good paths, the one whose pairs read from the final arc backwards
    come first. Both routes (the kernel, and composing then scoring) give that path and its gradient.

    The fused path (numba kernels, `gtn.kernels.product_numba`) runs a dynamic program over ``a``'s states in
    order, with one score per state of ``b``, pairing each arc of ``a`` only with ``b``'s arcs of the same label. It
    needs: ``a`` an `Fsa`/`FsaVec` of acceptors without epsilon arcs whose every arc goes from a lower to a
    higher state (acyclic and topologically numbered, like the interpretation graphs of a segmenter), ``b`` one
    acceptor without epsilon arcs (any topology, e.g. a lexicon's prefix tree) and CPU tensors. Otherwise (or
    with ``backend="torch"``) it composes and scores, which is the reference the tests check the kernels against.

    Gradients reach both inputs' scores: the forward score's backward recomputes alpha and runs beta over the
    same product (the arc posteriors of the composition, summed onto the ``a`` and ``b`` arcs that make each
    composed arc); the Viterbi score's gradient is 1 on the arcs of the best path.

    Args:
        return_path: (``log_semiring=False`` only) also return the best path, as `viterbi_path` of the
            composition would: a linear `Fsa`/`FsaVec` with ``a``'s labels and attributes (and ``b``'s that ``a``
            lacks), each arc scoring ``a``'s arc plus ``b``'s; a member without a path is the empty FSA.
        backend: ``"auto"``, ``"numba"`` (the kernels; `FsaError` if the conditions do not hold) or ``"torch"``
            (the library's one policy, `gtn.kernels.select`).

    Returns ``[num_fsas]`` scores for an `FsaVec` input (``[]`` for two `Fsa`), ``-inf`` where the composition
    has no path (with zero gradients there); with ``return_path``, ``(scores, path)``.
    """
    from .scoring import forward_score
    if return_path and log_semiring:
        raise FsaError("compose_score: return_path needs log_semiring=False (the best path is a Viterbi path)")
    backend = _kernels.check_backend(backend, "compose_score")
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, (Fsa, FsaVec)):
            raise FsaError(f"compose_score: {name} must be an Fsa or FsaVec, got {type(x).__name__}")
    A, B = as_vec(a), as_vec(b)
    mod = None
    if backend != "torch":
        mod = _kernels.select("product_numba", A.device, None, backend, "compose_score")
        if not _product_ready(A, B):
            if backend == "numba":
                raise FsaError("compose_score: the fused kernel needs acceptors without epsilon arcs, a's arcs "
                               "going from lower to higher states, one b, and a bounded state table "
                               f"({PRODUCT_CELLS:.0e} pairs)")
            mod = None
    if mod is None:
        c, a_map, b_map = compose(a, b, backend=backend, return_arc_maps=True)
        if log_semiring:
            return forward_score(c, backend=backend)
        # the tie rule of the fused kernel, which relaxes the pairs in (a arc, b arc) order and keeps the
        # first best: each composed state's back-pointer is its best entering arc with the lowest pair
        from .scoring import _total, _viterbi_path
        key = a_map * (B.num_arcs + 1) + (b_map + 1)
        score = _total(c, False, False, backend, "compose_score", key)
        if not return_path:
            return score
        return score, _viterbi_path(c, False, backend, "compose_score", key)
    plan = _ProductPlan(mod, A, B)
    dtype = torch.promote_types(A.scores.dtype, B.scores.dtype)
    scores = _ProductScore.apply(A.scores, B.scores, plan, bool(log_semiring)).to(dtype)
    single = not (isinstance(a, FsaVec) or isinstance(b, FsaVec))
    out = scores[0] if single else scores
    if not return_path:
        return out
    path = plan.best_path(A, B, dtype)
    return out, (like(path, a) if single else path)


class _ProductPlan:
    """The structure arrays of ``a`` (its arcs, labels shifted by one so that -1 is 0) and of ``b`` (its arcs
    sorted by shifted label, with the label ranges), the scratch tables, and, after a Viterbi run, the best
    paths (member-local ``a`` arcs and label-sorted ``b`` arcs)."""

    def __init__(self, mod, A: FsaVec, B: FsaVec):
        self.mod = mod
        self.N = len(A)
        self.a_src = A.arcs[:, 0].contiguous().numpy()
        self.a_dst = A.arcs[:, 1].contiguous().numpy()
        self.a_lab = (A.labels + 1).numpy()
        self.a_splits = A.arc_splits.numpy()
        self.na = A.num_states.numpy()
        self.nb = int(B.total_states)
        blab = B.labels + 1
        self.b_order = torch.sort(blab, stable=True).indices
        nlab = int(blab.max()) + 1 if B.num_arcs else 0
        splits = torch.zeros(nlab + 1, dtype=torch.int64)
        if B.num_arcs:
            splits[1:] = torch.cumsum(torch.bincount(blab, minlength=nlab), 0)
        self.b_lab_splits = splits.numpy()
        b_arcs = B.arcs.index_select(0, self.b_order)
        self.b_src = b_arcs[:, 0].contiguous().numpy()
        self.b_dst = b_arcs[:, 1].contiguous().numpy()
        self.cells = max(int(self.na.max()) * self.nb if self.N else 0, 1)
        self.path_len = None

    def _scores(self, a_scores, b_scores):
        a = a_scores.detach().to(torch.float64).numpy()
        b = b_scores.detach().index_select(0, self.b_order).to(torch.float64).numpy()
        return a, b

    def run(self, a_scores, b_scores, log_semiring: bool) -> torch.Tensor:
        a, b = self._scores(a_scores, b_scores)
        want_path = not log_semiring
        score = np.empty(self.N, dtype=np.float64)
        row = np.empty(self.cells, dtype=np.float64)
        back_a = np.empty(self.cells if want_path else 1, dtype=np.int64)
        back_b = np.empty_like(back_a)
        self.path_a = np.empty(max(len(self.a_src), 1) if want_path else 1, dtype=np.int64)
        self.path_b = np.empty_like(self.path_a)
        self.path_len = np.zeros(self.N, dtype=np.int64)
        self.mod.product_scores(self.a_src, self.a_dst, self.a_lab, a, self.a_splits, self.na, self.b_src,
                                self.b_dst, b, self.b_lab_splits, self.nb, log_semiring, want_path, score,
                                self.path_a, self.path_b, self.path_len, row, back_a, back_b)
        return torch.from_numpy(score)

    def path_maps(self):
        """``(member, position, a_map, b_map)`` of the best paths' arcs (global ``a`` / ``b`` arc indices)."""
        lens = torch.from_numpy(self.path_len)
        pos = ragged_range(torch.zeros(self.N, dtype=torch.int64), lens)
        member = torch.repeat_interleave(torch.arange(self.N), lens)
        starts = torch.from_numpy(self.a_splits[:-1]).index_select(0, member)
        at = starts + pos
        a_map = starts + torch.from_numpy(self.path_a).index_select(0, at)
        b_map = self.b_order.index_select(0, torch.from_numpy(self.path_b).index_select(0, at))
        return member, pos, a_map, b_map

    def best_path(self, A: FsaVec, B: FsaVec, dtype) -> FsaVec:
        """The best paths as ``viterbi_path(compose(a, b))`` gives them: a linear FSA per member."""
        member, pos, a_map, b_map = self.path_maps()
        lens = torch.from_numpy(self.path_len)
        zero = torch.zeros(1, dtype=torch.int64)
        arc_splits = torch.cat([zero, torch.cumsum(lens, 0)])
        nst = torch.where(lens > 0, lens + 1, torch.zeros_like(lens))
        state_splits = torch.cat([zero, torch.cumsum(nst, 0)])
        arcs = torch.stack([pos, pos + 1, A.labels.index_select(0, a_map)], 1)
        sc = A.scores.to(dtype).index_select(0, a_map) + B.scores.to(dtype).index_select(0, b_map)
        attrs = {k: v.index_select(0, a_map) for k, v in A._attrs.items()}
        attrs.update({k: v.index_select(0, b_map) for k, v in B._attrs.items() if k not in attrs})
        return from_arcs(arcs, sc, arc_splits, state_splits, None, attrs)


class _ProductScore(torch.autograd.Function):
    """The fused composed score; its backward gives the gradients that composing then scoring would."""

    @staticmethod
    def forward(ctx, a_scores, b_scores, plan, log_semiring):
        z = plan.run(a_scores, b_scores, log_semiring)
        ctx.plan, ctx.log_semiring = plan, log_semiring
        ctx.save_for_backward(a_scores, b_scores, z)
        return z

    @staticmethod
    def backward(ctx, gz):
        a_scores, b_scores, z = ctx.saved_tensors
        plan = ctx.plan
        gz = gz.to(torch.float64).contiguous()
        fin = torch.isfinite(z)
        gz = torch.where(fin, gz, torch.zeros_like(gz))  # no path: zero gradients
        if ctx.log_semiring:
            a, b = plan._scores(a_scores, b_scores)
            ga = np.zeros(len(a), dtype=np.float64)
            gb_sorted = np.zeros(len(b), dtype=np.float64)
            alpha = np.empty(plan.cells, dtype=np.float64)
            beta = np.empty(plan.cells, dtype=np.float64)
            plan.mod.product_grads(plan.a_src, plan.a_dst, plan.a_lab, a, plan.a_splits, plan.na, plan.b_src,
                                   plan.b_dst, b, plan.b_lab_splits, plan.nb, z.numpy(), gz.numpy(), ga, gb_sorted,
                                   alpha, beta)
            ga = torch.from_numpy(ga)
            gb = torch.zeros(len(b), dtype=torch.float64).index_copy_(0, plan.b_order, torch.from_numpy(gb_sorted))
        else:
            member, _, a_map, b_map = plan.path_maps()
            w = gz.index_select(0, member)
            ga = torch.zeros(a_scores.shape[0], dtype=torch.float64).index_add_(0, a_map, w)
            gb = torch.zeros(b_scores.shape[0], dtype=torch.float64).index_add_(0, b_map, w)
        return ga.to(a_scores.dtype), gb.to(b_scores.dtype), None, None
