"""Compiled (numba) twin of the frontier expansion in `gtn.compose`.

The pure-PyTorch expansion in ``gtn/compose.py`` (``_expand_torch``) is the reference; this kernel walks the
same BFS with a FIFO queue, so it discovers state pairs in the same order and returns *identical* output
(state numbering and arc order), which ``tests/test_compose.py`` checks. It exists because the torch version
spends most of its time in per-level dispatch overhead (~40 tensor ops per BFS level), which dominates on
graphs of 10^4 arcs; here the whole composition is one call.

Inputs are the prepared per-graph arrays of ``gtn.compose`` (global state ids, arcs whose destination is
co-accessible, ``b``'s arcs sorted by (source, label)). Pair keys ``(sa * nb + sb) * 2 + filter`` are unique
across the batch (``sa``/``sb`` are batch-global ids), so one pair table serves every member.

Performance notes: the hot loop (``_bfs``) calls no function that takes arrays (numba refcounts every array
argument with atomic increments, which took a quarter of the time when the lookup was a helper), never
reallocates (the caller grows the buffers between chunks), and the scratch buffers are reused across calls
(``gtn.compose`` keeps them per thread) so that they are not page-faulted in every time.
"""
import numpy as np
from . import njit

from .topology_numba import _reach, _reverse_csr


def available() -> bool:
    """numba imported (this module fails to import otherwise); see `gtn.kernels.load`."""
    return True


_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)  # the hash of a pair key; _bfs inlines the same formula


@njit(cache=True)
def _slot(hk, key, mask):
    """Slot of ``key`` in the open-addressing table ``hk`` (linear probing): its own slot or the first empty."""
    h = np.uint64(key) * _HASH_MUL
    i = np.int64((h ^ (h >> np.uint64(31))) & np.uint64(mask))
    while hk[i] != -1 and hk[i] != key:
        i = (i + 1) & mask
    return i


@njit(cache=True)
def _rehash(hk, hv):
    cap = hk.shape[0] * 2
    nk = np.full(cap, -1, np.int64)
    nv = np.empty(cap, np.int64)
    for i in range(hk.shape[0]):
        if hk[i] != -1:
            j = _slot(nk, hk[i], cap - 1)
            nk[j] = hk[i]
            nv[j] = hv[i]
    return nk, nv


@njit(cache=True)
def _grow(a, n):
    if n <= a.shape[0]:
        return a
    b = np.empty(max(2 * a.shape[0], n), a.dtype)
    b[:a.shape[0]] = a
    return b


@njit(cache=True)
def _find(key, dense, dmap, hk, hv, p_key, npairs):
    """Id of the pair with ``key`` in the current member, or -1."""
    if dense:
        d = np.int64(dmap[key])
        if d >= 0 and d < npairs and p_key[d] == key:
            return d
        return -1
    s = _slot(hk, key, hk.shape[0] - 1)
    if hk[s] == key:
        d = hv[s]
        if d < npairs and p_key[d] == key:
            return d
    return -1


@njit(cache=True)
def _get_or_add(key, sa, sb, f, npairs, hn, dense, dmap, hk, hv, p_sa, p_sb, p_f, p_key):
    """Id of the pair ``(sa, sb, f)`` (with ``key``), adding it at the end of the queue when new.
    Returns ``(id, npairs, hn)``; the caller guarantees room in the queue and the hash table."""
    d = _find(key, dense, dmap, hk, hv, p_key, npairs)
    if d >= 0:
        return d, npairs, hn
    d = npairs
    if dense:
        dmap[key] = d
    else:
        s = _slot(hk, key, hk.shape[0] - 1)
        hk[s] = key
        hv[s] = d
        hn += 1
    p_sa[d] = sa
    p_sb[d] = sb
    p_f[d] = f
    p_key[d] = key
    return d, npairs + 1, hn


