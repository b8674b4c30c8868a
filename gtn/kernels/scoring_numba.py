"""numba twins of the state-batch DP in `gtn.scoring` (`_alpha`, `_beta`, and the gradient), for CPU.

The torch DP does one gather + segmented reduction per depth level; here one compiled loop walks the states in
the same level order, each state reading its entering (alpha) or leaving (beta) arcs from a CSR layout built
once per graph (`gtn.scoring._Plan.numba_arrays`). Same semiring rules as `gtn.semiring`: a state whose
values are all -inf gets -inf (never -inf - -inf), start (alpha) / final (beta) states keep 0.

The gradient of the forward score: the forward sweep also keeps each arc's share w = exp(alpha[src] + score -
alpha[dst]) of its destination's alpha; one reverse sweep then pushes each state's posterior back through
those shares (state posterior x share = arc posterior). Same numbers as alpha + beta posteriors, with no exp.

The plan itself (`_plan`) is built in one pass too: Kahn's algorithm, a counting sort of the states into level
order and the CSR layouts above, O(states + arcs) with no sort (the tensor builder in `gtn.scoring._Plan` is the
reference): scoring a fresh graph once (compose, then score) is no longer dominated by a dozen tensor sorts.

Terms more than ``_CUT`` below the maximum are skipped in a log-sum-exp: exp(-inf) takes libm's slow path,
and a term below exp(-100) changes a sum that is >= 1 by less than 1e-43 (under float64 rounding).
"""
from __future__ import annotations

import math

import numpy as np
import torch

try:
    import numba
    from . import njit as _njit
    _OK = True
except Exception:  # pragma: no cover - numba is a dependency, but the torch path must not need it
    numba = None
    _OK = False

_CUT = -100.0


def available() -> bool:
    return _OK


