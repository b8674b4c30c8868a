"""Scoring: forward (log semiring) and Viterbi (tropical) scores of acyclic FSAs, batched and differentiable.

One dynamic program, written once over a `gtn.semiring.Semiring`, runs over *state batches*: states grouped
by topological depth across the whole batch (`gtn.topology.state_batches`). States are laid out in
"level order" (by depth; within a depth, start states first and final states last), so the states of one
depth are a contiguous block of the alpha/beta vectors, and each DP step is one gather of the scores of the
arcs entering (forward) or leaving (backward) that block plus one segmented semiring sum
(`Semiring.segment_plus`). This level structure (the "plan") depends only on the arcs and is cached on the
graph object (``x._cache``), so scoring the same graph again (a training loop, a benchmark) skips it. On CPU
the plan of a fresh graph (e.g. the output of `gtn.compose`) is built by one O(states + arcs) numba pass
(Kahn's levels, a counting sort into level order, the CSR layouts); the tensor-operation builder is the
reference (any device) and gives the identical plan.

The total scores are one custom `torch.autograd.Function`: the forward pass computes alpha, the backward pass
computes beta and returns the arc posteriors (log semiring) or the indicator of the best path (tropical; ties
broken deterministically, see `viterbi_path`), scaled by the incoming gradient. Nothing is taped per step.

On CPU, when numba imports, the DP loops run in compiled kernels (`gtn.kernels.scoring_numba`); the torch
code here stays the reference and the fallback. Set ``GTN_NO_NUMBA=1`` (or `use_numba(False)`) to force torch.
The numba forward also keeps each arc's share of its destination's alpha, so its backward is one reverse
sweep of multiply-adds (state posterior x share = arc posterior) instead of a beta pass plus exps.

Conventions: a member with fewer than 2 states, or without a successful path, scores ``-inf`` and gets zero
gradients (never NaN). ``use_double_scores=True`` accumulates in float64 (k2's option) and then returns
float64 results (as k2's ``get_tot_scores`` does); gradients always come back in the scores' dtype.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch

from . import kernels
from . import semiring as _sr
from .fsa import Fsa, FsaError, FsaVec, as_vec, like, per_fsa, ragged_range
from .topology import _kahn, _raise_if_cyclic

__all__ = ["forward_score", "viterbi_score", "forward_scores", "backward_scores", "arc_posteriors",
           "viterbi_path", "linear_fsa", "use_numba"]

NEG_INF = float("-inf")


def use_numba(flag: Optional[bool] = None) -> bool:
    """Get (no argument) or set whether CPU scoring (and topology) may use the numba kernels; the same switch
    as `gtn.kernels.use_numba` and the environment variable ``GTN_NO_NUMBA=1``."""
    return kernels.use_numba(flag)


def _kernels(device=None, backend: str = "auto", what: str = "scoring", dtype=None):
    """The scoring kernels or None (the torch DP), by the library's one policy (`gtn.kernels.select`)."""
    return kernels.select("scoring_numba", device, dtype, backend, what)


