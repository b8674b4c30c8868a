"""Grammars and lexicons of the readers, as acceptors over the digit labels ``1..10`` (digit ``d`` = label
``d + 1``): `length_grammar` (every string of a range of lengths), `lexicon_fsa` (a prefix tree of a word
list), `as_lexicon` (either, checked), `length_constraint` (a lexicon's words of some lengths) and
`lexicon_chunks` (batches of images cut so that composing them with a big lexicon stays bounded)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

import gtn

from .labels import _DIGITS

__all__ = ["length_grammar", "lexicon_fsa", "as_lexicon", "length_constraint", "lexicon_chunks", "LEXICON_WORK"]


def length_grammar(min_len: int, max_len: int, num_symbols: int = 10, dtype=torch.float32) -> gtn.Fsa:
    """An acceptor of every string of ``min_len..max_len`` symbols ``1..num_symbols`` (all scores 0)."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    final = max_len + 1
    src = torch.arange(max_len).repeat_interleave(num_symbols)
    lab = torch.arange(1, num_symbols + 1).repeat(max_len)
    arcs = torch.stack([src, src + 1, lab], 1)
    ends = torch.arange(min_len, max_len + 1)
    fin = torch.stack([ends, torch.full_like(ends, final), torch.full_like(ends, -1)], 1)
    allarcs = torch.cat([arcs, fin])
    order = torch.sort(allarcs[:, 0], stable=True).indices
    return gtn.Fsa(allarcs[order], torch.zeros(len(allarcs), dtype=dtype), num_states=final + 1)


def lexicon_fsa(words, dtype=torch.float32) -> gtn.Fsa:
    """A prefix-tree acceptor of exactly the digit strings ``words`` (e.g. the valid ZIP codes): labels
    ``1..10`` for digits 0..9 (label 0 is epsilon in `gtn.compose`), all scores 0, deterministic, states
    numbered by prefix length so the graph is topologically sorted. Duplicates count once. Raises
    ``ValueError`` for an empty lexicon or an entry that is not a non-empty string of the digits 0-9."""
    if isinstance(words, (str, bytes)):
        raise TypeError("words must be a collection of digit strings, not a single string (wrap it in a list)")
    words = set(words)
    if not words:
        raise ValueError("the lexicon is empty")
    for w in words:
        if not isinstance(w, str) or not w or not set(w) <= _DIGITS:
            raise ValueError(f"lexicon entries must be non-empty strings of the digits 0-9, got {w!r}")
    # graph construction from the user's strings, once per lexicon (not a hot path)
    prefixes = sorted({w[:k] for w in words for k in range(1, len(w) + 1)}, key=lambda q: (len(q), q))
    ids = {"": 0, **{q: i + 1 for i, q in enumerate(prefixes)}}
    final = len(prefixes) + 1
    digit_arcs = [(ids[q[:-1]], ids[q], int(q[-1]) + 1) for q in prefixes]
    end_arcs = [(ids[w], final, -1) for w in sorted(words)]
    arcs = torch.tensor(digit_arcs + end_arcs, dtype=torch.int64)
    order = torch.sort(arcs[:, 0], stable=True).indices
    return gtn.Fsa(arcs[order], torch.zeros(len(arcs), dtype=dtype), num_states=final + 1)


#: Work bound of one lexicon composition: (arcs of the images' interpretation graphs) × (arcs of the lexicon).
#: The composition holds every reachable (state, lexicon prefix) pair, about 1/60 of that product for a
#: 10,000-word lexicon (about 10 million arcs at the bound), so a batch is read in chunks of images under it
#: (`gtn.compose_score` builds it only when its fused kernel does not apply, e.g. a huge lexicon).
LEXICON_WORK = 5e8


def lexicon_chunks(sizes: Sequence[int], lexicon_arcs: int, limit: float = LEXICON_WORK) -> List[Tuple[int, int]]:
    """Consecutive ranges ``[a, b)`` of images whose summed ``sizes`` × ``lexicon_arcs`` stays under ``limit``
    (at least one image each)."""
    out, a, acc = [], 0, 0.0
    for i, n in enumerate(sizes):
        w = float(n) * lexicon_arcs
        if i > a and acc + w > limit:
            out.append((a, i))
            a, acc = i, 0.0
        acc += w
    if sizes:
        out.append((a, len(sizes)))
    return out


def as_lexicon(lexicon, dtype=torch.float32) -> gtn.Fsa:
    """``lexicon`` as an acceptor over the digit labels ``1..10``: a `gtn.Fsa` is checked (an acceptor without
    epsilon arcs, labels ``1..10`` and ``-1``; its scores are kept, so it may weight the words) and returned
    in ``dtype``; anything else is a collection of digit strings for `lexicon_fsa`."""
    if isinstance(lexicon, gtn.FsaVec):
        raise TypeError("a lexicon is one gtn.Fsa (or a collection of digit strings), not an FsaVec")
    if isinstance(lexicon, gtn.Fsa):
        lab = lexicon.labels
        if lexicon.aux_labels is not None:
            raise ValueError("a lexicon graph must be an acceptor (it has aux_labels)")
        if lexicon.num_states < 2 or not bool(((lab >= 1) & (lab <= 10) | (lab == -1)).all()):
            raise ValueError("a lexicon graph needs labels 1..10 (digits 0..9) and -1 (final arcs) only, and a "
                             "final state; remove epsilon arcs with gtn.remove_epsilon first")
        return lexicon.to(dtype) if lexicon.dtype != dtype else lexicon
    return lexicon_fsa(lexicon, dtype)


def length_constraint(min_len: int, max_len: int, lexicon=None, dtype=torch.float32) -> gtn.Fsa:
    """The acceptor of the digit strings of ``min_len..max_len`` digits (`length_grammar`), or, with a
    ``lexicon`` (see `as_lexicon`), of its words of that length (their intersection, scores kept). Raises
    ``ValueError`` when the lexicon has no word of that length."""
    grammar = length_grammar(min_len, max_len, dtype=dtype)
    if lexicon is None:
        return grammar
    words = gtn.connect(gtn.intersect(as_lexicon(lexicon, dtype), grammar))
    if words.num_arcs == 0:
        span = f"{min_len}" if min_len == max_len else f"{min_len} to {max_len}"
        raise ValueError(f"the lexicon has no word of {span} digits")
    return words
