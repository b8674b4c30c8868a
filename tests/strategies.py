"""Hypothesis strategies for random FSAs / FsaVecs, and brute-force oracles to check algorithms against.

Strategies (all return `gtn.Fsa` / `gtn.FsaVec` objects that pass validation):

* ``fsas(...)``: one FSA with 0..30 states. Acyclic by default, with state numbers either topologically
  sorted or randomly permuted (start stays 0, final stays last), multi-arcs between the same states,
  some ``-inf`` arcs, graphs without any successful path, empty FSAs (0 states), optional transducers
  (``aux_labels``), optional epsilon label 0, optional extra per-arc attribute ``"seg"``. With
  ``acyclic=False`` arcs may go anywhere (self-loops, back arcs), and ``force_cycle=True`` guarantees a cycle.
* ``fsa_vecs(...)``: a batch of such FSAs sharing acceptor/transducer kind, dtype and attribute names.

Oracles (plain Python loops over paths: fine for tests, never for the library):

* ``enumerate_paths(fsa)`` -> list of ``(arc index list, score)`` over all successful paths (start 0 ->
  final ``n-1``); ``forward_oracle``, ``viterbi_oracle``, ``arc_posteriors_oracle``, ``best_paths_oracle``.
* ``accessible_oracle`` / ``coaccessible_oracle`` (plain BFS; cyclic graphs allowed), ``find_cycle_oracle``.
* ``openfst_shortest_distance(fsa, semiring)``: pywrapfst's total weight, converted back to a score.

Others may append their own strategies at the end of this file.
"""
from __future__ import annotations

import math
import random
from typing import List, Optional, Tuple

import torch
from hypothesis import strategies as st

import gtn

NEG_INF = float("-inf")

# Tests run many tiny tensor ops; on this shared 2-core machine torch's intra-op thread pool makes some of them
# (e.g. repeat_interleave) take ~10 ms instead of ~5 us. One thread keeps the property tests fast.
torch.set_num_threads(1)

__all__ = [
    "fsas", "fsa_vecs", "enumerate_paths", "count_paths", "forward_oracle", "viterbi_oracle",
    "arc_posteriors_oracle", "best_paths_oracle", "accessible_oracle", "coaccessible_oracle",
    "find_cycle_oracle", "openfst_shortest_distance", "members", "logsumexp",
]


# ---------------------------------------------------------------------------------------------------- helpers
def logsumexp(xs) -> float:
    xs = list(xs)
    if not xs:
        return NEG_INF
    m = max(xs)
    if m == NEG_INF:
        return NEG_INF
    return m + math.log(sum(math.exp(x - m) for x in xs))


def members(x) -> List[gtn.Fsa]:
    """The member FSAs of an FsaVec (or ``[x]`` for an Fsa)."""
    return list(x) if isinstance(x, gtn.FsaVec) else [x]


def _count_paths_sorted(n: int, arcs: List[Tuple[int, int, int]]) -> int:
    """Number of paths 0 -> n-1 in a DAG whose arcs go from lower to higher state numbers."""
    if n < 2:
        return 0
    ways = [0] * n
    ways[0] = 1
    for s, d, _ in sorted(arcs):
        ways[d] += ways[s]
    return ways[n - 1]


def count_paths(fsa: gtn.Fsa) -> int:
    """Number of successful paths of an acyclic Fsa (any state numbering)."""
    return len(enumerate_paths(fsa))


