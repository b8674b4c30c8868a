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

import dataclasses

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import gtn
from gtn.fsa import FsaVec, as_vec

from .crops import REFERENCE_INK_HEIGHT, crop_segments, standardize
from .grammars import LEXICON_WORK, as_lexicon, length_constraint, length_grammar, lexicon_chunks, lexicon_fsa
from .labels import SYMBOLS, digits_to_labels, labels_to_string
from .metrics import edit_distance, error_budget, error_reject, string_metrics
from .model import LeNet5, build
from .model import _reduce as reduce_loss
from .reading import _merge, discriminative_forward, recognize
from .segment import NUM_SEG_FEATURES, SegmentParams, Segmentation, WholeImage, segment_batch

# The reader's own names, then the names this module re-exports from where they now live (labels, crops,
# grammars, metrics, reading), so that code written against ``lenet.recognizer`` keeps working.
__all__ = ["RecognitionTransformer", "interpretation_graph", "StringReader", "PreparedBatch", "prepare_batch",
           "save_reader", "CHECKPOINT_KIND", "REFERENCE_INK_HEIGHT", "LEXICON_WORK",
           "SYMBOLS", "digits_to_labels", "labels_to_string", "standardize", "crop_segments", "length_grammar",
           "lexicon_fsa", "as_lexicon", "length_constraint", "lexicon_chunks", "recognize", "discriminative_forward",
           "error_reject", "edit_distance", "string_metrics", "error_budget"]


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


def prepare_batch(images, params: SegmentParams = SegmentParams(), crops: bool = True,
                  dtype: torch.dtype = torch.float32) -> PreparedBatch:
    """Standardize, over-segment and crop a list of images (all that `StringReader` does before the network);
    ``dtype``: of the crops (see `crop_segments`)."""
    xs = [standardize(im) for im in images]
    segs, graphs = segment_batch(xs, params)
    return PreparedBatch(xs, segs, graphs, crop_segments(xs, segs, dtype=dtype) if crops else None,
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
        return prepare_batch(images, self.params, dtype=self.transformer.seg_weight.dtype)

    def interpret(self, images):
        """The interpretation graph (`FsaVec`, one member per image) and the segmentations. ``images``: a list
        of images or a `PreparedBatch`."""
        p = images if isinstance(images, PreparedBatch) else prepare_batch(
            images, self.params, dtype=self.transformer.seg_weight.dtype)
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

    def candidate_losses(self, images, candidates: Sequence[Sequence[str]]) -> torch.Tensor:
        """The loss (`loss`) of every candidate text of every image, each image's interpretation graph built
        once: ``candidates[i]`` are image ``i``'s texts; returns one flat tensor in that order."""
        if len(images) != len(candidates):
            raise ValueError(f"{len(images)} images but {len(candidates)} candidate lists")
        idx = [i for i, c in enumerate(candidates) for _ in c]
        texts = [t for c in candidates for t in c]
        if not texts:
            return torch.zeros(0, dtype=self.transformer.seg_weight.dtype)
        g = self.interpret(images)[0]
        g = FsaVec([g[i] for i in idx])
        targets = gtn.linear_fsa([digits_to_labels(t) for t in texts], dtype=g.dtype)
        return discriminative_forward(g, targets)

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
                  batch_size: int = 50, offsets: Optional[Sequence[float]] = None, details: bool = False):
        """Choose the segmentation bias by string accuracy on ``images``/``labels``, without touching the
        network: the interpretation graphs are computed once and only the bias added to their digit arcs
        changes. The candidates are ``factors`` × the current bias, or, with ``offsets``, the current bias plus
        each offset (tried in the order given: on a tie the first wins, so list the smallest changes first).
        Sets and returns the best bias; with ``details``, returns ``(best, {candidate: string accuracy})``.

        The bias is the score every segment of a path earns, so it sets how readily the reader merges
        neighbouring digits into one segment or splits one digit into several. Global training learns it on
        training strings, whose digits the network reads with lower penalties than digits it has never seen;
        tuned on strings of *held-out* digits (`examples/multi_digit.py` does, after global training) it suits
        new digits."""
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not len(images):
            raise ValueError("tune_bias needs at least one image")
        b0 = float(self.transformer.seg_bias.detach())
        candidates = [b0 + float(o) for o in offsets] if offsets is not None else [b0 * f for f in factors]
        graphs = []
        for k in range(0, len(images), batch_size):
            graphs.append(self.interpret(images[k:k + batch_size]))
        best, best_acc, table = b0, -1.0, {}
        for b in candidates:
            right = 0
            for j, (g, segs) in enumerate(graphs):
                shifted = g._derive(g.arcs, torch.arange(g.num_arcs), g.arc_splits, g.state_splits,
                                    scores=g.scores + (b - b0) * (g.labels != -1).to(g.dtype), kind=FsaVec)
                texts = self._read(shifted, segs)
                right += sum(t == l for t, l in zip(texts, labels[j * batch_size:(j + 1) * batch_size]))
            acc = right / len(images)
            table[b] = acc
            if acc > best_acc:
                best, best_acc = b, acc
        self.transformer.seg_bias.fill_(best)
        return (best, table) if details else best

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
        return {"params": dataclasses.asdict(p),
                "lengths": list(self.lengths) if self.lengths is not None else None}


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
    # older checkpoints: column cuts, then straight cuts, then no cut paths
    params = dict(pieces="columns", drift=0.0, cut_paths=0.0)
    params.update(rc["params"])
    reader = StringReader(model, SegmentParams(**params),
                          lengths=tuple(rc["lengths"]) if rc["lengths"] is not None else None)
    from .checkpoint import restore
    state = dict(ckpt["state_dict"])
    w = state.get("transformer.seg_weight")
    if w is not None and w.numel() < NUM_SEG_FEATURES:  # older checkpoints had fewer features: weight 0
        state["transformer.seg_weight"] = torch.cat([w, w.new_zeros(NUM_SEG_FEATURES - w.numel())])
    return restore(reader, state)
