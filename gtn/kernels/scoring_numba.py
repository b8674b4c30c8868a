"""numba twins of the state-batch DP in `gtn.scoring` (`_alpha`, `_beta`, and the gradient), for CPU.

The torch DP does one gather + segmented reduction per depth level; here one compiled loop walks the states in
the same level order, each state reading its entering (alpha) or leaving (beta) arcs from a CSR layout built
once per graph (`gtn.scoring._Plan.numba_arrays`). Same semiring rules as `gtn.semiring`: a state whose
values are all -inf gets -inf (never -inf - -inf), start (alpha) / final (beta) states keep 0.

The gradient of the forward score: the forward sweep also keeps each arc's share w = exp(alpha[src] + score -
alpha[dst]) of its destination's alpha; one reverse sweep then pushes each state's posterior back through
those shares (state posterior x share = arc posterior). Same numbers as alpha + beta posteriors, with no exp.

Terms more than ``_CUT`` below the maximum are skipped in a log-sum-exp: exp(-inf) takes libm's slow path,
and a term below exp(-100) changes a sum that is >= 1 by less than 1e-43 (under float64 rounding).
"""
from __future__ import annotations

import math

import numpy as np
import torch

try:
    import numba
    _OK = True
except Exception:  # pragma: no cover - numba is a dependency, but the torch path must not need it
    numba = None
    _OK = False

_CUT = -100.0


def available() -> bool:
    return _OK


if _OK:
    @numba.njit(cache=True, nogil=True)
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

    @numba.njit(cache=True, nogil=True)
    def _grad_local(row, gidx, w, ga, out):
        """Reverse sweep of the forward recursion: ga[p] is the (scaled) posterior of state p; each entering
        arc k takes ga[p] * w[k] (w = its share of alpha[p]) and hands it on to its source state."""
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
                    out[k] = c  # in plan.fperm order: contiguous writes (scattered once, by torch)
                    ga[gidx[k]] += c


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
    out = np.zeros(plan.fperm.shape[0], dtype=w.dtype)
    _grad_local(frow, fsrc, w, ga, out)
    grad = torch.zeros(plan.A, dtype=dtype)
    return grad.index_copy_(0, plan.fperm, torch.from_numpy(out).to(dtype))


def beta(plan, sc: torch.Tensor, log: bool) -> torch.Tensor:
    """Backward scores in level order (the twin of `gtn.scoring._beta` on CPU)."""
    frow, fsrc, brow, bdst, is_start, is_final = plan.numba_arrays()
    return _run(brow, bdst, sc.index_select(0, plan.bperm), is_final, log, True)
