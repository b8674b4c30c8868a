"""Translation between compat `Graph`s and this library's `gtn.Fsa` (k2's model).

A compat graph with ``n`` nodes becomes an ``Fsa`` with ``n + 2`` states: state 0 a super-start with one arc
to each start node, node ``i`` state ``i + 1``, and state ``n + 1`` the single final state, entered by one
``-1`` arc from each accept node. These added arcs score 0, so every path and its score are kept, whatever
the number of start and accept nodes.

Labels are shifted at the boundary: facebookresearch/gtn's epsilon (-1) becomes our epsilon (0), a label
``l >= 0`` becomes ``l + 2``, and the super-start arcs carry label 1 (on both sides, so that in a composition
they only match each other and the start pairs come out as the targets of the composed super-start's arcs).
"""
from collections import deque

import torch

import gtn as _core

from .graph import Graph

START_LABEL = 1
SHIFT = 2


def to_core_labels(labels: torch.Tensor) -> torch.Tensor:
    return torch.where(labels < 0, torch.zeros_like(labels), labels + SHIFT)


def from_core_labels(labels: torch.Tensor) -> torch.Tensor:
    return torch.where(labels == 0, torch.full_like(labels, -1), labels - SHIFT)


def _structure(g: Graph):
    """Cached per structure: the Fsa's arcs, aux labels, and for each Fsa arc the index of the graph arc
    whose weight it carries (``num_arcs`` for the added zero-score arcs)."""
    c = g._cache.get("fsa")
    if c is None:
        n, A = g.num_nodes(), g.num_arcs()
        dev = g._device
        ns, na = len(g._starts), len(g._accepts)
        L = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
        src = torch.cat([torch.zeros(ns, dtype=torch.int64), L(g._src) + 1, L(g._accepts) + 1])
        dst = torch.cat([L(g._starts) + 1, L(g._dst) + 1, torch.full((na,), n + 1, dtype=torch.int64)])
        il = torch.cat([torch.full((ns,), START_LABEL), to_core_labels(L(g._il)), torch.full((na,), -1)])
        ol = torch.cat([torch.full((ns,), START_LABEL), to_core_labels(L(g._ol)), torch.full((na,), -1)])
        idx = torch.cat([torch.full((ns,), A), torch.arange(A), torch.full((na,), A)])
        order = torch.sort(src, stable=True).indices
        arcs = torch.stack([src, dst, il], 1)[order].to(dev)
        c = (arcs, ol[order].to(dev), idx[order].to(dev), n + 2)
        g._cache["fsa"] = c
    return c


def to_fsa(g: Graph, transducer: bool = False, weights=None, arc_ids: bool = False) -> "_core.Fsa":
    """The graph as an ``Fsa`` whose scores are (an index_select of) the graph's weights tensor (or of
    ``weights``). With ``arc_ids`` the Fsa carries ``arc_id``: the graph arc of each Fsa arc (-1 for the
    added ones), a per-arc attribute that follows the core's operations."""
    arcs, aux, idx, num_states = _structure(g)
    w = g._weights() if weights is None else weights
    scores = torch.cat([w, w.new_zeros(1)])[idx]
    fsa = _core.Fsa(arcs, scores, aux_labels=aux if transducer else None, num_states=num_states)
    if arc_ids:
        fsa.arc_id = torch.where(idx == g.num_arcs(), torch.full_like(idx, -1), idx)
    return fsa


def from_fsa(fsa, calc_grad: bool) -> Graph:
    """Back from an ``Fsa`` in the form `to_fsa` makes (state 0 with label-1 arcs to the start nodes, -1 arcs
    to the final state): the weights are the Fsa's scores (autograd history kept)."""
    m = fsa.num_states
    if m == 0 or fsa.num_arcs == 0:
        return Graph._from_lists([], [], [], [], [], [], fsa.scores[:0], calc_grad)
    src, dst, lab = fsa.arcs[:, 0], fsa.arcs[:, 1], fsa.arcs[:, 2]
    aux = fsa.aux_labels if fsa.aux_labels is not None else lab
    s_mask = src == 0
    f_mask = lab == -1
    keep = ~(s_mask | f_mask)
    n = m - 2
    is_start = torch.zeros(n, dtype=torch.bool)
    is_start[(dst[s_mask] - 1).cpu()] = True
    is_accept = torch.zeros(n, dtype=torch.bool)
    is_accept[(src[f_mask] - 1).cpu()] = True
    sel = keep.nonzero().flatten()
    return Graph._from_lists(
        is_start.tolist(), is_accept.tolist(), (src[sel] - 1).tolist(), (dst[sel] - 1).tolist(),
        from_core_labels(lab[sel]).tolist(), from_core_labels(aux[sel]).tolist(), fsa.scores[sel], calc_grad)


def check_scorable(g: Graph, what: str) -> None:
    """facebookresearch/gtn's condition for scoring a graph, kept (it raises where it raises): a pass of
    Kahn's algorithm from the start nodes that have no incoming arc must reach every accept node. It fails on
    a cycle or self-loop before an accept node, and on a node before one that has no incoming arc and is not a
    start node."""
    bad = g._cache.get("unscorable")
    if bad is None:
        indeg = [len(x) for x in g._in]
        q = deque(s for s in g._starts if indeg[s] == 0)
        out, dst = g._out, g._dst
        while q:
            u = q.popleft()
            for a in out[u]:
                d = dst[a]
                indeg[d] -= 1
                if indeg[d] == 0:
                    q.append(d)
        bad = next((a for a in g._accepts if indeg[a] > 0), -1)
        g._cache["unscorable"] = bad
    if bad >= 0:
        raise ValueError(f"{what}: accept node {bad} lies behind a cycle, a self-loop, or a node with no incoming "
                         "arc that is not a start node (the graph has a cycle, self-loop or is disconnected)")
