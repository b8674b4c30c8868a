"""Compiled (numba) twin of `gtn.remove_epsilon` (CPU): the epsilon closures, the output arcs and the trimming
(``connect=True``) in one O(states + arcs + closure work + output arcs) call, and the backward of the closure
weights in another.

The pure-PyTorch removal in ``gtn/structure.py`` (``_remove_epsilon_torch``: closures level by level over the
whole batch) is the reference; this kernel returns the *same* graph (state numbering, arc order, arc map) with
the same scores (tropical: bitwise; log: to rounding) and the same gradients (to rounding, the tropical winners
the same), which ``tests/test_structure.py`` checks. It exists because the torch version pays ~15 tensor
operations per epsilon path length plus a sort per level: 3-10x the time of OpenFst's ``rmepsilon`` at 10^3 -
10^4 arcs (benchmarks/remove_epsilon.py; the kernel takes 0.2-0.6x).

Per state ``p`` the closure is found by a depth-first search over the epsilon arcs (with ``connect``, pruned at
states that cannot reach the final state: no output arc can come from them); the reverse post-order of that
search is a topological order of the states reached, over which one pass computes the semiring sum ``w(p, q)``
of the epsilon paths ``p -> q`` (log: log-add-exp; tropical: max, the winner being the path of fewest arcs,
then the lowest last arc: the torch path's rule, which keeps the first entry of its level-by-level lists). The
output arcs ``p -> r`` (``w(p, q)`` + the score of a non-epsilon arc ``q -> r``) are written for ``q`` in
increasing order, as the torch path sorts them.

Trimming without a second pass over the output: a state is co-accessible in the result iff it is in the input
(epsilon removal keeps every state's suffix language), and it is accessible in the result iff it is a start
state or the destination of a non-epsilon arc leaving a state accessible in the input. A member whose start or
final state is dropped loses all its states (as `gtn.connect`).
"""
import math

import numpy as np

from . import njit
from .compose_numba import _grow  # 1-D workspace doubling, shared with compose


def available() -> bool:
    """numba imported (this module fails to import otherwise); see `gtn.kernels.select`."""
    return True


@njit(cache=True)
def _walk_scratch(S, sc):
    """The per-state workspace of the epsilon-closure walks (forward and backward kernels alike): visit
    stamps, post-order, the DFS stack (state, arc), closure values (``sc``'s dtype), path lengths, winners."""
    return (np.full(S, -1, np.int64), np.empty(S, np.int64), np.empty(S, np.int64), np.empty(S, np.int64),
            np.empty(S, sc.dtype), np.empty(S, np.int64), np.empty(S, np.int64))


@njit(cache=True)
def _grow2(a, n):
    if n <= a.shape[0]:
        return a
    b = np.empty((max(2 * a.shape[0], n), a.shape[1]), a.dtype)
    b[:a.shape[0]] = a
    return b


@njit(cache=True, inline="always")
def _closure(p, e_splits, e_idx, dst, sc, alive, stamp, post, stk_s, stk_a, val, ln, win, tropical):
    """The epsilon closure of state ``p``: returns ``cnt``; ``post[:cnt]`` holds its states in post-order (every
    state after all its epsilon successors; ``post[cnt - 1] == p``), ``stamp[q] == p`` marks them, ``val[q]``
    is ``w(p, q)`` and (tropical) ``win[q]`` the epsilon arc by which the best path enters q (``-1`` for p),
    ``ln[q]`` its number of arcs. States with ``alive[q]`` False are not entered."""
    stamp[p] = p
    stk_s[0] = p
    stk_a[0] = e_splits[p]
    top = 1
    cnt = 0
    while top > 0:
        u = stk_s[top - 1]
        a = stk_a[top - 1]
        if a < e_splits[u + 1]:
            stk_a[top - 1] = a + 1
            v = dst[e_idx[a]]
            if stamp[v] != p and alive[v]:
                stamp[v] = p
                stk_s[top] = v
                stk_a[top] = e_splits[v]
                top += 1
        else:
            post[cnt] = u
            cnt += 1
            top -= 1
    for i in range(cnt - 1):
        q = post[i]
        val[q] = -np.inf
        ln[q] = 1 << 62
        win[q] = -1
    val[p] = 0.0
    ln[p] = 0
    win[p] = -1
    for i in range(cnt - 1, -1, -1):  # topological order
        u = post[i]
        wu = val[u]
        lu = ln[u] + 1
        for a in range(e_splits[u], e_splits[u + 1]):
            e = e_idx[a]
            v = dst[e]
            if stamp[v] != p:
                continue
            c = wu + sc[e]
            wv = val[v]
            if tropical:
                if c > wv or (c == wv and (lu < ln[v] or (lu == ln[v] and e < win[v]))):
                    val[v] = c
                    ln[v] = lu
                    win[v] = e
            elif c > wv:
                val[v] = c + math.log1p(math.exp(wv - c)) if wv > -np.inf else c
            elif c > -np.inf:
                val[v] = wv + math.log1p(math.exp(c - wv))
    return cnt


