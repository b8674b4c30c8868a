"""Heuristic over-segmentation (HOS) of a digit-string image into a segmentation graph (paper §IV–§V).

Candidate **cuts** are vertical lines between columns, found on the vertical ink projection (the ink in each
column):

1. the left and right edges of the ink;
2. one cut in every blank gap between runs of ink columns (a clean separation);
3. inside each run, the local minima of the lightly smoothed projection (touching digits usually join where
   the projection is thinnest), the deepest first, at least ``min_piece`` columns apart;
4. inside each run, extra cuts at regular spacing wherever a piece is still wider than ``max_piece`` (so
   digits that overlap without a clear minimum can still be separated).

The ink between two consecutive cuts is a **piece**. A **segment** is 1..``max_pieces`` consecutive pieces;
segments whose ink is wider than ``max_width`` are dropped (single pieces are always kept, so the graph always
has a path). The segmentation graph has one state per cut (state 0 = the left edge), one arc per segment from
its first cut to its last, and a final ``-1`` arc from the right edge: every complete path is a sequence of
segments that covers each piece of ink exactly once. All lengths are fractions of ``unit``, the ink height of
the string, so the same settings work at any resolution.

Each segment arc carries the segment's index as the per-arc attribute ``segment`` (``fsa.segment``), which
follows every later graph operation through the arc maps; ``Segmentation.boxes[segment]`` is its column range.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

import gtn

__all__ = ["SegmentParams", "Segmentation", "as_float_image", "find_cuts", "segment", "segment_batch",
           "plot_segmentation", "NUM_SEG_FEATURES"]

#: Ink threshold on grey levels in 0..1: fainter pixels are background for cutting (anti-aliasing halo).
INK_THRESHOLD = 0.1


@dataclass(frozen=True)
class SegmentParams:
    """Over-segmentation settings, as fractions of the string's ink height (``unit``)."""

    min_piece: float = 0.15   #: smallest distance between two cuts inside an ink run
    max_piece: float = 0.5    #: pieces wider than this get regular extra cuts
    max_width: float = 1.25   #: widest segment (ink columns) kept when it merges several pieces
    max_pieces: int = 6       #: most pieces merged into one segment (the paper's K)


@dataclass
class Segmentation:
    """The over-segmentation of one image.

    Attributes:
        cuts: ``int64 [C]`` increasing cut columns (cut ``x`` separates columns ``x-1`` and ``x``); the first
            is the left edge of the ink, the last the right edge (exclusive).
        segments: ``int64 [S, 2]`` first piece and one-past-last piece of each segment.
        boxes: ``int64 [S, 2]`` the column range ``[x0, x1)`` of each segment (``cuts[segments]``).
        features: ``float32 [S, NUM_SEG_FEATURES]`` shape features for a learnable segmentation score.
        graph: the segmentation graph (`gtn.Fsa`, states = cuts + a final state, attribute ``segment``).
        unit: the ink height used as length unit.
        gap_cuts: ``bool [C]`` whether each cut lies in a blank gap (a clean separation).
    """

    cuts: torch.Tensor
    segments: torch.Tensor
    boxes: torch.Tensor
    features: torch.Tensor
    graph: gtn.Fsa
    unit: float
    gap_cuts: torch.Tensor = field(default=None)

    @property
    def num_segments(self) -> int:
        return int(self.segments.shape[0])