# ---------------------------------------------------------------------------------------------------- strategies
@st.composite
def fsas(draw, min_states: int = 0, max_states: int = 30, acyclic: bool = True, top_sorted: Optional[bool] = None,
         transducer: Optional[bool] = False, epsilon: bool = True, num_labels: int = 5, neg_inf: bool = True,
         no_path: bool = True, dtype: torch.dtype = torch.float64, max_paths: int = 200,
         max_arcs: Optional[int] = None, attr: bool = False, force_cycle: bool = False,
         score_range: float = 5.0, integer_scores: bool = False):
    """A random valid `gtn.Fsa`.

    Args:
        min_states, max_states: number of states (1 is never drawn: an FSA has 0 or >= 2 states).
        acyclic: only arcs that keep the graph acyclic; otherwise arbitrary arcs (cycles likely).
        top_sorted: True = state order is a topological order, False = states 1..n-2 randomly permuted,
            None = either (drawn). Ignored when ``acyclic=False``.
        transducer: True/False, or None to draw; transducers get random ``aux_labels`` (-1 on final arcs).
        epsilon: whether label 0 may appear. ``num_labels``: labels are drawn from 0/1 .. num_labels.
        neg_inf: some arcs score ``-inf``. ``no_path``: sometimes remove every arc into the final state.
        max_paths: acyclic graphs are thinned (random arcs removed) until they have at most this many
            successful paths, so brute-force oracles stay cheap.
        attr: add a float per-arc attribute ``seg`` (``0.5 * arc index``) and an int attribute ``idx`` (the
            arc index within the FSA), to check that attributes follow arc maps.
        force_cycle: (with ``acyclic=False``) add a back arc or self-loop so that the graph has a cycle.
        integer_scores: scores are small integers (ties likely: for tie-breaking tests).
    """
    seed = draw(st.integers(0, 2 ** 32 - 1))
    r = random.Random(seed)
    # the size comes from the seeded generator: hypothesis' own integers would give 0 states far too often
    lo = max(min_states, 2)
    u = r.random()
    if min_states == 0 and u < 0.05:
        n = 0
    elif u < 0.15:
        n = min(lo + r.randint(0, 1), max_states)
    else:
        n = r.randint(lo, max(lo, max_states))
    if n == 1:
        n = 2 if max_states >= 2 else 0
    if transducer is None:
        transducer = draw(st.booleans())
    if top_sorted is None:
        top_sorted = draw(st.booleans())
    lab_lo = 0 if epsilon else 1
    arcs: List[Tuple[int, int, int]] = []
    if n >= 2:
        m = r.randint(0, max_arcs if max_arcs is not None else 2 * n + 2)
        for _ in range(m):
            if acyclic:
                s = r.randint(0, n - 2)
                d = r.randint(s + 1, n - 1)
            else:
                s = r.randint(0, n - 2)  # the final state has no leaving arcs
                d = r.randint(0, n - 1)
            arcs.append((s, d, -1 if d == n - 1 else r.randint(lab_lo, num_labels)))
        # a spine from start to final, most of the time, so that most graphs have a path
        if r.random() < 0.75:
            path = sorted(r.sample(range(1, n - 1), r.randint(0, min(n - 2, 6)))) if n > 2 else []
            states = [0] + path + [n - 1]
            for a, b in zip(states[:-1], states[1:]):
                arcs.append((a, b, -1 if b == n - 1 else r.randint(lab_lo, num_labels)))
        # multi-arcs: copies of existing (src, dst) pairs with other labels
        if arcs and r.random() < 0.5:
            for _ in range(r.randint(1, 4)):
                s, d, _ = r.choice(arcs)
                arcs.append((s, d, -1 if d == n - 1 else r.randint(lab_lo, num_labels)))
        if no_path and r.random() < 0.08:
            arcs = [a for a in arcs if a[1] != n - 1]
        if not acyclic and force_cycle and n >= 3:
            s = r.randint(0, n - 2)
            d = r.randint(0, s)  # back arc or self-loop (never into the final state)
            arcs.append((s, d, r.randint(lab_lo, num_labels)))
        if acyclic:
            while _count_paths_sorted(n, arcs) > max_paths:
                arcs.pop(r.randrange(len(arcs)))
            if not top_sorted and n > 3:
                mid = list(range(1, n - 1))
                r.shuffle(mid)
                perm = [0] + mid + [n - 1]
                arcs = [(perm[s], perm[d], l) for s, d, l in arcs]
        r.shuffle(arcs)  # arbitrary arc order within a state (the constructor sorts by source, stably)
    A = len(arcs)
    p_inf = 0.1 if neg_inf else 0.0
    scores = []
    for _ in range(A):
        if r.random() < p_inf:
            scores.append(NEG_INF)
        elif integer_scores:
            scores.append(float(r.randint(-2, 2)))
        else:
            scores.append(r.uniform(-score_range, score_range))
    arcs_t = torch.tensor(arcs, dtype=torch.int64).view(-1, 3)
    aux = None
    if transducer:
        aux = torch.tensor([-1 if l == -1 else r.randint(lab_lo, num_labels) for _, _, l in arcs],
                           dtype=torch.int64)
    f = gtn.Fsa(arcs_t, torch.tensor(scores, dtype=dtype), aux, num_states=n)
    if attr:  # set after construction (which sorts the arcs by source), so idx[j] == j
        f.set_attr("seg", torch.arange(A, dtype=dtype) * 0.5)
        f.set_attr("idx", torch.arange(A, dtype=torch.int64))
    return f