@njit(cache=True)
def _bfs(head, npairs, ne, hn, dense, dmap, hk, hv, p_sa, p_sb, p_f, p_key, e_src, e_dst, e_a, e_b,
         a_start, a_cnt, a_dst, a_lab, a_orig, a_noeps, a_alleps, b_start, b_cnt, b_dst, b_lab, b_orig, nb,
         b_tab, tab_w):
    """Process queued pairs from ``head`` until the queue is exhausted, or until the next pair might not fit
    in the arrays (then the caller grows them and calls again). Returns ``(head, npairs, ne, hn)``.

    Written as one flat loop without calls that take arrays: every such call (even an inlined one) costs
    numba an atomic incref/decref per array, which dominated the time when the lookup was a helper."""
    pcap = p_sa.shape[0]
    ecap = e_src.shape[0]
    hcap = hk.shape[0]
    hmask = hcap - 1
    while head < npairs:
        sa = p_sa[head]
        sb = p_sb[head]
        f = p_f[head]
        bs = b_start[sb]
        be = bs + b_cnt[sb]
        na = a_cnt[sa]
        bound = (na + 1) * (be - bs + 1)  # at most this many new arcs and new pairs from this pair
        if ne + bound > ecap or npairs + bound > pcap or (not dense and 2 * (hn + bound) > hcap):
            return head, npairs, ne, hn
        a0 = a_start[sa]
        # moves of this pair in the reference order: a's arcs i (each expanded over b's arcs with a matching
        # label; an output epsilon moves a alone), then i == a0 + na: b alone on its input-epsilon arcs
        for i in range(a0, a0 + na + 1):
            if i < a0 + na:
                lab = a_lab[i]
                if lab == 0:
                    if f != 0:
                        continue  # the filter: after b moved alone, a may not move alone
                    j = -1  # a alone
                    jend = 0
                else:
                    lab_q = lab
                    j = -2  # find b's arcs with this label below
            else:
                if a_alleps[sa]:
                    break  # a must still move on an epsilon: a b-alone move could never finish
                lab_q = 0
                j = -2
            if j == -2:
                if tab_w > 0:  # b's (state, label) -> first arc table
                    j = b_tab[sb * tab_w + lab_q + 1] if lab_q < tab_w - 1 else be
                    if j < 0:
                        j = be
                else:  # binary search in b's arcs of sb, sorted by label
                    lo = bs
                    hi = be
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if b_lab[mid] < lab_q:
                            lo = mid + 1
                        else:
                            hi = mid
                    j = lo
                jend = j
                while jend < be and b_lab[jend] == lab_q:
                    jend += 1
            while True:
                if j == -1:  # a alone (one move)
                    da = a_dst[i]
                    db = sb
                    nf = 0
                    am = a_orig[i]
                    bm = -1
                    j = jend  # done after this one
                elif j < jend:
                    db = b_dst[j]
                    bm = b_orig[j]
                    if i < a0 + na:  # a match
                        da = a_dst[i]
                        nf = 0
                        am = a_orig[i]
                    else:  # b alone
                        da = sa
                        nf = 0 if a_noeps[sa] else 1
                        am = -1
                    j += 1
                else:
                    break
                key = (da * nb + db) * 2 + nf
                # look the pair up (dense: sparse-set check; else linear probing), add it when new
                d = -1
                if dense:
                    d = np.int64(dmap[key])
                    if not (d >= 0 and d < npairs and p_key[d] == key):
                        d = -1
                        dmap[key] = npairs
                else:
                    h = np.uint64(key) * _HASH_MUL
                    s = np.int64((h ^ (h >> np.uint64(31))) & np.uint64(hmask))
                    while hk[s] != -1 and hk[s] != key:
                        s = (s + 1) & hmask
                    if hk[s] == key:
                        d = hv[s]
                    else:
                        hk[s] = key
                        hv[s] = npairs
                        hn += 1
                if d < 0:
                    d = npairs
                    p_sa[d] = da
                    p_sb[d] = db
                    p_f[d] = nf
                    p_key[d] = key
                    npairs += 1
                e_src[ne] = head
                e_dst[ne] = d
                e_a[ne] = am
                e_b[ne] = bm
                ne += 1
        head += 1
    return head, npairs, ne, hn


@njit(cache=True)
def _trim(npairs, ne, fid, e_src, e_dst, e_a, e_b, o_src, o_dst, o_a, o_b, no):
    """Keep the pairs from which the final pair ``fid`` is reachable; renumber them in discovery order with
    the final pair last (it has no leaving arcs, so arcs stay sorted by source) and append their arcs to the
    output arrays from ``no`` (room guaranteed by the caller). Returns ``(num_states, new no)``."""
    # co-accessible pairs: the shared reverse search of gtn.topology (once per member, not in the hot loop)
    rs = np.zeros(npairs + 1, np.int64)
    rsrc = np.empty(ne, np.int64)
    _reverse_csr(e_src[:ne], e_dst[:ne], npairs, rs, rsrc)
    co = np.zeros(npairs, np.bool_)
    _reach(rs, rsrc, np.full(1, fid, np.int64), co)
    new = np.full(npairs, -1, np.int64)
    c = 0
    for p in range(npairs):
        if co[p] and p != fid:
            new[p] = c
            c += 1
    new[fid] = c
    c += 1
    for e in range(ne):
        if co[e_dst[e]]:
            o_src[no] = new[e_src[e]]
            o_dst[no] = new[e_dst[e]]
            o_a[no] = e_a[e]
            o_b[no] = e_b[e]
            no += 1
    return c, no


@njit(cache=True)
def _grow2(a, n):
    """A copy of the 2-D workspace ``a`` with at least ``n`` columns."""
    if n <= a.shape[1]:
        return a
    b = np.empty((a.shape[0], max(2 * a.shape[1], n)), a.dtype)
    b[:, :a.shape[1]] = a
    return b


