"""CTC with the generic machinery: the CTC topology, per-target CTC graphs, and `ctc_loss`.

`ctc_loss` is ``-dense_forward_score(ctc_graph(targets), DenseFsaVec(log_probs))``: the forward score of the
lattice of each target's CTC graph against the frames, computed by the fused frame loop of `gtn.dense`
(no CTC-specific recursion anywhere). Graphs follow k2's definitions (`k2.ctc_topo`, `k2.ctc_graph`), arc
order included.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from .dense import DenseFsaVec, dense_forward_score
from .fsa import Fsa, FsaError, FsaVec, from_arcs

__all__ = ["ctc_topo", "ctc_graph", "ctc_loss"]


def ctc_topo(num_symbols: int, modified: bool = False, dtype: torch.dtype = torch.float32,
             device=None) -> Fsa:
    """The CTC topology as a transducer from CTC tokens (input labels) to output labels (``aux_labels``).

    Tokens are ``0 .. num_symbols-1``, token 0 being the blank (so ``num_symbols`` is the number of columns of
    the network output, k2's ``max_token + 1``). Scores are 0. As in k2:

    * standard (``modified=False``): states ``0 .. num_symbols-1`` (state 0 = blank, state i = "last token
      was i") and a final state; from every state ``i`` an arc to every state ``j`` labelled ``j`` with output
      ``j``, except that repeating ``i`` outputs 0 (epsilon), and an arc labelled ``-1`` to the final state.
      ``num_symbols * (num_symbols + 1)`` arcs; a repeated token needs a blank in between to be output twice.
    * modified (``modified=True``): state 0 has a self-loop for every token (output = the token) and an arc to
      each state ``i`` (label ``i``, output ``i``) and to the final state; state ``i`` has a self-loop
      (label ``i``, output 0) and an arc back to state 0 (label ``i``, output 0). ``4 * num_symbols - 2`` arcs;
      repeated tokens need no blank between them.
    """
    if int(num_symbols) < 1:
        raise FsaError(f"num_symbols must be >= 1 (the blank), got {num_symbols}")
    n = int(num_symbols)
    if not modified:
        i = torch.arange(n).repeat_interleave(n + 1)
        j = torch.arange(n + 1).repeat(n)
        lab = torch.where(j == n, -1, j)
        aux = torch.where(i == j, 0, lab)
        arcs = torch.stack([i, j, lab], 1)
    else:
        # state 0: self-loops 0..n-1, then arcs to 1..n (n = final); states i >= 1: self-loop, back to 0
        loops = torch.stack([torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64),
                             torch.arange(n)], 1)
        d = torch.arange(1, n + 1)
        leave = torch.stack([torch.zeros(n, dtype=torch.int64), d, torch.where(d == n, -1, d)], 1)
        s = torch.arange(1, n).repeat_interleave(2)
        other = torch.stack([s, torch.where(torch.arange(s.numel()) % 2 == 0, s, 0), s], 1)
        arcs = torch.cat([loops, leave, other])
        aux = torch.cat([torch.arange(n), leave[:, 2], torch.zeros(s.numel(), dtype=torch.int64)])
    return Fsa(arcs.to(device), torch.zeros(arcs.shape[0], dtype=dtype, device=device), aux_labels=aux.to(device),
               num_states=n + 1)


def _ctc_graphs_padded(y: torch.Tensor, U: torch.Tensor, blank: int, modified: bool, dtype, device) -> FsaVec:
    """CTC graphs of the padded targets ``y [N, Umax]`` with lengths ``U [N]``, built without Python loops.

    Built with numpy on the host (these are small integer tables; torch's intra-op thread pool only adds latency
    here), then moved to ``device``."""
    y = y.detach().cpu().numpy().astype(np.int64)
    U = U.detach().cpu().numpy().astype(np.int64)
    N = y.shape[0]
    Umax = int(U.max()) if N else 0
    y = y[:, :Umax] if Umax else np.zeros((N, 1), dtype=np.int64)
    S = 2 * Umax + 1
    s = np.arange(S)
    i = s // 2
    even = (s % 2 == 0)[None, :]
    Ub = U[:, None]
    yi = y[:, np.minimum(i, max(Umax - 1, 0))]
    yn = y[:, np.minimum(i + 1, max(Umax - 1, 0))]
    live = s[None, :] <= 2 * Ub
    sb = np.broadcast_to(s[None, :], (N, S))
    # slot 0: blank state -> self-loop; label state -> next blank
    d0 = np.where(even, sb, sb + 1)
    l0 = np.full((N, S), blank, dtype=np.int64)
    a0 = np.zeros((N, S), dtype=np.int64)
    v0 = live
    # slot 1: blank state -> its label state (or the final state after the last blank); label state -> self-loop
    last_blank = i[None, :] == Ub
    d1 = np.where(even, sb + 1, sb)
    l1 = np.where(even & last_blank, -1, yi)
    a1 = np.where(even, l1, 0)
    v1 = live
    # slot 2 (label states): the next label (skipping the blank unless it repeats), or the final state
    last_label = i[None, :] == Ub - 1
    d2 = sb + 2
    l2 = np.where(last_label, -1, yn)
    a2 = l2
    v2 = live & ~even & (last_label | bool(modified) | (yn != yi))
    valid = np.stack([v0, v1, v2], 2)
    src = np.broadcast_to(sb[:, :, None], (N, S, 3))[valid]
    dst = np.stack([d0, d1, d2], 2)[valid]
    lab = np.stack([l0, l1, l2], 2)[valid]
    aux = np.stack([a0, a1, a2], 2)[valid]
    arcs = np.stack([src, dst, lab], 1)
    na = valid.reshape(N, -1).sum(1)
    arc_splits = np.concatenate([[0], np.cumsum(na)]).astype(np.int64)
    state_splits = np.concatenate([[0], np.cumsum(2 * U + 2)]).astype(np.int64)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)
    return from_arcs(t(arcs).reshape(-1, 3), torch.zeros(arcs.shape[0], dtype=dtype, device=device), t(arc_splits),
                     t(state_splits), aux_labels=t(aux))


def _check_targets(y: torch.Tensor, U: torch.Tensor, blank: int, num_symbols: Optional[int] = None):
    if y.numel() == 0:
        return
    used = torch.arange(y.shape[1])[None, :] < U[:, None]
    bad = used & ((y < 0) | (y == blank) | ((y >= num_symbols) if num_symbols is not None else False))
    if bool(bad.any()):
        b, k = (int(x) for x in bad.nonzero()[0])
        what = f"outside 0..{num_symbols - 1}" if num_symbols is not None and int(y[b, k]) >= num_symbols else \
            ("the blank" if int(y[b, k]) == blank else "negative")
        raise FsaError(f"target {b} of the batch: label {int(y[b, k])} at position {k} is {what}")


def ctc_graph(targets, modified: bool = False, blank: int = 0, dtype: torch.dtype = torch.float32,
              device=None, lengths=None) -> Union[Fsa, FsaVec]:
    """The CTC graph of each target sequence (k2's ``ctc_graph``): an acceptor of CTC token sequences.

    Args:
        targets: a list of ints (gives an `Fsa`), a list of lists (an `FsaVec`), a 1-D tensor (an `Fsa`), or a
            padded ``[N, S]`` tensor with ``lengths`` (an `FsaVec`).
        modified: k2's modified CTC: a repeated label needs no blank in between (standard CTC requires one).
        blank: the blank token (default 0). Targets may not contain it.

    For a target of length ``U``: states ``0 .. 2U`` (even = blank, ``2i+1`` = label ``i``) and the final state
    ``2U+1``. A blank state has a blank self-loop and an arc to the next label state (the last one: ``-1`` to
    the final state); a label state has an arc to the next blank, a self-loop, and an arc straight to the
    next label state when that label differs (always, if ``modified``), the last one ``-1`` to the final state.
    ``aux_labels`` carry the label on the arc entering a label state, 0 elsewhere (k2's convention). Scores 0.
    """
    single = False
    if isinstance(targets, torch.Tensor):
        t = targets.detach().cpu()
        if t.dtype.is_floating_point:
            raise FsaError(f"targets must be integers, got dtype {t.dtype}")
        t = t.to(torch.int64)
        if t.dim() == 1:
            single = True
            y, U = t[None, :], torch.tensor([t.numel()])
        elif t.dim() == 2:
            y = t
            U = torch.full((t.shape[0],), t.shape[1]) if lengths is None else torch.as_tensor(lengths).to(torch.int64).cpu()
            if U.numel() != y.shape[0] or bool((U > y.shape[1]).any() | (U < 0).any()):
                raise FsaError(f"lengths must be {y.shape[0]} values in 0..{y.shape[1]}, got {U.tolist()}")
        else:
            raise FsaError(f"targets must be 1-D or 2-D, got shape {tuple(t.shape)}")
    else:
        seqs = list(targets)
        if all(isinstance(x, (int,)) or (isinstance(x, torch.Tensor) and x.dim() == 0) for x in seqs):
            single = True
            seqs = [seqs]
        seqs = [[int(v) for v in q] for q in seqs]
        if not seqs:
            raise FsaError("ctc_graph needs at least one target sequence")
        U = torch.tensor([len(q) for q in seqs], dtype=torch.int64)
        y = torch.zeros((len(seqs), max(int(U.max()), 1)), dtype=torch.int64)
        for b, q in enumerate(seqs):  # building the input table only; the graphs are built vectorized
            if q:
                y[b, :len(q)] = torch.tensor(q, dtype=torch.int64)
    _check_targets(y, U, blank)
    vec = _ctc_graphs_padded(y, U, int(blank), bool(modified), dtype, device)
    if single:
        return Fsa._from_parts(vec.arcs, vec.scores, vec.arc_splits, vec.state_splits, vec.aux_labels)
    return vec


def ctc_loss(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths, target_lengths, blank: int = 0,
             reduction: str = "mean", zero_infinity: bool = False, backend: str = "auto") -> torch.Tensor:
    """The CTC loss, with `torch.nn.functional.ctc_loss`'s signature and results, on the generic machinery.

    Args:
        log_probs: ``[T, N, C]`` (or unbatched ``[T, C]``) log-probabilities, usually ``log_softmax`` output.
        targets: padded ``[N, S]`` (or unbatched ``[S]``), or all targets concatenated in a 1-D tensor of
            ``sum(target_lengths)`` labels. Labels are in ``0 .. C-1`` and never ``blank``.
        input_lengths, target_lengths: ``[N]`` tensors or sequences of ints (scalars when unbatched).
        blank: the blank symbol (any of ``0 .. C-1``).
        reduction: ``'none'`` (``[N]``, or ``[]`` unbatched), ``'sum'``, or ``'mean'`` (each loss divided by its
            target length, clamped to at least 1, then the mean over the batch) -- as torch.
        zero_infinity: replace infinite losses (no alignment fits: the input is too short for the target) and
            their gradients by zero. Without it such a loss is ``+inf`` and its gradient zero (never NaN).
        backend: ``"auto"``, ``"numba"`` or ``"torch"`` (`gtn.kernels.select`, as everywhere in the library).

    Computed as ``-dense_forward_score(ctc_graph(targets, blank=blank), DenseFsaVec(log_probs))``: the forward
    score of each target's CTC graph against the frames, through the fused frame loop of `gtn.dense`.

    Gradient: this is the **true derivative** of the loss with respect to ``log_probs`` for *any* input: minus
    the occupation posterior of each (frame, symbol). torch's own ``ctc_loss`` backward instead returns
    ``exp(log_probs) - posterior`` (it assumes ``log_probs`` came from ``log_softmax`` and folds that Jacobian in),
    which is not the derivative of its forward value unless one differentiates through ``log_softmax`` anyway.
    Through ``log_softmax`` both give the same gradient with respect to the logits; on unnormalised inputs
    only this one passes ``torch.autograd.gradcheck``.
    """
    from . import kernels
    backend = kernels.check_backend(backend, "ctc_loss")
    if not isinstance(log_probs, torch.Tensor) or not log_probs.dtype.is_floating_point:
        raise FsaError("log_probs must be a floating tensor [T, N, C] or [T, C]")
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    unbatched = log_probs.dim() == 2
    if unbatched:
        log_probs = log_probs.unsqueeze(1)
    elif log_probs.dim() != 3:
        raise FsaError(f"log_probs must be [T, N, C] or [T, C], got shape {tuple(log_probs.shape)}")
    T, N, C = log_probs.shape
    il = torch.as_tensor(input_lengths).detach().cpu().to(torch.int64).reshape(-1)
    tl = torch.as_tensor(target_lengths).detach().cpu().to(torch.int64).reshape(-1)
    if il.numel() != N or tl.numel() != N:
        raise FsaError(f"input_lengths and target_lengths must have {N} entries, got {il.numel()} and {tl.numel()}")
    if bool((tl < 0).any()):
        raise FsaError(f"target_lengths must be >= 0, got {tl.tolist()}")
    tg = torch.as_tensor(targets).detach().cpu()
    if tg.dtype.is_floating_point:
        raise FsaError(f"targets must be integers, got dtype {tg.dtype}")
    tg = tg.to(torch.int64)
    if unbatched:
        tg = tg.reshape(1, -1)
    Umax = int(tl.max()) if N else 0
    if tg.dim() == 2:
        if tg.shape[0] != N or Umax > tg.shape[1]:
            raise FsaError(f"padded targets must be [N={N}, S>={Umax}], got {tuple(tg.shape)}")
        y = tg[:, :Umax]
    elif tg.dim() == 1:
        if tg.numel() != int(tl.sum()):
            raise FsaError(f"concatenated targets must hold sum(target_lengths)={int(tl.sum())} labels, "
                           f"got {tg.numel()}")
        offs = torch.cumsum(tl, 0) - tl
        idx = offs[:, None] + torch.arange(Umax)[None, :]
        inside = torch.arange(Umax)[None, :] < tl[:, None]
        y = torch.where(inside, tg[idx.clamp(max=max(tg.numel() - 1, 0))] if tg.numel() else
                        torch.zeros_like(idx), torch.zeros_like(idx))
    else:
        raise FsaError(f"targets must be [N, S] or 1-D, got shape {tuple(tg.shape)}")
    if not 0 <= int(blank) < C:
        raise FsaError(f"blank must be in 0..{C - 1}, got {blank}")
    _check_targets(y, tl, int(blank), C)
    graphs = _ctc_graphs_padded(y, tl, int(blank), False, log_probs.dtype, log_probs.device)
    dense = DenseFsaVec(log_probs.transpose(0, 1), il)
    loss = -dense_forward_score(graphs, dense, backend=backend)
    if zero_infinity:
        loss = torch.where(torch.isinf(loss), torch.zeros_like(loss), loss)
    if reduction == "none":
        return loss.reshape(()) if unbatched else loss
    if reduction == "sum":
        return loss.sum()
    return (loss / tl.to(loss.device, loss.dtype).clamp(min=1)).mean()
