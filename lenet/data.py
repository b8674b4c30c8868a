"""Digit data for LeNet-5: the bundled MNIST digits, standard IDX files, input preparation, distortions.

* ``load_digits(split)``: the 9,003 real MNIST digits shipped in ``lenet/data/mnist9k.npz`` (attribution in
  ``lenet/data/NOTICE.md``), with a fixed split: ``"train"`` = the first 8,000 rows, ``"test"`` = the last
  1,000 (the file's rows are already in a fixed shuffled order).
* ``read_idx(path)``: one MNIST/IDX file (``.gz`` or plain, as torchvision and ``yann.lecun.com`` ship them),
  validated; ``load_idx_dataset(directory, split)`` finds and pairs the image and label files.
* ``prepare(images)``: 28×28 digits → the paper's network input: centred in 32×32 (a 2-pixel border),
  background −0.1 and full ink 1.175. (The paper says this makes "the mean input roughly 0, and the
  variance roughly 1"; over these digits the mean is 0.03 and the variance 0.12.)
* ``RandomAffine``: the paper's random planar distortions (translation, scaling, squeezing, horizontal
  shearing) as a torch transform on prepared images.
* ``ElasticDistortion``: Simard, Steinkraus & Platt's (2003) elastic distortions (a random displacement
  field smoothed by a Gaussian), optionally composed with a ``RandomAffine`` in one resampling.
"""
from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BACKGROUND",
    "INK",
    "DIGITS_PATH",
    "load_digits",
    "read_idx",
    "load_idx_dataset",
    "prepare",
    "RandomAffine",
    "ElasticDistortion",
]

#: The paper's input levels: "the values of the input pixels are normalized so that the background level
#: (white) corresponds to a value of -0.1 and the foreground (black) corresponds to 1.175".
BACKGROUND = -0.1
INK = 1.175

DIGITS_PATH = Path(__file__).resolve().parent / "data" / "mnist9k.npz"
_TRAIN_SIZE = 8000
_TEST_SIZE = 1000

PathLike = Union[str, "os.PathLike[str]"]


