"""Heuristic over-segmentation (HOS) of a digit-string image into a segmentation graph (paper §IV–§V).

The ink is first cut into **pieces**; a **segment** is 1..``max_pieces`` consecutive pieces, and the
segmentation graph has one state per boundary between pieces, one arc per segment and a final ``-1`` arc, so
every complete path is a sequence of segments that uses each piece of ink exactly once.

Two ways to make the pieces (``SegmentParams.pieces``):

* ``"columns"`` — the paper's: vertical **cuts** found on the vertical ink projection (the ink in each
  column); a piece is the ink between two consecutive cuts. Cuts: the left and right edges of the ink; one in
  every blank gap between runs of ink columns; inside each run, the local minima of the projection, of the
  ink count and of the upper and lower contours (touching digits usually join where the ink is thinnest),
  the thinnest first, at least ``min_piece`` apart; and regular extra cuts wherever a piece is still wider
  than ``max_piece``.
* ``"components"`` (the default) — the connected components of the ink first (8-connected; components
  smaller than ``min_area`` join the nearest piece), each cut by the same vertical-cut heuristics applied to
  its own ink only when it is wider than ``max_piece``. Pieces are ordered left to right by their component's
  centre of mass (the slices of one component stay together, in column order). Two digits whose ink boxes
  overlap without touching — a slanted "1" leaning into an "8" — share columns, so no vertical cut can part
  them, but they are separate components. With ``drift > 0`` a cut through a component bends: row by row it
  follows the path that severs the least ink, within ``drift`` of the vertical cut (a dynamic program over
  rows), so slanted touching digits part along the valley between them. Bending changes which pixels each
  piece holds (so each crop), not the pieces, segments, widths or features. With ``cut_paths > 0`` a wide
  component is cut instead by least-ink cut paths, free to run round strokes (`_cut_paths`): candidates from the
  straight cuts' columns or from every column (``cut_starts``), kept cheapest first or in a learned order
  (``cut_rank``, `lenet.cut_ranker`) while they neither cross nor crowd one already kept; the ink they sever is
  priced by its grey level or, with ``cut_cost="learned"``, discounted where a network sees two digits meet
  (`lenet.boundary_net`).

Every pixel belongs to one piece (``Segmentation.piece_map``; faint and background pixels to the nearest
piece), so a segment's image is exactly the ink of its pieces (`lenet.recognizer.crop_segments`). Segments
whose ink is wider than ``max_width`` are dropped (single pieces are always kept, so the graph always has a
path). All lengths are fractions of ``unit``, the ink height of the string, so the same settings work at any
resolution.

Each segment arc carries the segment's index as the per-arc attribute ``segment`` (``fsa.segment``), which
follows every later graph operation through the arc maps; ``Segmentation.boxes[segment]`` is its column range.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

import gtn

__all__ = ["SegmentParams", "Segmentation", "WholeImage", "as_float_image", "find_cuts", "segment", "segment_batch",
           "plot_segmentation", "NUM_SEG_FEATURES", "true_path", "coverage", "grouping_bound", "column_bound",
           "row_cut_bound", "row_cuts", "CutGraph", "cut_graph", "cut_graph_bound",
           "ranked_path_bound", "truth_ranked_segment", "true_boundaries", "boundary_distance", "owner_apart",
           "owner_cost_segment", "owner_cost_bound"]

#: Ink threshold on grey levels in 0..1: fainter pixels are background for cutting (anti-aliasing halo).
INK_THRESHOLD = 0.1
#: Cost per row of a bent cut at its full drift, in units of one fully inked pixel cut through (a bend must
#: save ink to be taken; ties go to the vertical).
BEND_COST = 0.05


@dataclass(frozen=True)
class SegmentParams:
    """Over-segmentation settings, as fractions of the string's ink height (``unit``)."""

    min_piece: float = 0.15   #: smallest distance between two cuts inside an ink run
    max_piece: float = 0.5    #: pieces wider than this get regular extra cuts
    max_width: float = 1.25   #: widest segment (ink columns) kept when it merges several pieces
    max_pieces: int = 6       #: most pieces merged into one segment (the paper's K)
    pieces: str = "components"  #: "components" (connected components, then cuts) or "columns" (cuts only)
    min_area: float = 0.02    #: components with fewer ink pixels than this × unit² join the nearest piece
    drift: float = 0.0        #: "components": a cut inside a component may bend up to this × unit columns
                              #: off the vertical, following the least ink (0: straight vertical cuts)
    cut_paths: float = 0.0    #: "components": cuts inside a component are least-ink paths from top to bottom,
                              #: free to run round strokes, within this × unit of their start column (0: off)
    cut_starts: str = "candidates"  #: with cut paths, where they start: "candidates" (the straight cuts' columns)
                                    #: or "every" (every column of a wide component, the cheapest paths kept)
    cut_rank: str = "ink"     #: with cut paths, the order candidates are kept in: "ink" (cheapest first) or
                              #: "learned" (`lenet.cut_ranker`: a network's judgement of a digit boundary)
    cut_cost: str = "ink"     #: with cut paths, what severing two inked pixels costs: "ink" (the fainter one's
                              #: grey level) or "learned" (that, times one minus `lenet.boundary_net`'s chance
                              #: that the two belong to different digits)

    def __post_init__(self):
        if self.pieces not in ("components", "columns"):
            raise ValueError(f"pieces must be 'components' or 'columns', not {self.pieces!r}")
        if self.cut_starts not in ("candidates", "every"):
            raise ValueError(f"cut_starts must be 'candidates' or 'every', not {self.cut_starts!r}")
        if self.cut_rank not in ("ink", "learned"):
            raise ValueError(f"cut_rank must be 'ink' or 'learned', not {self.cut_rank!r}")
        if self.cut_cost not in ("ink", "learned"):
            raise ValueError(f"cut_cost must be 'ink' or 'learned', not {self.cut_cost!r}")
        if self.cut_cost == "learned" and (self.pieces != "components" or self.cut_paths <= 0):
            raise ValueError("cut_cost='learned' prices the cut paths: it needs pieces='components' and cut_paths > 0")
        if self.cut_rank == "learned" and (self.pieces != "components" or self.cut_paths <= 0):
            raise ValueError("cut_rank='learned' orders the cut paths: it needs pieces='components' and cut_paths > 0")
        if self.cut_starts == "every" and (self.pieces != "components" or self.cut_paths <= 0):
            raise ValueError("cut_starts='every' chooses where cut paths start: it needs pieces='components' and "
                             "cut_paths > 0")
        if (self.max_pieces < 1 or not 0 < self.min_piece < self.max_piece or self.max_width <= 0
                or not 0 <= self.drift < 1 or not 0 <= self.cut_paths < 2):
            raise ValueError(f"bad segmentation settings {self}")


@dataclass
class Segmentation:
    """The over-segmentation of one image.

    Attributes:
        segments: ``int64 [S, 2]`` first piece and one-past-last piece of each segment.
        boxes: ``int64 [S, 2]`` the column range ``[x0, x1)`` of each segment: between its cuts for
            ``"columns"``, its ink's extent for ``"components"``.
        features: ``float32 [S, NUM_SEG_FEATURES]`` shape features for a learnable segmentation score.
        graph: the segmentation graph (`gtn.Fsa`, states = piece boundaries + a final state, attribute
            ``segment``).
        unit: the ink height used as length unit.
        piece_map: ``int64 [H, W]`` the piece of every pixel (pieces numbered in graph order).
        cuts: ``int64 [P + 1]`` the cut columns (``"columns"`` only: cut ``x`` separates columns ``x-1`` and
            ``x``; the first is the left edge of the ink, the last the right edge), else ``None``.
        gap_cuts: ``bool [P + 1]`` whether each cut lies in a blank gap (``"columns"`` only).
        piece_component: ``int64 [P]`` the connected component of each piece (``"components"`` only).
    """

    segments: torch.Tensor
    boxes: torch.Tensor
    features: torch.Tensor
    graph: gtn.Fsa
    unit: float
    piece_map: torch.Tensor
    cuts: Optional[torch.Tensor] = None
    gap_cuts: Optional[torch.Tensor] = None
    piece_component: Optional[torch.Tensor] = None

    @property
    def num_segments(self) -> int:
        return int(self.segments.shape[0])

    @property
    def num_pieces(self) -> int:
        return int(self.graph.num_states) - 2