if _OK:
    @_njit(cache=True, nogil=True)
    def _sweep(row, gidx, vals, fixed, log, reverse, out, w, ninf, want_w):
        """out[p] = semiring sum over k in row[p]:row[p+1] of out[gidx[k]] + vals[k]; fixed states get 0.

        Positions are visited in increasing (alpha) or decreasing (beta) order, a topological order of the
        dependencies (that is what the level order guarantees). With ``want_w`` (log semiring), w[k] gets
        arc k's share exp(out[gidx[k]] + vals[k] - out[p]) of its state's sum. The values are recomputed in
        the second pass rather than stored: the same float operations give the same numbers, and the sweep
        touches less memory."""
        S = row.shape[0] - 1
        for i in range(S):
            p = S - 1 - i if reverse else i
            if fixed[p]:
                out[p] = 0.0
                continue
            lo = row[p]
            hi = row[p + 1]
            m = ninf  # typed like the scores (float32 math stays float32: faster exp)
            for k in range(lo, hi):
                v = out[gidx[k]] + vals[k]
                if v > m:
                    m = v
            if m == ninf or not log:
                out[p] = m
                if want_w:
                    for k in range(lo, hi):
                        w[k] = 0.0
                continue
            s = 0.0
            for k in range(lo, hi):
                x = (out[gidx[k]] + vals[k]) - m
                e = 0.0
                if x > _CUT:
                    e = math.exp(x)
                    s += e
                if want_w:
                    w[k] = e  # unnormalised share
            out[p] = m + math.log(s)
            if want_w:
                r = 1.0 / s
                for k in range(lo, hi):
                    w[k] *= r

    @_njit(cache=True, nogil=True)
    def _grad_local(row, gidx, w, ga, perm, out):
        """Reverse sweep of the forward recursion: ga[p] is the (scaled) posterior of state p; each entering
        arc k takes ga[p] * w[k] (w = its share of alpha[p]) and hands it on to its source state. ``out`` is
        the gradient in the graph's arc order (``perm`` = plan.fperm: arc k of the sweep is arc perm[k]),
        zero-initialised by the caller: written in place, with no second array and no scatter afterwards."""
        S = row.shape[0] - 1
        for i in range(S):
            p = S - 1 - i
            gp = ga[p]
            if gp == 0.0:
                continue
            for k in range(row[p], row[p + 1]):
                wk = w[k]
                if wk != 0.0:
                    c = gp * wk
                    out[perm[k]] = c
                    ga[gidx[k]] += c

    @_njit(cache=True, nogil=True)
    def _plan(arcs, arc_splits, state_splits, proto):
        """The whole scoring plan of a graph in one O(states + arcs) pass (the twin of `gtn.scoring._Plan`'s
        torch builder, with identical results): Kahn's algorithm (FIFO; depth = longest path from a state
        without entering arcs), the level order (by depth, then start / other / final, then state id: a
        counting sort), and the CSR layouts of the DP. Index arrays of the sweeps get ``proto``'s dtype
        (int32 where it fits). Returns ``(ok, ...)``; ``ok`` is False when Kahn could not remove every state
        (a cycle: the caller finds one and raises), and the other arrays are then meaningless."""
        N = arc_splits.shape[0] - 1
        A = arcs.shape[0]
        S = state_splits[N]
        idx = proto.dtype
        src_pos = np.empty(A, np.int64)  # global source ids first, then their positions in level order
        dst_pos = np.empty(A, np.int64)
        arc_fsa = np.empty(A, np.int64)
        valid = np.zeros(N, np.bool_)
        start_pos = np.full(N, -1, np.int64)
        final_pos = np.full(N, -1, np.int64)
        for m in range(N):
            off = state_splits[m]
            valid[m] = state_splits[m + 1] - off >= 2
            for a in range(arc_splits[m], arc_splits[m + 1]):
                src_pos[a] = arcs[a, 0] + off
                dst_pos[a] = arcs[a, 1] + off
                arc_fsa[a] = m
        sas = np.zeros(S + 1, np.int64)  # arcs are sorted by (member, src): CSR row splits by global source
        indeg = np.zeros(S, np.int64)
        for a in range(A):
            sas[src_pos[a] + 1] += 1
            indeg[dst_pos[a]] += 1
        for s in range(S):
            sas[s + 1] += sas[s]
        level = np.full(S, -1, np.int64)
        queue = np.empty(S, np.int64)
        tail = 0
        for s in range(S):
            if indeg[s] == 0:
                queue[tail] = s
                tail += 1
                level[s] = 0
        head = 0
        L = 0
        while head < tail:
            s = queue[head]
            head += 1
            nxt = level[s] + 1
            if nxt > L:
                L = nxt
            for a in range(sas[s], sas[s + 1]):
                d = dst_pos[a]
                if level[d] < nxt:
                    level[d] = nxt
                indeg[d] -= 1
                if indeg[d] == 0:
                    queue[tail] = d
                    tail += 1
        ok = tail == S
        if not ok:
            L = 0
        # class within a depth: 0 start, 1 other, 2 final (start wins for a one-state member)
        cls = np.ones(S if ok else 0, np.int64)
        for m in range(N if ok else 0):
            if state_splits[m + 1] > state_splits[m]:
                cls[state_splits[m + 1] - 1] = 2
                cls[state_splits[m]] = 0
        bucket = np.zeros(3 * L + 1, np.int64)  # counting sort by (depth, class), stable in the state id
        for s in range(S if ok else 0):
            bucket[level[s] * 3 + cls[s] + 1] += 1
        for k in range(3 * L):
            bucket[k + 1] += bucket[k]
        lstart = np.empty(L + 1, np.int64)
        n_start = np.empty(L, np.int64)
        n_final = np.empty(L, np.int64)
        for l in range(L):
            lstart[l] = bucket[3 * l]
            n_start[l] = bucket[3 * l + 1] - bucket[3 * l]
            n_final[l] = bucket[3 * l + 3] - bucket[3 * l + 2]
        lstart[L] = bucket[3 * L]
        n = S if ok else 0
        order = np.empty(n, np.int64)
        pos = np.empty(n, np.int64)
        is_start = np.zeros(n, np.bool_)
        is_final = np.zeros(n, np.bool_)
        for s in range(n):
            k = level[s] * 3 + cls[s]
            p = bucket[k]
            bucket[k] = p + 1
            order[p] = s
            pos[s] = p
        for m in range(N if ok else 0):
            if state_splits[m + 1] > state_splits[m]:
                start_pos[m] = pos[state_splits[m]]
                final_pos[m] = pos[state_splits[m + 1] - 1]
                if valid[m]:
                    is_start[start_pos[m]] = True
                    is_final[final_pos[m]] = True
        # forward: kept arcs (not into a start state) by destination position; backward: all by source position
        frow = np.zeros(n + 1, idx)
        brow = np.zeros(n + 1, idx)
        nf = 0
        for a in range(A if ok else 0):
            dg = dst_pos[a]
            sp = pos[src_pos[a]]
            dp = pos[dg]
            src_pos[a] = sp
            dst_pos[a] = dp
            brow[sp + 1] += 1
            if cls[dg] != 0:
                frow[dp + 1] += 1
                nf += 1
        for p in range(n):
            frow[p + 1] += frow[p]
            brow[p + 1] += brow[p]
        fperm = np.empty(nf, np.int64)
        fsrc = np.empty(nf, idx)
        fill = np.empty(n, np.int64)
        for p in range(n):
            fill[p] = frow[p]
        for a in range(A if ok else 0):
            dp = dst_pos[a]
            if cls[order[dp]] != 0:
                k = fill[dp]
                fill[dp] = k + 1
                fperm[k] = a
                fsrc[k] = src_pos[a]
        nb = A if ok else 0
        bperm = np.empty(nb, np.int64)
        bdst = np.empty(nb, idx)
        k = 0
        for p in range(n):
            s = order[p]
            for a in range(sas[s], sas[s + 1]):
                bperm[k] = a
                bdst[k] = dst_pos[a]
                k += 1
        fsplit = np.empty(L + 1, np.int64)
        bsplit = np.empty(L + 1, np.int64)
        for l in range(L + 1):
            fsplit[l] = frow[lstart[l]]
            bsplit[l] = brow[lstart[l]]
        return (ok, level, L, order, pos, valid, start_pos, final_pos, arc_fsa, src_pos, dst_pos, fperm, bperm,
                lstart, n_start, n_final, fsplit, bsplit, frow, fsrc, brow, bdst, is_start, is_final)