@njit(cache=True)
def compose_kernel(a_start, a_cnt, a_dst, a_lab, a_orig, a_noeps, a_alleps,
                   b_start, b_cnt, b_dst, b_lab, b_orig,
                   a_ss, b_ss, ia, ib, a_co, b_co, nb, dense_size, b_tab, tab_w, P, E, O, dmap, a_ilab):
    """Compose member ``ia[m]`` of ``a`` with member ``ib[m]`` of ``b`` for every output member ``m`` (``a_ss``,
    ``b_ss``: the state splits; ``a_co``, ``b_co``: co-accessible states). The start pair is the two start
    states, the final pair the two final states; a member of fewer than 2 states, or whose start cannot reach
    its final, gives an empty output member. Returns ``(arcs, a_map, b_map, arc_splits, state_splits, P, E, O,
    dmap)``: ``arcs`` ``[n, 3]`` = (src, dst, label) with member-local state ids and ``a``'s input label
    ``a_ilab[a_map]`` (0 where ``a`` did not move), only co-accessible pairs, the final pair last; the output's
    row splits; then the workspace (possibly grown) for the next call.

    ``b_tab[sb * tab_w + label + 1]`` is the first of b's sorted arcs of state ``sb`` with ``label`` (-1: none)
    when ``tab_w > 0``; otherwise labels are found by binary search. Workspace (reused across calls so that
    the big buffers are not page-faulted in again each time): ``P`` [4, *] the pair queue (sa, sb, filter,
    key), ``E`` [4, *] the arcs found (src, dst, a arc, b arc), ``O`` [4, *] the kept arcs, ``dmap`` the dense
    pair table (int32, any content)."""
    M = ia.shape[0]
    # pair key -> id: a dense table when the key space is small, else a hash table. The dense table is never
    # initialised (the "sparse set" trick): an entry counts only if it points at a queued pair of the current
    # member with that very key, so stale contents (earlier members, earlier calls) are harmless.
    dense = dense_size > 0
    if dense and dmap.shape[0] < dense_size:
        dmap = np.empty(dense_size, np.int32)
    hk = np.full(1 if dense else 1024, -1, np.int64)
    hv = np.empty(hk.shape[0], np.int64)
    hn = 0
    no = 0
    state_splits = np.zeros(M + 1, np.int64)
    arc_splits = np.zeros(M + 1, np.int64)
    for m in range(M):
        sa0, fa = a_ss[ia[m]], a_ss[ia[m] + 1] - 1
        sb0, fb = b_ss[ib[m]], b_ss[ib[m] + 1] - 1
        if fa - sa0 < 1 or fb - sb0 < 1 or not a_co[sa0] or not b_co[sb0]:
            continue  # no path can exist: an empty member
        # ---- BFS over reachable pairs (FIFO = level order, ids in discovery order)
        if not dense and 2 * (hn + 1) > hk.shape[0]:
            hk, hv = _rehash(hk, hv)
        key = (sa0 * nb + sb0) * 2
        _, npairs, hn = _get_or_add(key, sa0, sb0, 0, 0, hn, dense, dmap, hk, hv, P[0], P[1], P[2], P[3])
        head = 0
        ne = 0
        while True:
            head, npairs, ne, hn = _bfs(head, npairs, ne, hn, dense, dmap, hk, hv, P[0], P[1], P[2], P[3],
                                        E[0], E[1], E[2], E[3], a_start, a_cnt, a_dst, a_lab, a_orig, a_noeps,
                                        a_alleps, b_start, b_cnt, b_dst, b_lab, b_orig, nb, b_tab, tab_w)
            if head >= npairs:
                break
            # grow what the next pair might overflow (outside the hot loop)
            sa, sb = P[0, head], P[1, head]
            bound = (a_cnt[sa] + 1) * (b_cnt[sb] + 1)
            P = _grow2(P, npairs + bound)
            E = _grow2(E, ne + bound)
            while not dense and 2 * (hn + bound) > hk.shape[0]:
                hk, hv = _rehash(hk, hv)
        # ---- the final pair (both final, filter 0: the -1 arcs matched each other)
        fid = _find((fa * nb + fb) * 2, dense, dmap, hk, hv, P[3], npairs)
        if fid < 0:
            continue  # no common string: empty member
        O = _grow2(O, no + ne)
        k0 = no
        state_splits[m + 1], no = _trim(npairs, ne, fid, E[0], E[1], E[2], E[3], O[0], O[1], O[2], O[3], no)
        arc_splits[m + 1] = no - k0
    arcs = np.empty((no, 3), np.int64)  # the output's arc tensor as it is stored (no stack on the torch side)
    for k in range(no):
        arcs[k, 0] = O[0, k]
        arcs[k, 1] = O[1, k]
        arcs[k, 2] = a_ilab[O[2, k]] if O[2, k] >= 0 else 0
    for m in range(M):  # counts -> row splits
        state_splits[m + 1] += state_splits[m]
        arc_splits[m + 1] += arc_splits[m]
    return arcs, O[2, :no].copy(), O[3, :no].copy(), arc_splits, state_splits, P, E, O, dmap
