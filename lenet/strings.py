"""Images of handwritten digit strings, rendered from isolated digits (the multi-digit reader's data).

A string image is ``uint8 [height, width]``, white ink on black like MNIST, of fixed height (default 32) and
a width that depends on the digits. Neighbouring digits are placed with random horizontal gaps, and a share
of them (``touch``, default 30 %) **touch or overlap**: their ink bounding boxes are 0 to ``max_overlap``
columns apart or overlap by that much, composited with ``max`` so overlapping strokes merge as ink does.
Each digit also gets a small random size change and vertical shift, and optional salt-and-pepper noise.

The renderer returns the true column extent of each digit (``extents[i] = (x0, x1)``, ``x1`` exclusive) so that
tests can check segmentation against the truth; the reader itself is trained from the label strings only.

Everything is driven by a ``torch.Generator``: the same seed gives the same strings. No random draw depends
on the drawing (the noise's count on the digits' ink boxes at most), so `make_strings` makes all the draws
first and draws the images after; ``lazy=True`` draws an image when it is first indexed, so a process of a
data-parallel job renders only its share. ``make_strings`` draws the digits of one split only (``"test"`` for
evaluation strings, ``"train"`` for training strings), so a reader evaluated on test strings never saw any of
their digits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import inspect
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DigitString", "RenderRanges", "StringSet", "render_string", "make_strings", "touching_fraction", "GRID"]

#: A pixel is a digit's ink (for the owner map) where its grey level is above this fraction of full ink.
OWNER_THRESHOLD = 0.1


@dataclass
class DigitString:
    """One rendered string: ``image`` ``uint8 [H, W]``, ``label`` (e.g. ``"3081"``), ``extents`` ``int64 [L, 2]``
    (the column range ``[x0, x1)`` of each digit's ink, left to right) and, from `make_strings`, ``sources``
    ``int64 [L]``: the row of each digit in the digit set it was drawn from (``None`` when unknown)."""

    image: torch.Tensor
    label: str
    extents: torch.Tensor
    sources: Optional[torch.Tensor] = None
    owner: Optional[torch.Tensor] = None
    style: Optional[dict] = None


@dataclass(frozen=True)
class RenderRanges:
    """What varies from string to string, and over which range: each string draws its own setting of every
    field, uniformly in the range (integers inclusive), and passes it to `render_string`.

    The defaults are the mix the default reader is trained on; they span the evaluation grid (`GRID`) and more.
    Set a field to a one-point range (``(2, 2)``) to fix it.
    """

    max_overlap: Tuple[int, int] = (0, 4)        #: columns by which touching neighbours' ink boxes may overlap
    touch: Tuple[float, float] = (0.0, 0.6)      #: share of neighbouring pairs that touch or overlap
    height: Tuple[int, int] = (24, 40)           #: image height; the digits scale with it
    scale: Tuple[float, float] = (0.8, 1.15)     #: per-digit size factor, drawn inside the string's range
    slant: Tuple[float, float] = (-15.0, 15.0)   #: degrees, one per string (one writer's slant)
    thickness: Tuple[float, float] = (-0.5, 1.0)  #: stroke thickness change (see `render_string`)
    shift: Tuple[int, int] = (0, 3)              #: largest vertical jitter of a digit, pixels at height 32

    def draw(self, g: torch.Generator) -> dict:
        """One string's settings, drawn from ``g``."""
        lo_s = _uniform(self.scale[0], self.scale[1], g)
        hi_s = _uniform(self.scale[0], self.scale[1], g)
        return dict(max_overlap=_randint(*self.max_overlap, g), touch=_uniform(*self.touch, g),
                    height=_randint(*self.height, g), scale=(min(lo_s, hi_s), max(lo_s, hi_s)),
                    slant=_uniform(*self.slant, g), thickness=_uniform(*self.thickness, g),
                    shift=_randint(*self.shift, g))


def _grid():
    cells = []
    for height in (24, 32, 40):
        cells.append(dict(max_overlap=0, touch=0.0, height=height))
        for touch in (0.3, 0.6):
            for overlap in range(5):
                cells.append(dict(max_overlap=overlap, touch=touch, height=height))
    return cells


#: The evaluation grid of rendering settings (`render_string` keywords): heights 24, 32, 40 × (no touching
#: pairs, or 30 % / 60 % of pairs touching with boxes overlapping by up to 0..4 columns) — 33 cells.
GRID = _grid()


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g))