# ---------------------------------------------------------------------------------------------------- the plan
class _Plan:
    """The level structure of a graph (arcs only, no scores): cached on the graph as ``_cache["score_plan"]``.

    Built by one numba pass on CPU (`gtn.kernels.scoring_numba._plan`) or by tensor operations (the reference,
    any device); both give identical plans (``tests/test_scoring.py`` checks every field). The fields that only
    the torch DP, the posteriors or the Viterbi backtrack read (``f_src`` ... ``b_dst``, ``levels()``) are
    derived on first use, so that scoring a fresh graph once (compose, then score) pays for none of them."""

    def __init__(self, x, use_kernel: Optional[bool] = None, kernel=None):
        # ``kernel``: the module to build with; else ``use_kernel`` False builds with tensor operations and
        # None / True with the kernel that backend="auto" selects
        k = kernel if kernel is not None or use_kernel is False else _kernels(x.device)
        self._lazy = {}
        self._levels = None  # per-depth slices for the torch DP, built on first use
        self._numba = None  # arrays for the numba kernels (the kernel builder fills them at once)
        if k is not None:
            self._build_kernel(x, k)
        else:
            self._build_torch(x)

    def _build_kernel(self, x, k):
        arcs, arc_splits, state_splits = x.arcs, x.arc_splits, x.state_splits
        N, A = arc_splits.numel() - 1, arcs.shape[0]
        S = int(state_splits[-1])
        small = max(S, A) < 2 ** 31 - 1  # int32 indices for the sweeps: half the memory traffic
        (ok, level, L, order, pos, valid, start_pos, final_pos, arc_fsa, src_pos, dst_pos, fperm, bperm, lstart,
         n_start, n_final, fsplit, bsplit, frow, fsrc, brow, bdst, is_start, is_final) = k.plan_arrays(
            arcs, arc_splits, state_splits, small)
        if not ok:
            _raise_if_cyclic(x, "forward/Viterbi scoring")
            raise AssertionError("internal: Kahn's algorithm stopped early but no cycle was found")  # unreachable
        t = torch.from_numpy
        c = x._cache  # Kahn's levels come for free: keep them for state_batches / top_sort
        c.setdefault("kahn", (t(level), int(L)))
        c.setdefault("cycle", None)
        self.S, self.A, self.N = S, A, N
        self.valid, self.start_pos, self.final_pos = t(valid), t(start_pos), t(final_pos)
        self.order, self.pos, self.arc_fsa = t(order), t(pos), t(arc_fsa)
        self.src_pos, self.dst_pos, self.fperm, self.bperm = t(src_pos), t(dst_pos), t(fperm), t(bperm)
        self._splits = (int(L), t(lstart), t(n_start), t(n_final), t(fsplit), t(bsplit))
        self._numba = (frow, fsrc, brow, bdst, is_start, is_final)

    def _build_torch(self, x):
        level, L = _kahn(x, backend="torch")
        _raise_if_cyclic(x, "forward/Viterbi scoring")
        v = as_vec(x)
        dev = v.device
        S, A, N = v.total_states, v.num_arcs, v.num_fsas
        self.S, self.A, self.N = S, A, N
        nst = v.states_per_fsa
        self.valid = nst >= 2  # a member needs a start and a (different) final state to have a path
        starts, finals = v.start_states, v.final_states
        ne = nst > 0
        # class within a depth: 0 start, 1 other, 2 final (start wins for a one-state member)
        cls = torch.ones(S, dtype=torch.int64, device=dev)
        cls[finals[ne]] = 2
        cls[starts[ne]] = 0
        order = torch.sort(level * 3 + cls, stable=True).indices  # level order
        pos = torch.empty(S, dtype=torch.int64, device=dev)
        pos[order] = torch.arange(S, device=dev)
        self.pos = pos
        self.order = order
        per_level = torch.bincount(level, minlength=L) if S else torch.zeros(0, dtype=torch.int64, device=dev)
        lstart = torch.zeros(L + 1, dtype=torch.int64, device=dev)
        lstart[1:] = torch.cumsum(per_level, 0)
        n_start = torch.bincount(level[cls == 0], minlength=L)
        n_final = torch.bincount(level[cls == 2], minlength=L)
        pos1 = pos if S else torch.zeros(1, dtype=torch.int64, device=dev)  # all members may be empty
        self.start_pos = torch.where(ne, pos1[starts.clamp(min=0)], torch.full_like(starts, -1))
        self.final_pos = torch.where(ne, pos1[finals.clamp(min=0)], torch.full_like(finals, -1))
        self.arc_fsa = v.arc_fsa
        src_pos = pos[v.src_global]
        dst_pos = pos[v.dst_global]
        self.src_pos, self.dst_pos = src_pos, dst_pos
        # forward: arcs grouped by the depth of their destination, sorted by destination. Arcs into a start
        # state are left out: they come from states the start cannot reach, whose alpha is -inf anyway, and
        # start states keep alpha = 0 (they sit at the front of their block, outside the reduced range).
        into_start = cls[v.dst_global] == 0
        fkeep = torch.nonzero(~into_start).squeeze(1)
        fperm = fkeep[torch.sort(dst_pos[fkeep], stable=True).indices]
        # backward: arcs grouped by the depth of their source, sorted by source (final states, at the end of
        # their block, have no leaving arcs and keep beta = 0)
        # (arcs are sorted by source state, so visiting the states in level order and taking each one's arc
        # range is a stable sort by source position, without sorting)
        sas = v.state_arc_splits
        bperm = ragged_range(sas[order], sas[order + 1] - sas[order])
        self.fperm, self.bperm = fperm, bperm
        # f_dst and b_src are sorted positions, so each depth's arcs start where its first position would
        fsplit = torch.searchsorted(self.f_dst, lstart)
        bsplit = torch.searchsorted(self.b_src, lstart)
        self._splits = (L, lstart, n_start, n_final, fsplit, bsplit)

    def _get(self, name, fn):
        t = self._lazy.get(name)
        if t is None:
            t = self._lazy[name] = fn()
        return t

    # the arcs' source / destination positions in fperm (forward) and bperm (backward) order
    f_src = property(lambda self: self._get("f_src", lambda: self.src_pos[self.fperm]))
    f_dst = property(lambda self: self._get("f_dst", lambda: self.dst_pos[self.fperm]))
    b_src = property(lambda self: self._get("b_src", lambda: self.src_pos[self.bperm]))
    b_dst = property(lambda self: self._get("b_dst", lambda: self.dst_pos[self.bperm]))

    def levels(self):
        """Per depth with arcs, for the forward and the backward DP: ``(o1, o2, a, b, gather, slot)``: the arcs
        ``o1:o2`` (in fperm / bperm order) feed the block ``a:b`` of positions; ``gather`` indexes the
        alpha/beta they read, ``slot`` the position they reduce into, relative to ``a``."""
        if self._levels is None:
            L, lstart, n_start, n_final, fsplit, bsplit = self._splits
            ls, ns, nf = lstart.tolist(), n_start.tolist(), n_final.tolist()
            fs, bs = fsplit.tolist(), bsplit.tolist()
            fwd: List[Tuple[int, int, int, int, torch.Tensor, torch.Tensor]] = []
            bwd: List[Tuple[int, int, int, int, torch.Tensor, torch.Tensor]] = []
            for l in range(L):
                o1, o2 = fs[l], fs[l + 1]
                if o2 > o1:
                    a, b = ls[l] + ns[l], ls[l + 1]
                    fwd.append((o1, o2, a, b, self.f_src[o1:o2], self.f_dst[o1:o2] - a))
                o1, o2 = bs[l], bs[l + 1]
                if o2 > o1:
                    a, b = ls[l], ls[l + 1] - nf[l]
                    bwd.append((o1, o2, a, b, self.b_dst[o1:o2], self.b_src[o1:o2] - a))
            self._levels = (fwd, bwd)
        return self._levels

    def numba_arrays(self):
        """CSR of the kept forward arcs by destination position and of all arcs by source position, with the
        start / final flags per position: ``(frow, fsrc, brow, bdst, is_start, is_final)`` (numpy)."""
        if self._numba is None:
            S = self.S
            fcount = torch.bincount(self.f_dst, minlength=S)
            bcount = torch.bincount(self.b_src, minlength=S)
            frow = torch.zeros(S + 1, dtype=torch.int64)
            brow = torch.zeros(S + 1, dtype=torch.int64)
            frow[1:] = torch.cumsum(fcount, 0)
            brow[1:] = torch.cumsum(bcount, 0)
            is_start = torch.zeros(S, dtype=torch.bool)
            is_final = torch.zeros(S, dtype=torch.bool)
            is_start[self.start_pos[self.valid]] = True
            is_final[self.final_pos[self.valid]] = True
            # int32 indices where they fit: half the memory traffic of the sweeps
            small = max(self.S, self.A) < 2 ** 31 - 1
            idx = (lambda t: t.to(torch.int32)) if small else (lambda t: t)
            self._numba = tuple(t.contiguous().cpu().numpy() for t in (
                idx(frow), idx(self.f_src), idx(brow), idx(self.b_dst), is_start, is_final))
        return self._numba


