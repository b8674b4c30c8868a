"""The GTN multi-digit reader (paper §IV–§VI): segmentation graph → recognition transformer → Viterbi.

One training step, as data::

    string images ──segment──▶ segmentation graphs (FsaVec, arcs carry ``segment``)
        ──RecognitionTransformer──▶ interpretation graph (each segment arc → 10 digit arcs, score −penalty)
        ──compose with linear(target)──▶ constrained graph
    loss = forward_score(interpretation) − forward_score(constrained)        (discriminative forward, ≥ 0)

The recognition transformer crops every segment of the whole batch (the ink of the segment's own pieces
only), normalises the crops the way MNIST digits were normalised (tight ink box scaled to fit 20×20 keeping
the aspect ratio, centred by mass in 28×28, padded to 32×32, grey levels mapped to the paper's −0.1 … 1.175)
in one ``grid_sample`` call, scores them with one
LeNet-5 call, and gathers ``−penalty[segment, digit]`` onto the arcs by index, so the gradient of the loss flows
through the graph operations into LeNet-5 with no custom autograd code.

Digit ``d`` is the symbol ``d + 1`` on the arcs (label 0 is epsilon in ``compose``); `SYMBOLS` maps back.

Besides the class penalties each segment arc gets a small **segmentation score** ``θ · φ(segment) + b`` (φ: the
segment's ink width and its square, in units of the string's ink height, and the number of blank gaps it
spans). LeNet-5's penalties are squared distances, always positive, so without ``b`` every path would prefer
fewer, wider segments; the isolated-digit system sets ``b`` to the median best-class penalty of correctly
segmented training digits (a heuristic, see `StringReader.calibrate`), and global training learns θ and b
together with LeNet-5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import gtn
from gtn.fsa import FsaVec, as_vec

from .data import BACKGROUND, INK
from .model import LeNet5, build
from .model import _LeNetBase as LeNetBase
from .model import _reduce as reduce_loss
from .segment import (INK_THRESHOLD, NUM_SEG_FEATURES, SegmentParams, Segmentation, WholeImage,
                      as_float_image, segment_batch)

__all__ = ["SYMBOLS", "digits_to_labels", "labels_to_string", "standardize", "crop_segments",
           "RecognitionTransformer", "StringReader", "PreparedBatch", "prepare_batch", "length_grammar",
           "lexicon_fsa", "as_lexicon",
           "recognize", "length_constraint", "error_reject", "edit_distance", "string_metrics", "error_budget"]

#: ``SYMBOLS[label - 1]`` is the character of arc label ``label`` (label 0 is epsilon, -1 the final arc).
SYMBOLS = "0123456789"

def digits_to_labels(text: str) -> List[int]:
    """``"307"`` → ``[4, 1, 8]`` (digit d is symbol d + 1)."""
    if not isinstance(text, str) or not text or any(c not in SYMBOLS for c in text):
        raise ValueError(f"a label must be a non-empty string of digits, got {text!r}")
    return [SYMBOLS.index(c) + 1 for c in text]


def labels_to_string(labels) -> str:
    """Arc labels → text (epsilon 0 and the final -1 are skipped)."""
    return "".join(SYMBOLS[int(l) - 1] for l in torch.as_tensor(labels).tolist() if l > 0)


# ---------------------------------------------------------------------------------------------- images
#: The ink height a string is rescaled to when its own is far from what the reader was trained on.
REFERENCE_INK_HEIGHT = 24
_INK_HEIGHT_RANGE = (14, 40)


def standardize(image) -> torch.Tensor:
    """Any grey image → ``float32 [H, W]`` in 0..1 for segmentation: checked (`as_float_image`), cropped to its
    ink rows (plus a 2-pixel margin), and rescaled (keeping the aspect ratio) so that the ink height is
    ``REFERENCE_INK_HEIGHT`` when it lies outside 14..40 pixels. Strings rendered by `lenet.strings` pass
    unchanged apart from the row crop."""
    x = as_float_image(image)
    rows = torch.nonzero((x > INK_THRESHOLD).any(1)).flatten()
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    x = x[max(0, r0 - 2):r1 + 2]
    h = r1 - r0
    if not _INK_HEIGHT_RANGE[0] <= h <= _INK_HEIGHT_RANGE[1]:
        f = REFERENCE_INK_HEIGHT / h
        size = (max(1, round(x.shape[0] * f)), max(1, round(x.shape[1] * f)))
        x = F.interpolate(x[None, None], size=size, mode="bilinear", align_corners=False,
                          antialias=f < 1)[0, 0].clamp(0, 1)
        if not bool((x > INK_THRESHOLD).any()):
            raise ValueError("the image's ink vanished when rescaling it (too faint or too thin)")
    return x.contiguous()


def crop_segments(images: Sequence[torch.Tensor], segs: Sequence[Segmentation], size: int = 32,
                  box: int = 20, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Every segment of every image as LeNet-5 input ``[S, 1, size, size]`` (segments in image order).

    A segment's image is the ink of its pieces only (``segs[i].piece_map``; the ink of other pieces in the
    same columns is masked out), cut to its tight ink box, scaled so that its larger side is ``box`` pixels
    and placed so that its centre of mass is the centre of the ``size``-square, as MNIST's digits were. All
    images go into one strip; per-piece sums (mass, moments, ink extent) are gathered once and combined per
    segment, and all crops come out of one ``grid_sample`` call (bilinear), masked by a nearest-neighbour
    sample of the piece map. ``segs`` may be any objects with ``piece_map`` and ``segments`` (e.g.
    `lenet.segment.WholeImage`).
    """
    H = max(int(im.shape[0]) for im in images)
    widths = [int(im.shape[1]) for im in images]
    offsets = np.cumsum([0] + widths)
    poffs = np.cumsum([0] + [int(s.piece_map.max()) + 1 for s in segs])
    W, P = int(offsets[-1]), int(poffs[-1])
    strip = torch.zeros(H, W)
    pstrip = torch.full((H, W), -1, dtype=torch.int64)
    for im, s, off, po in zip(images, segs, offsets.tolist(), poffs.tolist()):  # one copy per image
        strip[:im.shape[0], off:off + im.shape[1]] = im
        pstrip[:im.shape[0], off:off + im.shape[1]] = s.piece_map + po
    seg = torch.cat([s.segments + po for s, po in zip(segs, poffs.tolist())])    # [S, 2] global piece ranges
    a, b = seg[:, 0], seg[:, 1]
    # per-piece sums over its pixels (float64: long strips outgrow float32's precision)
    yx = torch.nonzero(pstrip >= 0)
    pid = pstrip[yx[:, 0], yx[:, 1]]
    v = strip[yx[:, 0], yx[:, 1]].double()
    ys, xs = yx[:, 0].double() + 0.5, yx[:, 1].double() + 0.5

    def prefix(w):
        return torch.cat([torch.zeros(1, dtype=torch.float64),
                          torch.cumsum(torch.zeros(P, dtype=torch.float64).index_add_(0, pid, w), 0)])

    cm, cx_, cy_ = prefix(v), prefix(v * xs), prefix(v * ys)
    mass = (cm[b] - cm[a]).clamp(min=1e-9)
    cx, cy = (cx_[b] - cx_[a]) / mass, (cy_[b] - cy_[a]) / mass
    # tight ink box of each piece, then of each segment (a running min/max over its <= K pieces)
    inkm = v > INK_THRESHOLD
    ip, iy, ix = pid[inkm], yx[inkm, 0], yx[inkm, 1]
    big = torch.iinfo(torch.int64).max

    def extent(idx, vals):
        lo = torch.full((P,), big, dtype=torch.int64).scatter_reduce(0, idx, vals, "amin")
        hi = torch.full((P,), -1, dtype=torch.int64).scatter_reduce(0, idx, vals + 1, "amax")
        return lo, hi

    px0, px1 = extent(ip, ix)
    py0, py1 = extent(ip, iy)
    x0, x1, y0, y1 = px0[a], px1[a], py0[a], py1[a]
    for k in range(1, int((b - a).max())):
        idx = (a + k).clamp(max=P - 1)
        use = a + k < b
        x0 = torch.where(use, torch.minimum(x0, px0[idx]), x0)
        x1 = torch.where(use, torch.maximum(x1, px1[idx]), x1)
        y0 = torch.where(use, torch.minimum(y0, py0[idx]), y0)
        y1 = torch.where(use, torch.maximum(y1, py1[idx]), y1)
    extent_px = torch.maximum(x1 - x0, y1 - y0).clamp(min=1).double()
    scale = box / extent_px                                              # output pixels per input pixel
    u = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2          # output offsets from the centre
    sx = cx[:, None] + u[None, :] / scale[:, None]                        # [S, size] source column
    sy = cy[:, None] + u[None, :] / scale[:, None]                        # [S, size] source row
    S = seg.shape[0]
    gx = (2 * sx / W - 1)[:, None, :].expand(S, size, size)
    gy = (2 * sy / H - 1)[:, :, None].expand(S, size, size)
    grid = torch.stack([gx, gy], -1).reshape(1, S * size, size, 2).float()
    out = F.grid_sample(strip[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # the piece under each output pixel (nearest source pixel, from the float64 coordinates)
    ix = torch.floor(sx).long()[:, None, :].expand(S, size, size)
    iy = torch.floor(sy).long()[:, :, None].expand(S, size, size)
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    owner = torch.where(inside, pstrip[iy.clamp(0, H - 1), ix.clamp(0, W - 1)], -1)
    mine = (owner >= a[:, None, None]) & (owner < b[:, None, None])
    out = out.reshape(S, size, size) * mine
    return (BACKGROUND + (INK - BACKGROUND) * out.clamp(0, 1)).unsqueeze(1).to(dtype)


# ---------------------------------------------------------------------------------------------- graphs
class RecognitionTransformer(gtn.Transformer):
    """The recognition transformer: segmentation graphs → interpretation graph.

    Holds the recognizer (a `LeNet5`, or any variant returning penalties ``[N, 10]``) and the learnable
    segmentation score. ``forward(seg_graphs, crops, features)`` scores all crops in one network call and
    replaces each segment arc (attribute ``segment`` = row of ``crops``) by 10 arcs labelled 1..10 (digits
    0..9) with score ``-penalty[segment, digit] + segmentation_score[segment]``; the final ``-1`` arcs stay.
    The result is an `FsaVec` with attribute ``segment``, built with arc maps only.
    """

    def __init__(self, model: Optional[nn.Module] = None, seg_bias: float = 0.0):
        super().__init__()
        self.model = model if model is not None else LeNet5()
        self.seg_weight = nn.Parameter(torch.zeros(NUM_SEG_FEATURES))
        self.seg_bias = nn.Parameter(torch.tensor(float(seg_bias)))

    def segment_scores(self, features: torch.Tensor) -> torch.Tensor:
        """``[S]`` the segmentation score of each segment from its features ``[S, NUM_SEG_FEATURES]``."""
        return features.to(self.seg_weight.dtype) @ self.seg_weight + self.seg_bias

    def forward(self, seg_graphs, crops: torch.Tensor, features: torch.Tensor) -> FsaVec:
        dtype = self.seg_weight.dtype
        penalties = self.model(crops.to(dtype))                       # [S, 10], one network call
        seg_scores = self.segment_scores(features)                    # [S]
        return interpretation_graph(seg_graphs, -penalties + seg_scores[:, None])


def interpretation_graph(seg_graphs, arc_scores: torch.Tensor) -> FsaVec:
    """Replace each segment arc of ``seg_graphs`` (attribute ``segment``) by one arc per class ``c`` (label
    ``c + 1``) with score ``arc_scores[segment, c]``; arcs labelled ``-1`` are kept with score 0. Vectorized
    with one arc map; differentiable in ``arc_scores`` ``[S, C]``."""
    g = as_vec(seg_graphs)
    C = arc_scores.shape[1]
    is_seg = g.labels != -1
    counts = torch.where(is_seg, C, 1)
    total = int(counts.sum())
    arc_map = torch.repeat_interleave(torch.arange(g.num_arcs), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    pos = torch.arange(total) - first[arc_map]                   # class index within an arc's copies
    seg_mask = is_seg[arc_map]
    arcs = g.arcs[arc_map].clone()
    arcs[:, 2] = torch.where(seg_mask, pos + 1, torch.full_like(pos, -1))
    seg = g.segment[arc_map]
    flat = arc_scores.reshape(-1)
    picked = flat.index_select(0, (seg.clamp(min=0) * C + pos.clamp(max=C - 1)))
    scores = torch.where(seg_mask, picked, torch.zeros_like(picked))
    csum = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
    arc_splits = csum[g.arc_splits]
    return g._derive(arcs, arc_map, arc_splits, g.state_splits, scores=scores, kind=FsaVec)


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


_DIGITS = set("0123456789")

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


# ---------------------------------------------------------------------------------------------- reader
@dataclass
class PreparedBatch:
    """The network-independent part of a batch: standardized images, their segmentations, the segmentation
    graphs (`FsaVec`, ``segment`` attribute indexing the batch's segments), the crops ``[S, 1, 32, 32]`` and
    the segmentation features ``[S, NUM_SEG_FEATURES]``. Picklable, so a data-loading worker process can make
    it while the main process trains."""

    images: List[torch.Tensor]
    segmentations: List[Segmentation]
    graphs: FsaVec
    crops: Optional[torch.Tensor]
    features: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


def prepare_batch(images, params: SegmentParams = SegmentParams(), crops: bool = True) -> PreparedBatch:
    """Standardize, over-segment and crop a list of images (all that `StringReader` does before the network)."""
    xs = [standardize(im) for im in images]
    segs, graphs = segment_batch(xs, params)
    return PreparedBatch(xs, segs, graphs, crop_segments(xs, segs) if crops else None,
                         torch.cat([s.features for s in segs]))


class StringReader(nn.Module):
    """The whole reader: segmenter + `RecognitionTransformer` + decoder, with the discriminative forward loss.

    Args:
        model: the digit recognizer (default a fresh `LeNet5`).
        params: the over-segmentation settings.
        lengths: ``(min, max)`` string lengths for the decoding grammar, or ``None`` for no grammar.
        seg_bias: initial segmentation bias (see `calibrate`).
    """

    def __init__(self, model: Optional[nn.Module] = None, params: SegmentParams = SegmentParams(),
                 lengths: Optional[Tuple[int, int]] = (3, 6), seg_bias: float = 0.0):
        super().__init__()
        self.transformer = RecognitionTransformer(model, seg_bias)
        self.params = params
        self.lengths = tuple(lengths) if lengths is not None else None

    @property
    def model(self) -> nn.Module:
        return self.transformer.model

    # ---- stages
    def segment(self, images) -> Tuple[List[torch.Tensor], List[Segmentation], FsaVec]:
        """Standardize and over-segment a list of images: ``(images, segmentations, segmentation FsaVec)``
        with the ``segment`` attribute indexing the batch's concatenated segments."""
        p = prepare_batch(images, self.params, crops=False)
        return p.images, p.segmentations, p.graphs

    def prepare(self, images) -> "PreparedBatch":
        """Everything of a batch that does not depend on the network (see `prepare_batch`)."""
        return prepare_batch(images, self.params)

    def interpret(self, images):
        """The interpretation graph (`FsaVec`, one member per image) and the segmentations. ``images``: a list
        of images or a `PreparedBatch`."""
        p = images if isinstance(images, PreparedBatch) else prepare_batch(images, self.params)
        return self.transformer(p.graphs, p.crops, p.features), p.segmentations

    def forward(self, images) -> FsaVec:
        """The interpretation graph of a list of images (or of a `PreparedBatch`)."""
        return self.interpret(images)[0]

    def loss(self, images, labels: Sequence[str], reduction: str = "mean") -> torch.Tensor:
        """Discriminative forward loss ``forward(G_int) − forward(G_int ∘ linear(target))`` per image (≥ 0;
        ``exp(−loss)`` is the posterior of the label string; ``inf`` when no path spells the label);
        ``reduction``: "mean", "sum" or "none". ``images``: a list of images or a `PreparedBatch`."""
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        g = self.interpret(images)[0]
        targets = gtn.linear_fsa([digits_to_labels(t) for t in labels], dtype=g.dtype)
        loss = discriminative_forward(g, targets)
        return reduce_loss(loss, reduction)

    @torch.no_grad()
    def decode(self, images, grammar: Optional[bool] = None, return_paths: bool = False, lexicon=None,
               return_confidence: bool = False):
        """The best path's digits for each image (a list of str). With ``grammar`` (default: when ``lengths``
        is set) the interpretation graph is first composed with `length_grammar`. ``lexicon`` (a collection
        of digit strings, or a `gtn.Fsa` acceptor over the labels 1..10, see `as_lexicon`): read only its
        words, the best-scoring word for each image (the interpretation graph composed with the lexicon); an
        image whose segmentation cannot spell any of them (e.g. too few pieces for the words' lengths) is
        read as without it. ``return_paths`` also returns the segmentations and each best path's segment
        indices (local to its image). ``return_confidence`` also returns (last) each reading's rejection
        confidence, a tensor ``[N]`` in ``[0, 1]``: the paper's ``exp(−E)``, the posterior of the string read
        among all the paths of the graph it was read from (`gtn.rejection_confidence`), summed over the
        segmentations that spell it; threshold it to reject doubtful images."""
        g, segs = self.interpret(images)
        return self._read(g, segs, grammar, return_paths, lexicon, return_confidence)

    def _read(self, g, segs, grammar=None, return_paths=False, lexicon=None, return_confidence=False):
        offs = np.cumsum([0] + [s.num_segments for s in segs])
        texts, paths, confidence = [], [], []
        if lexicon is None:
            gr = self._read_graph(g, grammar)
            texts, paths = self._path_texts(gtn.viterbi_path(gr), offs)
            if return_confidence:
                # in float64: the posteriors of good readings are within 1e-7 of 1, below float32's resolution
                confidence.append(gtn.rejection_confidence(gr.to(torch.float64)))
        else:
            lex = as_lexicon(lexicon, g.dtype)
            # the best word without building g ∘ lexicon (gtn.compose_score: a dynamic program over g's states
            # with one score per lexicon state); in chunks of images, for the composition it falls back to
            for a, b in lexicon_chunks(g.arcs_per_fsa.tolist(), lex.num_arcs):
                ga = g[a:b]
                score, best = gtn.compose_score(ga, lex, log_semiring=False, return_path=True)
                t, p = self._path_texts(best, offs[a:b + 1])
                ok = torch.isfinite(score)
                if not bool(ok.all()):  # the free reading for the images that fit no word
                    miss = torch.nonzero(~ok).flatten().tolist()
                    free = self._read_graph(FsaVec([ga[i] for i in miss]), grammar)
                    ft, fp = self._path_texts(gtn.viterbi_path(free), [offs[a + i] for i in miss] + [0])
                    for j, i in enumerate(miss):
                        t[i], p[i] = ft[j], fp[j]
                texts += t
                paths += p
                if return_confidence:
                    confidence.append(self._lexicon_confidence(ga, lex, t, ok, grammar))
        out = (texts, segs, paths) if return_paths else (texts,)
        if return_confidence:
            out += (torch.cat(confidence) if confidence else torch.zeros(0, dtype=torch.float64),)
        return out if len(out) > 1 else texts

    def _lexicon_confidence(self, g, lex, texts, ok, grammar=None):
        """`gtn.rejection_confidence` of ``g ∘ lex`` (images that fit a word; the free reading's graph for the
        others) without building ``g ∘ lex``: the paths of ``g ∘ lex`` that spell the text ``s`` are the pairs of a
        path of ``g`` and a path of ``lex`` spelling ``s``, so their log-sum is ``forward(g ∘ s) + forward(s ∘ lex)``;
        the confidence is that minus ``forward(g ∘ lex)``. In float64."""
        g64, lex64 = g.to(torch.float64), lex.to(torch.float64)
        conf = torch.zeros(len(g), dtype=torch.float64)
        idx = torch.nonzero(ok).flatten().tolist()
        if idx:
            sub = FsaVec([g64[i] for i in idx])
            words = gtn.linear_fsa([digits_to_labels(texts[i]) for i in idx], dtype=torch.float64)
            spelled = gtn.forward_score(gtn.compose(sub, words)) + gtn.compose_score(words, lex64)
            conf[idx] = torch.exp(spelled - gtn.compose_score(sub, lex64))
        miss = torch.nonzero(~ok).flatten().tolist()
        if miss:
            free = self._read_graph(FsaVec([g64[i] for i in miss]), grammar)
            conf[miss] = gtn.rejection_confidence(free)
        return conf

    def _read_graph(self, g, grammar=None):
        """``g`` composed with the length grammar when it applies (images it cannot read keep ``g``)."""
        use = self.lengths is not None if grammar is None else grammar
        if use and self.lengths is not None:
            gg = gtn.compose(g, length_grammar(*self.lengths, dtype=g.dtype))
            # strings too long or short for the grammar have no path there: fall back to no grammar
            ok = torch.isfinite(gtn.viterbi_score(gg))
            if bool(ok.all()):
                g = gg
            elif bool(ok.any()):
                g = _merge(gg, g, ok)
        return g

    @staticmethod
    def _path_texts(path, offs):
        """The texts and segment paths of the linear FSAs ``path`` (one best path per image; ``offs[i]``: the
        first global segment index of member ``i``)."""
        splits = path.arc_splits.tolist()
        texts, segpaths = [], []
        for i in range(len(splits) - 1):  # one short path per image
            lab = path.labels[splits[i]:splits[i + 1]]
            texts.append(labels_to_string(lab))
            sg = path.segment[splits[i]:splits[i + 1]]
            segpaths.append((sg[sg >= 0] - int(offs[i])).tolist())
        return texts, segpaths

    @torch.no_grad()
    def tune_bias(self, images, labels: Sequence[str], factors=(0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
                  batch_size: int = 50) -> float:
        """Choose the segmentation bias among ``factors`` × the current bias by string accuracy on
        (training) ``images``/``labels``, without touching the network: the interpretation graphs are
        computed once and only the bias added to their digit arcs changes. Sets and returns the best bias."""
        b0 = float(self.transformer.seg_bias.detach())
        graphs = []
        for k in range(0, len(images), batch_size):
            graphs.append(self.interpret(images[k:k + batch_size]))
        best, best_acc = b0, -1.0
        for f in factors:
            b = b0 * f
            right = 0
            for j, (g, segs) in enumerate(graphs):
                shifted = g._derive(g.arcs, torch.arange(g.num_arcs), g.arc_splits, g.state_splits,
                                    scores=g.scores + (b - b0) * (g.labels != -1).to(g.dtype), kind=FsaVec)
                texts = self._read(shifted, segs)
                right += sum(t == l for t, l in zip(texts, labels[j * batch_size:(j + 1) * batch_size]))
            acc = right / len(images)
            if acc > best_acc:
                best, best_acc = b, acc
        self.transformer.seg_bias.fill_(best)
        return best

    def plot_decoding(self, image, ax=None, title: str = "", truth: Optional[str] = None, out=None):
        """Draw ``image`` with its candidate cuts and the decoded path (a box and the digit per segment)."""
        from .segment import plot_segmentation
        texts, segs, paths = self.decode([image], return_paths=True)
        text = texts[0]
        t = f"{title} {text!r}" + (f" (truth {truth!r})" if truth is not None else "")
        return plot_segmentation(standardize(image), segs[0], paths[0], list(text), title=t.strip(), ax=ax,
                                 out=out)

    # ---- calibration of the isolated-digit system
    @torch.no_grad()
    def calibrate(self, digits: torch.Tensor, max_digits: int = 2000) -> float:
        """Set the segmentation bias to the median smallest penalty of isolated digits (``digits`` uint8
        ``[N, 28, 28]``), cropped and normalised like segments, so a clean digit segment scores about 0 and
        worse segments below. Returns the bias. (A heuristic for the isolated-digit system; global training
        then learns it.)"""
        d = digits[:max_digits]
        xs = [standardize(im) for im in d]
        crops = crop_segments(xs, [WholeImage.of(x) for x in xs])
        pen = self.model(crops.to(self.transformer.seg_weight.dtype))
        b = float(pen.min(1).values.median())
        self.transformer.seg_bias.fill_(b)
        self.transformer.seg_weight.zero_()
        return b

    def config(self):
        p = self.params
        return {"params": dict(min_piece=p.min_piece, max_piece=p.max_piece, max_width=p.max_width,
                               max_pieces=p.max_pieces, pieces=p.pieces, min_area=p.min_area, drift=p.drift),
                "lengths": list(self.lengths) if self.lengths is not None else None}


def _merge(a: FsaVec, b: FsaVec, take_a: torch.Tensor) -> FsaVec:
    """Members of ``a`` where ``take_a`` else of ``b`` (same attributes)."""
    return FsaVec([a[i] if bool(take_a[i]) else b[i] for i in range(len(take_a))])


def discriminative_forward(interpretation, targets) -> torch.Tensor:
    """``forward_score(G) − forward_score(compose(G, targets))`` per member (the paper's discriminative forward
    criterion in score form). Uses ``gtn.discriminative_forward_loss`` when the library has it."""
    f = getattr(gtn, "discriminative_forward_loss", None)
    if f is not None:
        return f(interpretation, targets, reduction="none")
    return gtn.forward_score(interpretation) - gtn.forward_score(gtn.compose(interpretation, targets))


# ---------------------------------------------------------------------------------------------- metrics
def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def string_metrics(predicted: Sequence[str], truth: Sequence[str]) -> dict:
    """``string_accuracy`` (exact matches) and ``digit_error`` (total edit distance / total true digits)."""
    n = len(truth)
    correct = sum(p == t for p, t in zip(predicted, truth))
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth))
    return {"string_accuracy": correct / max(n, 1), "digit_error": errors / max(sum(map(len, truth)), 1),
            "strings": n}


def error_budget(model, strings, predicted: Sequence[str], digits) -> dict:
    """How much of a reader's string error its recognizer explains on its own.

    ``model``: the reader's 10-class LeNet-5 (or a `StringReader`, whose network is used; anything else, e.g.
    an SDNN reader, whose network also has a blank output, raises ``TypeError``); ``strings``: the
    `lenet.strings.DigitString` s that were read (from `make_strings`, so they carry ``sources``, and not
    distorted); ``predicted``: the texts read for them; ``digits``: ``(uint8 images [N, 28, 28], labels [N])``,
    the set the strings' digits were drawn from. The network reads every digit of that set on its own (a 32×32
    isolated digit, as in isolated training); a string that contains one it misreads would be misread by a
    reader with a perfect segmenter that reads each digit as it does alone. Returns ``isolated_error`` (over the
    digit set), ``ceiling`` (the share of strings with no such digit: that perfect segmenter's string
    accuracy, context aside), and, of the ``wrong`` strings, how many contain such a digit
    (``wrong_with_misread_digit``) and how many do not (``wrong_without``: errors of segmentation, or of reading
    a digit in its string that the network reads right alone)."""
    from .data import prepare
    net = model.model if isinstance(model, StringReader) else model
    if not isinstance(net, LeNetBase) or net.num_classes != 10:
        raise TypeError(f"error_budget needs a StringReader or a 10-class LeNet-5 that reads isolated digits, got "
                        f"{type(model).__name__}" + (f" with {net.num_classes} outputs" if isinstance(net, LeNetBase)
                                                     else ""))
    images, labels = digits
    if len(strings) != len(predicted):
        raise ValueError(f"{len(strings)} strings but {len(predicted)} predicted texts")
    if any(s.sources is None for s in strings):
        raise ValueError("error_budget needs strings from lenet.strings.make_strings (they carry `sources`)")
    labels = torch.as_tensor(labels)
    was_training = net.training
    net.eval()
    dtype = next(net.parameters()).dtype
    with torch.no_grad():
        x = prepare(images, dtype)
        preds = torch.cat([net(x[i:i + 1000]).argmin(-1) for i in range(0, len(x), 1000)])
    net.train(was_training)
    misread = preds != labels
    rows = torch.cat([s.sources for s in strings]) if strings else torch.zeros(0, dtype=torch.long)
    owner = torch.repeat_interleave(torch.tensor([len(s.sources) for s in strings], dtype=torch.long))
    has_bad = torch.zeros(len(strings), dtype=torch.long).index_add_(0, owner, misread[rows].long()) > 0
    wrong = torch.tensor([p != s.label for p, s in zip(predicted, strings)], dtype=torch.bool)
    return {"isolated_error": misread.double().mean().item(), "ceiling": 1 - has_bad.double().mean().item(),
            "wrong": int(wrong.sum()), "wrong_with_misread_digit": int((wrong & has_bad).sum()),
            "wrong_without": int((wrong & ~has_bad).sum()), "strings": len(strings)}


# ---------------------------------------------------------------------------------------------- public
def recognize(images, model, batch_size: int = 64, ink: Optional[str] = None, lexicon=None, length=None,
              confidence: bool = False):
    """Read digit strings. ``images``: one grey image (``H×W`` numpy array or tensor, uint8 0..255 or float
    0..1, white ink on black) or a list of them, any width and height; ``model``: the path of a checkpoint
    written by ``examples/multi_digit.py --out PATH`` or a loaded `StringReader`. Returns a ``str`` for one
    image and a list of ``str`` for a list. Raises ``ValueError``/``TypeError`` for empty, all-black, wrongly
    shaped or non-image input.

    ``ink``: ``None`` (default) expects light ink on a dark background, like MNIST, and refuses an image that
    looks like a scan (more than half of it light: its median grey level above one half), which would
    otherwise be read as nonsense; ``"dark"`` reads dark ink on a light background (each image inverted);
    ``"light"`` reads every image as it is, without that check.

    ``lexicon``: read only these words (a collection of digit strings such as the valid ZIP codes, or a
    `gtn.Fsa` acceptor over the labels 1..10, whose scores then weight the words): each image gets its
    best-scoring word; an image that no word fits (e.g. its segmentation has too few pieces) is read as
    without the lexicon, so check membership if that matters.

    ``length``: the number of digits, when it is known (a ZIP code has 5): an ``int`` for every image, a
    ``(min, max)`` tuple for a range, or a ``list`` with one entry (``int``, tuple or ``None``) per image. The
    reader then returns the best reading of that length (the decoding graph composed with `length_grammar`,
    with the lexicon's words of that length when both are given), in place of its own default range; an
    image that cannot be read with that many digits (its segmentation has too few pieces, or too few frames)
    is read as without it.

    ``confidence=True``: return ``(text, confidence)`` for each image instead of the text, where confidence
    (a float in ``[0, 1]``) is the paper's rejection confidence ``exp(−E)``: the posterior of the string read
    among all the readings of its graph (see ``decode(..., return_confidence=True)`` of the readers). Reject
    the images below a threshold; `error_reject` measures what a threshold buys on labelled strings."""
    if ink not in (None, "light", "dark"):
        raise ValueError(f"ink must be None, 'light' or 'dark', got {ink!r}")
    if lexicon is not None:
        lexicon = as_lexicon(lexicon)  # once for all batches; checked before any image is read
    from .sdnn import SDNNReader
    readers = (StringReader, SDNNReader)
    reader = model
    if not isinstance(reader, readers):
        if isinstance(reader, (str, bytes)) or hasattr(reader, "__fspath__"):
            from . import load
            reader = load(reader)
        if not isinstance(reader, readers):
            raise TypeError(f"model must be a StringReader or the path of a checkpoint written by "
                            f"examples/multi_digit.py, got {type(model).__name__}")
    single = isinstance(images, (np.ndarray, torch.Tensor))
    if single:
        batch = [images]
    elif isinstance(images, (list, tuple)):
        batch = list(images)
        if not batch:
            raise ValueError("recognize got an empty list of images")
    else:
        raise TypeError(f"images must be an image (numpy array / tensor [H, W]) or a list of them, got "
                        f"{type(images).__name__}")
    converted = []
    for i, im in enumerate(batch):  # validate every image first, naming the bad one
        try:
            x = as_float_image(im, invert=ink == "dark")
            if ink is None and float(x.median()) > 0.5:
                raise ValueError(f"the image looks like dark ink on a light background (median grey level "
                                 f"{float(x.median()):.2f}); the reader reads light ink on black, like MNIST: "
                                 f"pass ink='dark' to invert it (or ink='light' to read it as it is)")
        except (ValueError, TypeError) as e:
            raise type(e)(f"image {i}: {e}" if not single else str(e)) from None
        converted.append(x)
    if ink == "dark":
        batch = converted
    ranges = _length_ranges(length, len(batch), single)
    constraints = {r: lexicon if r is None else length_constraint(*r, lexicon=lexicon) for r in set(ranges)}
    was = reader.training
    reader.eval()
    try:
        out = [None] * len(batch)
        for r, constraint in constraints.items():  # the images of each length range together, in batches
            idx = [i for i, q in enumerate(ranges) if q == r]
            for k in range(0, len(idx), batch_size):
                part = idx[k:k + batch_size]
                res = reader.decode([batch[i] for i in part], lexicon=constraint, return_confidence=confidence)
                if confidence:
                    res = list(zip(res[0], res[1].tolist()))
                for i, item in zip(part, res):
                    out[i] = item
    finally:
        reader.train(was)
    return out[0] if single else out


def error_reject(confidence, correct, errors: Sequence[float] = (0.005, 0.01, 0.02)) -> dict:
    """What rejecting the least confident readings buys, the paper's way of reporting a reader ("82 % read
    correctly at 1 % error, 17 % rejected"). ``confidence``: one value per reading (higher = surer, e.g.
    ``decode(..., return_confidence=True)``); ``correct``: whether each reading is right. Accepting the ``k``
    most confident readings (ties: the order given), returns ``curve`` (``rejected`` and ``error`` among the
    accepted, for every ``k``), and for each target in ``errors`` the largest acceptance whose error is at
    most the target: ``points`` = ``[{"error", "accepted", "read_right", "rejected"}]`` (fractions of all
    readings). With no rejection the error is ``1 − accuracy``."""
    conf = torch.as_tensor(confidence, dtype=torch.float64).flatten()
    ok = torch.as_tensor(correct, dtype=torch.bool).flatten()
    if conf.numel() != ok.numel() or conf.numel() == 0:
        raise ValueError(f"need as many confidences as readings (got {conf.numel()} and {ok.numel()}), at least one")
    if not bool(torch.isfinite(conf).all()):
        raise ValueError("confidences must be finite")
    n = conf.numel()
    order = torch.sort(-conf, stable=True).indices   # most confident first
    wrong = torch.cumsum((~ok[order]).to(torch.float64), 0)
    k = torch.arange(1, n + 1, dtype=torch.float64)
    err = wrong / k
    points = []
    for e in errors:
        fine = torch.nonzero(err <= e + 1e-12).flatten()
        kk = int(fine.max()) + 1 if fine.numel() else 0
        right = kk - int(wrong[kk - 1]) if kk else 0
        points.append({"error": float(e), "accepted": kk / n, "read_right": right / n, "rejected": 1 - kk / n})
    return {"curve": {"rejected": (1 - k / n).tolist(), "error": err.tolist()}, "points": points}


def _length_range(value, where: str) -> Optional[Tuple[int, int]]:
    """One entry of `recognize`'s ``length`` as ``(min, max)`` (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
            and 1 <= value[0] <= value[1]):
        return int(value[0]), int(value[1])
    raise ValueError(f"{where} must be a number of digits >= 1 or a (min, max) tuple with 1 <= min <= max, "
                     f"got {value!r}")


def _length_ranges(length, count: int, single: bool) -> List[Optional[Tuple[int, int]]]:
    """`recognize`'s ``length`` as one ``(min, max)`` or ``None`` per image."""
    if isinstance(length, list):
        if single:
            raise ValueError("length: a list gives one entry per image; for one image pass an int or a "
                             "(min, max) tuple")
        if len(length) != count:
            raise ValueError(f"length has {len(length)} entries for {count} images")
        return [_length_range(v, f"length[{i}]") for i, v in enumerate(length)]
    return [_length_range(length, "length")] * count


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


# ---------------------------------------------------------------------------------------------- checkpoints
#: Checkpoint kind of a `StringReader` (``lenet.load`` dispatches on it).
CHECKPOINT_KIND = "string_reader"


def save_reader(reader: "StringReader", path, **extra):
    """Write ``reader`` as a ``"string_reader"`` checkpoint that ``lenet.load`` / `recognize` read back."""
    from .checkpoint import save
    config = {"reader": reader.config(), "model": reader.model.config()}
    return save(path, CHECKPOINT_KIND, config, reader.state_dict(), **extra)


def _load_reader(ckpt) -> "StringReader":
    cfg = ckpt["config"]
    model = build(**cfg["model"])
    rc = cfg["reader"]
    params = dict(pieces="columns", drift=0.0)  # older checkpoints: column cuts, then straight cuts
    params.update(rc["params"])
    reader = StringReader(model, SegmentParams(**params),
                          lengths=tuple(rc["lengths"]) if rc["lengths"] is not None else None)
    from .checkpoint import restore
    state = dict(ckpt["state_dict"])
    w = state.get("transformer.seg_weight")
    if w is not None and w.numel() < NUM_SEG_FEATURES:  # older checkpoints had fewer features: weight 0
        state["transformer.seg_weight"] = torch.cat([w, w.new_zeros(NUM_SEG_FEATURES - w.numel())])
    return restore(reader, state)


def _register():
    from .checkpoint import register
    register(CHECKPOINT_KIND, "lenet.recognizer:_load_reader")
    register("sdnn_reader", "lenet.sdnn:_load_sdnn")


_register()