@njit(cache=True, inline="always")
def _sort_small(a, n):
    """Sort ``a[:n]`` in place (insertion sort for the usual few entries, numpy's sort otherwise)."""
    if n > 24:
        a[:n] = np.sort(a[:n])
        return
    for i in range(1, n):
        x = a[i]
        j = i - 1
        while j >= 0 and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = x


@njit(cache=True)
def _prepare(arcs, aux, state_splits, arc_splits):
    """Global ids, the epsilon mask and two CSRs by source state (arcs are sorted by (member, src)): the
    epsilon arcs and the other arcs. Returns (dst, is_eps, e_splits, e_idx, n_splits, n_idx, splits)."""
    M = state_splits.shape[0] - 1
    S = state_splits[M]
    A = arcs.shape[0]
    dst = np.empty(A, np.int64)
    is_eps = np.empty(A, np.bool_)
    splits = np.zeros(S + 1, np.int64)
    e_splits = np.zeros(S + 1, np.int64)
    has_aux = aux.shape[0] == A
    for m in range(M):
        base = state_splits[m]
        for a in range(arc_splits[m], arc_splits[m + 1]):
            s = arcs[a, 0] + base
            dst[a] = arcs[a, 1] + base
            eps = arcs[a, 2] == 0 and (not has_aux or aux[a] == 0)
            is_eps[a] = eps
            splits[s + 1] += 1
            if eps:
                e_splits[s + 1] += 1
    n_splits = np.zeros(S + 1, np.int64)
    for s in range(S):
        n_splits[s + 1] = n_splits[s] + (splits[s + 1] - e_splits[s + 1])
        splits[s + 1] += splits[s]
        e_splits[s + 1] += e_splits[s]
    E = e_splits[S]
    e_idx = np.empty(E, np.int64)
    n_idx = np.empty(A - E, np.int64)
    ie = 0
    ino = 0
    for a in range(A):  # in arc order, so both lists stay sorted by (source state, arc index)
        if is_eps[a]:
            e_idx[ie] = a
            ie += 1
        else:
            n_idx[ino] = a
            ino += 1
    return dst, is_eps, e_splits, e_idx, n_splits, n_idx, splits


@njit(cache=True)
def _epsilon_acyclic(S, e_splits, e_idx, dst):
    """Kahn's algorithm over the epsilon arcs: True iff they form no cycle."""
    indeg = np.zeros(S, np.int64)
    for i in range(e_idx.shape[0]):
        indeg[dst[e_idx[i]]] += 1
    queue = np.empty(S, np.int64)
    tail = 0
    for s in range(S):
        if indeg[s] == 0:
            queue[tail] = s
            tail += 1
    head = 0
    while head < tail:
        u = queue[head]
        head += 1
        for a in range(e_splits[u], e_splits[u + 1]):
            v = dst[e_idx[a]]
            indeg[v] -= 1
            if indeg[v] == 0:
                queue[tail] = v
                tail += 1
    return tail == S


@njit(cache=True)
def _dfs(splits, nxt, seen, stack, s):
    if seen[s]:
        return
    seen[s] = True
    stack[0] = s
    top = 1
    while top > 0:
        top -= 1
        u = stack[top]
        for a in range(splits[u], splits[u + 1]):
            v = nxt[a]
            if not seen[v]:
                seen[v] = True
                stack[top] = v
                top += 1


