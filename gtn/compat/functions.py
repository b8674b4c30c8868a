"""facebookresearch/gtn's functions on compat `Graph`s.

Scoring (`forward_score`, `viterbi_score`, `viterbi_path`) and composition (`compose`, `intersect`) run on
this library's core through `_bridge` (a list of graphs given to `forward_score` is scored as one ``FsaVec``). The structural
operations (`clone`, the projections, `union`, `concat`, `closure`, `remove`) build facebookresearch/gtn's
exact node and arc layout (its users index arcs and gradients by position) from an arc map, and the weights
follow by ``index_select``/``cat`` so ``torch.autograd`` carries the gradients.
"""
from typing import List, Sequence

import torch

import gtn as _core

from . import _bridge
from .graph import Graph, epsilon


def _is_list(x) -> bool:
    return isinstance(x, (list, tuple))


def _any_grad(graphs) -> bool:
    return any(g.calc_grad for g in graphs)


def _check_graph(g, what):
    if not isinstance(g, Graph):
        raise ValueError(f"{what}: expected a gtn.compat.Graph, got {type(g).__name__}")


def _pairwise(fn, a, b, what):
    if len(a) != len(b):
        raise ValueError(f"{what}: the two lists have {len(a)} and {len(b)} graphs")
    return [fn(x, y) for x, y in zip(a, b)]


def _tie(value: torch.Tensor, inputs) -> torch.Tensor:
    """Connect a result that does not depend on its inputs' weights (no path, no arc) to them with a zero
    gradient, so that the inputs still receive a (zero) gradient as in facebookresearch/gtn."""
    ws = [g._weights() for g in inputs if g.calc_grad]
    if value.requires_grad or not ws:
        return value
    for w in ws:  # where(False, w, 0): a zero gradient even where w is infinite
        value = value + torch.where(torch.zeros_like(w, dtype=torch.bool), w, 0.0).sum()
    return value


def _scalar(value: torch.Tensor, calc_grad: bool) -> Graph:
    """A two-node, one-arc graph (label 0, as facebookresearch/gtn labels its score graphs)."""
    return Graph._from_lists([True, False], [False, True], [0], [1], [0], [0], value.reshape(1), calc_grad)


# ---- scalar arithmetic ---------------------------------------------------------------------------------
def _one_arc(g, what):
    _check_graph(g, what)
    if g.num_arcs() != 1:
        raise ValueError(f"{what}: inputs must have exactly one arc, got {g.num_arcs()}")
    return g._weights()


def negate(g):
    """``-g`` for a one-arc graph."""
    if _is_list(g):
        return [negate(x) for x in g]
    return _scalar(-_one_arc(g, "negate"), g.calc_grad)


def add(g1, g2):
    """``g1 + g2`` for one-arc graphs."""
    if _is_list(g1):
        return _pairwise(add, g1, g2, "add")
    return _scalar(_one_arc(g1, "add") + _one_arc(g2, "add"), g1.calc_grad or g2.calc_grad)


def subtract(g1, g2):
    """``g1 - g2`` for one-arc graphs."""
    if _is_list(g1):
        return _pairwise(subtract, g1, g2, "subtract")
    return _scalar(_one_arc(g1, "subtract") - _one_arc(g2, "subtract"), g1.calc_grad or g2.calc_grad)


# ---- copies and projections ----------------------------------------------------------------------------
def _clone(g, il, ol):
    return Graph._from_lists(g._is_start, g._is_accept, g._src, g._dst, il, ol, g._weights().clone(), g.calc_grad)


def clone(g):
    """A copy (same nodes, arcs, weights); the gradient of the copy flows back to ``g``."""
    if _is_list(g):
        return [clone(x) for x in g]
    _check_graph(g, "clone")
    return _clone(g, g._il, g._ol)


def project_input(g):
    """The acceptor of input labels."""
    if _is_list(g):
        return [project_input(x) for x in g]
    _check_graph(g, "project_input")
    return _clone(g, g._il, g._il)


