"""Numba (CPU) kernels for the fused frame-synchronous scores of `gtn.dense` (dense intersection, CTC).

These are the compiled twins of the pure-torch frame loop in `gtn/dense.py` (which stays the reference, the
GPU path and the fallback; `tests/test_dense.py` checks that the two agree). They never build the lattice:
for each sequence ``b`` (graph ``g = gidx[b]``, ``L = lens[b]`` frames) they walk the graph's arcs frame by
frame, reading the emission ``lp[b, t, label]`` directly, so no ``[frames, arcs]`` tensor is materialised.

Layout (all graph-local state ids; ``soff/ns/aoff`` index the graph FsaVec's global states / arcs):

* forward: arcs in *destination* order (``in_*`` arrays, ``in_splits`` per global state) so each state's
  log-sum-exp (or max) is a short register loop with no scratch memory;
* backward: arcs in *source* order (the FsaVec's own order, ``out_splits`` = ``state_arc_splits``); beta is
  kept for two frames only, and the arc posterior ``exp(alpha + w + beta - Z)`` reuses the same
  ``exp(w + beta - m)`` term that the beta log-sum-exp needs (one ``exp`` per arc and frame).

Arithmetic is float64 whatever the input dtype (alpha is stored in float64); gradients are written in the
dtype of the arrays given.
"""
import math

import numpy as np
from . import njit

NEG_INF = -np.inf


def available() -> bool:
    """Importing this module needs numba; once imported, the kernels are usable (see `gtn.kernels.load`)."""
    return True


@njit(cache=True)
def dense_forward(lp, lens, gidx, soff, ns, in_splits, in_src, in_lab, in_sc, alpha_off, alpha, Z, log_semiring,
                  active):
    """alpha[alpha_off[b] + t * n + s]: score of reaching graph state s after t frames; Z[b]: total score.
    Only the sequences with ``active[b]`` are computed."""
    B = lens.shape[0]
    for b in range(B):
        if not active[b]:
            continue
        g = gidx[b]
        L = lens[b]
        n = ns[g]
        s0 = soff[g]
        base = alpha_off[b]
        if n == 0:
            Z[b] = NEG_INF
            continue
        for s in range(n):
            alpha[base + s] = NEG_INF
        alpha[base] = 0.0
        for t in range(L):
            prev = base + t * n
            cur = prev + n
            for s in range(n - 1):
                k0 = in_splits[s0 + s]
                k1 = in_splits[s0 + s + 1]
                m = NEG_INF
                for k in range(k0, k1):
                    v = alpha[prev + in_src[k]] + in_sc[k] + lp[b, t, in_lab[k]]
                    if v > m:
                        m = v
                if log_semiring and m > NEG_INF and k1 - k0 > 1:
                    acc = 0.0
                    for k in range(k0, k1):
                        acc += math.exp(alpha[prev + in_src[k]] + in_sc[k] + lp[b, t, in_lab[k]] - m)
                    m += math.log(acc)
                alpha[cur + s] = m
            alpha[cur + n - 1] = NEG_INF
        # the final frame: arcs labelled -1 into the final state, no emission
        last = base + L * n
        k0 = in_splits[s0 + n - 1]
        k1 = in_splits[s0 + n]
        m = NEG_INF
        for k in range(k0, k1):
            v = alpha[last + in_src[k]] + in_sc[k]
            if v > m:
                m = v
        if log_semiring and m > NEG_INF and k1 - k0 > 1:
            acc = 0.0
            for k in range(k0, k1):
                acc += math.exp(alpha[last + in_src[k]] + in_sc[k] - m)
            m += math.log(acc)
        Z[b] = m