@njit(cache=True)
def _trim(state_splits, splits, dst, is_eps):
    """(keep, coacc): the states kept by trimming the result, and the input's co-accessible states."""
    M = state_splits.shape[0] - 1
    S = state_splits[M]
    A = dst.shape[0]
    stack = np.empty(S, np.int64)
    reach = np.zeros(S, np.bool_)
    coacc = np.zeros(S, np.bool_)
    rsplits = np.zeros(S + 1, np.int64)  # the arcs by destination (a counting sort)
    for a in range(A):
        rsplits[dst[a] + 1] += 1
    for s in range(S):
        rsplits[s + 1] += rsplits[s]
    fill = rsplits[:-1].copy()
    prev = np.empty(A, np.int64)
    for u in range(S):
        for a in range(splits[u], splits[u + 1]):
            d = dst[a]
            prev[fill[d]] = u
            fill[d] += 1
    for m in range(M):
        if state_splits[m + 1] > state_splits[m]:
            _dfs(splits, dst, reach, stack, state_splits[m])
            _dfs(rsplits, prev, coacc, stack, state_splits[m + 1] - 1)
    keep = np.zeros(S, np.bool_)
    for u in range(S):
        if reach[u]:
            for a in range(splits[u], splits[u + 1]):
                if not is_eps[a]:
                    keep[dst[a]] = True
    for m in range(M):
        lo, hi = state_splits[m], state_splits[m + 1]
        if hi == lo:
            continue
        keep[lo] = True  # the start state is reachable in the result
        for s in range(lo, hi):
            keep[s] = keep[s] and coacc[s]
        if not (keep[lo] and keep[hi - 1]):  # no successful path: the member becomes empty
            for s in range(lo, hi):
                keep[s] = False
    return keep, coacc


@njit(cache=True)
def _rmeps(arcs, aux, state_splits, arc_splits, sc, connect, tropical, want_pairs):
    """The forward pass. Returns (ok, out_arcs [n, 3] (local ids), out_map [n], out_sc [n], state_splits [M + 1],
    arc_splits [M + 1] of the result, pair_splits [S + 1], pair_q, pair_arc_splits, dst, e_splits, e_idx,
    alive); ``ok`` is False (and the rest empty) when the epsilon arcs form a cycle. The pairs are the closure
    pairs (p, q) of the kept states p (those of p at ``pair_splits[p]:[p + 1]``), each with its output arcs at
    ``pair_arc_splits[i]:[i + 1]``: what the backward needs (only written with ``want_pairs``; otherwise
    empty)."""
    M = state_splits.shape[0] - 1
    S = state_splits[M]
    A = arcs.shape[0]
    dst, is_eps, e_splits, e_idx, n_splits, n_idx, splits = _prepare(arcs, aux, state_splits, arc_splits)
    if not _epsilon_acyclic(S, e_splits, e_idx, dst):
        z = np.zeros(0, np.int64)
        return (False, np.zeros((0, 3), np.int64), z, sc[:0].copy(), z, z, z, z, z, dst, e_splits, e_idx,
                np.zeros(0, np.bool_))
    if connect:
        keep, alive = _trim(state_splits, splits, dst, is_eps)
    else:
        keep = np.ones(S, np.bool_)
        alive = keep
    new_id = np.empty(S, np.int64)
    out_states = np.zeros(M, np.int64)
    for m in range(M):
        c = 0
        for s in range(state_splits[m], state_splits[m + 1]):
            new_id[s] = c
            c += keep[s]
        out_states[m] = c
    stamp, post, stk_s, stk_a, val, ln, win = _walk_scratch(S, sc)
    cap = 2 * A + 16
    out_arcs = np.empty((cap, 3), np.int64)
    out_map = np.empty(cap, np.int64)
    out_sc = np.empty(cap, sc.dtype)
    pair_splits = np.zeros(S + 1 if want_pairs else 0, np.int64)
    pcap = S + 16 if want_pairs else 0
    pair_q = np.empty(pcap, np.int64)
    pair_arc_splits = np.zeros(pcap + 1, np.int64)
    out_arc_counts = np.zeros(M, np.int64)
    n = 0
    npairs = 0
    for m in range(M):
        n0 = n
        for p in range(state_splits[m], state_splits[m + 1]):
            if want_pairs:
                pair_splits[p] = npairs
            if not keep[p]:
                continue
            if e_splits[p] == e_splits[p + 1]:
                cnt = 1
                post[0] = p
                val[p] = 0.0
            else:
                cnt = _closure(p, e_splits, e_idx, dst, sc, alive, stamp, post, stk_s, stk_a, val, ln, win,
                               tropical)
                _sort_small(post, cnt)
            if want_pairs and npairs + cnt > pcap:
                pcap = max(2 * pcap, npairs + cnt)
                pair_q = _grow(pair_q, pcap)
                pair_arc_splits = _grow(pair_arc_splits, pcap + 1)
            src_new = new_id[p]
            for i in range(cnt):
                q = post[i]
                w = val[q]
                lo, hi = n_splits[q], n_splits[q + 1]
                if n + hi - lo > cap:
                    cap = max(2 * cap, n + hi - lo)
                    out_arcs = _grow2(out_arcs, cap)
                    out_map = _grow(out_map, cap)
                    out_sc = _grow(out_sc, cap)
                if want_pairs:
                    pair_q[npairs] = q
                    pair_arc_splits[npairs] = n
                    npairs += 1
                for j in range(lo, hi):
                    k = n_idx[j]
                    r = dst[k]
                    if not keep[r]:
                        continue
                    out_arcs[n, 0] = src_new
                    out_arcs[n, 1] = new_id[r]
                    out_arcs[n, 2] = arcs[k, 2]
                    out_map[n] = k
                    out_sc[n] = w + sc[k]
                    n += 1
        out_arc_counts[m] = n - n0
    if want_pairs:
        pair_splits[S] = npairs
        pair_arc_splits[npairs] = n
    out_state_splits = np.zeros(M + 1, np.int64)
    out_arc_splits = np.zeros(M + 1, np.int64)
    for m in range(M):
        out_state_splits[m + 1] = out_state_splits[m] + out_states[m]
        out_arc_splits[m + 1] = out_arc_splits[m] + out_arc_counts[m]
    return (True, out_arcs[:n], out_map[:n], out_sc[:n], out_state_splits, out_arc_splits, pair_splits,
            pair_q[:npairs], pair_arc_splits[:npairs + 1 if want_pairs else 0], dst, e_splits, e_idx, alive)