def project_output(g):
    """The acceptor of output labels."""
    if _is_list(g):
        return [project_output(x) for x in g]
    _check_graph(g, "project_output")
    return _clone(g, g._ol, g._ol)


# ---- union, concat, closure ----------------------------------------------------------------------------
def _weights_and_zeros(parts, like_dev):
    ws = [p if isinstance(p, torch.Tensor) else torch.zeros(p, dtype=torch.float32, device=like_dev)
          for p in parts]
    return torch.cat(ws) if ws else torch.zeros(0, dtype=torch.float32, device=like_dev)


def _device_of(graphs):
    devs = {g._device for g in graphs}
    if len(devs) > 1:
        raise ValueError(f"graphs on different devices: {sorted(map(str, devs))}")
    return devs.pop() if devs else torch.device("cpu")


def union(graphs):
    """The union of a list of graphs: their nodes and arcs side by side (start and accept nodes kept)."""
    if graphs and _is_list(graphs[0]):
        return [union(x) for x in graphs]
    for g in graphs:
        _check_graph(g, "union")
    dev = _device_of(graphs)
    st, ac, src, dst, il, ol, parts = [], [], [], [], [], [], []
    off = 0
    for g in graphs:
        st += g._is_start
        ac += g._is_accept
        src += [s + off for s in g._src]
        dst += [d + off for d in g._dst]
        il += g._il
        ol += g._ol
        parts.append(g._weights())
        off += g.num_nodes()
    return Graph._from_lists(st, ac, src, dst, il, ol, _weights_and_zeros(parts, dev), _any_grad(graphs))


def concat(*args):
    """``concat(g1, g2)`` or ``concat([g1, g2, ...])``: the accept nodes of each graph joined to the start
    nodes of the next by epsilon arcs (weight 0). ``concat([])`` accepts the empty string."""
    if len(args) == 2:
        if _is_list(args[0]):
            return _pairwise(lambda a, b: concat([a, b]), args[0], args[1], "concat")
        graphs = list(args)
    elif len(args) == 1:
        graphs = list(args[0])
        if graphs and _is_list(graphs[0]):
            return [concat(x) for x in graphs]
    else:
        raise ValueError("concat: give two graphs or one list of graphs")
    for g in graphs:
        _check_graph(g, "concat")
    dev = _device_of(graphs)
    if not graphs:
        return Graph._from_lists([True], [True], [], [], [], [], torch.zeros(0, device=dev), False)
    st, ac, src, dst, il, ol, parts = [], [], [], [], [], [], []
    off = 0
    last = len(graphs) - 1
    for i, g in enumerate(graphs):
        st += [s and i == 0 for s in g._is_start]
        ac += [a and i == last for a in g._is_accept]
        src += [s + off for s in g._src]
        dst += [d + off for d in g._dst]
        il += g._il
        ol += g._ol
        parts.append(g._weights())
        if i > 0:
            p = graphs[i - 1]
            poff = off - p.num_nodes()
            links = [(a + poff, s + off) for a in p._accepts for s in g._starts]
            src += [x for x, _ in links]
            dst += [y for _, y in links]
            il += [epsilon] * len(links)
            ol += [epsilon] * len(links)
            parts.append(len(links))
        off += g.num_nodes()
    return Graph._from_lists(st, ac, src, dst, il, ol, _weights_and_zeros(parts, dev), _any_grad(graphs))


def closure(g):
    """The Kleene closure: a new start-and-accept node 0, epsilon arcs from it to the start nodes and from
    the accept nodes back to it."""
    if _is_list(g):
        return [closure(x) for x in g]
    _check_graph(g, "closure")
    n = g.num_nodes()
    st = [True] + [False] * n
    ac = [True] + [False] * n
    src = [s + 1 for s in g._src] + [0] * len(g._starts) + [a + 1 for a in g._accepts]
    dst = [d + 1 for d in g._dst] + [s + 1 for s in g._starts] + [0] * len(g._accepts)
    k = len(g._starts) + len(g._accepts)
    il = g._il + [epsilon] * k
    ol = g._ol + [epsilon] * k
    w = _weights_and_zeros([g._weights(), k], g._device)
    return Graph._from_lists(st, ac, src, dst, il, ol, w, g.calc_grad)


