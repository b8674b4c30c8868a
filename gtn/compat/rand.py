"""facebookresearch/gtn's random path sampling and randomized equivalence test."""
import random

import torch

import gtn as _core

from . import _bridge
from .graph import Graph


def _empty(calc_grad=False, device=None) -> Graph:
    return Graph._from_lists([], [], [], [], [], [], torch.zeros(0, device=device), calc_grad)


def _walk(g: Graph, max_length: int):
    """facebookresearch/gtn's random walk: the arcs of a sampled path, or None when it met no accept node."""
    if not g.num_start() or not g.num_accept():
        return None
    arcs = []
    node = g._starts[random.randrange(g.num_start())]
    accept_len = 0
    for length in range(max_length + 1):
        out = g._out[node]
        mod = len(out) + int(g._is_accept[node])
        if g._is_accept[node]:
            accept_len = length + 1
        if not mod:  # a dead end: no successful path on this walk (as facebookresearch/gtn)
            return None
        i = random.randrange(mod)
        if i == len(out):
            break
        arcs.append(out[i])
        node = g._dst[out[i]]
    if not accept_len:
        return None
    return arcs[:accept_len - 1]


@torch.enable_grad()
def sample(g: Graph, max_length: int = 1000) -> Graph:
    """A random path: from a random start node, an outgoing arc (or stopping, at an accept node) chosen
    uniformly at each step, for at most ``max_length`` arcs; the path is cut back to the last accept node
    visited (a walk into a dead end gives an empty graph). Returns the path as a linear graph (its weights are
    the arcs' weights: gradients flow back), or an empty graph when the walk met no accept node. Uses Python's
    ``random`` (seed it with ``random.seed``)."""
    if not isinstance(g, Graph):
        raise ValueError(f"sample: expected a gtn.compat.Graph, got {type(g).__name__}")
    arcs = _walk(g, max_length)
    if arcs is None:
        return _empty(device=g._device)
    r = len(arcs)
    w = g._weights()[torch.tensor(arcs, dtype=torch.int64, device=g._device)]
    return Graph._from_lists([True] + [False] * r, [False] * r + [True], list(range(r)), list(range(1, r + 1)),
                             [g._il[a] for a in arcs], [g._ol[a] for a in arcs], w, g.calc_grad)


def _string_fsa(labels, device):
    """A linear core acceptor of compat labels, in `_bridge`'s form (super-start arc, -1 final arc)."""
    k = len(labels)
    lab = _bridge.to_core_labels(torch.tensor(labels, dtype=torch.int64)) if k else torch.zeros(0, dtype=torch.int64)
    labs = torch.cat([torch.tensor([_bridge.START_LABEL]), lab, torch.tensor([-1])])
    src = torch.arange(k + 2)
    return _core.Fsa(torch.stack([src, src + 1, labs], 1).to(device), num_states=k + 3)


def rand_equivalent(g1: Graph, g2: Graph, num_samples: int = 1000, tol: float = 1e-4,
                    max_length: int = 1000) -> bool:
    """Randomized test that ``g1`` and ``g2`` give every (input, output) string pair the same score: paths
    sampled from either graph are scored in both (the forward score of the graph composed with the path's
    input and output strings) and must agree within ``tol``, or both have no path. The samples are scored in
    one batched composition per graph."""
    for g in (g1, g2):
        if not isinstance(g, Graph):
            raise ValueError(f"rand_equivalent: expected gtn.compat.Graphs, got {type(g).__name__}")
    pairs = []
    for _ in range(num_samples):
        g = g1 if random.random() < 0.5 else g2
        arcs = _walk(g, max_length)
        if arcs is not None:
            pairs.append(([g._il[a] for a in arcs], [g._ol[a] for a in arcs]))
    if not pairs:
        return True
    dev = g1._device
    ins = _core.FsaVec([_string_fsa(i, dev) for i, _ in pairs])
    outs = _core.FsaVec([_string_fsa(o, dev) for _, o in pairs])
    scores = []
    with torch.no_grad():
        for g in (g1, g2):
            c = _core.compose(_core.compose(ins, _bridge.to_fsa(g, True)), outs)
            empty = c.num_states == 0
            scores.append((empty, _core.forward_score(c)))
    (e1, s1), (e2, s2) = scores
    if bool((e1 != e2).any()):
        return False
    both = ~e1
    a, b = s1[both], s2[both]
    return bool((((a - b).abs() <= tol) | (a == b)).all())  # a == b: both -inf
