"""facebookresearch/gtn's random path sampling and randomized equivalence test."""
import random

import torch

from .graph import Graph


def _empty(calc_grad=False, device=None) -> Graph:
    return Graph._from_lists([], [], [], [], [], [], torch.zeros(0, device=device), calc_grad)


@torch.enable_grad()
def sample(g: Graph, max_length: int = 1000) -> Graph:
    """A random path: from a random start node, an outgoing arc (or stopping, at an accept node) chosen
    uniformly at each step, for at most ``max_length`` arcs; the path is cut back to the last accept node
    visited (a walk into a dead end gives an empty graph). Returns the path as a linear graph (its weights are the arcs' weights: gradients flow back), or
    an empty graph when the walk met no accept node. Uses Python's ``random`` (seed it with
    ``random.seed``)."""
    if not isinstance(g, Graph):
        raise ValueError(f"sample: expected a gtn.compat.Graph, got {type(g).__name__}")
    if not g.num_start() or not g.num_accept():
        return _empty(device=g._device)
    arcs = []
    node = g._starts[random.randrange(g.num_start())]
    accept_len = 0
    for length in range(max_length + 1):
        out = g._out[node]
        mod = len(out) + int(g._is_accept[node])
        if g._is_accept[node]:
            accept_len = length + 1
        if not mod:  # a dead end: no successful path on this walk (as facebookresearch/gtn)
            return _empty(device=g._device)
        i = random.randrange(mod)
        if i == len(out):
            break
        arcs.append(out[i])
        node = g._dst[out[i]]
    if not accept_len:
        return _empty(device=g._device)
    arcs = arcs[:accept_len - 1]
    r = len(arcs)
    w = g._weights()[torch.tensor(arcs, dtype=torch.int64, device=g._device)]
    return Graph._from_lists([True] + [False] * r, [False] * r + [True], list(range(r)), list(range(1, r + 1)),
                             [g._il[a] for a in arcs], [g._ol[a] for a in arcs], w, g.calc_grad)



def rand_equivalent(g1: Graph, g2: Graph, num_samples: int = 1000, tol: float = 1e-4,
                    max_length: int = 1000) -> bool:
    """Randomized test that ``g1`` and ``g2`` give every (input, output) string pair the same score: paths
    sampled from either graph are scored in both (forward score of the graph composed with the path's input
    and output acceptors) and must agree within ``tol`` (or both be missing)."""
    from .functions import compose, forward_score, project_input, project_output
    with torch.no_grad():
        for _ in range(num_samples):
            path = sample(g1 if random.random() < 0.5 else g2, max_length)
            if path.num_nodes() == 0:
                continue
            path.calc_grad = False
            inp, outp = project_input(path), project_output(path)
            scores = []
            for g in (g1, g2):
                c = compose(compose(inp, g), outp)
                scores.append(None if c.num_nodes() == 0 else forward_score(c).item())
            if (scores[0] is None) != (scores[1] is None):
                return False
            if scores[0] is not None and abs(scores[0] - scores[1]) > tol:
                return False
    return True