def _randint(lo: int, hi: int, g: torch.Generator) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _ink_crop(digit: torch.Tensor) -> torch.Tensor:
    """The tight ink box of one ``[28, 28]`` digit (the whole image when it has no ink)."""
    rows = torch.nonzero(digit.amax(1) > 0).flatten()
    cols = torch.nonzero(digit.amax(0) > 0).flatten()
    if rows.numel() == 0:
        return digit
    return digit[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]


def render_string(digits: torch.Tensor, generator: Optional[torch.Generator] = None, *, height: int = 32,
                  touch: float = 0.3, max_overlap: int = 2, gap: Tuple[int, int] = (1, 5),
                  scale: Tuple[float, float] = (0.85, 1.1), shift: int = 2, margin: Tuple[int, int] = (2, 5),
                  noise: float = 0.0, slant: float = 0.0, thickness: float = 0.0, return_owner: bool = False):
    """Render digit images side by side as one string image.

    Args:
        digits: ``uint8 [L, 28, 28]`` isolated digits (MNIST layout), left to right.
        generator: the random source (a fresh default generator when ``None``).
        height: image height; digits are vertically centred (± ``shift``) and must fit.
        touch: probability that a pair of neighbours touches or overlaps (bounding boxes ``-max_overlap .. 0``
            columns apart); otherwise the gap is uniform in ``gap`` (inclusive, in columns).
        scale: range of the random size factor per digit (the paper's strings vary in size too).
        shift: largest vertical displacement of a digit, in pixels.
        margin: range of the blank border left and right of the string.
        noise: fraction of pixels flipped to salt (255) or pepper (0); 0 for none.
        slant: shear of every digit, in degrees (positive leans the tops to the right), as one writer's slant.
        thickness: stroke thickness change in -1..1: ``t > 0`` blends each digit towards its 3×3 grey dilation
            by ``t`` (bolder strokes, about ``t`` pixel wider), ``t < 0`` towards its erosion (thinner).
        return_owner: also return the owner map.

    The digit size is proportional to ``height`` (its ink is about ``20/32 × height`` rows tall, times the
    random ``scale``), so another ``height`` is the same string drawn at another resolution; distances in
    columns (``gap``, ``max_overlap``, ``margin``) and ``shift`` are in pixels at ``height = 32`` and scale
    with it too.

    Returns:
        ``(image uint8 [height, W], extents int64 [L, 2])``, and with ``return_owner`` a third tensor
        ``owner int8 [height, W]``: the digit (0..L-1) whose own ink is strongest at each pixel where it is
        visible ink (grey level > 0.1), ``-1`` elsewhere — the true segmentation of the pixels.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(torch.seed() % 2**63)
    _check(digits, height, thickness, slant)
    layout = _draw_layout(len(digits), g, height=height, touch=touch, max_overlap=max_overlap, gap=gap,
                          scale=scale, shift=shift, margin=margin)
    canvas, extents, owner = _compose(digits, layout, height=height, slant=slant, thickness=thickness,
                                      return_owner=return_owner)
    u = torch.rand(canvas.shape, generator=g).numpy() if noise > 0 else None
    image = _finish(canvas, owner, noise, u)
    if owner is not None:
        return torch.from_numpy(image), torch.from_numpy(extents), torch.from_numpy(owner)
    return torch.from_numpy(image), torch.from_numpy(extents)


def _check(digits: torch.Tensor, height: int, thickness: float, slant: float) -> None:
    if digits.dim() != 3 or digits.dtype != torch.uint8:
        raise ValueError(f"digits must be uint8 [L, H, W], got {digits.dtype} {tuple(digits.shape)}")
    if len(digits) == 0:
        raise ValueError("cannot render an empty string")
    _check_settings(height, thickness, slant)


def _check_settings(height: int, thickness: float, slant: float) -> None:
    if height < 8:
        raise ValueError(f"height must be at least 8, got {height}")
    if not -1.0 <= thickness <= 1.0:
        raise ValueError(f"thickness must lie in -1..1, got {thickness}")
    if not -45.0 < slant < 45.0:
        raise ValueError(f"slant must lie strictly between -45 and 45 degrees, got {slant}")


@dataclass(frozen=True)
class _Layout:
    """A string's random geometry, drawn before any pixel is drawn: each digit's size factor (× height/32)
    and vertical jitter, the left margin, the step before each digit after the first (a gap, or a touch or
    overlap when negative or zero) and the right margin."""

    scales: Tuple[float, ...]
    jitters: Tuple[int, ...]
    left: int
    steps: Tuple[int, ...]
    right: int
    shift_px: int


def _draw_layout(count: int, g: torch.Generator, *, height: int = 32, touch: float = 0.3, max_overlap: int = 2,
                 gap: Tuple[int, int] = (1, 5), scale: Tuple[float, float] = (0.85, 1.1), shift: int = 2,
                 margin: Tuple[int, int] = (2, 5)) -> _Layout:
    """Every draw `render_string` makes before its noise, in its order (a digit's size then its jitter, digit
    by digit; the left margin; touch-or-gap then its width, pair by pair; the right margin): none depends on a
    pixel, so the draws of a string can be made without rendering it."""
    k = height / 32.0                       # lengths below are in pixels at height 32
    shift_px = int(round(shift * k))
    scales, jitters = [], []
    for _ in range(count):
        scales.append(_uniform(scale[0], scale[1], g) * k)
        jitters.append(_randint(-shift_px, shift_px, g))
    left = _randint(round(margin[0] * k), round(margin[1] * k), g)
    steps = []
    for _ in range(count - 1):
        if float(torch.rand((), generator=g)) < touch:
            steps.append(_randint(-int(round(max_overlap * k)), 0, g))
        else:
            steps.append(_randint(round(gap[0] * k), round(gap[1] * k), g))
    right = _randint(round(margin[0] * k), round(margin[1] * k), g)
    return _Layout(tuple(scales), tuple(jitters), left, tuple(steps), right, shift_px)


def _piece_size(crop_shape: Tuple[int, int], s: float, height: int, shift_px: int, thickness: float,
                slant: float) -> Tuple[int, int]:
    """The ``(rows, columns)`` of a digit's piece (`_compose`) from its ink box alone, without drawing it."""
    h = max(1, round(crop_shape[0] * s))
    w = max(1, round(crop_shape[1] * s))
    h = max(1, min(h, height - 2 * shift_px))
    if thickness > 0:        # the dilation pads a pixel all round
        h, w = h + 2, w + 2
    if slant != 0.0:
        w += int(math.ceil(abs(math.tan(math.radians(slant))) * h))
    return h, w