@njit(cache=True)
def dense_backward_log(lp, lens, gidx, soff, ns, aoff, out_splits, src, dst, lab, sc, alpha_off, alpha, Z, gz,
                       glp, gsc, beta_a, beta_b, active):
    """Accumulate ``gz[b] * posterior`` of every (frame, arc) into ``glp[b, t, label]`` and ``gsc[arc]``.

    ``beta_a``/``beta_b`` are scratch rows of length >= max states; ``gsc`` is indexed by the graph FsaVec's
    arcs (a graph shared by several sequences accumulates all of them)."""
    B = lens.shape[0]
    for b in range(B):
        if not active[b]:
            continue
        zb = Z[b]
        w = gz[b]
        if not (zb > NEG_INF) or w == 0.0:
            continue
        g = gidx[b]
        L = lens[b]
        n = ns[g]
        s0 = soff[g]
        base = alpha_off[b]
        nxt = beta_a
        cur = beta_b
        # frame L: only arcs into the final state (label -1) are taken
        last = base + L * n
        for s in range(n - 1):
            a_s = alpha[last + s]
            k0 = out_splits[s0 + s]
            k1 = out_splits[s0 + s + 1]
            m = NEG_INF
            for k in range(k0, k1):
                if lab[k] == -1:
                    v = sc[k]
                    if v > m:
                        m = v
            if m == NEG_INF:
                nxt[s] = NEG_INF
                continue
            c = math.exp(a_s + m - zb) * w if a_s > NEG_INF else 0.0
            acc = 0.0
            for k in range(k0, k1):
                if lab[k] == -1:
                    e = math.exp(sc[k] - m)
                    acc += e
                    gsc[k] += e * c
            nxt[s] = m + math.log(acc)
        nxt[n - 1] = NEG_INF
        for t in range(L - 1, -1, -1):
            row = base + t * n
            for s in range(n - 1):
                a_s = alpha[row + s]
                k0 = out_splits[s0 + s]
                k1 = out_splits[s0 + s + 1]
                m = NEG_INF
                for k in range(k0, k1):
                    if lab[k] >= 0:
                        v = sc[k] + lp[b, t, lab[k]] + nxt[dst[k]]
                        if v > m:
                            m = v
                if m == NEG_INF:
                    cur[s] = NEG_INF
                    continue
                c = math.exp(a_s + m - zb) * w if a_s > NEG_INF else 0.0
                acc = 0.0
                for k in range(k0, k1):
                    if lab[k] >= 0:
                        e = math.exp(sc[k] + lp[b, t, lab[k]] + nxt[dst[k]] - m)
                        acc += e
                        if c != 0.0 and e != 0.0:
                            p = e * c
                            glp[b, t, lab[k]] += p
                            gsc[k] += p
                cur[s] = m + math.log(acc)
            cur[n - 1] = NEG_INF
            tmp = nxt
            nxt = cur
            cur = tmp


@njit(cache=True)
def dense_backward_viterbi(lp, lens, gidx, soff, ns, in_splits, in_arc, in_src, in_lab, in_sc, alpha_off, alpha, Z,
                           gz, glp, gsc):
    """Trace back one best path per sequence (ties: the lowest arc index) and add ``gz[b]`` to its arcs."""
    B = lens.shape[0]
    for b in range(B):
        if not (Z[b] > NEG_INF) or gz[b] == 0.0:
            continue
        w = gz[b]
        g = gidx[b]
        L = lens[b]
        n = ns[g]
        s0 = soff[g]
        base = alpha_off[b]
        # the -1 arc into the final state
        last = base + L * n
        best = NEG_INF
        bk = -1
        for k in range(in_splits[s0 + n - 1], in_splits[s0 + n]):
            v = alpha[last + in_src[k]] + in_sc[k]
            if v > best:
                best = v
                bk = k
        gsc[in_arc[bk]] += w
        state = in_src[bk]
        for t in range(L - 1, -1, -1):
            row = base + t * n
            best = NEG_INF
            bk = -1
            for k in range(in_splits[s0 + state], in_splits[s0 + state + 1]):
                v = alpha[row + in_src[k]] + in_sc[k] + lp[b, t, in_lab[k]]
                if v > best:
                    best = v
                    bk = k
            gsc[in_arc[bk]] += w
            glp[b, t, in_lab[bk]] += w
            state = in_src[bk]