def _plan(x, k=None) -> _Plan:
    """The cached plan of ``x``, built by the kernel ``k`` (or by tensor operations when ``k`` is None; the
    two builders give identical plans, so a cached plan serves either backend)."""
    c = x._cache
    p = c.get("score_plan")
    if p is None:
        p = _Plan(x, use_kernel=k is not None, kernel=k)
        c["score_plan"] = p
    return p


# ---------------------------------------------------------------------------------------------------- the DP
def _alpha(plan: _Plan, sc: torch.Tensor, sr: _sr.Semiring, k=None) -> torch.Tensor:
    """Forward scores in level order: alpha[p] = semiring sum over paths from the start to position p.
    ``k``: the kernel module (None: the torch DP, the reference)."""
    if k is not None:
        return k.alpha(plan, sc, sr.name == "log")
    alpha = torch.full((plan.S,), NEG_INF, dtype=sc.dtype, device=sc.device)
    alpha[plan.start_pos[plan.valid]] = 0.0
    sf = sc.index_select(0, plan.fperm)
    for o1, o2, a, b, gidx, slot in plan.levels()[0]:
        vals = alpha.index_select(0, gidx).add_(sf[o1:o2])
        alpha[a:b] = sr.segment_plus(slot, vals, b - a)
    return alpha