def plan_arrays(arcs: torch.Tensor, arc_splits: torch.Tensor, state_splits: torch.Tensor, small: bool):
    """Run `_plan` on a graph's structure tensors (CPU, int64); ``small``: int32 indices for the sweeps.
    Returns the kernel's tuple, arrays as numpy (zero-copy into torch with ``torch.from_numpy``)."""
    proto = np.empty(0, np.int32 if small else np.int64)
    return _plan(arcs.contiguous().numpy(), arc_splits.numpy(), state_splits.numpy(), proto)


def _run(row, gidx, vals_t, fixed, log, reverse, want_w=False):
    vals = vals_t.contiguous().numpy()
    S = row.shape[0] - 1
    out = np.empty(max(S, 1), dtype=vals.dtype)
    w = np.empty(vals.shape[0] if want_w else 0, dtype=vals.dtype)
    _sweep(row, gidx, vals, fixed, log, reverse, out, w, vals.dtype.type(-np.inf), want_w)
    if want_w:
        return torch.from_numpy(out[:S]), w
    return torch.from_numpy(out[:S])


def alpha(plan, sc: torch.Tensor, log: bool) -> torch.Tensor:
    """Forward scores in level order (the twin of `gtn.scoring._alpha` on CPU)."""
    frow, fsrc, brow, bdst, is_start, is_final = plan.numba_arrays()
    return _run(frow, fsrc, sc.index_select(0, plan.fperm), is_start, log, False)


def alpha_and_weights(plan, sc: torch.Tensor):
    """Log-semiring forward scores plus, for each kept forward arc (in ``plan.fperm`` order), its share
    ``exp(alpha[src] + score - alpha[dst])`` of its destination's alpha, for `grad_from_weights`."""
    frow, fsrc, brow, bdst, is_start, is_final = plan.numba_arrays()
    return _run(frow, fsrc, sc.index_select(0, plan.fperm), is_start, True, False, True)


def grad_from_weights(plan, w: np.ndarray, tot: torch.Tensor, g: torch.Tensor, dtype) -> torch.Tensor:
    """``[A]`` gradient of ``sum(g * tot)`` w.r.t. the scores = arc posteriors times ``g[member]``, by one
    reverse sweep over the weights of `alpha_and_weights` (no exp, no beta)."""
    frow, fsrc, brow, bdst, is_start, is_final = plan.numba_arrays()
    ga = np.zeros(max(plan.S, 1), dtype=np.float64)
    ok = (tot > float("-inf")) & plan.valid
    gg = torch.where(ok, g.to(torch.float64), torch.zeros((), dtype=torch.float64))
    idx = plan.final_pos[ok].numpy()
    np.add.at(ga, idx, gg[ok].numpy())
    grad = torch.zeros(plan.A, dtype=torch.float32 if w.dtype == np.float32 else torch.float64)
    _grad_local(frow, fsrc, w, ga, plan.fperm.numpy(), grad.numpy())
    return grad.to(dtype)


def beta(plan, sc: torch.Tensor, log: bool) -> torch.Tensor:
    """Backward scores in level order (the twin of `gtn.scoring._beta` on CPU)."""
    frow, fsrc, brow, bdst, is_start, is_final = plan.numba_arrays()
    return _run(brow, bdst, sc.index_select(0, plan.bperm), is_final, log, True)