def remove(g, ilabel=epsilon, olabel=None):
    """``remove(g, label=epsilon)`` / ``remove(g, ilabel, olabel)``: drop the arcs with these labels, joining
    across them (facebookresearch/gtn's layout: the kept nodes are the start nodes and those with an arc of
    another label coming in). Kept arcs keep their weights (facebookresearch/gtn resets them to 0).

    Raises:
        ValueError: a removed arc has a nonzero weight (a graph has no final weights, so it could not be
            carried), or a label is out of range.
    """
    if _is_list(g):
        labels = ilabel if _is_list(ilabel) else [ilabel]
        if len(labels) == 1:
            labels = labels * len(g)
        return _pairwise(lambda x, lab: remove(x, lab), g, labels, "remove")
    _check_graph(g, "remove")
    if olabel is None:
        olabel = ilabel
    il_, ol_, src_, dst_ = g._il, g._ol, g._src, g._dst
    match = [il_[a] == ilabel and ol_[a] == olabel for a in range(g.num_arcs())]
    w = g._weights()
    if any(match):
        mw = w.detach()[torch.tensor(match, device=w.device)]
        if bool((mw != 0).any()):
            raise ValueError(f"remove: the arcs labelled {ilabel}:{olabel} to remove carry nonzero weights; "
                             "they cannot be folded into a graph without final weights (use gtn.remove_epsilon on "
                             "the core's Fsa for a weighted epsilon removal)")
    n = g.num_nodes()
    nodes = [-1] * n
    st = []
    for v in range(n):
        if g._is_start[v] or not all(match[a] for a in g._in[v]):
            nodes[v] = len(st)
            st.append(g._is_start[v])
    ac = [False] * len(st)
    src, dst, il, ol, keep = [], [], [], [], []
    for v in range(n):
        cur = nodes[v]
        if cur < 0:
            continue
        seen = {v}
        todo = [v]
        k = 0
        while k < len(todo):
            u = todo[k]
            k += 1
            if g._is_accept[u]:
                ac[cur] = True
            for a in g._out[u]:
                d = dst_[a]
                if match[a]:
                    if d not in seen:
                        seen.add(d)
                        todo.append(d)
                else:
                    src.append(cur)
                    dst.append(nodes[d])
                    il.append(il_[a])
                    ol.append(ol_[a])
                    keep.append(a)
    idx = torch.tensor(keep, dtype=torch.int64, device=w.device)
    return Graph._from_lists(st, ac, src, dst, il, ol, w[idx], g.calc_grad)


# ---- composition ---------------------------------------------------------------------------------------
def compose(g1, g2):
    """The composition: ``g1``'s output labels matched with ``g2``'s input labels, epsilon (``gtn.epsilon``)
    handled without duplicate paths (OpenFst's sequence filter, our core's `gtn.compose`). Only nodes on a
    successful path are kept; a graph with no path comes back empty."""
    if _is_list(g1):
        return _pairwise(compose, g1, g2, "compose")
    _check_graph(g1, "compose")
    _check_graph(g2, "compose")
    _device_of([g1, g2])
    res = _core.compose(_bridge.to_fsa(g1, True), _bridge.to_fsa(g2, True))
    return _bridge.from_fsa(res, g1.calc_grad or g2.calc_grad)


def intersect(g1, g2):
    """The intersection of acceptors (facebookresearch/gtn: the composition, matching ``g1``'s output and
    ``g2``'s input labels)."""
    if _is_list(g1):
        return _pairwise(intersect, g1, g2, "intersect")
    return compose(g1, g2)


# ---- scores --------------------------------------------------------------------------------------------
def _checked_weights(g: Graph, what: str) -> torch.Tensor:
    _check_graph(g, what)
    _bridge.check_scorable(g, what)
    w = g._weights()
    if bool(torch.isfinite(w.detach()).all()):
        return w
    if bool(torch.isnan(w.detach()).any()):
        raise ValueError(f"{what}: the graph has a NaN weight (arc {int(torch.isnan(w.detach()).nonzero()[0])})")
    return w