def _beta(plan: _Plan, sc: torch.Tensor, sr: _sr.Semiring, k=None) -> torch.Tensor:
    """Backward scores in level order: beta[p] = semiring sum over paths from position p to the final."""
    if k is not None:
        return k.beta(plan, sc, sr.name == "log")
    beta = torch.full((plan.S,), NEG_INF, dtype=sc.dtype, device=sc.device)
    beta[plan.final_pos[plan.valid]] = 0.0
    sb = sc.index_select(0, plan.bperm)
    for o1, o2, a, b, gidx, slot in reversed(plan.levels()[1]):
        vals = beta.index_select(0, gidx).add_(sb[o1:o2])
        beta[a:b] = sr.segment_plus(slot, vals, b - a)
    return beta


def _totals(plan: _Plan, alpha: torch.Tensor) -> torch.Tensor:
    """``[N]`` alpha at each member's final state; -inf for members with < 2 states."""
    tot = torch.full((plan.N,), NEG_INF, dtype=alpha.dtype, device=alpha.device)
    if plan.S:
        tot = torch.where(plan.valid, alpha[plan.final_pos.clamp(min=0)], tot)
    return tot


def _posteriors(plan: _Plan, sc, alpha, beta, tot) -> torch.Tensor:
    """``[A]`` exp(alpha[src] + score + beta[dst] - tot): the probability mass of the paths through each arc.
    Zero for members whose total is -inf (no path), without ever forming -inf - -inf."""
    if plan.A == 0:
        return sc.new_zeros(0)
    t = tot.index_select(0, plan.arc_fsa)
    ok = t > NEG_INF
    lp = alpha.index_select(0, plan.src_pos) + sc + beta.index_select(0, plan.dst_pos) - torch.where(ok, t, 0.0)
    return torch.where(ok, lp.exp_(), 0.0)


def _tie_rank(key: Optional[torch.Tensor], A: int, device) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(rank, order)`` of the arcs by ``key`` (ties by arc index): the tie-break order of `_best_arcs`."""
    if key is None:
        return None
    order = torch.sort(key, stable=True).indices
    rank = torch.empty(A, dtype=torch.int64, device=device)
    rank[order] = torch.arange(A, device=device)
    return rank, order


def _best_arcs(plan: _Plan, sc, alpha, tot, key=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backtrack the best path of each member with a finite Viterbi score.

    The tie rule (the library's one, see `viterbi_path`): each state's back-pointer is, among the entering arcs
    that attain its alpha (alpha[src] + score == alpha[dst] exactly: the same floating sums the max was taken
    over), the one with the smallest ``key`` (default: the arc index; ``key`` is an int64 per arc, ties by
    index). Returns ``(members, arcs, step)``: the path arcs of all members, ``step`` counted from the final
    state backwards (one loop step per arc of the longest best path, vectorized over members)."""
    dev = sc.device
    A = plan.A
    fperm = plan.fperm
    vals = alpha.index_select(0, plan.f_src) + sc.index_select(0, fperm)
    tgt = alpha.index_select(0, plan.f_dst)
    hit = (vals == tgt) & (tgt > NEG_INF)
    ranked = _tie_rank(key, A, dev)
    cand = fperm[hit] if ranked is None else ranked[0].index_select(0, fperm[hit])
    bp = torch.full((plan.S,), A, dtype=torch.int64, device=dev)
    bp.scatter_reduce_(0, plan.f_dst[hit], cand, "amin")
    if ranked is not None:  # ranks back to arcs (A, "no arc", never read: only states on a best path are)
        bp = torch.cat([ranked[1], bp.new_full((1,), A)]).index_select(0, bp)
    members = torch.nonzero(tot > NEG_INF).squeeze(1)
    cur = plan.final_pos[members]
    ms, arcs, steps = [], [], []
    step = 0
    while members.numel():
        a = bp.index_select(0, cur)
        ms.append(members)
        arcs.append(a)
        steps.append(torch.full_like(a, step))
        cur = plan.src_pos.index_select(0, a)
        more = cur != plan.start_pos.index_select(0, members)
        members, cur = members[more], cur[more]
        step += 1
    if not ms:
        z = torch.zeros(0, dtype=torch.int64, device=dev)
        return z, z, z
    return torch.cat(ms), torch.cat(arcs), torch.cat(steps)


