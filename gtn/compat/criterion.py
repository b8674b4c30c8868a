"""``gtn.criterion``: facebookresearch/gtn's CTC loss on compat graphs, computed by our core's CTC."""
from typing import Sequence

import torch

import gtn as _core

from .graph import Graph


def _emissions(g: Graph, what: str):
    """The ``[T, C]`` weights of a `linear_graph(T, C)`-shaped graph (checked)."""
    T = g.num_nodes() - 1
    if T < 0 or g.num_arcs() == 0 and T > 0:
        raise ValueError(f"{what}: log_probs must be a linear graph (gtn.linear_graph(T, C))")
    C = g.num_arcs() // T if T else 0
    k = torch.arange(T * C)
    ok = (T == 0 or g.num_arcs() == T * C) and g._starts == [0] and g._accepts == [T]
    if ok and T:
        ok = (torch.tensor(g._src) == k // C).all() and (torch.tensor(g._dst) == k // C + 1).all() and \
            (torch.tensor(g._il) == k % C).all()
    if not ok:
        raise ValueError(f"{what}: log_probs must be a linear graph (gtn.linear_graph(T, C)) with its arcs in "
                         "that order: arc t*C + c from node t to t+1 with label c")
    return g._weights().view(T, C), T, C


@torch.enable_grad()
def ctc_loss(log_probs: Graph, target: Sequence[int], blank_idx: int) -> Graph:
    """The CTC loss of one sequence: ``log_probs`` a `linear_graph(T, C)` holding per-frame scores,
    ``target`` the label sequence, ``blank_idx`` the blank. Returns a one-arc graph with
    ``-log P(target)``, where ``P`` normalizes the scores of each frame (a softmax): for log-probabilities
    this is the usual CTC loss, and the gradient is ``softmax - posterior``. Computed by `gtn.ctc_loss`
    (dense, batched machinery) after moving the blank to index 0."""
    x, T, C = _emissions(log_probs, "ctc_loss")
    target = [int(t) for t in target]
    if not 0 <= blank_idx < C:
        raise ValueError(f"ctc_loss: blank_idx={blank_idx} is not a label of the {C} per frame")
    if any(not 0 <= t < C or t == blank_idx for t in target):
        raise ValueError(f"ctc_loss: target labels must be in [0, {C}) and differ from the blank {blank_idx}, "
                         f"got {target}")
    perm = [blank_idx] + [c for c in range(C) if c != blank_idx]
    where = {c: i for i, c in enumerate(perm)}
    xp = x[:, torch.tensor(perm, device=x.device)]
    lp = torch.log_softmax(xp, dim=1).unsqueeze(1)  # [T, 1, C]
    dev = x.device
    tg = torch.tensor([[where[t] for t in target]], dtype=torch.int64, device=dev)
    loss = _core.ctc_loss(lp, tg, torch.tensor([T], device=dev), torch.tensor([len(target)], device=dev),
                          reduction="none")
    loss = loss.reshape(1).to(torch.float32)
    return Graph._from_lists([True, False], [False, True], [0], [1], [0], [0], loss, log_probs.calc_grad)