@st.composite
def fsa_vecs(draw, min_fsas: int = 1, max_fsas: int = 5, transducer: Optional[bool] = False, **kwargs):
    """A random `gtn.FsaVec` of ``min_fsas..max_fsas`` members drawn by `fsas` (same kind for all)."""
    if transducer is None:
        transducer = draw(st.booleans())
    k = draw(st.integers(min_fsas, max_fsas))
    return gtn.FsaVec([draw(fsas(transducer=transducer, **kwargs)) for _ in range(k)])


# ---------------------------------------------------------------------------------------------------- oracles
def _out_arcs(fsa: gtn.Fsa):
    n = fsa.num_states
    out = [[] for _ in range(n)]
    for i, (s, d, _) in enumerate(fsa.arcs.tolist()):
        out[s].append((i, d))
    return out


def enumerate_paths(fsa: gtn.Fsa) -> List[Tuple[List[int], float]]:
    """All successful paths (state 0 to the final state) of an acyclic Fsa as ``(arc indices, score)``.

    The score is the float64 sum of the arc scores (possibly ``-inf``). Raises ValueError on a cycle."""
    assert isinstance(fsa, gtn.Fsa)
    n = fsa.num_states
    if n < 2:
        return []
    sc = fsa.scores.detach().double().cpu().tolist()
    out = _out_arcs(fsa)
    paths = []
    stack = [(0, [])]  # (state, arcs so far)
    while stack:
        s, p = stack.pop()
        if len(p) > n:
            raise ValueError("enumerate_paths: the graph has a cycle")
        if s == n - 1:
            paths.append((p, math.fsum(sc[i] for i in p) if all(sc[i] != NEG_INF for i in p) else NEG_INF))
            continue
        for i, d in out[s]:
            stack.append((d, p + [i]))
    return paths


def forward_oracle(fsa: gtn.Fsa) -> float:
    """log-sum-exp over all successful paths of the path score (``-inf`` when there is none)."""
    return logsumexp(s for _, s in enumerate_paths(fsa))


def viterbi_oracle(fsa: gtn.Fsa) -> float:
    """max over all successful paths of the path score (``-inf`` when there is none)."""
    return max((s for _, s in enumerate_paths(fsa)), default=NEG_INF)


def best_paths_oracle(fsa: gtn.Fsa) -> List[List[int]]:
    """All paths (arc index lists) that reach the Viterbi score (several when tied); [] without a path."""
    paths = enumerate_paths(fsa)
    best = max((s for _, s in paths), default=NEG_INF)
    if best == NEG_INF:
        return []
    return [p for p, s in paths if s == best]


def tie_rule_oracle(paths):
    """The library's one tie rule by brute force: of the best paths (lists of arc keys, from the start), the one
    whose keys read from the final arc backwards are smallest in lexicographic order; None for no path."""
    return min(paths, key=lambda p: list(reversed(p))) if paths else None


