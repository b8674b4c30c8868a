"""Text formats: k2's (scores, one final state) and OpenFst's (costs, several final states with weights)."""
from __future__ import annotations

from typing import List

import numpy as np
import torch

from .fsa import Fsa, FsaError, FsaVec

__all__ = ["from_str", "to_str"]


def _fmt_scores(scores: torch.Tensor, negate: bool = False) -> List[str]:
    """Shortest text that reads back to exactly the same value in the scores' dtype."""
    s = scores.detach().cpu()
    if negate:
        s = -s
    if s.dtype == torch.float64:
        return [repr(float(x)) for x in s.tolist()]
    arr = s.to(torch.float32).numpy()
    return [str(x) for x in arr]  # numpy float32 prints its shortest round-trip form


def _parse_float(tok: str, lineno: int) -> float:
    try:
        return float(tok)
    except ValueError:
        raise FsaError(f"line {lineno}: {tok!r} is not a number") from None


def _parse_int(tok: str, lineno: int) -> int:
    try:
        return int(tok)
    except ValueError:
        raise FsaError(f"line {lineno}: {tok!r} is not an integer") from None


def from_str(text: str, acceptor: bool = True, openfst: bool = False, dtype: torch.dtype = torch.float32) -> Fsa:
    """Parse one FSA from text.

    k2 format (default): one arc a line, ``src dst label score`` (acceptor) or ``src dst label aux_label score``
    (transducer, ``acceptor=False``); the last line holds the final state alone. Arcs keep the order given
    when it is sorted by source state; otherwise they are stable-sorted by source state.

    OpenFst format (``openfst=True``): ``src dst ilabel [olabel] [cost]`` arcs and ``state [cost]`` final
    lines, costs = ``-score``; the start state is the source of the first arc. States are renumbered so the
    start is 0, and a new last state becomes k2's single final state, entered from each OpenFst final state by
    a ``-1`` arc whose score is minus the final cost.
    """
    lines = [(i + 1, ln.split()) for i, ln in enumerate(text.splitlines())]
    lines = [(i, t) for i, t in lines if t and not t[0].startswith("#")]
    if openfst:
        return _from_openfst(lines, acceptor, dtype)
    if not lines:
        return Fsa(torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=dtype), num_states=0)
    ncols = 4 if acceptor else 5
    arcs, scores, aux = [], [], []
    final = None
    for k, (lineno, toks) in enumerate(lines):
        if len(toks) == 1:
            if k != len(lines) - 1:
                raise FsaError(f"line {lineno}: a line with one field (the final state) must be the last line")
            final = _parse_int(toks[0], lineno)
            continue
        if len(toks) != ncols:
            want = "src dst label score" if acceptor else "src dst label aux_label score"
            raise FsaError(f"line {lineno}: expected {ncols} fields ({want}), got {len(toks)}: {' '.join(toks)!r}"
                           + ("; pass acceptor=False for a transducer" if acceptor and len(toks) == 5 else ""))
        arcs.append([_parse_int(t, lineno) for t in toks[:3]])
        if not acceptor:
            aux.append(_parse_int(toks[3], lineno))
        scores.append(_parse_float(toks[-1], lineno))
    if final is None:
        raise FsaError("the last line must hold the final state alone")
    num_states = final + 1
    arcs_t = torch.tensor(arcs, dtype=torch.int64).view(-1, 3)
    if arcs_t.numel() and int(arcs_t[:, :2].max()) > final:
        i = int(torch.nonzero((arcs_t[:, :2] > final).any(1))[0, 0])
        raise FsaError(f"line {lines[i][0]}: state {int(arcs_t[i, :2].max())} is beyond the final state {final}; "
                       "the final state must be the highest-numbered state")
    return Fsa(arcs_t, torch.tensor(scores, dtype=dtype), None if acceptor else torch.tensor(aux, dtype=torch.int64),
               num_states=num_states)