@njit(cache=True)
def _rmeps_backward(g, out_map, pair_splits, pair_q, pair_arc_splits, dst, e_splits, e_idx, alive, sc, tropical):
    """d loss / d input scores from ``g`` = d loss / d output scores: each output arc's gradient goes to its
    non-epsilon arc and (through ``w(p, q)``) to the epsilon arcs of the closure, by a reverse topological
    sweep per state p: log, in proportion to each arc's share of the paths' weight; tropical, along the winner."""
    S = pair_splits.shape[0] - 1
    A = sc.shape[0]
    grad = np.zeros(A, g.dtype)
    for j in range(g.shape[0]):
        grad[out_map[j]] += g[j]
    stamp, post, stk_s, stk_a, val, ln, win = _walk_scratch(S, sc)
    adj = np.zeros(S, g.dtype)
    for p in range(S):
        if e_splits[p] == e_splits[p + 1]:
            continue  # no epsilon arc leaves p: w(p, p) = 0 is a constant
        any_g = False
        for i in range(pair_splits[p], pair_splits[p + 1]):
            t = 0.0
            for j in range(pair_arc_splits[i], pair_arc_splits[i + 1]):
                t += g[j]
            adj[pair_q[i]] = t
            any_g = any_g or t != 0.0
        if not any_g:
            continue
        cnt = _closure(p, e_splits, e_idx, dst, sc, alive, stamp, post, stk_s, stk_a, val, ln, win, tropical)
        for i in range(cnt):  # post-order: every state after its successors, whose adjoints are complete
            u = post[i]
            au = adj[u]
            for a in range(e_splits[u], e_splits[u + 1]):
                e = e_idx[a]
                v = dst[e]
                if stamp[v] != p:
                    continue
                if tropical:
                    c = adj[v] if win[v] == e else 0.0
                else:
                    wv = val[v]
                    c = adj[v] * math.exp(val[u] + sc[e] - wv) if wv > -np.inf else 0.0
                grad[e] += c
                au += c
            adj[u] = au
        for i in range(cnt):
            adj[post[i]] = 0.0
    return grad


def remove_epsilon(arcs, aux, state_splits, arc_splits, sc, connect: bool, tropical: bool, want_pairs: bool):
    """Run the forward kernel on numpy arrays (``aux``: an empty array for acceptors; ``sc`` in the compute
    dtype; ``want_pairs``: keep what the backward needs). Returns the tuple of `_rmeps`."""
    return _rmeps(arcs, aux, state_splits, arc_splits, sc, connect, tropical, want_pairs)


def remove_epsilon_backward(g, saved, sc, tropical: bool):
    """The gradient of the input scores (numpy, the compute dtype) from ``g`` and the forward's arrays."""
    out_map, pair_splits, pair_q, pair_arc_splits, dst, e_splits, e_idx, alive = saved
    return _rmeps_backward(g, out_map, pair_splits, pair_q, pair_arc_splits, dst, e_splits, e_idx, alive, sc,
                           tropical)