def arc_posteriors_oracle(fsa: gtn.Fsa) -> List[float]:
    """Per arc: the total probability of the paths through it, ``sum_paths exp(score - forward)``.

    All zeros when there is no path with a finite score."""
    paths = enumerate_paths(fsa)
    tot = logsumexp(s for _, s in paths)
    post = [0.0] * fsa.num_arcs
    if tot == NEG_INF:
        return post
    for p, s in paths:
        w = math.exp(s - tot)
        for i in p:
            post[i] += w
    return post


def accessible_oracle(fsa: gtn.Fsa) -> List[bool]:
    """Per state: reachable from the start state (BFS; cycles allowed)."""
    n = fsa.num_states
    seen = [False] * n
    if n == 0:
        return seen
    out = _out_arcs(fsa)
    seen[0] = True
    todo = [0]
    while todo:
        s = todo.pop()
        for _, d in out[s]:
            if not seen[d]:
                seen[d] = True
                todo.append(d)
    return seen


def coaccessible_oracle(fsa: gtn.Fsa) -> List[bool]:
    """Per state: the final state is reachable from it (BFS on reversed arcs; cycles allowed)."""
    n = fsa.num_states
    seen = [False] * n
    if n == 0:
        return seen
    inn = [[] for _ in range(n)]
    for s, d, _ in fsa.arcs.tolist():
        inn[d].append(s)
    seen[n - 1] = True
    todo = [n - 1]
    while todo:
        d = todo.pop()
        for s in inn[d]:
            if not seen[s]:
                seen[s] = True
                todo.append(s)
    return seen


def find_cycle_oracle(fsa: gtn.Fsa) -> List[int]:
    """The states that lie on some cycle (a state is on a cycle iff it can reach itself by >= 1 arc)."""
    n = fsa.num_states
    out = _out_arcs(fsa)
    on = []
    for s0 in range(n):
        seen = set()
        todo = [d for _, d in out[s0]]
        while todo:
            s = todo.pop()
            if s == s0:
                on.append(s0)
                break
            if s not in seen:
                seen.add(s)
                todo.extend(d for _, d in out[s])
    return on


def openfst_shortest_distance(fsa: gtn.Fsa, semiring: str = "log") -> float:
    """Total weight of ``fsa`` computed by OpenFst (pywrapfst ``shortestdistance``), as a score (= -cost).

    ``semiring`` is ``"log"`` (forward score) or ``"tropical"`` (Viterbi score). Built by hand from the arcs
    (labels shifted by +1 so that -1 and epsilon 0 are ordinary OpenFst labels), costs = -scores. OpenFst's
    tropical weights are float32: compare with a tolerance."""
    import pywrapfst as fst
    n = fsa.num_states
    if n < 2:
        return NEG_INF
    # double-precision arc types where OpenFst has them ("log64"); tropical exists only in float32 ("standard")
    arc_type, wtype = {"log": ("log64", "log64"), "tropical": ("standard", "tropical")}[semiring]
    f = fst.VectorFst(arc_type=arc_type)
    for _ in range(n):
        f.add_state()
    f.set_start(0)
    sc = fsa.scores.detach().double().cpu().tolist()
    for (s, d, l), w in zip(fsa.arcs.tolist(), sc):
        if w == NEG_INF:
            continue  # cost +inf: OpenFst's zero; leaving the arc out is the same
        f.add_arc(s, fst.Arc(l + 1, l + 1, fst.Weight(wtype, -w), d))
    f.set_final(n - 1, fst.Weight.one(wtype))
    # delta: OpenFst skips an update smaller than delta (default 1e-6), which drops the mass of unlikely paths
    d = fst.shortestdistance(f, reverse=True, delta=1e-12)
    if len(d) == 0:
        return NEG_INF
    txt = str(d[0])
    return -float(txt)  # "Infinity" -> -inf
