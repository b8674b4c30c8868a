"""A learned ranking of candidate cut paths: ``SegmentParams(cut_rank="learned")``.

With cut paths on (`lenet.segment`, ``cut_paths > 0``) the segmenter finds candidate paths — one least-ink path
per start column and run of ink there — and keeps a non-crossing, spaced subset of them, taken in order:
cheapest first by default (``cut_rank="ink"``). Where strokes of two digits lie on each other, the true boundary
severs more ink than a path that goes round the shared stroke through a digit's inside, so the cheaper wrong
path is kept and the true one dropped for crossing it. Taken instead in the order of their closeness to the
*true* boundaries (`lenet.segment.truth_ranked_segment`), the same candidates make a graph of the same form and
about the same size that covers far more strings (`benchmarks/segmentation.py --bounds`).

`CutRanker` learns that order: a small convolutional network that looks at the image along each path — a strip
``STRIP_COLS`` pixels wide at the image's own resolution, straightened so that the path runs between its two
middle columns, ``STRIP_ROWS`` rows; one channel the component's ink, one the whole image's — with three
numbers (the path's ink cost, its sideways spread, its place in the component), and scores it. It is trained on
pairs of candidates the segmenter must choose between (crossing, or closer than the spacing), the one nearer a
true boundary to score higher (a logistic loss on the difference), where that one lies within ``NEAR`` × unit²
ink pixels of a boundary: those are the choices that make or break a boundary. The strings are drawn from
**training** digits in the renderer's wide mix of styles (`lenet.strings.RenderRanges`), half of them with
touching pairs weighted up; the true boundaries come from the renderer's owner maps (`lenet.segment.row_cuts`).
`examples/train_cut_ranker.py` makes the weights the package ships (``lenet/data/cut_ranker.pt``, loaded by
`default_ranker`).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CutRanker", "path_strips", "cut_examples", "train_cut_ranker", "default_ranker", "DEFAULT_RANKER_PATH"]

#: The strip along a path: rows (the image's height, resampled) and columns (pixels at the image's resolution,
#: the path between the two middle ones, so that paths a pixel apart look different).
STRIP_ROWS, STRIP_COLS = 32, 24
#: Pairs the loss learns from: the better path at most this × unit² ink pixels from a true boundary.
NEAR = 0.02
#: Of two clashing paths, the better must be at least this many ink pixels nearer a true boundary to make a pair.
MARGIN = 2
#: At most this many pairs per component (drawn at random) enter the training examples.
PAIRS_PER_COMPONENT = 200
#: The weights the package ships.
DEFAULT_RANKER_PATH = Path(__file__).resolve().parent / "data" / "cut_ranker.pt"


class CutRanker(nn.Module):
    """Scores candidate cut paths (higher: to be kept first) from `path_strips`' strips and numbers. ``width``:
    channels of the first convolution (the second has twice as many)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.width = width
        # strided convolutions, not max-pooling: no less coverage on the validation strings, a fraction of the cost
        self.conv = nn.Sequential(nn.Conv2d(2, width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        n = 2 * width * (STRIP_ROWS // 4) * (STRIP_COLS // 4)
        self.head = nn.Sequential(nn.Linear(n + 3, 4 * width), nn.ReLU(), nn.Linear(4 * width, 1))

    def forward(self, strips: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """``strips [N, 2, STRIP_ROWS, STRIP_COLS]``, ``numbers [N, 3]`` → scores ``[N]``."""
        h = self.conv(strips).flatten(1)
        return self.head(torch.cat([h, numbers], 1))[:, 0]

    @torch.no_grad()
    def priority(self, x: np.ndarray, xc: np.ndarray, paths: np.ndarray, costs: np.ndarray, c0: int, c1: int,
                 unit: float) -> np.ndarray:
        """The order in which the segmenter takes one component's paths (lowest first): minus their scores."""
        strips, numbers = path_strips(x, xc, paths, costs, c0, c1, unit)
        return -self(strips, numbers).double().numpy()


def path_strips(x: np.ndarray, xc: np.ndarray, paths: np.ndarray, costs: np.ndarray, c0: int, c1: int,
                unit: float):
    """The network's input for the cut paths ``paths [N, H]`` of one component (grey image ``xc``, 0 outside it,
    columns ``[c0, c1)``) of the image ``x``: ``strips float32 [N, 2, STRIP_ROWS, STRIP_COLS]`` — ``xc`` and ``x``
    at the pixel centres either side of each path (row ``y`` cut at column ``paths[:, y]``), ``STRIP_ROWS`` of the
    image's rows evenly spaced (repeated where the image has fewer) — and ``numbers float32 [N, 3]``: the path's
    ink cost / unit, its sideways spread (max − min column) / unit and its mean column's place in the component
    (0 at ``c0``, 1 at ``c1``). One ``grid_sample`` for all paths."""
    H, W = x.shape
    N = len(paths)
    rows = np.minimum(((np.arange(STRIP_ROWS) + 0.5) * H / STRIP_ROWS).astype(np.int64), H - 1)   # image rows
    t = np.arange(STRIP_COLS) - STRIP_COLS // 2 + 0.5                      # pixel centres either side of the cut
    sx = paths[:, rows].astype(np.float64)[:, :, None] + t[None, None, :]  # [N, R, C] source column
    sy = np.broadcast_to(rows[None, :, None] + 0.5, sx.shape)              # the rows' own pixel centres
    grid = torch.from_numpy(np.stack([2 * sx / W - 1, 2 * sy / H - 1], -1)).float()   # align_corners=False
    img = torch.from_numpy(np.stack([xc, x]).astype(np.float32))[None].expand(N, 2, H, W)
    strips = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    spread = (paths.max(1) - paths.min(1)) / unit
    place = (paths.mean(1) - c0) / max(c1 - c0, 1)
    numbers = torch.from_numpy(np.stack([np.asarray(costs, dtype=np.float64) / unit, spread, place], 1)).float()
    return strips, numbers


def cut_examples(strings: Sequence, params, seed: int = 0) -> dict:
    """The candidate cut paths the segmenter with ``params`` meets on ``strings`` (with owner maps), as training
    examples: ``{"strips", "numbers", "apart", "pairs"}`` — ``apart [N]``: each path's
    `lenet.segment.boundary_distance` to the true boundaries / unit²; ``pairs [M, 2]``: indices of two paths of
    one component that the segmenter must choose between (crossing, or closer than its spacing), the first at
    least ``MARGIN`` ink pixels nearer a true boundary (at most ``PAIRS_PER_COMPONENT`` per component, drawn
    with ``seed``). Components with a single candidate are left out (there is nothing to rank)."""
    from .segment import _compatible, _piece_lengths, _segment, boundary_distance, true_boundaries
    strips, numbers, aparts, pairs = [], [], [], []
    offset = 0
    rng = np.random.default_rng(seed)
    for s in strings:
        bounds = true_boundaries(s.image, s.owner)

        def record(x, unit, job, paths, costs):
            nonlocal offset
            xc, _, c0, c1 = job
            if len(paths) > 1:
                clash = ~_compatible(paths, _piece_lengths(unit, params)[0])   # the segmenter's spacing
                d = boundary_distance(xc, paths, bounds)
                i, j = np.nonzero(clash & (d[:, None] + MARGIN <= d[None, :]))
                if len(i) > PAIRS_PER_COMPONENT:
                    pick = rng.choice(len(i), PAIRS_PER_COMPONENT, replace=False)
                    i, j = i[pick], j[pick]
                st, nu = path_strips(x, xc, paths, costs, c0, c1, unit)
                strips.append(st)
                numbers.append(nu)
                aparts.append(torch.from_numpy(d / (unit * unit)).float())
                pairs.append(torch.from_numpy(np.stack([i, j], 1) + offset).long())
                offset += len(paths)
            return costs                                # the segmentation itself is left as it is

        _segment(s.image, params, record)
    if not strips:
        raise ValueError("no component with two or more candidate cut paths in these strings")
    return {"strips": torch.cat(strips), "numbers": torch.cat(numbers), "apart": torch.cat(aparts),
            "pairs": torch.cat(pairs)}


def train_cut_ranker(examples: dict, epochs: int = 8, batch_size: int = 512, lr: float = 2e-3, width: int = 16,
                     seed: int = 0, progress: Optional[Callable[[int, float], None]] = None) -> CutRanker:
    """Fit a `CutRanker` to `cut_examples`: for each pair whose better path lies within ``NEAR`` of a true
    boundary, the logistic loss ``softplus(score(worse) - score(better))``; Adam, the learning rate halved for each
    epoch of the second half; mini-batches of ``batch_size`` pairs. Deterministic in ``seed`` (for a given torch
    build and thread count). ``progress(epoch, mean loss)`` is called after each epoch."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CutRanker(width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    pairs = examples["pairs"]
    pairs = pairs[examples["apart"][pairs[:, 0]] <= NEAR]
    if not len(pairs):
        raise ValueError("no pair of candidates near a true boundary to learn from")
    for epoch in range(epochs):
        for pg in opt.param_groups:
            pg["lr"] = lr * (0.5 ** max(0, epoch - epochs // 2))
        order = torch.randperm(len(pairs), generator=g)
        total = 0.0
        for i in range(0, len(pairs), batch_size):   # mini-batches (a loop over batches, not over paths)
            pr = pairs[order[i:i + batch_size]]
            idx, inv = torch.unique(pr.flatten(), return_inverse=True)
            score = model(examples["strips"][idx], examples["numbers"][idx])[inv.view(-1, 2)]
            loss = F.softplus(score[:, 1] - score[:, 0]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(pr)
        if progress is not None:
            progress(epoch, total / len(pairs))
    return model.eval()


def save_ranker(model: CutRanker, path) -> None:
    """Write ``model``'s weights and width (what `default_ranker` reads)."""
    torch.save({"kind": "cut_ranker", "width": model.width, "strip": [STRIP_ROWS, STRIP_COLS],
                "model": model.state_dict()}, path)


@lru_cache(maxsize=None)
def _load(path: str) -> CutRanker:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no cut ranker weights at {path}: make them with examples/train_cut_ranker.py")
    if not isinstance(state, dict) or state.get("kind") != "cut_ranker":
        raise ValueError(f"{path} is not a cut ranker (examples/train_cut_ranker.py writes them)")
    if list(state["strip"]) != [STRIP_ROWS, STRIP_COLS]:
        raise ValueError(f"{path} was trained on {state['strip']} strips, this version makes "
                         f"{[STRIP_ROWS, STRIP_COLS]}")
    model = CutRanker(int(state["width"]))
    model.load_state_dict(state["model"])
    return model.eval()


def default_ranker(path: Optional[str] = None) -> CutRanker:
    """The shipped `CutRanker` (``lenet/data/cut_ranker.pt``), or the one saved at ``path``; loaded once."""
    return _load(str(DEFAULT_RANKER_PATH if path is None else Path(path).resolve()))