def _width(digits: torch.Tensor, layout: _Layout, height: int, slant: float, thickness: float) -> int:
    """The width of the image `_compose` draws, from the digits' ink boxes alone."""
    widths = [_piece_size(tuple(_ink_crop(d).shape), s, height, layout.shift_px, thickness, slant)[1]
              for d, s in zip(digits, layout.scales)]
    return layout.left + sum(widths) + sum(layout.steps) + layout.right


def _compose(digits: torch.Tensor, layout: _Layout, *, height: int, slant: float, thickness: float,
             return_owner: bool):
    """Draw the digits at ``layout``: ``(image uint8 [height, W], extents int64 [L, 2], owner int8 or None)``
    as numpy arrays. Draws nothing random."""
    pieces, ys = [], []
    for d, s, dy in zip(digits, layout.scales, layout.jitters):
        crop = _ink_crop(d).float()
        h = max(1, round(crop.shape[0] * s))
        w = max(1, round(crop.shape[1] * s))
        h = max(1, min(h, height - 2 * layout.shift_px))
        img = F.interpolate(crop[None, None], size=(h, w), mode="bilinear", align_corners=False,
                            antialias=True)[0, 0]
        if thickness != 0.0:
            img = _thicken(img, thickness)
        if slant != 0.0:
            img = _shear(img, slant)
        pieces.append(img)
        ys.append((height - img.shape[0]) // 2 + dy)
    xs, x = [], layout.left
    for i, p in enumerate(pieces):
        if i > 0:
            x += layout.steps[i - 1]
        xs.append(x)
        x += p.shape[1]
    width = x + layout.right
    # composite in numpy: tiny arrays, and torch's thread pool costs more than the work here
    canvas = np.zeros((height, width), dtype=np.float32)
    extents = np.zeros((len(pieces), 2), dtype=np.int64)
    owner = np.full((height, width), -1, dtype=np.int8) if return_owner else None
    for i, (p, x0, y0) in enumerate(zip(pieces, xs, ys)):
        p = p.numpy()
        y0 = min(max(y0, 0), height - p.shape[0])
        region = canvas[y0:y0 + p.shape[0], x0:x0 + p.shape[1]]
        if owner is not None:     # this digit owns the pixels where its ink is the strongest so far
            mine = (p > region) & (p > OWNER_THRESHOLD * 255)
            owner[y0:y0 + p.shape[0], x0:x0 + p.shape[1]][mine] = i
        np.maximum(region, p, out=region)
        cols = np.flatnonzero(p.max(0) > 0)   # the ink extent (a sheared digit's box has blank corners)
        extents[i] = (x0 + cols[0], x0 + cols[-1] + 1) if cols.size else (x0, x0 + p.shape[1])
    return canvas, extents, owner


def _finish(canvas: np.ndarray, owner: Optional[np.ndarray], noise: float, u: Optional[np.ndarray]) -> np.ndarray:
    """The uint8 image of a composed ``canvas``: salt and pepper where the uniform draws ``u`` (one per pixel,
    a string's last draws) fall below ``noise``; ``owner`` loses the pixels that are no longer ink."""
    if noise > 0:
        canvas[u < noise / 2] = 255.0
        canvas[(u >= noise / 2) & (u < noise)] = 0.0
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    if owner is not None:
        owner[image <= OWNER_THRESHOLD * 255] = -1     # noise may have erased ink
    return image


def _thicken(img: torch.Tensor, t: float) -> torch.Tensor:
    """Blend a digit towards its 3×3 grey dilation (``t > 0``, padded by a pixel) or erosion (``t < 0``)."""
    if t > 0:
        img = F.pad(img, (1, 1, 1, 1))
        other = F.max_pool2d(img[None, None], 3, stride=1, padding=1)[0, 0]
    else:
        other = -F.max_pool2d(-F.pad(img, (1, 1, 1, 1), value=0.0)[None, None], 3, stride=1)[0, 0]
    return img + abs(t) * (other - img)


def _shear(img: torch.Tensor, degrees: float) -> torch.Tensor:
    """Shear a digit horizontally (the tops to the right for positive ``degrees``), widening its box."""
    h, w = img.shape
    s = math.tan(math.radians(degrees))
    extra = int(math.ceil(abs(s) * h))
    W = w + extra
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(W, dtype=torch.float32)[None, :]
    # output column x of row y reads input column x - offset(y); offset grows from bottom to top
    offset = s * ((h - 1) - ys) if s > 0 else -s * ys
    src = xs - offset
    x0 = src.floor()
    frac = src - x0
    x0 = x0.long()
    pad = F.pad(img, (1, 1))                          # reads outside the digit give 0
    idx0 = (x0 + 1).clamp(0, w + 1)
    idx1 = (x0 + 2).clamp(0, w + 1)
    rows = torch.arange(h)[:, None].expand(h, W)
    v = pad[rows, idx0] * (1 - frac) + pad[rows, idx1] * frac
    v = torch.where((src > -1) & (src < w), v, torch.zeros_like(v))
    return v


def make_strings(n: int, split: str = "test", lengths: Tuple[int, int] = (3, 6), seed: int = 0,
                 digits: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, distort=None,
                 vary: Optional[RenderRanges] = None, lazy: bool = False,
                 **render_kw) -> Union[List[DigitString], "StringSet"]:
    """``n`` random digit strings whose lengths are uniform in ``lengths`` (inclusive).

    The digits are drawn with replacement from ``lenet.load_digits(split, raw=True)`` (or from ``digits`` =
    ``(uint8 [N, 28, 28], labels [N])`` when given); each string's ``sources`` holds their rows there. ``render_kw`` goes to `render_string`. ``distort``: a
    `lenet.data.RandomAffine` with ``fill=0`` (or ``True`` for its defaults with 10° of rotation) applied to
    every digit (grey levels 0..1) before it is rendered — new shapes for training strings; ``None`` (the default) renders the digits as they are.
    ``vary``: a `RenderRanges`; each string then draws its own rendering settings from it (keywords in
    ``render_kw`` still win), and records them in ``DigitString.style``. Every string has its ``owner`` map
    (see `render_string`). Deterministic in ``seed``.

    ``lazy``: return a `StringSet` instead of a list: every random draw of the ``n`` strings is made now, in
    the same order as for the list (cheap), and a string is drawn when it is first indexed — so a process that
    needs a few of the strings (its share in data-parallel training) renders only those, and they are the
    very strings the list holds.
    """
    if digits is None:
        from .data import load_digits
        digits = load_digits(split, raw=True)
    images, labels = digits
    if images.dtype != torch.uint8:
        raise ValueError("make_strings needs raw uint8 digits (load_digits(split, raw=True))")
    lo, hi = lengths
    if not 1 <= lo <= hi:
        raise ValueError(f"lengths must satisfy 1 <= min <= max, got {lengths}")
    strings = StringSet(*_plan_strings(n, images, labels, lo, hi, seed, distort, vary, render_kw))
    return strings if lazy else list(strings)


@dataclass(frozen=True)
class _Plan:
    """Every random draw of one string (`make_strings`): its digits' rows, the distortion (``theta`` of a
    `lenet.data.RandomAffine`, or the ``distorted`` digits themselves when they had to be drawn at once), its
    settings and layout, and the generator's state before its noise (``None`` without noise)."""

    rows: np.ndarray
    kw: dict
    layout: _Layout
    theta: Optional[torch.Tensor] = None
    distorted: Optional[torch.Tensor] = None
    noise_state: Optional[torch.Tensor] = None


class StringSet(Sequence):
    """The strings of `make_strings(..., lazy=True)`: a sequence of `DigitString` whose random draws were all
    made up front and whose images are drawn on first access (and kept). ``strings[i]`` is exactly the ``i``-th
    string of the list `make_strings` returns for the same arguments; ``labels`` are known without drawing."""

    def __init__(self, plans, source, distortion):
        self._plans, self._source, self._distort = plans, source, distortion  # see _plan_strings
        self._done = {}

    def __len__(self) -> int:
        return len(self._plans)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # an IndexError out of range, negative indices from the end
        if i not in self._done:
            self._done[i] = self._render(self._plans[i])
        return self._done[i]

    @property
    def labels(self) -> List[str]:
        labels = self._source[1]
        return ["".join(str(int(d)) for d in labels[p.rows]) for p in self._plans]

    @property
    def drawn(self) -> List[int]:
        """The indices of the strings drawn so far, in increasing order."""
        return sorted(self._done)

    def _render(self, plan: _Plan) -> DigitString:
        images_np, labels_np = self._source
        picked = plan.distorted
        if picked is None:
            picked = torch.from_numpy(images_np[plan.rows])
            if plan.theta is not None:
                picked = _warp(picked, self._distort, plan.theta)
        full = {**_RENDER_DEFAULTS, **plan.kw}
        canvas, extents, owner = _compose(picked, plan.layout, height=full["height"], slant=full["slant"],
                                          thickness=full["thickness"], return_owner=True)
        u = None
        if plan.noise_state is not None:
            u = torch.rand(canvas.shape, generator=torch.Generator().set_state(plan.noise_state)).numpy()
        image = _finish(canvas, owner, full["noise"], u)
        return DigitString(torch.from_numpy(image), "".join(str(int(d)) for d in labels_np[plan.rows]),
                           torch.from_numpy(extents), torch.from_numpy(plan.rows), torch.from_numpy(owner),
                           dict(plan.kw))


_RENDER_DEFAULTS = {k: v.default for k, v in inspect.signature(render_string).parameters.items()
                    if v.default is not inspect.Parameter.empty and k not in ("generator", "return_owner")}
_LAYOUT_KEYS = ("height", "touch", "max_overlap", "gap", "scale", "shift", "margin")


def _plan_strings(n, images, labels, lo, hi, seed, distort, vary, render_kw):
    """The draws of `make_strings`, string by string in the order its sequential renderer made them: the
    length, the rows, the distortion, the settings (``vary``), the layout, the noise."""
    unknown = set(render_kw) - set(_RENDER_DEFAULTS)
    if unknown:
        raise TypeError(f"render_string() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
    g = torch.Generator().manual_seed(seed)
    # numpy indexing: torch's advanced indexing of a small batch is slower than the rendering itself
    images_np, labels_np = images.numpy(), torch.as_tensor(labels).numpy()
    t = _distortion(distort)
    plans = []
    for _ in range(n):
        L = _randint(lo, hi, g)
        rows = torch.randint(0, len(images_np), (L,), generator=g).numpy()
        theta = distorted = noise_state = None
        if t is not None:
            if _splits(t):
                theta = t.theta(L, images_np.shape[1], images_np.shape[2], g)
            else:  # a distortion whose draws cannot be separated from its drawing: apply it now
                distorted = _warp(torch.from_numpy(images_np[rows]), t, None, g)
        kw = dict(render_kw)
        if vary is not None:
            kw = {**vary.draw(g), **render_kw}
        full = {**_RENDER_DEFAULTS, **kw}
        _check_settings(full["height"], full["thickness"], full["slant"])
        layout = _draw_layout(L, g, **{k: full[k] for k in _LAYOUT_KEYS})
        if full["noise"] > 0:
            # the noise is one draw per pixel, so its draws depend on the image's width (from the ink boxes)
            if distorted is None and theta is not None:
                distorted, theta = _warp(torch.from_numpy(images_np[rows]), t, theta), None
            picked = distorted if distorted is not None else torch.from_numpy(images_np[rows])
            noise_state = g.get_state()
            torch.rand((full["height"], _width(picked, layout, full["height"], full["slant"], full["thickness"])),
                       generator=g)
        plans.append(_Plan(rows, kw, layout, theta, distorted, noise_state))
    return plans, (images_np, labels_np), t


def _distortion(distort):
    if distort is None:
        return None
    from .data import RandomAffine
    if distort is True:
        return RandomAffine(rotate=10.0, fill=0.0)
    if not callable(distort):
        raise TypeError(f"distort must be None, True or a lenet.data.RandomAffine, got {type(distort).__name__}")
    return distort


def _splits(t) -> bool:
    """Whether a distortion's draws (``theta``) can be made apart from its resampling (``warp``)."""
    from .data import RandomAffine
    return isinstance(t, RandomAffine) and t.draws_apart()


def _warp(digits: torch.Tensor, t, theta: Optional[torch.Tensor], g: Optional[torch.Generator] = None) -> torch.Tensor:
    """``uint8 [L, 28, 28]`` digits distorted by ``t`` (grey levels 0..1): with the drawn ``theta`` when
    given, else drawing from ``g``."""
    x = digits.float()[:, None] / 255
    y = t.warp(x, theta) if theta is not None else t(x, generator=g)
    return (y[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)


def touching_fraction(strings: Sequence[DigitString]) -> float:
    """Share of adjacent digit pairs whose ink boxes touch or overlap (gap of 0 columns or less)."""
    gaps = [s.extents[1:, 0] - s.extents[:-1, 1] for s in strings if len(s.extents) > 1]
    if not gaps:
        return 0.0
    g = torch.cat(gaps)
    return float((g <= 0).float().mean())
