"""Compiled scores of ``compose(a, b)`` and their gradients, without building it (`gtn.compose_score`).

The reference is ``viterbi_score(compose(a, b))`` / ``forward_score(compose(a, b))`` (and ``viterbi_path`` of the
same composition for the best path); `gtn.compose_score` falls back to it whenever the conditions below do not
hold, and ``tests/test_compose.py`` checks that the two agree.

Conditions: ``a`` is a batch of epsilon-free acceptors whose arcs all go from a lower to a higher state (a
topological numbering, so ``a`` is acyclic); ``b`` is one epsilon-free acceptor of any topology. Then the
product of member ``i`` and ``b`` is acyclic and ordered by ``a``'s states: a dynamic program over ``a``'s states
in increasing order, holding one score per ``b`` state (a dense row of ``b.num_states``), relaxes every pair of
an ``a`` arc and a ``b`` arc with the same label. ``b``'s arcs are grouped by label, so an ``a`` arc visits
only the ``b`` arcs it can pair with. This is the work the composition does, without allocating its arcs and
states (for a 10,000-word prefix tree against a digit-string graph, about 170,000 composed arcs per image).

`product_scores` gives the forward (log) or Viterbi (tropical) score and the best path; `product_grads` the
forward score's gradients (alpha again, then beta with each pair's posterior in one reverse pass). All
arithmetic is float64 whatever the input dtype.
"""
import math

import numpy as np
from . import njit

NEG_INF = -np.inf


def available() -> bool:
    """numba imported (this module fails to import otherwise); see `gtn.kernels.load`."""
    return True


@njit(cache=True, inline="always")
def _log_add(y, v):
    """log(exp(y) + exp(v)), either may be -inf."""
    if y == NEG_INF:
        return v
    if v > y:
        return v + math.log1p(math.exp(y - v))
    return y + math.log1p(math.exp(v - y))


@njit(cache=True)
def _alpha(k0, k1, na, nb, nlab, a_src, a_dst, a_lab, a_sc, b_src, b_dst, b_sc, b_lab_splits, log_semiring,
           want_path, row, back_a, back_b):
    """The forward pass of one member: ``row[sa * nb + sb]`` the score of reaching the product state
    ``(sa, sb)`` (log or tropical), and with ``want_path`` the best way into it in ``back_a/back_b``."""
    for c in range(na * nb):
        row[c] = NEG_INF
    row[0] = 0.0
    # arcs are sorted by source and every arc goes to a higher state: when arc k is relaxed, the row of
    # its source state is complete
    for k in range(k0, k1):
        lab = a_lab[k]
        if lab >= nlab:
            continue
        s = a_src[k] * nb
        d = a_dst[k] * nb
        w = a_sc[k]
        for e in range(b_lab_splits[lab], b_lab_splits[lab + 1]):
            x = row[s + b_src[e]]
            if x == NEG_INF:
                continue
            v = x + w + b_sc[e]
            t = d + b_dst[e]
            if log_semiring:
                row[t] = _log_add(row[t], v)
            elif v > row[t]:
                row[t] = v
                if want_path:
                    back_a[t] = k - k0
                    back_b[t] = e