def _from_openfst(lines, acceptor: bool, dtype) -> Fsa:
    arc_rows, finals = [], {}
    start = None
    for lineno, toks in lines:
        n = len(toks)
        if n <= 2:
            st = _parse_int(toks[0], lineno)
            cost = _parse_float(toks[1], lineno) if n == 2 else 0.0
            finals[st] = cost
            if start is None and not arc_rows:
                start = st
            continue
        if acceptor:
            if n not in (3, 4):
                raise FsaError(f"line {lineno}: an OpenFst acceptor arc is 'src dst label [cost]', got {n} fields"
                               + ("; pass acceptor=False for a transducer" if n == 5 else ""))
            src, dst, il = (_parse_int(t, lineno) for t in toks[:3])
            ol, cost = il, (_parse_float(toks[3], lineno) if n == 4 else 0.0)
        else:
            if n not in (4, 5):
                raise FsaError(f"line {lineno}: an OpenFst transducer arc is 'src dst ilabel olabel [cost]', got {n} fields")
            src, dst, il, ol = (_parse_int(t, lineno) for t in toks[:4])
            cost = _parse_float(toks[4], lineno) if n == 5 else 0.0
        if min(src, dst) < 0 or min(il, ol) < 0:
            raise FsaError(f"line {lineno}: negative state or label in OpenFst text")
        if start is None:
            start = src
        arc_rows.append((src, dst, il, ol, -cost))
    if start is None:
        return Fsa(torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=dtype), num_states=0)
    ids = [r[0] for r in arc_rows] + [r[1] for r in arc_rows] + list(finals) + [start]
    n_old = max(ids) + 1
    final = n_old

    def ren(s):  # swap the start state with state 0
        return 0 if s == start else (start if s == 0 else s)

    rows = [(ren(s), ren(d), il, ol, sc) for s, d, il, ol, sc in arc_rows]
    rows += [(ren(s), final, -1, -1, -c) for s, c in finals.items() if c != float("inf")]
    arcs = torch.tensor([r[:3] for r in rows], dtype=torch.int64).view(-1, 3)
    aux = None if acceptor else torch.tensor([r[3] for r in rows], dtype=torch.int64)
    scores = torch.tensor([r[4] for r in rows], dtype=dtype)
    return Fsa(arcs, scores, aux, num_states=final + 1)


def to_str(fsa: Fsa, openfst: bool = False) -> str:
    """Text of one FSA: k2's format (``from_str(to_str(x)) == x``), or OpenFst's with ``openfst=True``.

    In OpenFst text the ``-1`` arcs become final weights (cost = ``-score``) of their source states when each
    state has at most one; otherwise they are written as epsilon arcs into k2's final state, which is final
    with cost 0. Either way the weighted language is the same."""
    if isinstance(fsa, FsaVec):
        raise FsaError("to_str takes one Fsa; use vec[i] for a member of an FsaVec")
    arcs = fsa.arcs.cpu().tolist()
    aux = None if fsa.aux_labels is None else fsa.aux_labels.cpu().tolist()
    n = fsa.num_states
    if not openfst:
        sc = _fmt_scores(fsa.scores)
        out = []
        for i, (s, d, l) in enumerate(arcs):
            out.append(f"{s} {d} {l} {sc[i]}" if aux is None else f"{s} {d} {l} {aux[i]} {sc[i]}")
        if n:
            out.append(str(n - 1))
        return "\n".join(out) + ("\n" if out else "")
    if n == 0:
        return ""
    costs = _fmt_scores(fsa.scores, negate=True)
    final = n - 1
    into_final = [s for s, d, l in arcs if l == -1]
    use_weights = len(into_final) == len(set(into_final))
    out, finals = [], []
    for i, (s, d, l) in enumerate(arcs):
        if l == -1 and use_weights:
            finals.append(f"{s}\t{costs[i]}")
            continue
        il = 0 if l == -1 else l
        ol = il if aux is None else (0 if aux[i] == -1 else aux[i])
        out.append(f"{s}\t{d}\t{il}\t{costs[i]}" if aux is None else f"{s}\t{d}\t{il}\t{ol}\t{costs[i]}")
    if not use_weights:
        finals.append(f"{final}\t0")
    lines = out + finals
    if not lines or lines[0].split("\t")[0] != "0":  # OpenFst's start state is the first line's state
        lines.insert(0, "0\tInfinity")
    return "\n".join(lines) + "\n"