def as_float_image(image) -> torch.Tensor:
    """One grey image → ``float32 [H, W]`` in 0..1, white ink on black.

    Accepts a numpy array or tensor, ``uint8`` 0..255 or floating 0..1, shape ``[H, W]`` (or ``[1, H, W]``).
    Raises ``TypeError`` for non-image objects and ``ValueError`` for wrong shapes, empty images, values out
    of range, NaN or an image without ink.
    """
    if isinstance(image, np.ndarray):
        if image.dtype == object or not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_):
            raise TypeError(f"expected a numeric image array, got dtype {image.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(image))
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
    else:
        raise TypeError(f"expected an image (numpy array or torch tensor [H, W]), got {type(image).__name__}")
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise ValueError(f"expected one grey image of shape [H, W], got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"the image is empty (shape {tuple(t.shape)})")
    if t.dtype == torch.uint8:
        x = t.float() / 255
    elif t.is_floating_point():
        x = t.float()
        if bool(torch.isnan(x).any()):
            raise ValueError("the image contains NaN")
        if float(x.min()) < 0 or float(x.max()) > 1:
            raise ValueError(f"a float image must hold grey levels in 0..1, got {float(x.min()):g}.."
                             f"{float(x.max()):g} (pass uint8 for 0..255)")
    elif t.dtype == torch.bool:
        x = t.float()
    else:
        raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {t.dtype}")
    if not bool((x > INK_THRESHOLD).any()):
        raise ValueError("the image has no ink (all black): nothing to read (digits are white ink on black)")
    return x


def _runs(mask: np.ndarray):
    """Start and end (exclusive) of the runs of True in a 1-D bool array."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def find_cuts(image: torch.Tensor, params: SegmentParams = SegmentParams()):
    """Candidate cuts of one ``float [H, W]`` image (0..1). Returns ``(cuts int64 [C], gap bool [C], unit)``."""
    x = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.float32)
    ink = x > INK_THRESHOLD
    cols = ink.any(0)
    rows = np.flatnonzero(ink.any(1))
    if rows.size == 0:
        raise ValueError("the image has no ink (all black): nothing to segment")
    unit = float(max(rows[-1] - rows[0] + 1, 8))
    min_piece = max(2, int(round(params.min_piece * unit)))
    max_piece = max(min_piece + 1, int(round(params.max_piece * unit)))
    proj = x.sum(0)
    count = ink.sum(0).astype(np.float64)
    H = x.shape[0]
    top = np.where(cols, ink.argmax(0), H).astype(np.float64)            # first ink row from the top
    bottom = np.where(cols, H - 1 - ink[::-1].argmax(0), -1).astype(np.float64)
    # candidate columns: local minima of the grey projection and of the ink count, and where the upper
    # contour dips lowest or the lower contour rises highest (the valleys between touching digits)
    cand = np.zeros(x.shape[1], dtype=bool)
    for s in (proj, count, -top, bottom):
        m = np.flatnonzero((s[1:-1] <= s[:-2]) & (s[1:-1] < s[2:])) + 1
        cand[m] = True
    starts, ends = _runs(cols)
    cuts, gap = [], []
    for b0, b1 in zip(starts, ends):  # a handful of ink runs per image
        # one cut per blank gap, at the first ink column after it (the first run's start is the left edge)
        cuts.append(int(b0))
        gap.append(True)
        inner = []
        m = np.flatnonzero(cand[b0:b1])
        m = m[(m >= min_piece) & (m <= b1 - b0 - min_piece)]
        for j in m[np.argsort(count[b0 + m] + proj[b0 + m] / (H + 1), kind="stable")]:  # thinnest first
            if all(abs(int(j) - k) >= min_piece for k in inner):
                inner.append(int(j))
        edges = [0] + sorted(inner) + [int(b1 - b0)]
        for a, b in zip(edges[:-1], edges[1:]):
            n = int(np.ceil((b - a) / max_piece))
            for t in range(n):  # regular extra cuts in a piece that is still too wide
                c = a + round(t * (b - a) / n)
                if c > 0:
                    cuts.append(int(b0 + c))
                    gap.append(False)
    cuts.append(int(ends[-1]))  # the right edge
    gap.append(True)
    return torch.tensor(cuts, dtype=torch.int64), torch.tensor(gap, dtype=torch.bool), unit


#: Per-segment features for the learnable segmentation score: ink width / unit, (ink width / unit)^2, and the
#: number of blank-gap cuts strictly inside the segment (a segment spanning a clean gap is rarely one digit).
NUM_SEG_FEATURES = 3


def segment(image, params: SegmentParams = SegmentParams()) -> Segmentation:
    """Over-segment one image (see the module docstring) into its `Segmentation` and segmentation graph."""
    x = as_float_image(image)
    cuts, gap, unit = find_cuts(x, params)
    C = int(cuts.numel())
    P = C - 1
    K = params.max_pieces
    # all (first piece, number of pieces) pairs, first-major so arcs come out sorted by source state
    first = torch.arange(P).repeat_interleave(K)
    count = torch.arange(1, K + 1).repeat(P)
    last = first + count
    ok = last <= P
    first, count, last = first[ok], count[ok], last[ok]
    # ink extent of each candidate: first and last ink column inside [cuts[first], cuts[last])
    colink = (x > INK_THRESHOLD).any(0)
    inkpos = torch.nonzero(colink).flatten()
    lo = inkpos[torch.searchsorted(inkpos, cuts[first])]
    hi = inkpos[torch.searchsorted(inkpos, cuts[last]) - 1] + 1
    width = (hi - lo).float()
    keep = (count == 1) | (width <= params.max_width * unit)
    first, count, last, width = first[keep], count[keep], last[keep], width[keep]
    gap_inside = torch.cumsum(gap.long(), 0)
    n_gaps = (gap_inside[last - 1] - gap_inside[first]).float()
    w = width / unit
    features = torch.stack([w, w * w, n_gaps], 1)
    S = int(first.numel())
    arcs = torch.stack([first, last, torch.ones(S, dtype=torch.int64)], 1)
    arcs = torch.cat([arcs, torch.tensor([[C - 1, C, -1]])])
    seg_attr = torch.cat([torch.arange(S), torch.tensor([-1])])
    graph = gtn.Fsa(arcs, torch.zeros(S + 1), num_states=C + 1, segment=seg_attr)
    segments = torch.stack([first, last], 1)
    return Segmentation(cuts=cuts, segments=segments, boxes=cuts[segments], features=features, graph=graph,
                        unit=unit, gap_cuts=gap)


def segment_batch(images: Sequence, params: SegmentParams = SegmentParams()):
    """Segment a list of images: ``(segmentations, gtn.FsaVec)``; the FsaVec's ``segment`` attribute is
    offset so that it indexes the concatenation of all images' segments (image order)."""
    segs = [segment(im, params) for im in images]
    offset = 0
    graphs = []
    for s in segs:
        g = s.graph
        attr = torch.where(g.segment >= 0, g.segment + offset, g.segment)
        graphs.append(gtn.Fsa(g.arcs, g.scores, num_states=g.num_states, segment=attr))
        offset += s.num_segments
    return segs, gtn.FsaVec(graphs)


def plot_segmentation(image, seg: Optional[Segmentation] = None, path_segments: Optional[Sequence[int]] = None,
                      labels: Optional[Sequence[str]] = None, title: Optional[str] = None, ax=None,
                      out: Optional[str] = None):
    """Draw an image with its candidate cuts (dashed: inside ink, dotted: in gaps) and, when given, the
    segments of a path (coloured boxes) with their labels. Saves to ``out`` (PNG) when given; returns the
    matplotlib axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = as_float_image(image)
    if seg is None:
        seg = segment(x)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(3.0, x.shape[1] / 12), 2.2))
    ax.imshow(x.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for c, g in zip(seg.cuts.tolist(), seg.gap_cuts.tolist()):
        ax.axvline(c - 0.5, color="tab:cyan" if g else "tab:orange", ls=":" if g else "--", lw=1)
    if path_segments is not None:
        colors = ["tab:red", "tab:green", "tab:blue", "tab:purple", "tab:olive", "tab:pink"]
        H = x.shape[0]
        for i, s in enumerate(path_segments):
            x0, x1 = seg.boxes[s].tolist()
            col = colors[i % len(colors)]
            ax.add_patch(matplotlib.patches.Rectangle((x0 - 0.5, -0.5), x1 - x0, H, fill=False, ec=col, lw=1.5))
            if labels is not None:
                ax.text((x0 + x1) / 2 - 0.5, -1.5, labels[i], color=col, ha="center", va="bottom", fontsize=11,
                        fontweight="bold")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9, pad=14 if labels is not None else 4)
    if own and out:
        fig.tight_layout()
        fig.savefig(out, dpi=120)
        plt.close(fig)
    return ax