# ------------------------------------------------------------------------------------------------------------
# Linear-domain (scaled) kernels for the log semiring: the fast path.
#
# Every successful path of a dense intersection takes exactly one arc per frame (frame L: the -1 arc), so the
# recursion can run on probabilities ``P[b, t, c] = exp(lp - max_c lp)`` and ``w[a] = exp(score - max score)``
# with alpha renormalised to sum 1 at each frame (the log of the normaliser accumulates into the total): only
# multiply-adds per arc, no exp/log. In the backward the posteriors of one frame sum to 1, so
# ``posterior = q / sum(q)`` with ``q = alpha_t[src] * w * P * beta_{t+1}[dst]`` and beta renormalised per
# frame too.
#
# Exactness. Scaling is linear, so the only error beyond ordinary rounding is gradual underflow: a product
# below ~1e-308 keeps an absolute error of at most ~5e-324 (or becomes 0). An absolute error ``e`` in
# ``alpha_t[s]`` (or ``beta_t[s]``) moves the total by ``e * beta_t[s] / sum_s alpha_t[s] beta_t[s]``, relative,
# which with both normalised to sum 1 is at most ``e * deg / sq_t``, ``sq_t`` = the sum of the q's of frame
# t (posterior mass before normalisation; the same bound holds in absolute terms for every posterior). So
# the result is exact (to ~1e-30 here) whenever ``sq_t > TINY`` at every frame -- which the backward checks.
# The forward alone cannot see beta: it marks (``flag``) a sequence in which some product fell below TINY
# while its factors were nonzero, and the caller certifies it with a check-only backward pass
# (``write=False``). A sequence fails (``ok`` cleared, the caller recomputes it with the log-domain kernels
# above) when that check fails, when a frame's alpha sum itself falls below TINY, or when a marked sequence
# dies (its alpha all zero: the lost paths might have been the only ones). Exact zeros (-inf scores,
# unreachable states) are not underflows.
#
# Memory: alpha is kept only at the checkpoint frames 0, S, 2S, ... (``alpha_ck``, ``ck_off[b]`` per sequence);
# the backward recomputes the S frames of a segment from its checkpoint when it reaches them (the same
# operations in the same order as the forward, so the same numbers), one extra forward pass of arithmetic for
# ``[frames / S + S, states]`` of float64 instead of ``[frames, states]``.
# The scaled kernels release the GIL: `gtn.dense` runs them on parts of the batch in several threads.
TINY = 1e-290  # the default ``tiny`` threshold (a parameter, so tests can force the fallbacks)


