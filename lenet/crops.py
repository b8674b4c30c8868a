"""Segment images as LeNet-5 input: `clean_image` (a scanned or photographed string → the renderer's look:
black background, no specks, full-contrast ink), `standardize` (any grey string image → the reader's float
image) and `crop_segments` (every segment of a batch, normalised the way MNIST's digits were, in one
``grid_sample``)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import BACKGROUND, INK
from .segment import INK_THRESHOLD, Segmentation, as_float_image

__all__ = ["REFERENCE_INK_HEIGHT", "clean_image", "standardize", "standardize_owner", "crop_segments"]

#: The ink height a string is rescaled to when its own is far from what the reader was trained on.
REFERENCE_INK_HEIGHT = 24
_INK_HEIGHT_RANGE = (14, 40)


#: `clean_image`: the background level is the median grey level of square blocks this share of the image's
#: shorter side wide (at least ``_MIN_BACKGROUND_BLOCK`` pixels), each block's level the least of its own and its
#: neighbours' medians (a block mostly inked, where bold digits overlap, takes a neighbour's).
BACKGROUND_BLOCK = 0.25
_MIN_BACKGROUND_BLOCK = 7
#: `clean_image`: ink components smaller than this share of the largest one (and under 3 pixels always) are specks.
SPECK_AREA = 0.02
#: `clean_image`: ink whose strongest grey level (99th percentile of the ink) is below this is stretched to 1.
FULL_CONTRAST = 0.9


def clean_image(image, invert: bool = False) -> torch.Tensor:
    """A string image as it comes from a scanner or a camera → the look of the strings the readers were trained
    on: ``float32 [H, W]`` in 0..1, light ink on an exactly black background. `lenet.recognize` applies it to every
    image (``clean=True``, the default). Three steps, each a no-op on the renderer's own strings apart from specks:

    1. **background**: the image minus its background level: the median grey level of square blocks
       ``BACKGROUND_BLOCK`` × the shorter side wide, each block taking the least of its own and its neighbours'
       medians (so that a block mostly inked takes a neighbour's), interpolated between the blocks' centres, then
       the median of what is left below the ink threshold (a neighbour's lower level leaves a little behind on a
       ramp); a constant, uneven or noisy background goes to 0 (its median), the strokes stay;
    2. **specks**: 8-connected ink components (grey level above ``INK_THRESHOLD``) smaller than ``SPECK_AREA``
       of the largest component, or than 3 pixels, are erased: salt noise and dust would otherwise stretch the
       string's ink height (every length of the segmentation is a fraction of it) and be read as digits;
    3. **contrast**: if the ink's strongest level (its 99th percentile) is under ``FULL_CONTRAST``, the image
       is scaled so that it is 1 (faint pencil, low-contrast photographs).

    Accepts what `lenet.segment.as_float_image` accepts (``invert``: dark ink on light paper) and raises its
    errors, and ``ValueError`` when nothing but specks is left."""
    from scipy import ndimage

    x = as_float_image(image, invert=invert).numpy().astype(np.float32)
    back = _background(x)
    if back is not None:   # (a black background: nothing to subtract, the image stays bit for bit)
        x = np.clip(x - back, 0, 1)
        below = x[x <= INK_THRESHOLD]
        rest = float(np.median(below)) if below.size else 0.0   # what a neighbour's lower level left behind
        if rest > 0:
            x = np.clip(x - rest, 0, 1)
    lab, n = ndimage.label(x > INK_THRESHOLD, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        raise ValueError("the image has no ink once its background is removed: nothing to read")
    area = np.bincount(lab.ravel())
    area[0] = 0
    speck = area < max(3.0, SPECK_AREA * area.max())
    speck[0] = False
    if speck.any():
        x = np.where(speck[lab], np.float32(0), x)
    top = float(np.quantile(x[x > INK_THRESHOLD], 0.99))
    if top < FULL_CONTRAST:
        x = np.clip(x / top, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _background(x: np.ndarray) -> Optional[np.ndarray]:
    """The background level of every pixel of ``x`` (see `clean_image`), or ``None`` where it is black."""
    from scipy import ndimage

    H, W = x.shape
    k = max(_MIN_BACKGROUND_BLOCK, int(round(BACKGROUND_BLOCK * min(H, W))))
    nh, nw = -(-H // k), -(-W // k)
    t = np.pad(x, ((0, nh * k - H), (0, nw * k - W)), mode="edge")
    level = np.median(t.reshape(nh, k, nw, k).transpose(0, 2, 1, 3).reshape(nh, nw, k * k), axis=2)
    level = ndimage.minimum_filter(level, size=3, mode="nearest")
    if float(level.max()) <= 0:
        return None
    level = torch.from_numpy(np.ascontiguousarray(level, dtype=np.float32))
    # block levels at the blocks' centres, bilinear in between (and flat beyond the outer centres)
    full = F.interpolate(level[None, None], size=(nh * k, nw * k), mode="bilinear", align_corners=False)
    return full[0, 0, :H, :W].numpy()


def _frame(x: torch.Tensor):
    """Where `standardize` takes its rows from and the size it rescales to (``None``: no rescaling)."""
    rows = torch.nonzero((x > INK_THRESHOLD).any(1)).flatten()
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    top, bottom = max(0, r0 - 2), r1 + 2
    h = r1 - r0
    if _INK_HEIGHT_RANGE[0] <= h <= _INK_HEIGHT_RANGE[1]:
        return top, bottom, None, 1.0
    f = REFERENCE_INK_HEIGHT / h
    height = min(bottom, x.shape[0]) - top
    return top, bottom, (max(1, round(height * f)), max(1, round(x.shape[1] * f))), f


def standardize(image) -> torch.Tensor:
    """Any grey image → ``float32 [H, W]`` in 0..1 for segmentation: checked (`as_float_image`), cropped to its
    ink rows (plus a 2-pixel margin), and rescaled (keeping the aspect ratio) so that the ink height is
    ``REFERENCE_INK_HEIGHT`` when it lies outside 14..40 pixels. Strings rendered by `lenet.strings` pass
    unchanged apart from the row crop."""
    x = as_float_image(image)
    top, bottom, size, f = _frame(x)
    x = x[top:bottom]
    if size is not None:
        x = F.interpolate(x[None, None], size=size, mode="bilinear", align_corners=False,
                          antialias=f < 1)[0, 0].clamp(0, 1)
        if not bool((x > INK_THRESHOLD).any()):
            raise ValueError("the image's ink vanished when rescaling it (too faint or too thin)")
    return x.contiguous()


def standardize_owner(image, owner) -> torch.Tensor:
    """The renderer's owner map of ``image`` (``int [H, W]``, `lenet.strings.render_string`) cropped and
    rescaled (nearest pixel) as `standardize` crops and rescales the image, so that it lines up with the
    reader's segmentation (`lenet.segment.true_path` on the reader's own segments)."""
    x = as_float_image(image)
    own = torch.as_tensor(owner).long()
    if own.shape != x.shape:
        raise ValueError(f"owner map {tuple(own.shape)} does not match the image {tuple(x.shape)}")
    top, bottom, size, _ = _frame(x)
    own = own[top:bottom]
    if size is not None:
        own = F.interpolate(own[None, None].double(), size=size, mode="nearest")[0, 0].long()
    return own.contiguous()


def crop_segments(images: Sequence[torch.Tensor], segs: Sequence[Segmentation], size: int = 32,
                  box: int = 20, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Every segment of every image as LeNet-5 input ``[S, 1, size, size]`` (segments in image order).

    A segment's image is the ink of its pieces only (``segs[i].piece_map``; the ink of other pieces in the
    same columns is masked out), cut to its tight ink box, scaled so that its larger side is ``box`` pixels
    and placed so that its centre of mass is the centre of the ``size``-square, as MNIST's digits were. All
    images go into one strip; per-piece sums (mass, moments, ink extent) are gathered once and combined per
    segment, and all crops come out of one ``grid_sample`` call (bilinear), masked by a nearest-neighbour
    sample of the piece map. ``segs`` may be any objects with ``piece_map`` and ``segments`` (e.g.
    `lenet.segment.WholeImage`). ``dtype`` float64 also samples in float64: the sampling coordinates are
    relative to the whole strip, so in float32 a crop's pixels depend on where its image sits in the batch
    (by ~1e-5); in float64 they do not, to ~1e-12 (data-parallel shards then give one process's crops).
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
    sample = torch.float64 if dtype == torch.float64 else torch.float32
    grid = torch.stack([gx, gy], -1).reshape(1, S * size, size, 2).to(sample)
    out = F.grid_sample(strip[None, None].to(sample), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # the piece under each output pixel (nearest source pixel, from the float64 coordinates)
    ix = torch.floor(sx).long()[:, None, :].expand(S, size, size)
    iy = torch.floor(sy).long()[:, :, None].expand(S, size, size)
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    owner = torch.where(inside, pstrip[iy.clamp(0, H - 1), ix.clamp(0, W - 1)], -1)
    mine = (owner >= a[:, None, None]) & (owner < b[:, None, None])
    out = out.reshape(S, size, size) * mine
    return (BACKGROUND + (INK - BACKGROUND) * out.clamp(0, 1)).unsqueeze(1).to(dtype)
