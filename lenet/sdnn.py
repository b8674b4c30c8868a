"""The space-displacement neural network reader (SDNN, paper §VII): LeNet-5 swept over the whole string.

No segmentation at all: the string image (normalised so that its ink is as tall as an MNIST digit, 20 of
32 rows) is scanned by LeNet-5 convolutionally (``LeNet5.sweep``: one 32×32 window every 4 columns, in one
pass because C5 is a convolution). Each window position is a frame with 11 symbols: ``0`` = blank (no digit
centred here) and ``d + 1`` = digit ``d``, scored ``-penalty`` — the blank's score is a learned constant
``-blank`` (LeNet-5 has no rubbish output, like the MAP criterion's constant ``j``). The frames are a
`gtn.DenseFsaVec`.

The **character model** (the paper's "grammar" of the SDNN output) says a digit occupies one or more
consecutive frames and two digits are always separated by at least one blank frame (no digit on contiguous
outputs without a separator); blanks may also lead and trail. `gtn.intersect_dense` pairs it with the frames;
the per-string **target graphs** are the same model restricted to the label string. Training uses the
discriminative forward criterion ``forward(model ∩ frames) − forward(target ∩ frames)`` computed by
`gtn.dense_forward_score` (no lattice is built); decoding takes the Viterbi path of the lattice and reads
each run of digit frames as one digit.

Not the paper's: it trained its SDNN on images of a central digit flanked by random neighbours with a
"blank" class; here regime (a) uses the isolated-digit LeNet-5 as it is (the blank constant set by a
heuristic) and regime (b) trains the swept network globally from string labels only.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import gtn

from .data import BACKGROUND, INK
from .model import build
from .model import _reduce as reduce_loss
from .recognizer import SYMBOLS, digits_to_labels, labels_to_string, standardize
from .segment import INK_THRESHOLD

__all__ = ["character_model", "target_graphs", "SDNNReader", "save_sdnn"]

#: Ink height of a string in the swept input (MNIST's digits are 20 pixels tall in their 28×28 box).
SWEEP_INK_HEIGHT = 20


def character_model(num_digits: int = 10, dtype=torch.float32) -> gtn.Fsa:
    """The SDNN character model over symbols ``0`` (blank) and ``1..num_digits``: state 0 = in a blank run
    (start), state ``d`` = in a run of digit ``d``; ``d → d'`` needs a blank in between."""
    D = num_digits
    d = torch.arange(1, D + 1)
    final = D + 1
    arcs = torch.cat([
        torch.tensor([[0, 0, 0]]),                                  # blank loop
        torch.stack([torch.zeros_like(d), d, d], 1),                # start a digit
        torch.tensor([[0, final, -1]]),
        torch.stack([d, d, d], 1),                                  # continue the digit
        torch.stack([d, torch.zeros_like(d), torch.zeros_like(d)], 1),  # separator
        torch.stack([d, torch.full_like(d, final), torch.full_like(d, -1)], 1),
    ])
    order = torch.sort(arcs[:, 0], stable=True).indices
    return gtn.Fsa(arcs[order], torch.zeros(len(arcs), dtype=dtype), num_states=final + 1)


def target_graphs(labels: Sequence[Sequence[int]], dtype=torch.float32) -> gtn.FsaVec:
    """For each label sequence ``t_1..t_n``: ``blank* t_1+ blank+ t_2+ ... blank+ t_n+ blank*`` (an `FsaVec`)."""
    out = []
    for t in labels:  # one small graph per string, built with tensor ops
        t = torch.as_tensor(list(t), dtype=torch.int64)
        n = len(t)
        i = torch.arange(n)
        b = torch.arange(n + 1) * 2
        final = 2 * n + 1
        arcs = torch.cat([
            torch.stack([b, b, torch.zeros_like(b)], 1),                         # blank loops (B_0..B_n)
            torch.stack([2 * i, 2 * i + 1, t], 1),                               # B_{i} -> D_{i+1}
            torch.stack([2 * i + 1, 2 * i + 1, t], 1),                           # digit loops
            torch.stack([2 * i + 1, 2 * i + 2, torch.zeros_like(i)], 1),         # D -> B (separator)
            torch.tensor([[2 * n - 1, final, -1], [2 * n, final, -1]]),
        ])
        order = torch.sort(arcs[:, 0], stable=True).indices
        out.append(gtn.Fsa(arcs[order], torch.zeros(len(arcs), dtype=dtype), num_states=final + 1))
    return gtn.FsaVec(out)


