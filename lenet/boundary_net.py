"""Where two digits meet: a learned cost for the cut paths, ``SegmentParams(cut_cost="learned")``.

The cut paths of `lenet.segment` are least-cost paths from the top of a component to its bottom, and by default
their cost is the ink they sever. Where a stroke of one digit lies on a stroke of another, the true boundary
runs along the shared stroke and severs ink in every row, while a wrong path round the stroke, through a digit's
inside, severs less: the least-ink path is the wrong one. Given the owner map (which digit drew each pixel),
the cost of severing two neighbouring pixels that belong to *different* digits would be nothing, and the cut
paths found that way hold the true segmentation far more often (`benchmarks/segmentation.py --bounds`).

`BoundaryNet` guesses that owner knowledge from the image alone: a small fully convolutional network that gives,
for every pair of neighbouring pixels (left/right and above/below), the chance that they belong to different
digits. The cut paths' cost of severing two pixels becomes the fainter one's grey level times one minus that
chance (`lenet.segment._severed`), and everything else — the candidates from every column, the anchors, the
order cheapest first, the pieces — is unchanged. The network runs on the whole image once (its body at half
resolution, its head at full resolution, 16 k parameters).

It is trained on strings of **training** digits in the renderer's wide mix of styles (`lenet.strings.RenderRanges`)
with the renderer's owner maps: a logistic loss on every pair of neighbouring inked pixels (the only pairs whose
cost it changes). `examples/train_boundary_net.py` makes the weights the package ships
(``lenet/data/boundary_net.pt``, loaded by `default_boundary_net`).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BoundaryNet", "apart_targets", "train_boundary_net", "save_boundary_net", "default_boundary_net",
           "DEFAULT_BOUNDARY_PATH"]

#: The weights the package ships.
DEFAULT_BOUNDARY_PATH = Path(__file__).resolve().parent / "data" / "boundary_net.pt"
#: Dilations of the body's residual convolutions (at half resolution): a field of view of about 60 pixels, two
#: digits' widths at the largest height, so that the network sees both digits of a join.
DILATIONS = (1, 2, 4, 8)


class BoundaryNet(nn.Module):
    """For each pixel ``(y, x)`` of a grey image, the logits that it and its left neighbour ``(y, x - 1)``
    (channel 0) and that it and the pixel below ``(y + 1, x)`` (channel 1) belong to different digits.

    A strided convolution to half resolution, residual dilated convolutions (`DILATIONS`), then, back at full
    resolution beside the image itself, a 3 × 3 convolution and a 1 × 1 to the two logits. ``width``: channels
    of the body."""

    def __init__(self, width: int = 16, fine: int = 8):
        super().__init__()
        self.width, self.fine = width, fine
        self.local = nn.Conv2d(1, fine, 3, padding=1)
        self.down = nn.Conv2d(fine, width, 3, stride=2, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(width, width, 3, padding=d, dilation=d) for d in DILATIONS)
        self.head = nn.Sequential(nn.Conv2d(width + fine, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x float32 [B, 1, H, W]`` (grey levels in 0..1, ink bright) → logits ``[B, 2, H, W]``."""
        f = F.relu(self.local(x))
        h = F.relu(self.down(f))
        for conv in self.body:
            h = h + F.relu(conv(h))
        h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([h, f], 1))

    @torch.no_grad()
    def apart(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(across [H, W], under [H - 1, W])`` for the grey image ``x [H, W]``: the chance that pixel
        ``(y, p)`` and its left neighbour, and that ``(y, x)`` and the pixel below, belong to different digits
        (``across[:, 0]``: 0, it has no left neighbour). The form `lenet.segment._severed` takes."""
        q = torch.sigmoid(self(torch.from_numpy(np.asarray(x, dtype=np.float32))[None, None]))[0].double().numpy()
        across = q[0].copy()
        across[:, 0] = 0.0
        return across, q[1, :-1]


def apart_targets(image, owner) -> Tuple[torch.Tensor, torch.Tensor]:
    """The training targets of one string: ``(target float32 [2, H, W], mask bool [2, H, W])`` in
    `BoundaryNet`'s layout — 1 where the two neighbouring pixels belong to different digits — kept (``mask``)
    only for pairs whose two pixels are both ink owned by some digit (the pairs whose severing cost the
    network's answer changes)."""
    from .segment import INK_THRESHOLD, as_float_image
    x = as_float_image(image)
    own = torch.as_tensor(owner).long()
    if own.shape != x.shape:
        raise ValueError(f"owner map {tuple(own.shape)} does not match the image {tuple(x.shape)}")
    inked = (x > INK_THRESHOLD) & (own >= 0)
    H, W = x.shape
    target = torch.zeros(2, H, W)
    mask = torch.zeros(2, H, W, dtype=torch.bool)
    target[0, :, 1:] = (own[:, 1:] != own[:, :-1]).float()
    mask[0, :, 1:] = inked[:, 1:] & inked[:, :-1]
    target[1, :-1] = (own[1:] != own[:-1]).float()
    mask[1, :-1] = inked[1:] & inked[:-1]
    return target, mask


def _batch(strings: Sequence, idx: Sequence[int]):
    """Images, targets and masks of ``strings[idx]``, zero-padded (mask off) to the largest in the batch."""
    from .segment import as_float_image
    items = [(as_float_image(strings[i].image), *apart_targets(strings[i].image, strings[i].owner)) for i in idx]
    H = max(x.shape[0] for x, _, _ in items)
    W = max(x.shape[1] for x, _, _ in items)
    xs = torch.zeros(len(items), 1, H, W)
    ts = torch.zeros(len(items), 2, H, W)
    ms = torch.zeros(len(items), 2, H, W, dtype=torch.bool)
    for b, (x, t, m) in enumerate(items):   # a batch of images (a loop over images, not pixels)
        h, w = x.shape
        xs[b, 0, :h, :w], ts[b, :, :h, :w], ms[b, :, :h, :w] = x, t, m
    return xs, ts, ms


def train_boundary_net(strings: Sequence, epochs: int = 6, batch_size: int = 32, lr: float = 3e-3, width: int = 16,
                       fine: int = 8, pos_weight: float = 1.0, seed: int = 0,
                       progress: Optional[Callable[[int, float], None]] = None) -> BoundaryNet:
    """Fit a `BoundaryNet` to ``strings`` (`lenet.strings.DigitString` with owner maps): the mean logistic loss
    over each batch's pairs of neighbouring inked pixels (`apart_targets`); Adam, the learning rate halved for each
    epoch of the second half; ``width`` and ``fine``: the network's channels (`BoundaryNet`); ``pos_weight``: the
    weight of the pairs of different digits in the loss. Deterministic in ``seed`` (for a given torch build and
    thread count). ``progress(epoch, mean loss)`` is called after each epoch."""
    if not len(strings):
        raise ValueError("no strings to train on")
    if any(s.owner is None for s in strings):
        raise ValueError("training the boundary network needs strings with owner maps (lenet.strings.make_strings)")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = BoundaryNet(width, fine)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        for pg in opt.param_groups:
            pg["lr"] = lr * (0.5 ** max(0, epoch - epochs // 2))
        order = torch.randperm(len(strings), generator=g).tolist()
        total, count = 0.0, 0
        for i in range(0, len(order), batch_size):   # mini-batches of images
            xs, ts, ms = _batch(strings, order[i:i + batch_size])
            if not bool(ms.any()):
                continue
            loss = F.binary_cross_entropy_with_logits(model(xs)[ms], ts[ms], pos_weight=torch.tensor(pos_weight))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * int(ms.sum())
            count += int(ms.sum())
        if progress is not None:
            progress(epoch, total / max(count, 1))
    return model.eval()


def save_boundary_net(model: BoundaryNet, path) -> None:
    """Write ``model``'s weights and width (what `default_boundary_net` reads)."""
    torch.save({"kind": "boundary_net", "width": model.width, "fine": model.fine, "dilations": list(DILATIONS),
                "model": model.state_dict()}, path)


@lru_cache(maxsize=None)
def _load(path: str) -> BoundaryNet:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no boundary network weights at {path}: make them with "
                                "examples/train_boundary_net.py")
    if not isinstance(state, dict) or state.get("kind") != "boundary_net":
        raise ValueError(f"{path} is not a boundary network (examples/train_boundary_net.py writes them)")
    if list(state["dilations"]) != list(DILATIONS):
        raise ValueError(f"{path} has dilations {state['dilations']}, this version builds {list(DILATIONS)}")
    model = BoundaryNet(int(state["width"]), int(state["fine"]))
    model.load_state_dict(state["model"])
    return model.eval()


def default_boundary_net(path: Optional[str] = None) -> BoundaryNet:
    """The shipped `BoundaryNet` (``lenet/data/boundary_net.pt``), or the one saved at ``path``; loaded once."""
    return _load(str(DEFAULT_BOUNDARY_PATH if path is None else Path(path).resolve()))
