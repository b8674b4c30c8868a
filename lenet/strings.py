"""Images of handwritten digit strings, rendered from isolated digits (the multi-digit reader's data).

A string image is ``uint8 [height, width]``, white ink on black like MNIST, of fixed height (default 32) and
a width that depends on the digits. Neighbouring digits are placed with random horizontal gaps, and a share
of them (``touch``, default 30 %) **touch or overlap**: their ink bounding boxes are 0 to ``max_overlap``
columns apart or overlap by that much, composited with ``max`` so overlapping strokes merge as ink does.
Each digit also gets a small random size change and vertical shift, and optional salt-and-pepper noise.

The renderer returns the true column extent of each digit (``extents[i] = (x0, x1)``, ``x1`` exclusive) so that
tests can check segmentation against the truth; the reader itself is trained from the label strings only.

Everything is driven by a ``torch.Generator``: the same seed gives the same strings. ``make_strings`` draws the
digits of one split only (``"test"`` for evaluation strings, ``"train"`` for training strings), so a reader
evaluated on test strings never saw any of their digits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DigitString", "render_string", "make_strings", "touching_fraction"]


@dataclass
class DigitString:
    """One rendered string: ``image`` ``uint8 [H, W]``, ``label`` (e.g. ``"3081"``), ``extents`` ``int64 [L, 2]``
    (the column range ``[x0, x1)`` of each digit's ink, left to right) and, from `make_strings`, ``sources``
    ``int64 [L]``: the row of each digit in the digit set it was drawn from (``None`` when unknown)."""

    image: torch.Tensor
    label: str
    extents: torch.Tensor
    sources: Optional[torch.Tensor] = None


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
                  noise: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
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

    Returns:
        ``(image uint8 [height, W], extents int64 [L, 2])``.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(torch.seed() % 2**63)
    if digits.dim() != 3 or digits.dtype != torch.uint8:
        raise ValueError(f"digits must be uint8 [L, H, W], got {digits.dtype} {tuple(digits.shape)}")
    if len(digits) == 0:
        raise ValueError("cannot render an empty string")
    pieces, ys = [], []
    for d in digits:
        crop = _ink_crop(d).float()
        s = _uniform(scale[0], scale[1], g)
        h = max(1, round(crop.shape[0] * s))
        w = max(1, round(crop.shape[1] * s))
        h = min(h, height - 2 * shift)
        img = F.interpolate(crop[None, None], size=(h, w), mode="bilinear", align_corners=False,
                            antialias=True)[0, 0]
        pieces.append(img)
        ys.append((height - h) // 2 + _randint(-shift, shift, g))
    xs, x = [], _randint(margin[0], margin[1], g)
    for i, p in enumerate(pieces):
        if i > 0:
            if float(torch.rand((), generator=g)) < touch:
                x += _randint(-max_overlap, 0, g)
            else:
                x += _randint(gap[0], gap[1], g)
        xs.append(x)
        x += p.shape[1]
    width = x + _randint(margin[0], margin[1], g)
    # composite in numpy: tiny arrays, and torch's thread pool costs more than the work here
    canvas = np.zeros((height, width), dtype=np.float32)
    extents = np.zeros((len(pieces), 2), dtype=np.int64)
    for i, (p, x0, y0) in enumerate(zip(pieces, xs, ys)):
        p = p.numpy()
        y0 = min(max(y0, 0), height - p.shape[0])
        region = canvas[y0:y0 + p.shape[0], x0:x0 + p.shape[1]]
        np.maximum(region, p, out=region)
        extents[i] = (x0, x0 + p.shape[1])
    if noise > 0:
        u = torch.rand((height, width), generator=g).numpy()
        canvas[u < noise / 2] = 255.0
        canvas[(u >= noise / 2) & (u < noise)] = 0.0
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return torch.from_numpy(image), torch.from_numpy(extents)


def make_strings(n: int, split: str = "test", lengths: Tuple[int, int] = (3, 6), seed: int = 0,
                 digits: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, distort=None,
                 **render_kw) -> List[DigitString]:
    """``n`` random digit strings whose lengths are uniform in ``lengths`` (inclusive).

    The digits are drawn with replacement from ``lenet.load_digits(split, raw=True)`` (or from ``digits`` =
    ``(uint8 [N, 28, 28], labels [N])`` when given); each string's ``sources`` holds their rows there. ``render_kw`` goes to `render_string`. ``distort``: a
    `lenet.data.RandomAffine` with ``fill=0`` (or ``True`` for its defaults with 10° of rotation) applied to
    every digit (grey levels 0..1) before it is rendered — new shapes for training strings; ``None`` (the default) renders the digits as they are.
    Deterministic in ``seed``.
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
    g = torch.Generator().manual_seed(seed)
    # numpy indexing: torch's advanced indexing of a small batch is slower than the rendering itself
    images_np, labels_np = images.numpy(), torch.as_tensor(labels).numpy()
    out = []
    for _ in range(n):
        L = _randint(lo, hi, g)
        idx = torch.randint(0, len(images_np), (L,), generator=g).numpy()
        picked = torch.from_numpy(images_np[idx])
        if distort is not None:
            picked = _distort(picked, distort, g)
        img, ext = render_string(picked, g, **render_kw)
        out.append(DigitString(img, "".join(str(int(d)) for d in labels_np[idx]), ext, torch.from_numpy(idx)))
    return out


def _distort(digits: torch.Tensor, distort, g: torch.Generator) -> torch.Tensor:
    """Random affine distortions of ``uint8 [L, 28, 28]`` digits, drawn from ``g``."""
    from .data import RandomAffine
    t = RandomAffine(rotate=10.0, fill=0.0) if distort is True else distort
    y = t(digits.float()[:, None] / 255, generator=g)
    return (y[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)


def touching_fraction(strings: Sequence[DigitString]) -> float:
    """Share of adjacent digit pairs whose ink boxes touch or overlap (gap of 0 columns or less)."""
    gaps = [s.extents[1:, 0] - s.extents[:-1, 1] for s in strings if len(s.extents) > 1]
    if not gaps:
        return 0.0
    g = torch.cat(gaps)
    return float((g <= 0).float().mean())