class _TotalScore(torch.autograd.Function):
    """Total score of every member; backward = posteriors (log) or best-path indicator (tropical).

    Half-precision scores are computed in float32 (``dp_dtype``) and the totals cast back to the input dtype
    (float64 with ``use_double_scores``); gradients come back in the scores' dtype."""

    @staticmethod
    def forward(ctx, scores, plan, log_semiring, dp_dtype, k, key):
        sc = scores.detach().to(dp_dtype)
        sr = _sr.get(log_semiring)
        ctx.w = None
        if k is not None and log_semiring and scores.requires_grad:
            # numba: keep each arc's share of its destination's alpha; the backward is then one reverse
            # sweep of multiply-adds (the same posteriors as alpha/beta, without a second pass of exps)
            alpha, ctx.w = k.alpha_and_weights(plan, sc)
        else:
            alpha = _alpha(plan, sc, sr, k)
        tot = _totals(plan, alpha)
        ctx.plan, ctx.log, ctx.k, ctx.key = plan, log_semiring, k, key
        ctx.in_dtype = scores.dtype
        ctx.save_for_backward(sc, alpha, tot)
        out_dtype = torch.float64 if dp_dtype == torch.float64 else scores.dtype
        return tot.to(out_dtype)

    @staticmethod
    def backward(ctx, g):
        none = (None,) * 5
        if not ctx.needs_input_grad[0]:
            return (None,) + none
        sc, alpha, tot = ctx.saved_tensors
        plan = ctx.plan
        g = g.to(sc.dtype)
        if ctx.log and ctx.w is not None:
            return (ctx.k.grad_from_weights(plan, ctx.w, tot, g, ctx.in_dtype),) + none
        if ctx.log:
            beta = _beta(plan, sc, _sr.LOG, ctx.k)
            w = _posteriors(plan, sc, alpha, beta, tot)
        else:
            _, arcs, _ = _best_arcs(plan, sc, alpha, tot, ctx.key)
            w = torch.zeros_like(sc)
            w[arcs] = 1.0
        grad = w * g.index_select(0, plan.arc_fsa) if plan.A else w
        # a zero weight times an infinite/NaN upstream gradient must stay zero (no path: zero gradients)
        grad = torch.where(w == 0, torch.zeros_like(grad), grad)
        return (grad.to(ctx.in_dtype),) + none


# ---------------------------------------------------------------------------------------------------- public API
def _check(x, what):
    if not isinstance(x, (Fsa, FsaVec)):
        raise FsaError(f"{what} expects an Fsa or FsaVec, got {type(x).__name__}")


def _setup(x, what: str, backend: str, use_double_scores: bool):
    """Check ``x``, choose the kernel (`gtn.kernels.select`: by backend, device and dtype), get the plan and the
    dtype the DP runs in (float64 with ``use_double_scores``; float32 for half precision)."""
    _check(x, what)
    k = _kernels(x.device, backend, what, x.scores.dtype)
    dp = torch.float64 if use_double_scores else kernels.compute_dtype(x.scores.dtype)
    return k, _plan(x, k), dp


def _total(x, log_semiring: bool, use_double_scores: bool, backend: str, what: str, key=None) -> torch.Tensor:
    k, plan, dp = _setup(x, what, backend, use_double_scores)
    tot = _TotalScore.apply(x.scores, plan, log_semiring, dp, k, key)
    return per_fsa(tot, x)