@functools.lru_cache(maxsize=1)
def _bundled() -> Tuple[np.ndarray, np.ndarray]:
    with np.load(DIGITS_PATH) as z:
        images, labels = z["images"], z["labels"]
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{DIGITS_PATH} is not the expected digit file (images {images.dtype} {images.shape})")
    if len(images) < _TRAIN_SIZE + _TEST_SIZE:
        raise ValueError(f"{DIGITS_PATH} holds {len(images)} digits, fewer than {_TRAIN_SIZE + _TEST_SIZE}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits(split: str = "train", raw: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """The bundled MNIST digits as ``(images, labels)``.

    ``split``: ``"train"`` (8,000 digits), ``"test"`` (1,000 held-out digits) or ``"all"`` (9,003). Images
    are ``float32 [N, 1, 32, 32]`` ready for the network (see ``prepare``), or with ``raw=True`` the
    original ``uint8 [N, 28, 28]``; labels are ``int64 [N]``.
    """
    images, labels = _bundled()
    if split == "train":
        rows = slice(0, _TRAIN_SIZE)
    elif split == "test":
        rows = slice(len(images) - _TEST_SIZE, len(images))
    elif split == "all":
        rows = slice(0, len(images))
    else:
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
    x = torch.from_numpy(images[rows].copy())
    y = torch.from_numpy(labels[rows].astype(np.int64))
    return (x if raw else prepare(x)), y


def prepare(images, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """28×28 digits (white ink on black, MNIST's layout) → network input ``[N, 1, 32, 32]``.

    ``images``: a numpy array or tensor ``[N, 28, 28]``, ``[N, 1, 28, 28]`` or one ``[28, 28]`` digit;
    ``uint8`` grey levels 0..255 or floats in 0..1. The digit is centred in 32×32 and mapped linearly to
    background −0.1 … ink 1.175.
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"expected 28x28 digits [N, 28, 28], got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.to(dtype) / 255
    elif x.is_floating_point():
        x = x.to(dtype)
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError("float images must hold grey levels in 0..1 (or pass uint8 0..255)")
    else:
        raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {x.dtype}")
    x = BACKGROUND + (INK - BACKGROUND) * x
    return F.pad(x, (2, 2, 2, 2), value=BACKGROUND).unsqueeze(1)


# IDX type codes (http://yann.lecun.com/exdb/mnist/): the data is big-endian.
_IDX_TYPES = {
    0x08: (np.dtype(np.uint8), torch.uint8),
    0x09: (np.dtype(np.int8), torch.int8),
    0x0B: (np.dtype(">i2"), torch.int16),
    0x0C: (np.dtype(">i4"), torch.int32),
    0x0D: (np.dtype(">f4"), torch.float32),
    0x0E: (np.dtype(">f8"), torch.float64),
}


def read_idx(path: PathLike) -> torch.Tensor:
    """Read one IDX file (MNIST's format: ``train-images-idx3-ubyte`` etc.), gzip-compressed or plain.

    Returns a tensor of the file's type and dimensions (``uint8 [60000, 28, 28]`` for MNIST's training
    images, ``uint8 [60000]`` for its labels). Compression is recognised by content, not by name. Raises
    ``ValueError`` naming the file for a wrong magic number, an unknown type code, a truncated file, trailing
    bytes or a corrupt gzip stream; ``FileNotFoundError`` if it does not exist.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX file ({len(data)} bytes, the header alone is 4+)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError(f"{path}: not an IDX file (magic number {data[:4].hex()} does not start with 0000)")
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x} (known: "
                         + ", ".join(f"0x{c:02x}" for c in _IDX_TYPES) + ")")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated header ({len(data)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    np_type, torch_type = _IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * np_type.itemsize
    found = len(data) - header
    if found < expected:
        raise ValueError(f"{path}: truncated: dimensions {dims} need {expected} bytes of data, found {found}")
    if found > expected:
        raise ValueError(f"{path}: {found - expected} unexpected bytes after the data of dimensions {dims}")
    array = np.frombuffer(data, dtype=np_type, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(np_type.newbyteorder("="), copy=True)).to(torch_type)


def _find_idx(directory: Path, names) -> Path:
    for name in names:
        for candidate in (directory / name, directory / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"none of {', '.join(n + '[.gz]' for n in names)} in {directory}")


def load_idx_dataset(directory: PathLike, split: str = "train") -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST-format images and labels from a directory with the standard file names.

    ``split="train"`` reads ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``,
    ``"test"`` the ``t10k-`` pair (the ``.idx3-ubyte`` spelling some mirrors use also works). Returns
    ``uint8 [N, 28, 28]`` images and ``int64 [N]`` labels, checked to agree in number and to be 0..9.
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    directory = Path(directory)
    ipath = _find_idx(directory, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
    lpath = _find_idx(directory, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
    images, labels = read_idx(ipath), read_idx(lpath)
    if images.dim() != 3 or images.shape[1:] != (28, 28) or images.dtype != torch.uint8:
        raise ValueError(f"{ipath}: expected uint8 images [N, 28, 28], got {images.dtype} {tuple(images.shape)}")
    if labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(f"{lpath}: expected {len(images)} labels, got shape {tuple(labels.shape)}")
    labels = labels.long()
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{lpath}: labels must be 0..9, found {labels.min().item()}..{labels.max().item()}")
    return images, labels


class RandomAffine(nn.Module):
    """Random planar affine distortions of prepared images ``[N, 1, H, W]`` (or ``[1, H, W]``), one draw per
    image: the paper's "horizontal and vertical translations, scaling, squeezing (simultaneous horizontal
    compression and vertical elongation, or the reverse), and horizontal shearing" (§III-C, Fig. 7).

    The paper does not give ranges; the defaults are mild so that every result is still clearly the same
    digit: ``translate`` pixels (uniform, each axis), ``scale`` factor range, ``squeeze`` factor range
    (x scaled by ``s``, y by ``1/s``, ``s`` log-uniform), horizontal ``shear`` (x += shear·y, uniform), and
    ``rotate`` degrees (uniform in ±``rotate``, applied last; 0, the default, draws no angle, so the draws
    without rotation are unchanged). Pixels that come from outside the image are background (``fill``). Bilinear resampling.
    Pass a ``torch.Generator`` for reproducible draws.
    """

    def __init__(self, translate: float = 2.0, scale: Tuple[float, float] = (0.9, 1.1),
                 squeeze: Tuple[float, float] = (0.87, 1.15), shear: float = 0.25, fill: float = BACKGROUND,
                 generator: Optional[torch.Generator] = None, rotate: float = 0.0):
        super().__init__()
        if translate < 0 or shear < 0 or rotate < 0 or not 0 < scale[0] <= scale[1] or not 0 < squeeze[0] <= squeeze[1]:
            raise ValueError("translate, shear and rotate must be >= 0; scale and squeeze must be ranges (lo <= hi) of positive factors")
        self.translate, self.scale, self.squeeze, self.shear = float(translate), tuple(scale), tuple(squeeze), float(shear)
        self.fill, self.rotate = float(fill), float(rotate)
        self.generator = generator

    def matrices(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` random 2×3 forward transforms (float64), in pixels about the image centre."""
        g = generator if generator is not None else self.generator

        def uniform(lo, hi):
            return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

        s = uniform(*self.scale)
        q = torch.exp(uniform(np.log(self.squeeze[0]), np.log(self.squeeze[1])))
        h = uniform(-self.shear, self.shear)
        t = uniform(-self.translate, self.translate), uniform(-self.translate, self.translate)
        m = torch.zeros(n, 2, 3, dtype=torch.float64)
        # [[1, h], [0, 1]] @ diag(s q, s / q): squeeze and scale, then shear.
        m[:, 0, 0] = s * q
        m[:, 0, 1] = h * s / q
        m[:, 1, 1] = s / q
        m[:, 0, 2], m[:, 1, 2] = t
        if self.rotate > 0:
            a = uniform(-self.rotate, self.rotate) * (np.pi / 180)
            c, si = torch.cos(a), torch.sin(a)
            rot = torch.stack([torch.stack([c, -si], 1), torch.stack([si, c], 1)], 1)
            m[:, :, :2] = rot @ m[:, :, :2]
        return m

    def theta(self, n: int, height: int, width: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` random draws as ``grid_sample`` wants them: ``[n, 2, 3]`` float64 maps from each output
        pixel to where to read in the input (the inverse of ``matrices``), in coordinates normalised to
        [-1, 1] (``align_corners=False``: pixel centres at (2i+1)/size - 1)."""
        m = self.matrices(n, generator)
        lin = torch.linalg.inv(m[:, :, :2])
        shift = -(lin @ m[:, :, 2:])
        norm = torch.tensor([width / 2, height / 2], dtype=torch.float64)
        return torch.cat([lin * norm.view(1, 1, 2) / norm.view(1, 2, 1), shift / norm.view(1, 2, 1)], 2)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"expected float images [N, C, H, W] or [C, H, W], got {x.dtype} {tuple(x.shape)}")
        n, _, height, width = x.shape
        out = self.warp(x, self.theta(n, height, width, generator))
        return out[0] if single else out

    def draws_apart(self) -> bool:
        """Whether this distortion's draws (`theta`) and its resampling (`warp`) are all of ``forward``, so
        that the draws can be made for many images and only some of them resampled (not so for a subclass
        that overrides ``forward``)."""
        return type(self).forward is RandomAffine.forward

    def warp(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Resample images ``[N, C, H, W]`` by drawn transforms ``theta`` (`theta`'s ``[N, 2, 3]``): the
        drawing-free half of ``forward``, so that draws can be made now and applied later (or elsewhere)."""
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x - self.fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + self.fill

    def extra_repr(self) -> str:
        return (f"translate={self.translate}, scale={self.scale}, squeeze={self.squeeze}, shear={self.shear}"
                + (f", rotate={self.rotate}" if self.rotate else ""))


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected float images [N, C, H, W] or [C, H, W], got {x.dtype} {tuple(x.shape)}")


def gaussian_kernel(sigma: float, truncate: float = 3.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A 1-D Gaussian of standard deviation ``sigma`` pixels, cut at ``truncate`` sigmas, summing to 1."""
    radius = max(1, int(truncate * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _smoothing_matrix(size: int, sigma: float) -> torch.Tensor:
    k = gaussian_kernel(sigma, dtype=torch.float32)
    r = len(k) // 2
    offset = torch.arange(size).view(-1, 1) - torch.arange(size).view(1, -1)
    inside = offset.abs() <= r
    return torch.where(inside, k[(offset + r).clamp(0, len(k) - 1)], torch.zeros(()))


class ElasticDistortion(nn.Module):
    """Elastic distortions of prepared images ``[N, C, H, W]`` (or ``[C, H, W]``), one draw per image
    (Simard, Steinkraus & Platt, "Best practices for convolutional neural networks applied to visual
    document analysis", ICDAR 2003, §2).

    Every pixel gets a random displacement, each component uniform in ±1; the field is smoothed by a
    Gaussian of standard deviation ``sigma`` pixels (separable, zero beyond the image border, cut at 3
    sigmas) and scaled by ``alpha`` pixels; the output pixel at ``p`` is the input read (bilinearly) at
    ``p + displacement(p)``. Simard et al. used ``sigma = 4``, ``alpha = 34`` on 28×28 digits (the
    defaults): a smooth, local warp of about a pixel, as handwriting varies. ``alpha = 0`` is the identity.

    ``affine``: a ``RandomAffine`` to apply first, composed into the same resampling (one interpolation,
    so no extra blur): the output at ``p`` reads the input at ``affine⁻¹(p + displacement(p))``. Its
    draws come first from the generator, then the field. Pixels read from outside the image are
    background (``fill``). Pass a ``torch.Generator`` for reproducible draws. Vectorised: one smoothing
    convolution and one ``grid_sample`` for the whole batch.
    """

    def __init__(self, alpha: float = 34.0, sigma: float = 4.0, fill: float = BACKGROUND,
                 affine: Optional[RandomAffine] = None, generator: Optional[torch.Generator] = None):
        super().__init__()
        if alpha < 0 or sigma <= 0:
            raise ValueError(f"alpha must be >= 0 and sigma > 0, got alpha={alpha}, sigma={sigma}")
        self.alpha, self.sigma, self.fill = float(alpha), float(sigma), float(fill)
        self.affine = affine
        self.generator = generator

    def displacements(self, n: int, height: int, width: int,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` random displacement fields ``[n, 2, height, width]`` (x then y), in pixels."""
        return self._fields(n, height, width, generator, normalised=False)

    def _fields(self, n: int, height: int, width: int, generator: Optional[torch.Generator],
                normalised: bool) -> torch.Tensor:
        # smooth(alpha (2u - 1)) = 2 alpha smooth(u) - alpha smooth(1); the smoothing is separable, two small
        # matrix products (smoothing[i, j] = k(i - j), zero past the border), with the constants folded in.
        g = generator if generator is not None else self.generator
        u = torch.rand(n, 2, height, width, generator=g)
        ky, kx = _smoothing_matrix(height, self.sigma), _smoothing_matrix(width, self.sigma)
        # In grid_sample's normalised coordinates a pixel is 2/size; x and y may differ.
        unit = torch.tensor([2 / width, 2 / height] if normalised else [1.0, 1.0]).view(2, 1, 1)
        field = (ky * (2 * self.alpha)) @ u @ kx.T
        offset = -self.alpha * (ky.sum(1, keepdim=True) * kx.sum(1).view(1, -1))   # -alpha smooth(1)
        if normalised:
            # Add the output pixel centres (align_corners=False: (2i + 1) / size - 1), so that the result
            # is where to read.
            xs = (2 * torch.arange(width, dtype=torch.float32) + 1) / width - 1
            ys = (2 * torch.arange(height, dtype=torch.float32) + 1) / height - 1
            base = torch.stack([xs.view(1, -1).expand(height, width), ys.view(-1, 1).expand(height, width)])
            return torch.addcmul(base + unit * offset, field, unit)
        return field + offset

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        _check_images(x)
        g = generator if generator is not None else self.generator
        n, _, height, width = x.shape
        theta = self.affine.theta(n, height, width, g) if self.affine is not None else None
        where = self._fields(n, height, width, g, normalised=True).to(x.dtype).view(n, 2, height * width)
        if theta is None:
            grid = where.transpose(1, 2)
        else:
            # Then through the affine map's inverse: [x y] -> theta [x y 1].
            t = theta.to(x.dtype)
            grid = torch.baddbmm(t[:, :, 2].unsqueeze(1), where.transpose(1, 2), t[:, :, :2].transpose(1, 2))
        grid = grid.reshape(n, height, width, 2)
        out = F.grid_sample(x - self.fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + self.fill
        return out[0] if single else out

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, sigma={self.sigma}" + (f", affine=({self.affine.extra_repr()})" if self.affine else "")
