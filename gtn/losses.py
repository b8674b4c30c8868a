"""The training criteria of LeCun, Bottou, Bengio & Haffner (1998), §VI, on graphs, in score form.

The paper works with penalties (lower is better); gtn works with scores (higher is better, ``score =
-penalty``), so each criterion below is the paper's formula with ``C_x = -score_x``. Every function:

* takes the interpretation graph ``graphs`` (an `Fsa` or `FsaVec`, acyclic) and either a ``constraint``
  (e.g. the linear FSA of the correct label sequence, `gtn.linear_fsa`), which is composed with the graph
  (``gtn.compose(graphs, constraint)``: the graph's output labels -- its ``aux_labels`` or, for an acceptor,
  its labels -- matched with the constraint's labels; label 0 is epsilon there), or a pre-composed
  ``constrained=`` graph whose scores are connected to ``graphs.scores`` (then ``constraint`` is omitted);
* is batched: an `FsaVec` gives one loss per member; ``reduction`` is ``'none'`` (shape ``[]`` for an `Fsa`,
  ``[num_fsas]`` for an `FsaVec`), ``'sum'`` or ``'mean'`` (the default, as torch's losses);
* is differentiable through `gtn.forward_score` / `gtn.viterbi_score` (their one custom backward) and the
  arc maps of the composition, so ``loss.backward()`` fills ``graphs.scores.grad`` (and whatever produced
  those scores, e.g. the network).

Sign convention: the loss is minimised. Its gradient with respect to an arc *score* is minus its gradient with
respect to the arc's *penalty* in the paper. For the discriminative Viterbi loss the gradient with respect to
the scores is ``+1`` on arcs only on the best (unconstrained) path, ``-1`` on arcs only on the best
constrained ("correct") path and 0 on arcs on both -- the paper's "+1 on correct-only, -1 on best-only" with
respect to penalties.

A constrained graph without a successful path (the target is impossible) gives a loss of ``+inf`` with zero
gradients (never NaN).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .fsa import Fsa, FsaError, FsaVec, as_vec, from_arcs, like

__all__ = ["viterbi_loss", "discriminative_viterbi_loss", "forward_loss", "discriminative_forward_loss",
           "rejection_confidence"]

Graphs = Union[Fsa, FsaVec]


def _constrained(graphs: Graphs, constraint: Optional[Graphs], constrained: Optional[Graphs]) -> Graphs:
    if not isinstance(graphs, (Fsa, FsaVec)):
        raise FsaError(f"graphs must be an Fsa or FsaVec, got {type(graphs).__name__}")
    if constrained is not None:
        if constraint is not None:
            raise FsaError("give either a constraint (composed here) or a pre-composed constrained graph, not both")
        if as_vec(constrained).num_fsas != as_vec(graphs).num_fsas:
            raise FsaError(f"constrained has {as_vec(constrained).num_fsas} FSAs but graphs has "
                           f"{as_vec(graphs).num_fsas}")
        return constrained
    if constraint is None:
        raise FsaError("a constraint graph (e.g. gtn.linear_fsa(target)) or constrained= is required")
    from .compose import compose
    return compose(graphs, constraint)


def _reduce(loss: torch.Tensor, graphs: Graphs, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss.reshape(()) if isinstance(graphs, Fsa) else loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def _vec(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1)


def _penalty_of(constrained_score: torch.Tensor) -> torch.Tensor:
    """``-score`` (``+inf`` where there is no constrained path)."""
    return -constrained_score


def _difference(free: torch.Tensor, cons: torch.Tensor) -> torch.Tensor:
    """``free - cons``, ``+inf`` where ``cons`` is ``-inf`` (no -inf - -inf NaN; gradients stay zero there)."""
    ok = torch.isfinite(cons)
    safe_free = torch.where(ok, free, torch.zeros_like(free))
    safe_cons = torch.where(ok, cons, torch.zeros_like(cons))
    return torch.where(ok, safe_free - safe_cons, torch.full_like(cons, float("inf")))


def viterbi_loss(graphs: Graphs, constraint: Optional[Graphs] = None, *, constrained: Optional[Graphs] = None,
                 reduction: str = "mean") -> torch.Tensor:
    """The paper's Viterbi criterion ``E = C_cvit``: minus the score of the best constrained path.

    Non-discriminative: it only raises the correct path's score (with trainable RBF prototypes it can collapse,
    as the paper warns). Gradient: ``-1`` on the arcs of the best constrained path."""
    from .scoring import viterbi_score
    c = _constrained(graphs, constraint, constrained)
    return _reduce(_vec(_penalty_of(viterbi_score(c))), graphs, reduction)


def discriminative_viterbi_loss(graphs: Graphs, constraint: Optional[Graphs] = None, *,
                                constrained: Optional[Graphs] = None, reduction: str = "mean") -> torch.Tensor:
    """The paper's discriminative Viterbi criterion ``E = C_cvit - C_vit = viterbi(G) - viterbi(constrained) >= 0``.

    Zero when the best path is a correct one. Gradient with respect to the scores: ``+1`` on arcs only on the
    best path, ``-1`` on arcs only on the best correct path, 0 on arcs on both (no margin: once the best path is
    correct the gradient vanishes)."""
    from .scoring import viterbi_score
    c = _constrained(graphs, constraint, constrained)
    return _reduce(_difference(_vec(viterbi_score(graphs)), _vec(viterbi_score(c))), graphs, reduction)


def forward_loss(graphs: Graphs, constraint: Optional[Graphs] = None, *, constrained: Optional[Graphs] = None,
                 reduction: str = "mean") -> torch.Tensor:
    """The paper's (non-discriminative) forward criterion ``E = C_cforw = -forward(constrained)``.

    Gradient: minus the arc posteriors of the constrained graph (mapped back to the graph's arcs)."""
    from .scoring import forward_score
    c = _constrained(graphs, constraint, constrained)
    return _reduce(_vec(_penalty_of(forward_score(c))), graphs, reduction)


def discriminative_forward_loss(graphs: Graphs, constraint: Optional[Graphs] = None, *,
                                constrained: Optional[Graphs] = None, reduction: str = "mean") -> torch.Tensor:
    """The paper's discriminative forward criterion, used in all its systems:
    ``E = C_cforw - C_forw = forward(G) - forward(constrained) >= 0``.

    ``exp(-E)`` is the posterior probability of the correct label sequence(s) among all the graph's paths
    (normalisation over whole paths, none per arc). ``E = 0`` exactly when every path is correct. Gradient:
    the arc posteriors of ``G`` minus those of the constrained graph."""
    from .scoring import forward_score
    c = _constrained(graphs, constraint, constrained)
    return _reduce(_difference(_vec(forward_score(graphs)), _vec(forward_score(c))), graphs, reduction)


def _answer_constraint(graphs: Graphs) -> Graphs:
    """The Viterbi answer of each member as a zero-score linear acceptor over the graph's output labels."""
    from .scoring import viterbi_path
    with torch.no_grad():
        path = as_vec(viterbi_path(graphs))
        arcs = path.arcs.clone()
        if path.aux_labels is not None:
            arcs[:, 2] = path.aux_labels
        out = from_arcs(arcs, torch.zeros(arcs.shape[0], dtype=path.dtype, device=path.device),
                        path.arc_splits, path.state_splits)
    return like(out, graphs)


def rejection_confidence(graphs: Graphs, reduction: str = "none") -> torch.Tensor:
    """The paper's rejection confidence: ``exp(-E)`` where ``E`` is the discriminative forward loss with the
    Viterbi answer (the label sequence of the best path) as the target.

    That is the posterior probability of the recognised label sequence among all the paths of the graph, in
    ``(0, 1]``; threshold it to reject doubtful inputs. ``0`` for a member without any path. Differentiable
    (the answer itself is fixed). Default ``reduction='none'``: one confidence per member."""
    e = discriminative_forward_loss(graphs, _answer_constraint(graphs), reduction="none")
    return _reduce(torch.exp(-e), graphs, reduction)