@njit(cache=True)
def product_scores(a_src, a_dst, a_lab, a_sc, a_arc_splits, a_nstates, b_src, b_dst, b_sc, b_lab_splits,
                   b_nstates, log_semiring, want_path, score, path_a, path_b, path_len, row, back_a, back_b):
    """For each member ``i`` of ``a``: ``score[i]`` the best (tropical) or total (log) score of the paths of
    ``compose(a[i], b)``, ``-inf`` when it has none.

    ``a_*``: ``a``'s arcs (member-local states, sorted by source state), ``a_lab`` shifted by +1 so that the final
    label ``-1`` is 0 and the digit labels start at 1; ``b_*``: ``b``'s arcs sorted by that shifted label, whose
    range in ``b_src/b_dst/b_sc`` is ``b_lab_splits[lab]:b_lab_splits[lab + 1]`` (an ``a`` label beyond ``b``'s
    labels pairs with nothing). ``row``: scratch of at least ``max(a_nstates) * b_nstates`` floats;
    ``back_a/back_b`` the same in ints (used with ``want_path``): the ``a`` arc (member-local index) and ``b``
    arc of the best way into each product state. With ``want_path`` (tropical only) the best path's ``a``
    arcs, member-local indices in path order, go to ``path_a[a_arc_splits[i]:]``, the matching ``b`` arcs (indices
    into the label-sorted ``b_*`` arrays) to ``path_b`` at the same places, and their count to ``path_len[i]``."""
    nb = b_nstates
    nlab = b_lab_splits.shape[0] - 1
    for i in range(a_arc_splits.shape[0] - 1):
        k0 = a_arc_splits[i]
        k1 = a_arc_splits[i + 1]
        na = a_nstates[i]
        path_len[i] = 0
        if na < 2 or nb < 2:  # a path needs a final arc into a final state other than the start
            score[i] = NEG_INF
            continue
        _alpha(k0, k1, na, nb, nlab, a_src, a_dst, a_lab, a_sc, b_src, b_dst, b_sc, b_lab_splits, log_semiring,
               want_path, row, back_a, back_b)
        f = (na - 1) * nb + nb - 1
        score[i] = row[f]
        if want_path and row[f] > NEG_INF:
            # walk back from (final, final) to (0, 0); the path is written reversed, then flipped
            n = 0
            t = f
            while t != 0:
                ka = back_a[t]
                path_a[k0 + n] = ka
                path_b[k0 + n] = back_b[t]
                n += 1
                t = a_src[k0 + ka] * nb + b_src[back_b[t]]
            for j in range(n // 2):
                tmp = path_a[k0 + j]
                path_a[k0 + j] = path_a[k0 + n - 1 - j]
                path_a[k0 + n - 1 - j] = tmp
                tmp = path_b[k0 + j]
                path_b[k0 + j] = path_b[k0 + n - 1 - j]
                path_b[k0 + n - 1 - j] = tmp
            path_len[i] = n


@njit(cache=True)
def product_grads(a_src, a_dst, a_lab, a_sc, a_arc_splits, a_nstates, b_src, b_dst, b_sc, b_lab_splits,
                  b_nstates, Z, gz, ga, gb, alpha, beta):
    """The log-semiring backward of `product_scores`: adds ``gz[i] * posterior`` of each pair of an ``a`` arc
    and a ``b`` arc on the paths of ``compose(a[i], b)`` to ``ga[a arc]`` and ``gb[b arc]`` (``b_*`` order, the
    label-sorted one). ``Z``: the forward scores; members with ``Z = -inf`` or ``gz = 0`` add nothing.

    Alpha is recomputed (one forward pass, as in `product_scores`); beta runs over ``a``'s arcs in reverse order
    (sources descending, so every row it reads is complete), and each pair's posterior
    ``exp(alpha[src] + w + v + beta[dst] - Z)`` is taken in the same pass. ``alpha``/``beta``: scratch of at
    least ``max(a_nstates) * b_nstates`` floats."""
    nb = b_nstates
    nlab = b_lab_splits.shape[0] - 1
    no_back = np.empty(1, dtype=np.int64)  # the forward pass keeps no back-pointers here
    for i in range(a_arc_splits.shape[0] - 1):
        z = Z[i]
        g = gz[i]
        na = a_nstates[i]
        if not (z > NEG_INF) or g == 0.0 or na < 2 or nb < 2:
            continue
        k0 = a_arc_splits[i]
        k1 = a_arc_splits[i + 1]
        _alpha(k0, k1, na, nb, nlab, a_src, a_dst, a_lab, a_sc, b_src, b_dst, b_sc, b_lab_splits, True, False,
               alpha, no_back, no_back)
        for c in range(na * nb):
            beta[c] = NEG_INF
        beta[na * nb - 1] = 0.0
        for k in range(k1 - 1, k0 - 1, -1):
            lab = a_lab[k]
            if lab >= nlab:
                continue
            s = a_src[k] * nb
            d = a_dst[k] * nb
            w = a_sc[k]
            for e in range(b_lab_splits[lab], b_lab_splits[lab + 1]):
                bt = beta[d + b_dst[e]]
                if bt == NEG_INF:
                    continue
                u = w + b_sc[e] + bt
                f = s + b_src[e]
                x = alpha[f]
                if x > NEG_INF:
                    p = g * math.exp(x + u - z)
                    ga[k] += p
                    gb[e] += p
                beta[f] = _log_add(beta[f], u)