@dataclass
class WholeImage:
    """One piece and one segment covering a whole image (for cropping isolated digits like segments)."""

    piece_map: torch.Tensor
    segments: torch.Tensor = field(default_factory=lambda: torch.tensor([[0, 1]]))

    @classmethod
    def of(cls, image: torch.Tensor) -> "WholeImage":
        return cls(torch.zeros(image.shape, dtype=torch.int64))


def as_float_image(image, invert: bool = False) -> torch.Tensor:
    """One grey image → ``float32 [H, W]`` in 0..1, white ink on black.

    Accepts a numpy array or tensor, ``uint8`` 0..255 or floating 0..1, shape ``[H, W]`` (or ``[1, H, W]``).
    ``invert``: the image is dark ink on a light background; its grey levels are inverted (``1 - x``).
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
    if invert:
        x = 1 - x
    if not bool((x > INK_THRESHOLD).any()):
        raise ValueError("the image has no ink (all black): nothing to read (digits are white ink on black)")
    return x


def _runs(mask: np.ndarray):
    """Start and end (exclusive) of the runs of True in a 1-D bool array."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def _unit(ink: np.ndarray) -> float:
    rows = np.flatnonzero(ink.any(1))
    if rows.size == 0:
        raise ValueError("the image has no ink (all black): nothing to segment")
    return float(max(rows[-1] - rows[0] + 1, 8))


def _piece_lengths(unit: float, params: SegmentParams):
    min_piece = max(2, int(round(params.min_piece * unit)))
    return min_piece, max(min_piece + 1, int(round(params.max_piece * unit)))


def _profiles(x: np.ndarray, ink: np.ndarray):
    """Per-column grey projection, ink count and candidate cut columns (local minima of the projection and
    the count, and where the upper contour dips lowest or the lower contour rises highest)."""
    cols = ink.any(0)
    proj = x.sum(0)
    count = ink.sum(0).astype(np.float64)
    H = x.shape[0]
    top = np.where(cols, ink.argmax(0), H).astype(np.float64)            # first ink row from the top
    bottom = np.where(cols, H - 1 - ink[::-1].argmax(0), -1).astype(np.float64)
    cand = np.zeros(x.shape[1], dtype=bool)
    for s in (proj, count, -top, bottom):
        m = np.flatnonzero((s[1:-1] <= s[:-2]) & (s[1:-1] < s[2:])) + 1
        cand[m] = True
    return proj, count, cand


def _split_run(b0: int, b1: int, proj, count, cand, H: int, min_piece: int, max_piece: int):
    """The cut columns strictly inside the ink run ``[b0, b1)``: candidate minima, thinnest first, at least
    ``min_piece`` apart, then regular extra cuts in pieces still wider than ``max_piece``."""
    inner = []
    m = np.flatnonzero(cand[b0:b1])
    m = m[(m >= min_piece) & (m <= b1 - b0 - min_piece)]
    for j in m[np.argsort(count[b0 + m] + proj[b0 + m] / (H + 1), kind="stable")]:  # thinnest first
        if all(abs(int(j) - k) >= min_piece for k in inner):
            inner.append(int(j))
    edges = [0] + sorted(inner) + [int(b1 - b0)]
    cuts = []
    for a, b in zip(edges[:-1], edges[1:]):
        n = int(np.ceil((b - a) / max_piece))
        for t in range(n):  # regular extra cuts in a piece that is still too wide
            c = a + round(t * (b - a) / n)
            if c > 0:
                cuts.append(int(b0 + c))
    return cuts


def find_cuts(image: torch.Tensor, params: SegmentParams = SegmentParams()):
    """Candidate cuts of one ``float [H, W]`` image (0..1). Returns ``(cuts int64 [C], gap bool [C], unit)``."""
    x = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.float32)
    ink = x > INK_THRESHOLD
    unit = _unit(ink)
    min_piece, max_piece = _piece_lengths(unit, params)
    proj, count, cand = _profiles(x, ink)
    starts, ends = _runs(ink.any(0))
    cuts, gap = [], []
    for b0, b1 in zip(starts, ends):  # a handful of ink runs per image
        # one cut per blank gap, at the first ink column after it (the first run's start is the left edge)
        cuts.append(int(b0))
        gap.append(True)
        inner = _split_run(int(b0), int(b1), proj, count, cand, x.shape[0], min_piece, max_piece)
        cuts.extend(inner)
        gap.extend([False] * len(inner))
    cuts.append(int(ends[-1]))  # the right edge
    gap.append(True)
    return torch.tensor(cuts, dtype=torch.int64), torch.tensor(gap, dtype=torch.bool), unit


def _least_ink_cuts(xc: np.ndarray, cols, drift: int, c0: int, c1: int) -> np.ndarray:
    """Bend vertical cuts to follow the least ink: for each cut column ``cols[k]`` the top-to-bottom path of
    cut positions (``paths[k, y]``: the cut passes between columns ``paths[k, y] - 1`` and ``paths[k, y]`` in
    row ``y``) that moves at most one column per row, stays within ``drift`` columns of ``cols[k]`` and inside
    ``(c0, c1)``, and minimises the ink it cuts through (a cut between two inked pixels costs the fainter one),
    with a slight preference for the vertical. Paths are made non-crossing (each at least one column right of
    the previous). A dynamic program over rows, vectorised over the cuts and their window. Returns
    ``int64 [K, H]``."""
    H = xc.shape[0]
    cols = np.asarray(cols, dtype=np.int64)
    off = np.arange(-drift, drift + 1)
    pos = cols[:, None] + off[None, :]                                   # [K, 2D+1] candidate cut columns
    valid = (pos > c0) & (pos < c1)
    pc = np.clip(pos, 1, xc.shape[1] - 1)
    through = np.minimum(xc[:, pc - 1], xc[:, pc])                       # [H, K, 2D+1] ink cut in each row
    cost = np.where(valid[None], through + BEND_COST * np.abs(off)[None, None, :] / drift, np.inf)
    acc = cost[0].copy()
    back = np.zeros((H, len(cols), off.size), dtype=np.int64)
    for y in range(1, H):   # one step per row: from the same column or a neighbouring one
        left = np.concatenate([np.full((len(cols), 1), np.inf), acc[:, :-1]], 1)
        right = np.concatenate([acc[:, 1:], np.full((len(cols), 1), np.inf)], 1)
        stack = np.stack([left, acc, right])                             # came from offset j-1, j, j+1
        arg = stack.argmin(0)
        acc = stack.min(0) + cost[y]
        back[y] = arg - 1
    j = np.empty((H, len(cols)), dtype=np.int64)
    j[-1] = acc.argmin(1)
    for y in range(H - 1, 0, -1):
        j[y - 1] = j[y] + back[y, np.arange(len(cols)), j[y]]
    paths = pos[np.arange(len(cols))[None, :], j].T                      # [K, H]
    k = np.arange(len(cols))[:, None]
    return np.maximum.accumulate(paths - k, axis=0) + k                  # non-crossing


#: Cost of a cut path per column it runs sideways (between two rows), in units of one fully inked pixel
#: severed: a path may run around a stroke through the background, but prefers the straight way down.
SIDEWAYS_COST = 0.02
#: Cost per row and column of a cut path's distance from its start column: without it the least-ink path
#: would run round a whole digit (severing nothing) instead of between two.
DEVIATION_COST = 0.1