def _inf_on_a_path(g: Graph, w: torch.Tensor) -> bool:
    """Whether a successful path (one with no -inf arc) goes through a +inf arc. Our core refuses +inf scores,
    so such graphs are scored here: +inf, as facebookresearch/gtn gives."""
    pos = w.detach() == float("inf")
    if not bool(pos.any()):
        return False
    reach = torch.where(w.detach() == float("-inf"), w.detach(), torch.zeros_like(w.detach()))
    fsa = _bridge.to_fsa(g, weights=reach, arc_ids=True)
    post = _core.arc_posteriors(fsa)
    ids = fsa.arc_id
    on_path = torch.zeros_like(pos)
    on_path[ids[ids >= 0]] = post[ids >= 0] > 0
    return bool((on_path & pos).any())


def _score(graphs: Sequence[Graph], fn, what) -> List[Graph]:
    ws = [_checked_weights(g, what) for g in graphs]
    inf = [_inf_on_a_path(g, w) for g, w in zip(graphs, ws)]
    # +inf arcs on no successful path change nothing: score them as -inf (zero gradient) for the core
    ws = [torch.where(w == float("inf"), torch.full_like(w, float("-inf")), w)
          if bool((w.detach() == float("inf")).any()) else w for w in ws]
    fsas = [_bridge.to_fsa(g, weights=w) for g, w in zip(graphs, ws)]
    tot = fn(fsas[0]).reshape(1) if len(fsas) == 1 else fn(_core.FsaVec(fsas))
    out = []
    for i, g in enumerate(graphs):
        t = tot[i]
        if inf[i]:  # +inf with zero gradients (facebookresearch/gtn: NaN gradients)
            t = torch.where(torch.ones((), dtype=torch.bool), torch.full_like(t.detach(), float("inf")), t)
        out.append(_scalar(_tie(t, [g]), g.calc_grad))
    return out


def forward_score(g):
    """The log-sum-exp of the path scores, as a one-arc graph (``-inf`` when no path succeeds). A list of
    graphs is scored in one batched call. Raises ``ValueError`` where facebookresearch/gtn does (see
    `_bridge.check_scorable`)."""
    if _is_list(g):
        return _score(list(g), _core.forward_score, "forward_score") if g else []
    return _score([g], _core.forward_score, "forward_score")[0]


def _in_positions(g: Graph) -> torch.Tensor:
    """Each arc's position in its destination's in-arc list (cached per structure; arc_sort reorders)."""
    key = ("inpos", tuple(map(tuple, g._in)) if g._ilabel_sorted or g._olabel_sorted else None)
    c = g._cache.get(key)
    if c is None:
        pos = [0] * g.num_arcs()
        for lst in g._in:
            for k, a in enumerate(lst):
                pos[a] = k
        c = torch.tensor(pos, dtype=torch.int64, device=g._device)
        g._cache[key] = c
    return c