def sweep_input(images) -> Tuple[torch.Tensor, torch.Tensor]:
    """String images → ``([B, 1, 32, W] network input, [B] number of window positions)``: ink height scaled to
    `SWEEP_INK_HEIGHT`, centred in 32 rows, 16 blank columns each side, padded to a common width."""
    xs = []
    for im in images:
        x = standardize(im)
        rows = torch.nonzero((x > INK_THRESHOLD).any(1)).flatten()
        x = x[int(rows[0]):int(rows[-1]) + 1]
        f = SWEEP_INK_HEIGHT / x.shape[0]
        size = (SWEEP_INK_HEIGHT, max(1, round(x.shape[1] * f)))
        x = F.interpolate(x[None, None], size=size, mode="bilinear", align_corners=False,
                          antialias=f < 1)[0, 0].clamp(0, 1)
        top = (32 - SWEEP_INK_HEIGHT) // 2
        xs.append(F.pad(x, (16, 16, top, 32 - SWEEP_INK_HEIGHT - top)))
    W = max(max(x.shape[1] for x in xs), 32)
    W += (-(W - 32)) % 4
    batch = torch.stack([F.pad(x, (0, W - x.shape[1])) for x in xs])
    positions = torch.tensor([max(1, (x.shape[1] - 32) // 4 + 1) for x in xs])
    return (BACKGROUND + (INK - BACKGROUND) * batch).unsqueeze(1), positions


class SDNNReader(nn.Module):
    """The SDNN string reader: LeNet-5 swept over the string + character model + Viterbi (see module doc).

    ``blank``: the penalty of the blank symbol (learned). ``lengths`` is kept for the checkpoint (the
    character model itself does not restrict the length)."""

    def __init__(self, model: Optional[nn.Module] = None, blank: float = 10.0,
                 lengths: Optional[Tuple[int, int]] = (3, 6)):
        super().__init__()
        self.model = model if model is not None else build("paper")
        self.blank = nn.Parameter(torch.tensor(float(blank)))
        self.lengths = tuple(lengths) if lengths is not None else None

    def emissions(self, images) -> gtn.DenseFsaVec:
        """Frame scores ``[B, positions, 11]``: ``-blank`` then ``-penalty`` of digits 0..9."""
        x, positions = sweep_input(images)
        dtype = self.blank.dtype
        pen = self.model.sweep(x.to(dtype))                                   # [B, P, 10]
        blank = (-self.blank).expand(pen.shape[0], pen.shape[1], 1)
        return gtn.DenseFsaVec(torch.cat([blank, -pen], 2), positions)

    def loss(self, images, labels: Sequence[str], reduction: str = "mean") -> torch.Tensor:
        """Discriminative forward loss per string: ``forward(model ∩ frames) − forward(target ∩ frames)``."""
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        dense = self.emissions(images)
        dtype = self.blank.dtype
        free = gtn.dense_forward_score(character_model(dtype=dtype), dense)
        constrained = gtn.dense_forward_score(target_graphs([digits_to_labels(t) for t in labels], dtype),
                                              dense)
        # a target with more digits than the frames can hold has no path: a large finite loss, no NaN
        loss = torch.where(torch.isfinite(constrained), free - constrained,
                           torch.full_like(free, 1e4) + 0 * free)
        return reduce_loss(loss, reduction)

    @torch.no_grad()
    def decode(self, images, return_frames: bool = False):
        """The digits read along the Viterbi path of ``character model ∩ frames`` (one per run of digit frames)."""
        dense = self.emissions(images)
        return self._read(dense, return_frames)

    def _read(self, dense, return_frames=False):
        lat = gtn.intersect_dense(character_model(dtype=dense.log_probs.dtype), dense)
        path = gtn.viterbi_path(lat)
        splits = path.arc_splits.tolist()
        texts, frames = [], []
        for i in range(len(splits) - 1):  # one short path per image
            lab = path.labels[splits[i]:splits[i + 1]]
            lab = lab[lab >= 0]
            keep = torch.ones_like(lab, dtype=torch.bool)
            keep[1:] = lab[1:] != lab[:-1]
            texts.append(labels_to_string(lab[keep & (lab > 0)]))
            frames.append(lab.tolist())
        return (texts, frames) if return_frames else texts

    @torch.no_grad()
    def tune_blank(self, images, labels: Sequence[str], candidates: Sequence[float], batch_size: int = 50) -> float:
        """Choose the blank penalty among ``candidates`` by string accuracy on (training) strings, the network
        untouched (its sweep is computed once). Sets and returns the best."""
        dense = []
        for k in range(0, len(images), batch_size):
            x, positions = sweep_input(images[k:k + batch_size])
            dense.append((self.model.sweep(x.to(self.blank.dtype)), positions))
        best, best_acc = float(self.blank.detach()), -1.0
        for c in candidates:
            right = 0
            for j, (pen, positions) in enumerate(dense):
                lp = torch.cat([torch.full_like(pen[..., :1], -c), -pen], 2)
                texts = self._read(gtn.DenseFsaVec(lp, positions))
                right += sum(t == l for t, l in zip(texts, labels[j * batch_size:(j + 1) * batch_size]))
            if right / len(images) > best_acc:
                best, best_acc = float(c), right / len(images)
        self.blank.fill_(best)
        return best

    def plot_decoding(self, image, ax=None, title: str = "", truth: Optional[str] = None, out=None):
        """Draw the (normalised) string with the symbol read at each window position (the Viterbi path)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        texts, frames = self.decode([image], return_frames=True)
        x, _ = sweep_input([image])
        own = ax is None
        if own:
            fig, ax = plt.subplots(figsize=(max(3.0, x.shape[-1] / 12), 2.2))
        ax.imshow(x[0, 0].numpy(), cmap="gray", interpolation="nearest")
        for p, lab in enumerate(frames[0]):
            c = 16 + 4 * p  # window centre
            ax.text(c, 31, "·" if lab == 0 else SYMBOLS[lab - 1], color="tab:orange" if lab else "tab:gray",
                    ha="center", va="top", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title} {texts[0]!r}" + (f" (truth {truth!r})" if truth is not None else ""), fontsize=9)
        if own and out:
            fig.tight_layout()
            fig.savefig(out, dpi=120)
            plt.close(fig)
        return ax

    def config(self):
        return {"lengths": list(self.lengths) if self.lengths is not None else None}


CHECKPOINT_KIND = "sdnn_reader"


def save_sdnn(reader: SDNNReader, path, **extra):
    """Write ``reader`` as an ``"sdnn_reader"`` checkpoint (``lenet.load`` / ``lenet.recognize`` read it)."""
    from .checkpoint import save
    return save(path, CHECKPOINT_KIND, {"reader": reader.config(), "model": reader.model.config()},
                reader.state_dict(), **extra)


def _load_sdnn(ckpt) -> SDNNReader:
    cfg = ckpt["config"]
    lengths = cfg["reader"]["lengths"]
    reader = SDNNReader(build(**cfg["model"]), lengths=tuple(lengths) if lengths is not None else None)
    from .checkpoint import restore
    return restore(reader, ckpt["state_dict"])


def _register():
    from .checkpoint import register
    register(CHECKPOINT_KIND, "lenet.sdnn:_load_sdnn")


_register()