def _path_dp(through: np.ndarray, S: np.ndarray, compiled: Optional[bool] = None):
    """Forward pass of the cut-path dynamic program over rows (see `_cut_paths`): ``acc [H, K, J]`` the least
    cost of a path from the top row to each position of each row, and ``back [H, K, J]`` its predecessor.
    This numpy version is the reference; ``compiled`` (default: when numba imports and gtn's kernels are on)
    runs its numba twin, `lenet.cutpath_numba.path_dp`, which gives the same tables."""
    kernel = _kernel("path_dp", compiled, "program")
    if kernel is not None:
        return kernel(np.ascontiguousarray(through, dtype=np.float64), np.ascontiguousarray(S, dtype=np.float64))
    H, K, J = through.shape
    idx = np.broadcast_to(np.arange(J), (K, J))
    acc = np.empty_like(through)
    acc[0] = through[0]
    back = np.zeros((H, K, J), dtype=np.int64)
    for y in range(1, H):   # one step per row (rows, not arcs): the best predecessor for every position
        s, prev = S[y - 1], acc[y - 1]
        a = prev - s                                                     # from the left: prev[p] + S[q] - S[p]
        lmin = np.minimum.accumulate(a, axis=1)
        larg = np.maximum.accumulate(np.where(a <= lmin, idx, 0), axis=1)
        b = (prev + s)[:, ::-1]                                          # from the right: prev[p] + S[p] - S[q]
        bmin = np.minimum.accumulate(b, axis=1)
        rarg = (J - 1 - np.maximum.accumulate(np.where(b <= bmin, idx, 0), axis=1))[:, ::-1]
        from_left, from_right = s + lmin, bmin[:, ::-1] - s
        take_left = from_left <= from_right
        acc[y] = np.where(take_left, from_left, from_right) + through[y]
        back[y] = np.where(take_left, larg, rarg)
    return acc, back


def _follow_paths(back_down, back_up, ka, ya, start, compiled: Optional[bool] = None) -> np.ndarray:
    """``j [A, H]``: the window position of each anchored path in every row, from its anchor row ``ya[a]``
    (position ``start[a]``) down along the upward table's pointers ``back_up`` and up along the downward
    table's ``back_down``, both of start column ``ka[a]``. This numpy version (a loop over rows) is the
    reference; ``compiled`` (default: as for `_path_dp`) runs `lenet.cutpath_numba.follow_paths`, the same
    walk without a Python step per row."""
    kernel = _kernel("follow_paths", compiled, "walk")
    ka, ya, start = (np.asarray(v, dtype=np.int64) for v in (ka, ya, start))
    if kernel is not None:
        return kernel(np.ascontiguousarray(back_down), np.ascontiguousarray(back_up), ka, ya, start)
    H, A = back_down.shape[0], len(ka)
    j = np.zeros((A, H), dtype=np.int64)
    j[np.arange(A), ya] = start
    for y in range(H - 1):            # below each anchor: follow the upward table's pointers down
        j[:, y + 1] = np.where(ya <= y, back_up[y, ka, j[:, y]], j[:, y + 1])
    for y in range(H - 1, 0, -1):     # above each anchor: the downward table's pointers up
        j[:, y - 1] = np.where(ya >= y, back_down[y, ka, j[:, y]], j[:, y - 1])
    return j


def _kernel(name: str, compiled: Optional[bool], what: str):
    """The numba kernel ``name`` for ``compiled`` (``None``: when available; ``False``: none, the numpy
    reference; ``True``: required, an error without numba)."""
    kernel = _compiled_dp(name) if compiled is None or compiled else None
    if compiled and kernel is None:
        raise RuntimeError(f"the compiled cut-path {what} needs numba (and GTN_NO_NUMBA unset)")
    return kernel


def _compiled_dp(name: str = "path_dp"):
    """The kernel ``name`` of `lenet.cutpath_numba` (``path_dp``, ``follow_paths``) when numba imports and gtn's
    kernels are enabled, else ``None``."""
    import gtn.kernels
    if not gtn.kernels.use_numba():
        return None
    try:
        from . import cutpath_numba
    except Exception:   # numba missing or broken: the numpy reference is always there
        return None
    return getattr(cutpath_numba, name)


def _cut_paths(jobs, radius: int, spacing: int = 0, priority=None, apart=None):
    """Least-ink cut paths from the top to the bottom of a component's grey image ``xc`` (0 outside it).

    A path is one cut position per row (``paths[k, y] = p``: row ``y`` is cut between columns ``p - 1`` and
    ``p``), free to jump any number of columns from one row to the next, within ``radius`` columns of its
    start column and strictly inside ``(c0, c1)``. Its cost is the ink it severs: in each row the fainter of
    the two pixels it passes between, and between rows ``y`` and ``y + 1``, for each column it runs sideways
    under, the fainter of the two pixels it separates there, plus `SIDEWAYS_COST`, plus `DEVIATION_COST` per
    row and column away from the start column. So a path runs round strokes through the background and
    crosses ink only where two digits join, along any curve, not only a slanted line.

    Each start column ``cols[k]`` gives one path per run of ink in that column (up to three): the path is made
    to sever that run at its middle row (the *anchor*), so that it separates ink on its two sides instead of
    running round the whole component. The best path through an anchor joins the best path from the top to
    it and from it to the bottom: a dynamic program over rows in each direction, vectorised over the paths and
    their window (a sideways run costs a difference of prefix sums, so each row's best predecessor is a running
    minimum from the left and one from the right). Paths are then taken cheapest first, dropping any that crosses
    one already taken (pieces need a left-to-right order) and, with ``spacing`` > 0, any that lies on average
    (over the rows) less than ``spacing`` columns from one already taken, and sorted left to right. All components
    of an image go through one dynamic program (``jobs``: ``(xc, cols, c0, c1)`` per component). ``priority``
    (``(job, paths [A, H], costs [A]) -> [A]``, lowest first) replaces the ink cost as the order in which paths are
    taken (`ranked_path_bound` takes them by their closeness to the true boundaries). ``apart`` (of the whole
    image, see `_severed`) discounts the ink severed between two digits (``cut_cost="learned"``). Returns one
    ``int64 [N, H]`` array per job.
    """
    paths, costs, job_of = _anchored_paths(jobs, radius, apart)
    out = []
    for n in range(len(jobs)):   # a handful of components
        mine = np.flatnonzero(job_of == n)
        rank = costs[mine] if priority is None else np.asarray(priority(n, paths[mine], costs[mine]))
        mine = mine[np.argsort(rank, kind="stable")]                     # the cheapest (or first-ranked) first
        P = paths[mine]
        fits = _compatible(P, spacing)
        taken = np.zeros(len(mine), dtype=bool)
        for i in range(len(mine)):               # a path crossing (or repeating) one already taken is dropped
            taken[i] = bool(fits[i, taken].all())
        kept = P[taken]
        out.append(kept[np.argsort(kept.mean(1), kind="stable")])
    return out


def _compatible(paths: np.ndarray, spacing: int = 0) -> np.ndarray:
    """``bool [N, N]``: which pairs of cut paths ``paths [N, H]`` may both be kept — ordered one way or the other
    (never crossing), not the same path, and with ``spacing`` > 0 on average (over the rows) at least ``spacing``
    columns apart."""
    le = (paths[:, None, :] <= paths[None, :, :]).all(2)
    fits = (le | le.T) & ~(le & le.T)
    if spacing > 0:
        fits &= np.abs(paths[:, None, :] - paths[None, :, :]).mean(2) >= spacing
    return fits