def forward_score(x: Union[Fsa, FsaVec], use_double_scores: bool = False, backend: str = "auto") -> torch.Tensor:
    """Log-sum-exp over all successful paths of the sum of the arc scores (the forward score).

    Args:
        x: an acyclic `Fsa` or `FsaVec` (any state numbering; cycles raise `FsaError` naming a state on one).
        use_double_scores: accumulate in float64 (k2's option); the result is then float64. Half-precision
            scores (float16, bfloat16) are accumulated in float32 and the result is in their dtype.
        backend: ``"auto"``, ``"numba"`` or ``"torch"`` (`gtn.kernels.select`: the library's one policy).
    Returns:
        shape ``[]`` for an `Fsa`, ``[num_fsas]`` for an `FsaVec`; ``-inf`` where there is no path.
        Differentiable: the gradient w.r.t. ``x.scores`` is the arc posteriors times the incoming gradient
        (zero for members without a path)."""
    return _total(x, True, use_double_scores, backend, "forward_score")


def viterbi_score(x: Union[Fsa, FsaVec], use_double_scores: bool = False, backend: str = "auto") -> torch.Tensor:
    """The best path's score (max over paths, tropical semiring); same shapes and options as `forward_score`.

    Differentiable: the gradient is 1 on the arcs of the best path that `viterbi_path` returns (the library's
    tie rule, see `viterbi_path`), 0 elsewhere."""
    return _total(x, False, use_double_scores, backend, "viterbi_score")


def forward_scores(x: Union[Fsa, FsaVec], log_semiring: bool = True, use_double_scores: bool = False,
                   backend: str = "auto"):
    """Per-state forward scores ``[total_states]`` (global numbering over the batch: member i's state s is
    ``x.state_splits[i] + s``): the semiring sum over paths from the member's start state to the state.
    Computed without autograd (use `forward_score` / `arc_posteriors` for gradients)."""
    k, plan, dp = _setup(x, "forward_scores", backend, use_double_scores)
    with torch.no_grad():
        alpha = _alpha(plan, x.scores.detach().to(dp), _sr.get(log_semiring), k)
        return _out(alpha.index_select(0, plan.pos), x, use_double_scores)


def _out(t, x, use_double_scores):
    """Results in the input dtype (float64 with ``use_double_scores``)."""
    return t if use_double_scores else t.to(x.scores.dtype)


def backward_scores(x: Union[Fsa, FsaVec], log_semiring: bool = True, use_double_scores: bool = False,
                    backend: str = "auto"):
    """Per-state backward scores ``[total_states]`` (global numbering): the semiring sum over paths from the
    state to its member's final state. Computed without autograd."""
    k, plan, dp = _setup(x, "backward_scores", backend, use_double_scores)
    with torch.no_grad():
        beta = _beta(plan, x.scores.detach().to(dp), _sr.get(log_semiring), k)
        return _out(beta.index_select(0, plan.pos), x, use_double_scores)


def arc_posteriors(x: Union[Fsa, FsaVec], use_double_scores: bool = False, backend: str = "auto") -> torch.Tensor:
    """``[num_arcs]`` the posterior probability of each arc (the total probability of the paths through it,
    normalised by the forward score); zeros for members without a path. Equal to the gradient of
    ``forward_score(x).sum()`` w.r.t. the scores. Computed without autograd."""
    k, plan, dp = _setup(x, "arc_posteriors", backend, use_double_scores)
    with torch.no_grad():
        sc = x.scores.detach().to(dp)
        alpha = _alpha(plan, sc, _sr.LOG, k)
        beta = _beta(plan, sc, _sr.LOG, k)
        return _out(_posteriors(plan, sc, alpha, beta, _totals(plan, alpha)), x, use_double_scores)


def viterbi_path(x: Union[Fsa, FsaVec], use_double_scores: bool = False, backend: str = "auto"):
    """The best path of each member as a linear `Fsa` / `FsaVec` (states 0..k, arcs j -> j+1).

    Arc j of the result came from an input arc (the arc map), so its score is an ``index_select`` of the input
    scores (gradients flow back to them) and aux_labels and attributes follow. A member without a path
    becomes the empty FSA (0 states).

    Ties (the library's one rule, shared by `viterbi_score`'s gradient, `gtn.compose_score`'s path and
    gradient and the dense Viterbi of `gtn.dense_forward_score`): among the best paths, the one whose arcs,
    read from the final state backwards, come first in arc order: every state on the path takes, of its
    entering arcs that attain its best score exactly, the lowest-numbered one."""
    return _viterbi_path(x, use_double_scores, backend, "viterbi_path")


