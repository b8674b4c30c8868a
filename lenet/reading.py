"""What both string readers share (`lenet.recognizer.StringReader`, the segmentation reader, and
`lenet.sdnn.SDNNReader`): `recognize`, the user's entry point (image checks, ``ink``, ``lexicon``,
``length`` and ``confidence`` turned into each reader's ``decode(images, lexicon=..., return_confidence=...)``
calls, in batches), `discriminative_forward` (the training criterion) and `_merge` (the members of one graph
where a constrained reading exists, of another elsewhere).

A reader is any module with ``decode(images, lexicon=None, return_confidence=False)`` that reads a list of
images and honours a lexicon acceptor over the labels ``1..10`` (a length constraint arrives as one)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

import gtn
from gtn.fsa import FsaVec

from .crops import clean_image
from .grammars import as_lexicon, length_constraint
from .segment import as_float_image

__all__ = ["recognize", "discriminative_forward"]


def recognize(images, model, batch_size: int = 64, ink: Optional[str] = None, lexicon=None, length=None,
              confidence: bool = False, clean: bool = True):
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
    the images below a threshold; `error_reject` measures what a threshold buys on labelled strings.

    ``clean=True`` (default): every image first goes through `lenet.crops.clean_image`, which removes a grey,
    uneven or noisy background, erases specks and stretches faint ink to full contrast, so that scans and
    photographs look like the strings the readers were trained on (a string drawn by `lenet.strings` passes
    unchanged unless it has ink components of a pixel or two). ``clean=False`` reads the images as they are,
    as the readers' own ``decode`` does."""
    if ink not in (None, "light", "dark"):
        raise ValueError(f"ink must be None, 'light' or 'dark', got {ink!r}")
    if lexicon is not None:
        lexicon = as_lexicon(lexicon)  # once for all batches; checked before any image is read
    from .combined import CombinedReader
    from .recognizer import StringReader
    from .sdnn import SDNNReader
    readers = (StringReader, SDNNReader, CombinedReader)
    reader = model
    if not isinstance(reader, readers):
        if isinstance(reader, (str, bytes)) or hasattr(reader, "__fspath__"):
            from .checkpoint import describe, from_checkpoint, read
            ckpt = read(model)
            reader = from_checkpoint(ckpt, model)
            if not isinstance(reader, readers):
                hint = ("; examples/multi_digit.py --lenet PATH trains one on this network"
                        if ckpt["kind"] == "lenet5" else "")
                raise ValueError(f"{model}: {describe(ckpt['kind'])}; recognize reads strings with a string "
                                 f"reader checkpoint (examples/multi_digit.py --out PATH){hint}")
        elif isinstance(reader, nn.Module) and getattr(reader, "num_classes", None) is not None:
            raise TypeError(f"recognize got a {type(model).__name__}, a digit classifier (read isolated digits with "
                            f"lenet.classify); recognize needs a string reader: a StringReader, SDNNReader or "
                            f"CombinedReader, or the path of a checkpoint written by examples/multi_digit.py")
        else:
            raise TypeError(f"model must be a StringReader, SDNNReader or CombinedReader or the path of a checkpoint "
                            f"written by examples/multi_digit.py, got {type(model).__name__}")
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
            if clean:
                x = clean_image(x)
        except (ValueError, TypeError) as e:
            raise type(e)(f"image {i}: {e}" if not single else str(e)) from None
        converted.append(x)
    if ink == "dark" or clean:
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
