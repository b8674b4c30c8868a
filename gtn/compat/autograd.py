"""facebookresearch/gtn's ``backward``, carried by ``torch.autograd``."""
import torch

from .graph import Graph


def _backward_one(g: Graph, grad, retain_graph: bool) -> None:
    _backward_many([g], [grad], retain_graph)


def _seed(g: Graph, grad):
    if not isinstance(g, Graph):
        raise ValueError(f"backward: expected a gtn.compat.Graph, got {type(g).__name__}")
    if g._freed:
        raise ValueError("[autograd::backward] Cannot Backward twice without retaining the graph.")
    w = g._weights()
    if grad is None:
        return w, torch.ones_like(w.detach())
    if not isinstance(grad, Graph):
        raise ValueError(f"backward: grad must be a Graph, got {type(grad).__name__}")
    if grad.num_arcs() != g.num_arcs():
        raise ValueError(f"backward: grad has {grad.num_arcs()} arcs, the graph {g.num_arcs()}")
    return w, grad._weights().detach().to(w.device, w.dtype)


def _backward_many(graphs, grads, retain_graph: bool) -> None:
    """One ``torch.autograd.backward`` for all the roots (graphs scored together share one autograd graph)."""
    roots, seeds, done = [], [], []
    for g, d in zip(graphs, grads):
        w, seed = _seed(g, d)
        if not g.calc_grad:
            continue  # facebookresearch/gtn: nothing to do for a graph that computes no gradient
        if not w.requires_grad:
            w.requires_grad_(True)  # a constant result (no input needs a gradient): only its own grad is set
        if g._leaf:
            w.grad = seed.clone() if w.grad is None else w.grad + seed
            continue
        roots.append(w)
        seeds.append(seed)
        done.append(g)
    if not roots:
        return
    try:
        with torch.enable_grad():
            torch.autograd.backward(roots, grad_tensors=seeds, retain_graph=retain_graph)
    except RuntimeError as e:
        if "second time" in str(e) or "freed" in str(e):
            raise ValueError("[autograd::backward] Cannot Backward twice without retaining the graph.") from e
        raise
    if not retain_graph:
        for g in done:
            g._freed = True


def backward(graph, grad=None, retain_graph=False):
    """``backward(g, retain_graph=False)`` or ``backward(g, grad, retain_graph=False)``: accumulate into every
    graph of the computation that has ``calc_grad`` the gradient of ``g``'s weights (seeded with ones, or with
    ``grad``'s weights). Without ``retain_graph`` a second backward through the same graph raises
    ``ValueError``. Lists of graphs (and lists of grads / flags, a one-element list broadcast) are accepted."""
    if isinstance(grad, bool) or (isinstance(grad, (list, tuple)) and grad and isinstance(grad[0], bool)):
        grad, retain_graph = None, grad
    if isinstance(graph, (list, tuple)):
        n = len(graph)

        def spread(x, what):
            xs = list(x) if isinstance(x, (list, tuple)) else [x]
            if len(xs) == 1:
                xs = xs * n
            if len(xs) != n:
                raise ValueError(f"backward: {len(xs)} {what} for {n} graphs")
            return xs

        flags = spread(retain_graph, "retain_graph flags")
        if len(set(map(bool, flags))) > 1:
            raise ValueError("backward: give one retain_graph flag for the whole list")
        _backward_many(list(graph), spread(grad, "grads"), bool(flags[0]) if flags else False)
        return
    _backward_one(graph, grad, bool(retain_graph))