def _best_path_arcs(g: Graph, w: torch.Tensor):
    """The best path with facebookresearch/gtn's tie-breaking, on the core's tropical forward scores: from
    the first accept node (in accept order) with the best score, back through, at each node, the first arc of
    its in-arc list that achieves the node's score (a start node stops there when its own 0 is strictly
    better). Vectorized over arcs; the Python loop walks the path only. Returns (arcs in order, best score
    as a float) or (None, -inf) when no path succeeds."""
    n, A = g.num_nodes(), g.num_arcs()
    if not g.num_start() or not g.num_accept():
        return None, float("-inf")
    wd = w.detach()
    big = torch.where(wd == float("inf"), torch.full_like(wd, 1e30), wd)  # the core refuses +inf
    alpha = _core.forward_scores(_bridge.to_fsa(g, weights=big), log_semiring=False)[1:n + 1].to(wd.dtype)
    acc = torch.tensor(g._accepts, dtype=torch.int64, device=wd.device)
    k = int(torch.argmax(alpha[acc]))  # the first of the best
    best = float(alpha[acc[k]])
    if best == float("-inf"):
        return None, best
    back = [-1] * n
    if A:
        src = torch.tensor(g._src, dtype=torch.int64, device=wd.device)
        dst = torch.tensor(g._dst, dtype=torch.int64, device=wd.device)
        val = alpha[src] + big
        nmax = torch.full((n,), float("-inf"), dtype=val.dtype, device=val.device)
        nmax = nmax.scatter_reduce(0, dst, val, "amax")
        cand = (val == nmax[dst]) & (val > float("-inf"))
        pos = _in_positions(g)
        huge = A + 1
        first = torch.full((n,), huge, dtype=torch.int64, device=val.device)
        first = first.scatter_reduce(0, dst, torch.where(cand, pos, torch.full_like(pos, huge)), "amin")
        win = cand & (pos == first[dst])
        is_start = torch.tensor(g._is_start, dtype=torch.bool, device=val.device)
        keep = win & ~(is_start[dst] & (nmax[dst] < 0))  # a start node's own 0 strictly better: stop
        back_t = torch.full((n,), -1, dtype=torch.int64, device=val.device)
        back_t[dst[keep]] = torch.arange(A, device=val.device)[keep]
        back = back_t.tolist()
    arcs, node = [], g._accepts[k]
    while back[node] >= 0 and len(arcs) <= A:
        a = back[node]
        arcs.append(a)
        node = g._src[a]
    return arcs[::-1], best


def _viterbi(g: Graph, what: str):
    w = _checked_weights(g, what)
    arcs, best = _best_path_arcs(g, w)
    return w, arcs, best


def viterbi_score(g):
    """The best path score, as a one-arc graph; its gradient is 1 on the arcs of the best path, ties broken as
    facebookresearch/gtn breaks them (the first best accept node, the first best in-arc of each node)."""
    if _is_list(g):
        return [viterbi_score(x) for x in g]
    w, arcs, best = _viterbi(g, "viterbi_score")
    if arcs is None:
        return _scalar(_tie(w.new_full((), float("-inf")), [g]), g.calc_grad)
    if _inf_on_a_path(g, w):  # +inf with zero gradients (facebookresearch/gtn: NaN gradients)
        return _scalar(_tie(w.new_full((), float("inf")), [g]), g.calc_grad)
    wp = w[torch.tensor(arcs, dtype=torch.int64, device=w.device)].sum()
    value = wp - wp.detach() + best  # the core's value, the path's gradient (1 on each of its arcs)
    return _scalar(_tie(value, [g]), g.calc_grad)


def viterbi_path(g):
    """The best path as a linear graph (labels and weights of its arcs; gradients flow back to them), ties
    broken as `viterbi_score` breaks them. An empty graph when no path succeeds."""
    if _is_list(g):
        return [viterbi_path(x) for x in g]
    w, arcs, _ = _viterbi(g, "viterbi_path")
    if arcs is None:
        return Graph._from_lists([], [], [], [], [], [], _tie(w[:0], [g]), g.calc_grad)
    r = len(arcs)
    idx = torch.tensor(arcs, dtype=torch.int64, device=w.device)
    return Graph._from_lists([True] + [False] * r, [False] * r + [True], list(range(r)), list(range(1, r + 1)),
                             [g._il[a] for a in arcs], [g._ol[a] for a in arcs], _tie(w[idx], [g]), g.calc_grad)


def _grad_enabled(fn):
    """Run with autograd on: facebookresearch/gtn's users build graphs inside a ``torch.autograd.Function``'s
    forward (where torch turns autograd off) and call `backward` in its backward."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.enable_grad():
            return fn(*args, **kwargs)
    return wrapper


for _name in ("negate", "add", "subtract", "clone", "project_input", "project_output", "union", "concat", "closure",
              "remove", "compose", "intersect", "forward_score", "viterbi_score", "viterbi_path"):
    globals()[_name] = _grad_enabled(globals()[_name])