@njit(cache=True, nogil=True)
def dense_forward_lin(lp, lens, gidx, soff, ns, in_splits, in_src, in_lab, in_w, ck_off, S, alpha_ck, ra, rb, P,
                      logz, ok, flag, tiny):
    """Scaled forward for the sequences with ``ok[b]``: clears ``ok[b]`` when the scaled recursion cannot be
    trusted, sets ``flag[b]`` when it needs the backward's check (a product fell below ``tiny``).

    Keeps the normalised alpha of frames 0, S, 2S, ... in ``alpha_ck[ck_off[b] + (t // S) * n + s]``
    (``ra``/``rb``: scratch rows of length >= max states). Fills ``P[b, t, c] = exp(lp[b, t, c] - max_c
    lp[b, t])`` for the backward. ``logz[b]`` gets the total in the scaled units plus the emission maxima (the
    caller adds the score offset)."""
    B = lens.shape[0]
    C = lp.shape[2]
    for b in range(B):
        if not ok[b]:
            continue
        g = gidx[b]
        L = lens[b]
        n = ns[g]
        s0 = soff[g]
        cb = ck_off[b]
        if n == 0:
            logz[b] = NEG_INF
            continue
        prev = ra
        cur = rb
        for s in range(n):
            prev[s] = 0.0
        prev[0] = 1.0
        for s in range(n):
            alpha_ck[cb + s] = prev[s]
        acc_log = 0.0
        dead = False
        marked = False
        for t in range(L):
            # this frame's emission probabilities, relative to its best symbol
            Pt = P[b, t]
            m = NEG_INF
            for c in range(C):
                if lp[b, t, c] > m:
                    m = lp[b, t, c]
            if m == NEG_INF:
                dead = True
                break
            for c in range(C):
                d = lp[b, t, c] - m
                if d < -700.0 and d > NEG_INF:
                    ok[b] = False
                Pt[c] = math.exp(d)
            if not ok[b]:
                break
            acc_log += m
            tot = 0.0
            bad = False
            for s in range(n - 1):
                x = 0.0
                for k in range(in_splits[s0 + s], in_splits[s0 + s + 1]):
                    a = prev[in_src[k]]
                    wp = in_w[k] * Pt[in_lab[k]]
                    term = a * wp
                    if term < tiny:
                        if a > 0.0 and wp > 0.0:
                            bad = True
                    x += term
                cur[s] = x
                tot += x
            cur[n - 1] = 0.0
            if bad:
                marked = True
                if not (tot > tiny):
                    ok[b] = False
                    break
            if tot == 0.0:
                dead = True
                break
            inv = 1.0 / tot
            for s in range(n - 1):
                cur[s] *= inv
            acc_log += math.log(tot)
            if (t + 1) % S == 0:
                o = cb + ((t + 1) // S) * n
                for s in range(n):
                    alpha_ck[o + s] = cur[s]
            tmp = prev
            prev = cur
            cur = tmp
        if not ok[b]:
            continue
        if dead:
            if marked:
                ok[b] = False
            else:
                logz[b] = NEG_INF
            continue
        x = 0.0
        for k in range(in_splits[s0 + n - 1], in_splits[s0 + n]):
            a = prev[in_src[k]]
            term = a * in_w[k]
            if term < tiny and a > 0.0 and in_w[k] > 0.0:
                marked = True
            x += term
        if marked and not (x > tiny):
            ok[b] = False
            continue
        flag[b] = marked
        logz[b] = acc_log + math.log(x) if x > 0.0 else NEG_INF


@njit(cache=True, nogil=True)
def _alpha_segment(alpha_ck, cb, j, S, last, n, s0, in_splits, in_src, in_lab, in_w, Pb, seg):
    """``seg[r * n + s]``: the normalised alpha of frame ``j * S + r`` for ``r = 0 .. last - j * S``, recomputed
    from checkpoint ``j`` exactly as `dense_forward_lin` computed it."""
    t0 = j * S
    o = cb + j * n
    for s in range(n):
        seg[s] = alpha_ck[o + s]
    for r in range(last - t0):
        Pt = Pb[t0 + r]
        prev = r * n
        cur = prev + n
        tot = 0.0
        for s in range(n - 1):
            x = 0.0
            for k in range(in_splits[s0 + s], in_splits[s0 + s + 1]):
                a = seg[prev + in_src[k]]
                wp = in_w[k] * Pt[in_lab[k]]
                x += a * wp
            seg[cur + s] = x
            tot += x
        seg[cur + n - 1] = 0.0
        inv = 1.0 / tot
        for s in range(n - 1):
            seg[cur + s] *= inv


@njit(cache=True, nogil=True)
def dense_backward_lin(P, lens, gidx, soff, ns, aoff, naf, out_splits, dst, lab, w, in_splits, in_src, in_lab,
                       in_w, ck_off, S, alpha_ck, seg, logz, gz, ok, glp, gsc, beta_a, beta_b, qbuf, gloc, row, tiny,
                       write):
    """Scaled backward for the sequences with ``ok[b]`` (checkpoints and P from `dense_forward_lin`); clears
    ``ok[b]`` when the posterior mass of a frame falls below ``tiny`` (see above), leaving ``gsc`` untouched
    for that sequence (its ``glp[b]`` rows must be re-zeroed by the caller). ``write=False``: the check only
    (``glp``, ``gsc`` untouched). ``glp`` (float32 or float64) is written at frames ``t < lens[b]`` of the
    sequences processed; the caller zeroes it first.

    ``seg``: scratch of length >= (S + 1) * max states; ``beta_a``/``beta_b``: >= max states; ``qbuf``/``gloc``:
    >= the arcs of the largest graph; ``row``: >= symbols."""
    B = lens.shape[0]
    C = P.shape[2]
    for c in range(C):
        row[c] = 0.0
    for b in range(B):
        if not ok[b]:
            continue
        wb = gz[b]
        if not (logz[b] > NEG_INF) or wb == 0.0:
            continue
        g = gidx[b]
        L = lens[b]
        n = ns[g]
        s0 = soff[g]
        a0 = aoff[g]
        na = naf[g]
        cb = ck_off[b]
        Pb = P[b]
        if write:
            for j in range(na):
                gloc[j] = 0.0
        nxt = beta_a
        cur = beta_b
        # the segment holding frame L
        t0 = (L // S) * S
        _alpha_segment(alpha_ck, cb, L // S, S, L, n, s0, in_splits, in_src, in_lab, in_w, Pb, seg)
        # frame L: the -1 arcs into the final state (beta of the final state = 1)
        last = (L - t0) * n
        sq = 0.0
        btot = 0.0
        for s in range(n - 1):
            a_s = seg[last + s]
            bs = 0.0
            for k in range(out_splits[s0 + s], out_splits[s0 + s + 1]):
                q = 0.0
                if lab[k] == -1:
                    bs += w[k]
                    q = a_s * w[k]
                if write:
                    qbuf[k - a0] = q
                sq += q
            cur[s] = bs
            btot += bs
        if not (sq > tiny) or not (btot > 0.0):
            ok[b] = False
            continue
        if write:
            sc = wb / sq
            for j in range(na):
                gloc[j] += qbuf[j] * sc
        inv = 1.0 / btot
        for s in range(n - 1):
            cur[s] *= inv
        cur[n - 1] = 0.0
        tmp = nxt
        nxt = cur
        cur = tmp
        for t in range(L - 1, -1, -1):
            if t < t0:  # entering the previous segment: recompute its alpha from its checkpoint
                t0 -= S
                _alpha_segment(alpha_ck, cb, t0 // S, S, t0 + S - 1, n, s0, in_splits, in_src, in_lab, in_w, Pb,
                               seg)
            rowa = (t - t0) * n
            Pt = Pb[t]
            sq = 0.0
            btot = 0.0
            for s in range(n - 1):
                a_s = seg[rowa + s]
                bs = 0.0
                for k in range(out_splits[s0 + s], out_splits[s0 + s + 1]):
                    q = 0.0
                    lk = lab[k]
                    if lk >= 0:
                        term = w[k] * Pt[lk] * nxt[dst[k]]
                        bs += term
                        q = a_s * term
                        if write:
                            row[lk] += q
                    if write:
                        qbuf[k - a0] = q
                    sq += q
                cur[s] = bs
                btot += bs
            if not (sq > tiny) or not (btot > 0.0):
                ok[b] = False
                if write:
                    for c in range(C):
                        row[c] = 0.0
                break
            if write:
                sc = wb / sq
                for j in range(na):
                    gloc[j] += qbuf[j] * sc
                for c in range(C):
                    glp[b, t, c] = row[c] * sc
                    row[c] = 0.0
            inv = 1.0 / btot
            for s in range(n - 1):
                cur[s] *= inv
            cur[n - 1] = 0.0
            tmp = nxt
            nxt = cur
            cur = tmp
        if ok[b] and write:
            for j in range(na):
                gsc[a0 + j] += gloc[j]


# ------------------------------------------------------------------------------------------------------------
# The narrowed emission columns (`gtn.dense._GatherColumns`): single-threaded loops, so that small problems pay
# no intra-op thread-pool latency (torch's gather / scatter_add_ wake its pool even for a few thousand values).
@njit(cache=True)
def gather_columns(lp, cols, out):
    """``out[b, t, k] = lp[b, t, cols[b, k]]`` (``lp`` in any layout)."""
    B, T, K = out.shape
    for b in range(B):
        for t in range(T):
            for k in range(K):
                out[b, t, k] = lp[b, t, cols[b, k]]


@njit(cache=True)
def scatter_columns(g, cols, out):
    """``out[b, t, cols[b, k]] += g[b, t, k]`` into a zeroed ``out`` (any layout; padding columns repeat a
    column with a zero gradient, hence the add)."""
    B, T, K = g.shape
    for b in range(B):
        for t in range(T):
            for k in range(K):
                out[b, t, cols[b, k]] += g[b, t, k]