def _viterbi_path(x, use_double_scores: bool, backend: str, what: str, key=None):
    k, plan, dp = _setup(x, what, backend, use_double_scores)
    v = as_vec(x)
    dev = v.device
    with torch.no_grad():
        sc = x.scores.detach().to(dp)
        alpha = _alpha(plan, sc, _sr.TROPICAL, k)
        members, arcs, steps = _best_arcs(plan, sc, alpha, _totals(plan, alpha), key)
    N = plan.N
    lens = torch.bincount(members, minlength=N) if members.numel() else torch.zeros(N, dtype=torch.int64,
                                                                                     device=dev)
    # path order: by member, then from the start (largest step) to the final arc (step 0)
    top = int(steps.max()) + 1 if steps.numel() else 1
    order = torch.sort(members * top + (top - 1 - steps)).indices
    arc_map = arcs[order]
    zero = torch.zeros(1, dtype=torch.int64, device=dev)
    arc_splits = torch.cat([zero, torch.cumsum(lens, 0)])
    nst = torch.where(lens > 0, lens + 1, torch.zeros_like(lens))
    state_splits = torch.cat([zero, torch.cumsum(nst, 0)])
    j = torch.arange(arc_map.numel(), device=dev) - arc_splits[:-1].index_select(0, members[order])
    new_arcs = torch.stack([j, j + 1, v.arcs[arc_map, 2]], 1) if arc_map.numel() else \
        torch.zeros(0, 3, dtype=torch.int64, device=dev)
    out = v._derive(new_arcs, arc_map, arc_splits, state_splits, kind=FsaVec)
    return like(out, x)


def linear_fsa(labels, scores=None, dtype: torch.dtype = torch.float32, device=None):
    """A chain accepting exactly ``labels``: states ``0..len+1``, arc i -> i+1 with ``labels[i]``, then a
    final ``-1`` arc (k2's ``linear_fsa``).

    Args:
        labels: a list (or 1-D tensor) of ints gives an `Fsa`; a list of lists gives an `FsaVec`.
        scores: optional arc scores: ``len(labels)`` values (the final arc scores 0) or ``len(labels) + 1``
            (the last one for the final arc); a list of such for an `FsaVec`. Default zeros.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    labels = list(labels)
    if labels and isinstance(labels[0], (list, tuple, torch.Tensor)):
        for i, l in enumerate(labels):
            if not isinstance(l, (list, tuple, torch.Tensor)):
                raise FsaError(f"linear_fsa: labels[0] is a sequence (a batch of label sequences) but labels[{i}] "
                               f"is {l!r}")
        if scores is None:
            scores = [None] * len(labels)
        if len(scores) != len(labels):
            raise FsaError(f"linear_fsa: {len(labels)} label sequences but {len(scores)} score sequences")
        return FsaVec([linear_fsa(l, s, dtype=dtype, device=device) for l, s in zip(labels, scores)])
    n = len(labels)
    for i, l in enumerate(labels):
        if isinstance(l, bool) or not isinstance(l, int) and not (hasattr(l, "__index__")):
            raise FsaError(f"linear_fsa: label {i} is {l!r}, not an integer")
        if int(l) < 0:
            raise FsaError(f"linear_fsa: label {i} is {int(l)}; labels must be >= 0 (-1 is the final arc's)")
    idx = torch.arange(n + 1, dtype=torch.int64)
    arcs = torch.stack([idx, idx + 1, torch.tensor([int(l) for l in labels] + [-1], dtype=torch.int64)], 1)
    if scores is None:
        sc = torch.zeros(n + 1, dtype=dtype)
    else:
        sc = torch.as_tensor(scores)
        if not sc.dtype.is_floating_point:
            sc = sc.to(dtype)
        if sc.shape == (n,):
            sc = torch.cat([sc, sc.new_zeros(1)])
        if sc.shape != (n + 1,):
            raise FsaError(f"linear_fsa: {n} labels need {n} or {n + 1} scores, got shape {tuple(sc.shape)}")
    f = Fsa(arcs, sc, num_states=n + 2)
    return f if device is None else f.to(device)