def _ink_left(ink: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """``int64 [N, H]``: how many pixels of the bool map ``ink`` lie left of each cut path of ``paths [N, H]`` in
    every row (positions clipped to the image)."""
    H, W = ink.shape
    count = np.concatenate([np.zeros((H, 1), np.int64), np.cumsum(ink, 1)], 1)   # [H, W + 1] ink left of x
    return count[np.arange(H)[None, :], np.clip(paths, 0, W)]


def _image_and_owner(image, owner):
    """``(x float64 [H, W], owner int64 [H, W], L)``: the image as `as_float_image` reads it and its owner map,
    checked to match and to name at least one digit."""
    x = as_float_image(image).numpy().astype(np.float64)
    own = np.asarray(torch.as_tensor(owner).long())
    if own.shape != x.shape:
        raise ValueError(f"owner map {tuple(own.shape)} does not match the image {tuple(x.shape)}")
    L = int(own.max()) + 1
    if L <= 0:
        raise ValueError("the owner map names no digit")
    return x, own, L


def _severed(xc: np.ndarray, apart=None):
    """The cost of separating neighbouring pixels of the grey image ``xc``: ``(across [H, W], under [H - 1, W])``,
    ``across[y, p]`` for cutting row ``y`` between columns ``p - 1`` and ``p`` (column 0: as column 1),
    ``under[y, x]`` for running sideways between rows ``y`` and ``y + 1`` under column ``x``: the fainter of the
    two pixels, times ``1 - apart`` when ``apart = (across, under)`` gives the chance that the two pixels belong
    to different digits (`lenet.boundary_net`): severing ink between two digits costs nothing."""
    across = np.minimum(xc[:, :-1], xc[:, 1:])
    across = np.concatenate([across[:, :1], across], 1)
    under = np.minimum(xc[:-1], xc[1:])
    if apart is not None:
        across, under = across * (1 - apart[0]), under * (1 - apart[1])
    return across, under


def _anchored_paths(jobs, radius: int, apart=None):
    """Every anchored least-ink path of `_cut_paths`, none dropped: ``(paths int64 [A, H], costs [A], job [A])``.
    ``apart``: as for `_severed`, of the whole image (all jobs are components of one image)."""
    off = np.arange(-radius, radius + 1)
    thr, sides, poss, owner = [], [], [], []
    for n, (xc, cols, c0, c1) in enumerate(jobs):
        H, W = xc.shape
        cols = np.asarray(cols, dtype=np.int64)
        pos = cols[:, None] + off[None, :]                               # [K, J] candidate cut positions
        valid = (pos > c0) & (pos < c1)
        across, under = _severed(xc, apart)
        through = across[:, np.clip(pos, 1, W - 1)]                      # [H, K, J] ink severed in each row
        thr.append(np.where(valid[None], through + DEVIATION_COST * np.abs(off)[None, None, :], np.inf))
        # sideways between rows y and y+1 under column x = pos: the fainter of (y, x) and (y+1, x)
        under = under[:, np.clip(pos, 0, W - 1)] + SIDEWAYS_COST        # [H-1, K, J]
        sides.append(np.concatenate([np.zeros((H - 1, len(cols), 1)), np.cumsum(under, 2)[:, :, :-1]], 2))
        poss.append(pos)
        owner += [n] * len(cols)
    through, S, pos = np.concatenate(thr, 1), np.concatenate(sides, 1), np.concatenate(poss, 0)
    H = through.shape[0]
    down, back_down = _path_dp(through, S)
    up, back_up = _path_dp(through[::-1], S[::-1])
    up, back_up = up[::-1], back_up[::-1]
    # anchors: the middle row of each run of ink severed at the start column (at most three per column)
    centre = radius
    anchors = []
    k = 0
    for xc, cols, _, _ in jobs:   # a handful of start columns per image
        for col in cols:
            cut = np.minimum(xc[:, col - 1], xc[:, col]) > INK_THRESHOLD
            a, b = _runs(cut)
            anchors += [(k, (r0 + r1 - 1) // 2) for r0, r1 in list(zip(a, b))[:3]] or [(k, -1)]
            k += 1
    ka = np.array([k for k, _ in anchors])
    ya = np.array([y for _, y in anchors])
    A = len(anchors)
    free = ya < 0                                    # no ink at the start column: the best path through the window
    start = np.where(free, up[0, ka].argmin(1), centre)
    ya = np.where(free, 0, ya)
    costs = np.where(free, up[0, ka, start], down[ya, ka, start] + up[ya, ka, start] - through[ya, ka, start])
    j = _follow_paths(back_down, back_up, ka, ya, start)
    return pos[ka[:, None], j], costs, np.asarray(owner)[ka]


def _component_pieces(x: np.ndarray, params: SegmentParams, priority=None, apart=None):
    """``"components"`` pieces: ``(piece_map int64 [H, W], the same with straight cuts, component of each piece
    [P], unit)`` (the two maps are one array when no cut bends). ``priority``: as in `_cut_paths`, called as
    ``priority(x, unit, job, paths, costs)`` with the component's ``job`` (``(xc, cols, c0, c1)``, ``xc`` its grey
    image, 0 outside it); ``None``: by ``params.cut_rank``. ``apart``: as in `_severed`; ``None``: by
    ``params.cut_cost`` (the shipped `lenet.boundary_net` for ``"learned"``)."""
    from scipy import ndimage

    ink = x > INK_THRESHOLD
    unit = _unit(ink)
    min_piece, max_piece = _piece_lengths(unit, params)
    lab, n = ndimage.label(ink, structure=np.ones((3, 3), dtype=bool))
    area = np.bincount(lab.ravel(), minlength=n + 1)
    area[0] = 0
    big = np.flatnonzero(area >= max(2.0, params.min_area * unit * unit))
    if big.size == 0:
        big = np.array([int(area.argmax())])
    W = x.shape[1]
    colpos = np.arange(W, dtype=np.float64) + 0.5
    mass = np.bincount(lab.ravel(), weights=x.ravel(), minlength=n + 1)
    mx = np.bincount(lab.ravel(), weights=(x * colpos[None, :]).ravel(), minlength=n + 1)
    centre = mx[big] / np.maximum(mass[big], 1e-9)
    table = np.full((n + 1, W), -1, dtype=np.int64)   # (component, column) -> piece
    comp, bent = [], []
    drift = int(round(params.drift * unit))
    radius = int(round(params.cut_paths * unit))
    plan = []                                          # per component: (c, c0, c1, inner cut columns)
    for c in big[np.argsort(centre, kind="stable")]:  # a handful of components per image
        mine = lab == c
        cols = np.flatnonzero(mine.any(0))
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        inner = []
        if c1 - c0 > max_piece:
            # cut_starts="every": a path from every column at least min_piece inside the component (the cheapest
            # are kept); otherwise, and where no column is that far inside, the straight cuts' candidates
            if radius > 0 and params.cut_starts == "every":
                inner = list(range(c0 + min_piece, c1 - min_piece + 1))
            if not inner:
                xc = np.where(mine, x, 0.0)
                proj, count, cand = _profiles(xc, mine)
                inner = _split_run(c0, c1, proj, count, cand, x.shape[0], min_piece, max_piece)
        plan.append((c, c0, c1, inner))
    # cut paths: one dynamic program for every component that needs cutting
    jobs = [(np.where(lab == c, x, 0.0), inner, c0, c1) for c, c0, c1, inner in plan if radius > 0 and inner]
    spacing = min_piece if params.cut_starts == "every" else 0
    if priority is None and params.cut_rank == "learned" and jobs:
        from .cut_ranker import default_ranker
        ranker = default_ranker()

        def priority(x, unit, job, paths, costs):
            return ranker.priority(x, job[0], paths, costs, job[2], job[3], unit)
    if apart is None and params.cut_cost == "learned" and jobs:
        from .boundary_net import default_boundary_net
        apart = default_boundary_net().apart(x)
    rank = None if priority is None else (lambda n, paths, costs: priority(x, unit, jobs[n], paths, costs))
    found = iter(zip(jobs, _cut_paths(jobs, radius, spacing, rank, apart)) if jobs else [])
    for c, c0, c1, inner in plan:
        if radius > 0 and inner:
            job, paths = next(found)
            paths = _distinct_paths(job[0], paths)   # job[0]: this component's grey image
            table[c, c0:c1] = len(comp)
            if len(paths):
                bent.append((c, len(comp), paths))
            comp.extend([int(c)] * (len(paths) + 1))
            continue
        edges = [c0] + list(inner) + [c1]
        if drift > 0 and inner:   # bent cuts: pieces of this component are split row by row
            bent.append((c, len(comp), _least_ink_cuts(np.where(lab == c, x, 0.0), inner, drift, c0, c1)))
        for e0, e1 in zip(edges[:-1], edges[1:]):
            table[c, e0:e1] = len(comp)
            comp.append(int(c))

    def nearest(m):  # small components, faint pixels and background: the nearest piece
        if not (m < 0).any():
            return m.copy()
        _, (iy, ix) = ndimage.distance_transform_edt(m < 0, return_indices=True)
        return m[iy, ix]

    pmap = table[lab, np.arange(W)[None, :]]
    pmap[lab == 0] = -1
    for c, base, paths in bent:        # pixel (y, x) goes right of every cut k with paths[k, y] <= x
        ys, xs = np.nonzero(lab == c)
        pmap[ys, xs] = base + (xs[:, None] >= paths[:, ys].T).sum(1)
    if radius > 0:                     # the pieces are the cut paths' own (no straight twin)
        out = nearest(pmap)
        return out, out, np.asarray(comp, dtype=np.int64), unit
    straight = table[lab, np.arange(W)[None, :]]
    straight[lab == 0] = -1
    straight = nearest(straight)
    if not bent:
        return straight, straight, np.asarray(comp, dtype=np.int64), unit
    return nearest(pmap), straight, np.asarray(comp, dtype=np.int64), unit


def _distinct_paths(xc: np.ndarray, paths: np.ndarray, min_ink: float = 1.0) -> np.ndarray:
    """Drop repeated cut paths and those that would leave a piece with (almost) no ink (sorted, non-crossing
    paths in; a handful per component, so a loop over them)."""
    H, W = xc.shape
    cum = np.concatenate([np.zeros((H, 1)), np.cumsum(xc, 1)], 1)      # ink left of each position, per row
    rows = np.arange(H)
    keep, prev = [], None
    for p in paths:
        left = cum[rows, p] - (cum[rows, prev] if prev is not None else 0.0)
        if float(left.sum()) >= min_ink and (prev is None or not np.array_equal(p, prev)):
            keep.append(p)
            prev = p
    while keep and float((cum[rows, -1] - cum[rows, keep[-1]]).sum()) < min_ink:  # the last piece too
        keep.pop()
    return np.stack(keep) if keep else np.zeros((0, H), dtype=np.int64)


#: Per-segment features for the learnable segmentation score: ink width / unit, (ink width / unit)^2, the
#: number of blank separations inside the segment (gap cuts for "columns", component changes for
#: "components": a segment spanning a clean separation is rarely one digit), and how many of its two ends cut
#: through ink (a cut inside an ink run or through a component, rather than at a blank separation or the
#: string's edge: touching digits need it, a whole digit rarely does).
NUM_SEG_FEATURES = 4


def segment(image, params: SegmentParams = SegmentParams()) -> Segmentation:
    """Over-segment one image (see the module docstring) into its `Segmentation` and segmentation graph."""
    return _segment(image, params)


def _segment(image, params: SegmentParams, priority=None, apart=None) -> Segmentation:
    """`segment`, with the cut paths taken in the order of ``priority`` and priced with ``apart`` (see
    `_component_pieces`)."""
    x = as_float_image(image)
    xn = x.numpy()
    H, W = xn.shape
    cuts = gap = comp = None
    if params.pieces == "columns":
        cuts, gap, unit = find_cuts(x, params)
        P = int(cuts.numel()) - 1
        pmap = np.clip(np.searchsorted(cuts.numpy(), np.arange(W), side="right") - 1, 0, P - 1)
        pmap = np.broadcast_to(pmap[None, :], (H, W)).copy()
        separate = gap[:-1].clone()      # piece p starts at cut p
    else:
        pmap, straight, comp_np, unit = _component_pieces(xn, params, priority, apart)
        P = int(comp_np.size)
        comp = torch.from_numpy(comp_np)
        separate = torch.cat([torch.ones(1, dtype=torch.bool), comp[1:] != comp[:-1]])
    piece_map = torch.from_numpy(pmap)
    # ink column extent of each piece (of its straight-cut part: bending a cut changes a segment's pixels, not
    # which segments there are, their widths or features)
    inkyx = torch.nonzero(x > INK_THRESHOLD)
    pid = torch.from_numpy(straight if params.pieces == "components" else pmap)[inkyx[:, 0], inkyx[:, 1]]
    plo = torch.full((P,), W, dtype=torch.int64).scatter_reduce(0, pid, inkyx[:, 1], "amin")
    phi = torch.full((P,), -1, dtype=torch.int64).scatter_reduce(0, pid, inkyx[:, 1] + 1, "amax")
    plo, phi = torch.minimum(plo, phi.clamp(min=0)), phi.clamp(min=0)   # (a piece without ink: empty extent)
    K = params.max_pieces
    # all (first piece, number of pieces) pairs, first-major so arcs come out sorted by source state
    first = torch.arange(P).repeat_interleave(K)
    count = torch.arange(1, K + 1).repeat(P)
    last = first + count
    ok = last <= P
    first, count, last = first[ok], count[ok], last[ok]
    lo, hi = plo[first], phi[first]
    for k in range(1, K):  # running extent over a segment's pieces (K is a small constant)
        idx = (first + k).clamp(max=P - 1)
        use = first + k < last
        lo = torch.where(use, torch.minimum(lo, plo[idx]), lo)
        hi = torch.where(use, torch.maximum(hi, phi[idx]), hi)
    width = (hi - lo).float()
    keep = (count == 1) | (width <= params.max_width * unit)
    first, count, last, width, lo, hi = first[keep], count[keep], last[keep], width[keep], lo[keep], hi[keep]
    sep = torch.cumsum(separate.long(), 0)
    n_sep = (sep[last - 1] - sep[first]).float()
    # an end cuts through ink unless a separation (or the string's edge) is there
    cut_ends = (~separate[first]).float() + (last < P).float() * (~separate[last.clamp(max=P - 1)]).float()
    w = width / unit
    features = torch.stack([w, w * w, n_sep, cut_ends], 1)
    S = int(first.numel())
    arcs = torch.stack([first, last, torch.ones(S, dtype=torch.int64)], 1)
    arcs = torch.cat([arcs, torch.tensor([[P, P + 1, -1]])])
    seg_attr = torch.cat([torch.arange(S), torch.tensor([-1])])
    graph = gtn.Fsa(arcs, torch.zeros(S + 1), num_states=P + 2, segment=seg_attr)
    segments = torch.stack([first, last], 1)
    boxes = cuts[segments] if cuts is not None else torch.stack([lo, hi], 1)
    return Segmentation(segments=segments, boxes=boxes, features=features, graph=graph, unit=unit,
                        piece_map=piece_map, cuts=cuts, gap_cuts=gap, piece_component=comp)


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
    """Draw an image with its pieces and, when given, the segments of a path with their labels. ``"columns"``
    pieces: the candidate cuts (dashed: inside ink, dotted: in gaps) and a box per path segment;
    ``"components"`` pieces: the ink tinted by piece (three alternating shades), or by path segment when a path is
    given. Saves to ``out`` (PNG) when given; returns the matplotlib axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = as_float_image(image)
    if seg is None:
        seg = segment(x)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(3.0, x.shape[1] / 12), 2.2))
    colors = ["tab:red", "tab:green", "tab:blue", "tab:purple", "tab:olive", "tab:pink"]
    H = x.shape[0]
    if seg.cuts is not None:
        ax.imshow(x.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for c, g in zip(seg.cuts.tolist(), seg.gap_cuts.tolist()):
            ax.axvline(c - 0.5, color="tab:cyan" if g else "tab:orange", ls=":" if g else "--", lw=1)
    else:
        # tint: each pixel's ink in the colour of its piece (or of its path segment)
        pm = seg.piece_map
        if path_segments is not None:
            owner = torch.full((seg.num_pieces,), -1, dtype=torch.int64)
            for i, s_ in enumerate(path_segments):
                a_, b_ = seg.segments[s_].tolist()
                owner[a_:b_] = i
            shade = owner[pm]
            palette = [matplotlib.colors.to_rgb(c) for c in colors]
        else:
            shade = pm % 3
            palette = [matplotlib.colors.to_rgb(c) for c in ("tab:orange", "tab:cyan", "yellowgreen")]
        rgb = torch.zeros(H, x.shape[1], 3)
        for k, col in enumerate(palette):
            m = (shade % len(palette) == k) & (shade >= 0)
            rgb[m] = torch.tensor(col)
        rgb[shade < 0] = 1.0
        ax.imshow((x[..., None] * rgb).clamp(0, 1).numpy(), interpolation="nearest")
    if path_segments is not None:
        for i, s_ in enumerate(path_segments):
            x0, x1 = seg.boxes[s_].tolist()
            col = colors[i % len(colors)]
            if seg.cuts is not None:
                ax.add_patch(matplotlib.patches.Rectangle((x0 - 0.5, -0.5), x1 - x0, H, fill=False, ec=col,
                                                          lw=1.5))
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


def _piece_mass(piece_map: torch.Tensor, num_pieces: Optional[int], image, owner) -> Tuple[torch.Tensor, int]:
    """``(mass [P, L + 1], L)``: the ink (grey-level mass) of each digit in each piece of ``piece_map``; column
    ``L`` holds the ink no digit owns (noise). ``num_pieces=None``: one piece per digit (``P = L``)."""
    x = as_float_image(image)
    own = torch.as_tensor(owner).long()
    if own.shape != x.shape:
        raise ValueError(f"owner map {tuple(own.shape)} does not match the image {tuple(x.shape)}")
    L = int(own.max()) + 1
    if L <= 0:
        raise ValueError("the owner map names no digit")
    if num_pieces is None:   # the pieces are the digits
        num_pieces = L
    ink = x > INK_THRESHOLD
    pid = piece_map[ink]
    w = x[ink].double()
    k = own[ink]
    mass = torch.zeros(int(num_pieces), L + 1, dtype=torch.float64)
    mass.index_put_((pid, torch.where(k >= 0, k, torch.full_like(k, L))), w, accumulate=True)
    return mass, L


def grouping_bound(seg: Segmentation, image, owner: torch.Tensor, tolerance: float = 0.1) -> bool:
    """Whether *some* grouping of ``seg``'s pieces into the string's digits meets `true_path`'s test — any
    pieces together, in any order, not only runs of consecutive pieces: an upper bound on what any graph over
    these pieces could cover. Where it is ``False`` the pieces themselves mix two digits' ink beyond the
    tolerance, and no ordering or grouping of them helps; only other pieces would. (Ink no digit owns is left
    out of every group, which can only loosen the bound. Exact while the pieces owned by several digits have at
    most `GROUPING_LIMIT` assignments; beyond, each such piece is tried with its two main owners only.)"""
    mass, L = _piece_mass(seg.piece_map, seg.num_pieces, image, owner)
    return _groupable(mass[:, :L], tolerance)


def column_bound(image, owner: torch.Tensor, tolerance: float = 0.1) -> bool:
    """Whether straight vertical cuts across the whole image, at *some* columns, make the true segmentation
    (`true_path`'s test, the digits left to right as runs of columns): the most any segmentation graph of
    vertical cuts could cover, however many cuts it offered. A dynamic program over the digits, each step
    vectorised over all column ranges."""
    x = as_float_image(image)
    H, W = x.shape
    mass, L = _piece_mass(torch.arange(W)[None].expand(H, W), W, image, owner)   # a piece per column
    cum = torch.cat([torch.zeros(1, L + 1, dtype=torch.float64), mass.cumsum(0)])      # [W + 1, L + 1]
    span = cum[None, :, :] - cum[:, None, :]              # [a, b]: the ink of columns [a, b)
    total = span.sum(2)
    digit = mass[:, :L].sum(0)
    forward = torch.ones(W + 1, W + 1, dtype=torch.bool).triu(1)        # a < b
    reach = torch.zeros(W + 1, dtype=torch.bool)
    reach[0] = True
    for k in range(L):   # one step per digit
        ok = forward & (span[:, :, k] >= (1 - tolerance) * digit[k]) & (span[:, :, k] >= (1 - tolerance) * total)
        reach = (reach[:, None] & ok).any(0)
        if not bool(reach.any()):
            return False
    return bool(reach[W])


def row_cuts(image, owner) -> torch.Tensor:
    """The digit of every pixel under the top-to-bottom cuts that, row by row, give the least ink to the wrong
    digit: ``int64 [H, W]``, non-decreasing along each row (so the ``L - 1`` boundaries are non-crossing cut
    paths with one position per row, the form of `SegmentParams.cut_paths`' pieces, placed with the owner map's
    knowledge). Each row is one dynamic program over its columns (states: the digit a column goes to, never
    decreasing to the right), all rows at once; a pixel of the wrong digit costs its grey level, ink no digit
    owns and faint pixels cost nothing."""
    x, own, L = _image_and_owner(image, owner)
    H, W = x.shape
    mass = np.where((x > INK_THRESHOLD) & (own >= 0), x, 0.0)
    wrong = mass[:, :, None] * (own[:, :, None] != np.arange(L))                 # [H, W, L]
    idx = np.broadcast_to(np.arange(L), (H, L))
    back = np.zeros((H, W, L), dtype=np.int64)
    acc = np.full((H, L), np.inf)
    acc[:, 0] = 0.0
    for c in range(W):   # one step per column, all rows and digits at once
        best = np.minimum.accumulate(acc, axis=1)                                  # from any digit <= k
        back[:, c] = np.maximum.accumulate(np.where(acc <= best, idx, 0), axis=1)
        acc = best + wrong[:, c]
    digit = np.empty((H, W), dtype=np.int64)
    k = acc.argmin(1)                      # a row may end (and start) with any digit: only ink costs
    for c in range(W - 1, -1, -1):
        digit[:, c] = k
        k = back[np.arange(H), c, k]
    return torch.from_numpy(digit)


def row_cut_bound(image, owner: torch.Tensor, tolerance: float = 0.1) -> bool:
    """Whether the cut paths of `row_cuts` — top-to-bottom cuts placed row by row with the owner map's
    knowledge, each digit's pieces the columns between its two cuts — make the true segmentation (`true_path`'s
    test). One construction, not a search over all cut paths: where it says ``True``, cut paths in the right
    places would cover the string; its share over strings is a lower bound on what pieces of the cut-path form
    could cover (`column_bound` is the same question for straight vertical cuts, answered exactly)."""
    mass, L = _piece_mass(row_cuts(image, owner), None, image, owner)
    own = mass[:, :L].diagonal()                                   # digit k's ink among the pixels given to k
    return bool(((own >= (1 - tolerance) * mass[:, :L].sum(0)) & (own >= (1 - tolerance) * mass.sum(1))).all())


@dataclass
class CutGraph:
    """A segmentation graph whose states are **cuts** rather than piece boundaries (`cut_graph`): any two cuts
    in left-to-right order bound a segment, so cuts may cross each other, unlike the pieces' cuts.

    Attributes:
        cuts: ``int64 [N, H]`` each cut's position in every row (row ``y`` cut between columns ``p - 1`` and
            ``p``); cut 0 is the left edge (all 0), cut ``N - 1`` the right edge (all ``W``).
        ink_left: ``int64 [N, H]`` how many ink pixels of each row lie left of each cut (the cut's split of the
            ink; the cuts are sorted by its sum).
        arcs: ``bool [N, N]`` the segment arcs: ``arcs[a, b]`` when cut ``a`` lies left of cut ``b`` in every row
            (by the ink: ``ink_left[a] <= ink_left[b]``, the two not alike) and the ink between them is at most
            ``max_width`` × ``unit`` columns wide. Every path from cut 0 to cut ``N - 1`` covers the ink once.
        unit: the ink height (the unit of every length).
    """

    cuts: np.ndarray
    ink_left: np.ndarray
    arcs: np.ndarray
    unit: float

    @property
    def num_arcs(self) -> int:
        return int(self.arcs.sum())


def cut_graph(image, params: SegmentParams = SegmentParams(cut_paths=0.3, max_pieces=10, cut_starts="every"),
              merge: float = 0.0) -> CutGraph:
    """The least-ink cut paths started from every column of the whole image (those of `SegmentParams.cut_paths`,
    within ``params.cut_paths`` × unit of their start, one per run of ink at the start column), **none dropped**
    for crossing another or lying near it, as the states of a graph of cuts (`CutGraph`): a diagnostic of what
    the pieces' left-to-right order costs (`cut_graph_bound`). Cuts that split the ink alike are one state; with
    ``merge`` > 0, a cut is also dropped when fewer than ``merge`` × unit² ink pixels lie on different sides of it
    and of a cheaper cut kept (cheapest first, a loop over the cuts: this is a measurement, not a reader's path).
    ``params.max_width`` bounds the arcs' ink width. Raises ``ValueError`` when ``params.cut_paths`` is 0."""
    if params.cut_paths <= 0:
        raise ValueError("cut_graph follows cut paths: it needs params.cut_paths > 0")
    x = as_float_image(image).numpy().astype(np.float64)
    H, W = x.shape
    ink = x > INK_THRESHOLD
    unit = _unit(ink)
    radius = int(round(params.cut_paths * unit))
    paths, costs, _ = _anchored_paths([(x, np.arange(1, W), 0, W)], radius) if W > 1 else \
        (np.zeros((0, H), np.int64), np.zeros(0), None)
    return _graph_of_cuts(x, paths[np.argsort(costs, kind="stable")], unit, params.max_width, merge)


def _graph_of_cuts(x: np.ndarray, paths: np.ndarray, unit: float, max_width: float, merge: float) -> CutGraph:
    """The `CutGraph` of the cut paths ``paths [N, H]`` (earlier ones kept first when two split the ink alike)
    and the two edges of the image ``x``."""
    H, W = x.shape
    ink = x > INK_THRESHOLD
    paths = np.clip(paths, 0, W)
    rows = np.arange(H)
    edges = np.stack([np.zeros(H, np.int64), np.full(H, W)])
    cuts = np.concatenate([edges, paths])                                        # the edges always stay
    key = _ink_left(ink, cuts)                                                   # [N, H]
    _, first = np.unique(key, axis=0, return_index=True)                         # one cut per split of the ink
    keep = np.sort(first)
    if merge > 0:
        K = key[keep]
        apart = np.abs(K[:, None, :] - K[None, :, :]).sum(2) >= merge * unit * unit
        taken = np.zeros(len(keep), dtype=bool)
        taken[:2] = True                                                         # the edges
        for i in range(2, len(keep)):
            taken[i] = bool(apart[i, taken].all())
        keep = keep[taken]
    cuts, key = cuts[keep], key[keep]
    order = np.argsort(key.sum(1), kind="stable")                                # left edge first, right edge last
    cuts, key = cuts[order], key[order]
    total = key.sum(1)
    before = (key[:, None, :] <= key[None, :, :]).all(2) & (total[:, None] < total[None, :])
    # the ink columns of the segment between a and b: row y holds the ink pixels ranked key[a, y]..key[b, y] - 1
    rank_col = np.full((H, W + 1), W, dtype=np.int64)                            # column of the r-th ink pixel
    ys, xs = np.nonzero(ink)
    rank_col[ys, np.cumsum(ink, 1)[ys, xs] - 1] = xs                            # (its rank: ink left of it)
    some = key[None, :, :] > key[:, None, :]                                     # [a, b, H] row y has ink there
    lo = np.where(some, rank_col[rows, key][:, None, :], W).min(2)
    hi = np.where(some, rank_col[rows, np.maximum(key - 1, 0)][None, :, :], -1).max(2)
    arcs = before & (hi - lo + 1 <= max_width * unit)
    return CutGraph(cuts=cuts, ink_left=key, arcs=arcs, unit=unit)


def cut_graph_bound(image, owner: torch.Tensor, params: SegmentParams = SegmentParams(cut_paths=0.3, max_pieces=10,
                    cut_starts="every"), merge: float = 0.0, tolerance: float = 0.1,
                    graph: Optional[CutGraph] = None) -> bool:
    """Whether `cut_graph`'s graph of cuts holds the true segmentation (`true_path`'s test): a chain of cuts from
    the left edge to the right edge whose ``L`` segments are the ``L`` digits in order. A dynamic program over
    the digits, each step vectorised over all pairs of cuts (a segment's ink per digit is a difference of the
    two cuts' sums, since the cuts split each row's ink into a prefix and the rest). ``graph``: a `cut_graph`
    of this image already made."""
    g = cut_graph(image, params, merge) if graph is None else graph
    x, own, L = _image_and_owner(image, owner)
    H, W = x.shape
    ink = x > INK_THRESHOLD
    ys, xs = np.nonzero(ink)
    mass = np.zeros((H, W + 1, L + 1))                                           # ink by rank in its row, per digit
    rank = np.cumsum(ink, 1)[ys, xs] - 1                                         # ink left of each pixel
    mass[ys, rank + 1, np.where(own[ys, xs] >= 0, own[ys, xs], L)] = x[ys, xs]
    cum = np.cumsum(mass, 1)                                                     # [H, W + 1, L + 1]
    M = cum[np.arange(H)[None, :], g.ink_left].sum(1)                            # [N, L + 1] ink left of each cut
    seg = M[None, :, :] - M[:, None, :]                                          # [a, b, L + 1]
    total = seg.sum(2)
    digit = M[-1, :L]
    reach = np.zeros(len(M), dtype=bool)
    reach[0] = True
    for k in range(L):   # one step per digit
        ok = g.arcs & (seg[:, :, k] >= (1 - tolerance) * digit[k]) & (seg[:, :, k] >= (1 - tolerance) * total)
        reach = (reach[:, None] & ok).any(0)
        if not reach.any():
            return False
    return bool(reach[-1])


def true_boundaries(image, owner) -> np.ndarray:
    """``int64 [L - 1, H]``: the boundaries between neighbouring digits that `row_cuts` places with the owner
    map's knowledge, as cut paths (the cut position in every row: digits ``< k`` left of boundary ``k - 1``)."""
    digits = row_cuts(image, owner).numpy()
    L = int(digits.max()) + 1
    return np.stack([(digits < k).sum(1) for k in range(1, L)]) if L > 1 else np.zeros((0, digits.shape[0]),
                                                                                      np.int64)


def boundary_distance(xc: np.ndarray, paths: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``float64 [N]``: for each cut path of ``paths [N, H]``, the ink pixels of ``xc`` (grey levels above the ink
    threshold) it puts on the other side than the nearest of the cut paths ``bounds [B, H]`` does (the ink left
    of a cut in a row is a prefix of the row's ink, so this is a difference of counts, summed over the rows);
    ``inf`` when there are no ``bounds``."""
    H, W = xc.shape
    if not len(bounds):
        return np.full(len(paths), np.inf)
    ink = xc > INK_THRESHOLD
    key, true = _ink_left(ink, paths), _ink_left(ink, bounds)
    return np.abs(key[:, None, :] - true[None, :, :]).sum(2).min(1).astype(np.float64)


def truth_ranked_segment(image, owner: torch.Tensor, params: SegmentParams = SegmentParams(
        cut_paths=0.3, max_pieces=10, cut_starts="every")) -> Segmentation:
    """`segment` with ``params`` (cut paths; by default started from every column), its candidate cut paths taken
    not cheapest first but nearest first to the true boundaries — those of `row_cuts` (the owner map's), in ink
    pixels of the component split otherwise, summed over the rows — with the same rules for dropping paths that
    cross or lie near one already taken: the graph a perfect ranking of the candidates would give, of the same
    form and about the same size (`ranked_path_bound`)."""
    if params.pieces != "components" or params.cut_paths <= 0:
        raise ValueError("ranking cut paths needs pieces='components' and cut_paths > 0")
    bounds = true_boundaries(image, owner)                      # (checks the owner map)

    def nearest_first(x, unit, job, paths, costs):
        if not len(bounds):
            return costs
        return boundary_distance(job[0], paths, bounds) + 1e-6 * costs    # ties: the cheapest

    return _segment(image, params, nearest_first)


def ranked_path_bound(image, owner: torch.Tensor, params: SegmentParams = SegmentParams(
        cut_paths=0.3, max_pieces=10, cut_starts="every"), tolerance: float = 0.1) -> bool:
    """Whether `truth_ranked_segment`'s graph — the candidate cut paths of ``params`` ranked by their closeness
    to the true boundaries instead of their ink cost — holds the true segmentation (`true_path`'s test): what
    ranking the same candidates better could cover with a graph of the same form (`cut_graph_bound` keeps every
    candidate instead, at many times the arcs)."""
    return true_path(truth_ranked_segment(image, owner, params), image, owner, tolerance) is not None


def owner_apart(owner) -> Tuple[np.ndarray, np.ndarray]:
    """The owner map's answer to what `lenet.boundary_net.BoundaryNet.apart` guesses: ``(across [H, W],
    under [H - 1, W])``, 1 where pixel ``(y, p)`` and its left neighbour (``across``), or ``(y, x)`` and the pixel
    below (``under``), are owned by two different digits, else 0."""
    own = np.asarray(torch.as_tensor(owner).long())
    if own.ndim != 2:
        raise ValueError(f"an owner map is [H, W], not {tuple(own.shape)}")
    owned = own >= 0
    across = np.zeros(own.shape)
    across[:, 1:] = (own[:, 1:] != own[:, :-1]) & owned[:, 1:] & owned[:, :-1]
    under = ((own[1:] != own[:-1]) & owned[1:] & owned[:-1]).astype(np.float64)
    return across, under


def owner_cost_segment(image, owner: torch.Tensor, params: SegmentParams = SegmentParams(
        cut_paths=0.3, max_pieces=10, cut_starts="every")) -> Segmentation:
    """`segment` with ``params`` (cut paths; by default from every column), severing two inked pixels of different
    digits (`owner_apart`) free: the graph a perfect `lenet.boundary_net` would give (``cut_cost="learned"``
    with the owner map's knowledge), of the same form (`owner_cost_bound`)."""
    if params.pieces != "components" or params.cut_paths <= 0:
        raise ValueError("pricing cut paths needs pieces='components' and cut_paths > 0")
    _, own, _ = _image_and_owner(image, owner)      # (checks the owner map)
    return _segment(image, params, apart=owner_apart(own))


def owner_cost_bound(image, owner: torch.Tensor, params: SegmentParams = SegmentParams(
        cut_paths=0.3, max_pieces=10, cut_starts="every"), tolerance: float = 0.1) -> bool:
    """Whether `owner_cost_segment`'s graph holds the true segmentation (`true_path`'s test): what a perfect
    learned cut cost could cover with cut paths of ``params``' form."""
    return true_path(owner_cost_segment(image, owner, params), image, owner, tolerance) is not None


#: `_groupable` tries every assignment of the mixed pieces up to this many; beyond, each mixed piece may go
#: only to the two digits owning most of its ink.
GROUPING_LIMIT = 1 << 16


def _groupable(owned: torch.Tensor, tolerance: float) -> bool:
    """``owned [P, L]``: digit ``k``'s ink in piece ``p``. Is there an assignment of pieces to digits where each
    digit's group holds ≥ 1 − tolerance of its ink and ≥ 1 − tolerance of the group's ink is its own? A piece
    need only be tried with the digits owning some of its ink (giving it to another digit adds ink foreign to
    that group and nothing of its own); every such assignment of the pieces owned by two or more digits is tried
    at once, as one tensor."""
    P, L = owned.shape
    digit = owned.sum(0)
    has = owned > 0
    n_own = has.sum(1)
    pure = n_own == 1
    group_in = torch.zeros(L, dtype=owned.dtype)
    group_tot = torch.zeros(L, dtype=owned.dtype)
    k_pure = owned[pure].argmax(1)
    group_in.index_add_(0, k_pure, owned[pure].gather(1, k_pure[:, None])[:, 0])
    group_tot.index_add_(0, k_pure, owned[pure].sum(1))
    mixed = torch.nonzero(n_own > 1).flatten()
    cands = [torch.nonzero(has[p]).flatten() for p in mixed.tolist()]
    if int(np.prod([len(c) for c in cands], dtype=np.float64)) > GROUPING_LIMIT:
        cands = [torch.sort(owned[p].topk(2).indices).values for p in mixed.tolist()]
    if cands:
        grids = torch.meshgrid(*cands, indexing="ij")            # every assignment of the mixed pieces
        choice = torch.stack([g.reshape(-1) for g in grids], 1)  # [C, M] the digit of each mixed piece
        C = choice.shape[0]
        rows = owned[mixed]                                      # [M, L]
        got = rows.gather(1, choice.T).T                         # [C, M] each piece's ink of its digit
        tot = rows.sum(1).expand(C, -1)
        gin = group_in.expand(C, L).clone().scatter_add_(1, choice, got)
        gtot = group_tot.expand(C, L).clone().scatter_add_(1, choice, tot)
    else:
        gin, gtot = group_in[None], group_tot[None]
    ok = (gin >= (1 - tolerance) * digit) & (gin >= (1 - tolerance) * gtot)
    return bool(ok.all(1).any())


def true_path(seg: Segmentation, image, owner: torch.Tensor, tolerance: float = 0.1):
    """The segments of a complete path of ``seg.graph`` that is the true segmentation, or ``None``.

    ``owner`` is the renderer's owner map (``int [H, W]``: the digit owning each inked pixel, ``-1`` for none;
    `lenet.strings.render_string`). Segment ``s`` *is* digit ``k`` when at least ``1 - tolerance`` of digit
    ``k``'s ink (grey-level mass) lies in ``s`` and at least ``1 - tolerance`` of ``s``'s ink is digit ``k``'s.
    A path is true when its ``L`` segments are the ``L`` digits in order. One pass over the arcs per digit.
    """
    mass, L = _piece_mass(seg.piece_map, seg.num_pieces, image, owner)
    P = seg.num_pieces
    cum = torch.cat([torch.zeros(1, L + 1, dtype=torch.float64), mass.cumsum(0)])
    first, last = seg.segments[:, 0], seg.segments[:, 1]
    seg_mass = cum[last] - cum[first]                          # [S, L + 1]
    total = seg_mass.sum(1)
    digit = mass[:, :L].sum(0)                                 # [L]
    match = (seg_mass[:, :L] >= (1 - tolerance) * digit[None]) & \
            (seg_mass[:, :L] >= (1 - tolerance) * total[:, None])          # [S, L]
    reach = torch.zeros(L + 1, P + 1, dtype=torch.bool)
    reach[0, 0] = True
    back = torch.full((L + 1, P + 1), -1, dtype=torch.int64)
    for d in range(L):   # one step per digit, vectorised over the segment arcs
        ok = match[:, d] & reach[d, first]
        if not bool(ok.any()):
            return None
        idx = torch.nonzero(ok).flatten()
        reach[d + 1, last[idx]] = True
        back[d + 1, last[idx]] = idx
    if not bool(reach[L, P]):
        return None
    path, state = [], P
    for d in range(L, 0, -1):
        s = int(back[d, state])
        path.append(s)
        state = int(first[s])
    return path[::-1]


def coverage(strings, params: SegmentParams = SegmentParams(), tolerance: float = 0.1) -> dict:
    """Share of ``strings`` (`lenet.strings.DigitString` with owner maps) whose true segmentation is a path of
    their segmentation graph (`true_path`), with the graph sizes, the share whose pieces some grouping could
    make the true segmentation (`grouping_bound`: the most any graph over these pieces could cover) and the
    share that vertical cuts at some columns could segment truly (`column_bound`: the most any graph of
    vertical cuts could cover): ``{"coverage", "covered", "strings", "arcs_per_string", "pieces_per_string",
    "grouping_bound", "column_bound"}``."""
    covered, groupable, columns, arcs, pieces = 0, 0, 0, 0, 0
    for s in strings:
        if s.owner is None:
            raise ValueError("coverage needs strings with owner maps (lenet.strings.make_strings makes them)")
        seg = segment(s.image, params)
        covered += true_path(seg, s.image, s.owner, tolerance) is not None
        groupable += grouping_bound(seg, s.image, s.owner, tolerance)
        columns += column_bound(s.image, s.owner, tolerance)
        arcs += seg.num_segments
        pieces += seg.num_pieces
    n = max(len(strings), 1)
    return {"coverage": covered / n, "covered": covered, "strings": len(strings), "arcs_per_string": arcs / n,
            "pieces_per_string": pieces / n, "grouping_bound": groupable / n, "column_bound": columns / n}
