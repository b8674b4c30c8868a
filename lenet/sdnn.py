"""The space-displacement neural network reader (SDNN, paper §VII): LeNet-5 swept over the whole string.

No segmentation at all: the string image (normalised so that its ink is 24 of 32 rows tall, which makes its
digits about as tall as MNIST's) is scanned by LeNet-5 convolutionally (``LeNet5.sweep``: one 32×32 window
every 4 columns, in one pass because C5 is a convolution; with ``stride=2`` a second pass shifted by 2 columns
is interleaved). Each
window position is a frame with 11 symbols: ``0`` = blank (no digit centred here) and ``d + 1`` = digit ``d``,
scored ``-penalty``. The recognizer made by `sdnn_network` has an **11th RBF output, the blank** (a
"no central character" prototype, the paper's non-character class); its penalty plus the learned offset
``blank`` scores symbol 0. (A plain 10-class LeNet-5 also works: the blank is then the constant ``-blank``.)
The frames are a `gtn.DenseFsaVec`.

The **character model** (the paper's "grammar" of the SDNN output) says a digit occupies one or more
consecutive frames and two digits are always separated by at least one blank frame (no digit on contiguous
outputs without a separator); blanks may also lead and trail. `gtn.intersect_dense` pairs it with the frames;
the per-string **target graphs** are the same model restricted to the label string. Training uses the
discriminative forward criterion ``forward(model ∩ frames) − forward(target ∩ frames)`` computed by
`gtn.dense_forward_score` (no lattice is built); decoding takes the Viterbi path of the lattice and reads
each run of digit frames as one digit.

Two training regimes, as in the paper: (a) **window training** (`train_windows`), the paper's
"isolated-character" training of the SDNN: strings rendered from isolated training digits with random
neighbours, gaps and overlaps, where every window is labelled from the renderer's known digit positions
(`frame_labels`: a digit centred in the window → that digit; the window centred between digits or beside the
string → blank; in between → no label), with the MAP criterion per window; (b) **global training** from the
string labels only, through the character model (`SDNNReader.loss`). Decoding reads only 3–6 digits
(`counting_character_model`) when the reader's ``lengths`` are set.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import gtn
from gtn.fsa import ragged_range

from .data import BACKGROUND, INK
from .model import LeNet5, build, digit_prototypes
from .model import _reduce as reduce_loss
from .crops import standardize
from .grammars import as_lexicon
from .labels import SYMBOLS, digits_to_labels, labels_to_string
from .reading import _merge
from .segment import INK_THRESHOLD

__all__ = ["character_model", "counting_character_model", "target_graphs", "frame_graph", "sweep_input", "swept_penalties",
           "frame_labels", "sdnn_prototypes", "sdnn_network", "train_windows", "SDNNReader", "save_sdnn"]

#: Default ink height of a string in the swept input. A string's ink rows span its digits' vertical shifts
#: and sizes, so at 24 of 32 rows its digits are about MNIST's 20 pixels tall (read better than at 20).
SWEEP_INK_HEIGHT = 24


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


def counting_character_model(min_len: int, max_len: int, num_digits: int = 10, dtype=torch.float32) -> gtn.Fsa:
    """The character model restricted to strings of ``min_len..max_len`` digits (for decoding when the
    lengths are known, like the segmentation reader's length grammar): state ``k (D + 1)`` = blank after
    ``k`` digits, state ``k (D + 1) + d`` = in the ``k``-th digit, which is ``d``."""
    D, S = num_digits, num_digits + 1
    if not 0 <= min_len <= max_len:
        raise ValueError(f"lengths must satisfy 0 <= min <= max, got ({min_len}, {max_len})")
    final = (max_len + 1) * S
    k = torch.arange(max_len + 1)
    d = torch.arange(1, D + 1)
    kk, dd = torch.meshgrid(k, d, indexing="ij")                  # [K, D]
    k1, d1 = kk[1:].flatten(), dd[1:].flatten()                    # digit states exist for k >= 1
    k0, d0 = kk[:-1].flatten(), dd[:-1].flatten()                  # starting digit k + 1 from blank k
    fin_k = k[(k >= min_len)]
    fk1 = (k1 >= min_len)
    arcs = torch.cat([
        torch.stack([k * S, k * S, torch.zeros_like(k)], 1),                     # blank loops
        torch.stack([k0 * S, (k0 + 1) * S + d0, d0], 1),                         # start digit k + 1
        torch.stack([k1 * S + d1, k1 * S + d1, d1], 1),                          # continue it
        torch.stack([k1 * S + d1, k1 * S, torch.zeros_like(k1)], 1),             # separator
        torch.stack([fin_k * S, torch.full_like(fin_k, final), torch.full_like(fin_k, -1)], 1),
        torch.stack([k1[fk1] * S + d1[fk1], torch.full_like(k1[fk1], final), torch.full_like(k1[fk1], -1)], 1),
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


def _reading_graph(text: str, dtype) -> gtn.Fsa:
    """The frame sequences that read ``text`` (`target_graphs` of it; blanks only for the empty string)."""
    if not text:
        return gtn.Fsa(torch.tensor([[0, 0, 0], [0, 1, -1]]), torch.zeros(2, dtype=dtype), num_states=2)
    return target_graphs([digits_to_labels(text)], dtype)[0]


def frame_graph(acceptor: gtn.Fsa) -> gtn.Fsa:
    """The frame-level graph of a digit acceptor (labels ``1..10``, e.g. `lenet.grammars.lexicon_fsa`): every
    frame sequence that the SDNN's reading rule turns into a string the acceptor accepts, i.e. each digit ``d``
    on an arc ``p → q`` becomes ``d+`` and consecutive digits need ``blank+`` between them, with optional
    blanks at both ends (for one string this is `target_graphs`). Each arc's score is the acceptor arc's
    (taken once, on entering the digit or the final state), so a weighted lexicon stays weighted; the scores
    are gathered from the acceptor's, so gradients reach them.

    States: ``B_s`` (a blank run at acceptor state ``s``) keeps the number ``s``; ``D_a`` (inside the digit of
    acceptor arc ``a``) follows; one new final state."""
    if not isinstance(acceptor, gtn.Fsa) or acceptor.aux_labels is not None:
        raise TypeError("frame_graph needs a gtn.Fsa acceptor")
    lab = acceptor.labels
    if acceptor.num_states < 2 or not bool(((lab >= 1) | (lab == -1)).all()):
        raise ValueError("frame_graph needs an acceptor with digit labels >= 1 and final arcs (-1) only "
                         "(label 0 would be the blank)")
    S = acceptor.num_states
    src, dst, sc = acceptor.arcs[:, 0], acceptor.arcs[:, 1], acceptor.scores
    dig = torch.nonzero(lab > 0).squeeze(1)
    fin = torch.nonzero(lab == -1).squeeze(1)
    A = dig.numel()
    d_state = (S - 1) + torch.arange(A)          # D_a
    final = (S - 1) + A
    b = torch.arange(S - 1)                      # B_s (the acceptor's final state S-1 has none)
    # final arcs reachable right after a digit: pairs (digit arc a, final arc f leaving dst(a))
    fsrc = src[fin]
    counts = torch.bincount(fsrc, minlength=S)
    splits = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
    by_src = fin[torch.sort(fsrc, stable=True).indices]
    cnt = counts[dst[dig]]
    pair_f = by_src[ragged_range(splits[dst[dig]], cnt)]
    pair_a = torch.repeat_interleave(torch.arange(A), cnt, output_size=pair_f.numel())
    zero = lambda n: torch.zeros(n, dtype=sc.dtype)  # noqa: E731
    parts = [  # (src, dst, label, score)
        (b, b, torch.zeros_like(b), zero(len(b))),                               # blank loops
        (src[dig], d_state, lab[dig], sc[dig]),                                  # enter the digit
        (d_state, d_state, lab[dig], zero(A)),                                   # continue it
        (d_state, dst[dig], torch.zeros(A, dtype=torch.int64), zero(A)),         # separator blank
        (src[fin], torch.full_like(fin, final), torch.full_like(fin, -1), sc[fin]),  # end after blanks
        (d_state[pair_a], torch.full_like(pair_a, final), torch.full_like(pair_a, -1), sc[pair_f]),  # end on a digit
    ]
    arcs = torch.cat([torch.stack([p[0], p[1], p[2]], 1) for p in parts])
    scores = torch.cat([p[3] for p in parts])
    order = torch.sort(arcs[:, 0], stable=True).indices
    return gtn.Fsa(arcs[order], scores[order], num_states=final + 1)


def _normalise(im, ink_height: int = SWEEP_INK_HEIGHT) -> Tuple[torch.Tensor, float]:
    """One string image → ``(float [ink_height, W']``, its ink rows scaled to ``ink_height``; column scale
    ``W'/W)``."""
    x0 = standardize(im)
    rows = torch.nonzero((x0 > INK_THRESHOLD).any(1)).flatten()
    x = x0[int(rows[0]):int(rows[-1]) + 1]
    f = ink_height / x.shape[0]
    size = (ink_height, max(1, round(x.shape[1] * f)))
    x = F.interpolate(x[None, None], size=size, mode="bilinear", align_corners=False,
                      antialias=f < 1)[0, 0].clamp(0, 1)
    width = im.shape[-1] if hasattr(im, "shape") else x0.shape[1]
    return x, x.shape[1] / width


def sweep_input(images, return_scales: bool = False, ink_height: int = SWEEP_INK_HEIGHT):
    """String images → ``([B, 1, 32, W] network input, [B] number of window positions)`` (and, with
    ``return_scales``, ``[B]`` the factor from input columns to normalised columns): ink height scaled to
    ``ink_height`` (default `SWEEP_INK_HEIGHT`, at most 28), centred in 32 rows, 16 blank columns each side,
    padded to a common width.
    Window ``p`` (left edge at column ``4p``) is centred on normalised column ``4p`` of the string, i.e. on
    column ``4p / scale`` of the input image."""
    if not 8 <= ink_height <= 28:
        raise ValueError(f"ink_height must be in 8..28, not {ink_height}")
    xs, scales = [], []
    for im in images:
        x, f = _normalise(im, ink_height)
        scales.append(f)
        top = (32 - ink_height) // 2
        xs.append(F.pad(x, (16, 16, top, 32 - ink_height - top)))
    W = max(max(x.shape[1] for x in xs), 32)
    W += (-(W - 32)) % 4
    batch = torch.stack([F.pad(x, (0, W - x.shape[1])) for x in xs])
    positions = torch.tensor([max(1, (x.shape[1] - 32) // 4 + 1) for x in xs])
    x = (BACKGROUND + (INK - BACKGROUND) * batch).unsqueeze(1)
    if return_scales:
        return x, positions, torch.tensor(scales, dtype=torch.float64)
    return x, positions


def swept_penalties(model: nn.Module, x: torch.Tensor, positions: torch.Tensor, stride: int = 4):
    """``model.sweep`` of ``sweep_input``'s output at window stride 4 or 2 (2: a second pass on the input
    shifted left by 2 columns, interleaved; frame ``p`` is then centred on normalised column ``2p``).
    Returns ``(penalties [B, P, K], positions [B])``."""
    if stride == 4:
        return model.sweep(x), positions
    if stride != 2:
        raise ValueError(f"stride must be 4 or 2, not {stride}")
    shifted = F.pad(x[..., 2:], (0, 2), value=BACKGROUND)
    pen = model.sweep(torch.cat([x, shifted]))                            # [2B, P, K]
    B, P = x.shape[0], pen.shape[1]
    pen = torch.stack([pen[:B], pen[B:]], 2).reshape(B, 2 * P, -1)       # frames 0, 2, 4, ... then 2, 6, ...
    # the last shifted window may not fit in the string's own width: keep 2P - 1 frames (it is margin anyway)
    return pen, 2 * positions - 1


def frame_labels(extents: Sequence[torch.Tensor], labels: Sequence[str], scales: torch.Tensor,
                 positions: torch.Tensor, stride: int = 4, core: float = 0.25, min_core: float = 2.0,
                 edge: float = 1.5, gap: float = 1.0, between: bool = False) -> torch.Tensor:
    """Per-window training labels of rendered strings (the paper's SDNN training images), ``[B, P]``:
    ``d + 1`` when the window is centred on digit ``d`` (its centre within ``max(min_core, core × width)``
    normalised columns of the digit's centre), ``0`` (blank) when it is centred outside every digit's ink box
    (or less than ``edge`` columns inside its edge: between two touching digits, or beside the string) and at
    least ``gap`` columns beyond every digit's labelled core, or when it is the window nearest the junction of
    two neighbours (and not the one nearest a digit's centre), or (with ``between``) anywhere between two
    neighbours' labelled cores (``gap`` clear of them), and
    ``-1`` (no label) otherwise and beyond the string. ``extents``: each string's ``[L, 2]`` true column ranges
    (`lenet.strings.DigitString.extents`), ``scales`` from ``sweep_input(..., return_scales=True)``."""
    P = int(positions.max())
    v = torch.arange(P, dtype=torch.float64) * stride        # window centres, normalised string columns
    out = torch.full((len(labels), P), -1, dtype=torch.int64)
    for b, (ext, text) in enumerate(zip(extents, labels)):    # one [P, L] table per string
        e = torch.as_tensor(ext, dtype=torch.float64) * float(scales[b])
        c, w = e.mean(1), e[:, 1] - e[:, 0]
        d = (v[:, None] - c[None]).abs()
        near = d.argmin(1)
        digit = torch.tensor([int(ch) + 1 for ch in text])
        radius = (core * w).clamp(min=min_core)
        is_digit = d.gather(1, near[:, None])[:, 0] <= radius[near]
        # blank: outside every box (or just inside its edge), and clear of every digit's labelled core, so that
        # the windows of a narrow digit ("1") are never labelled both ways a column apart
        clear = (d >= radius + gap).all(1)
        is_blank = clear & ((d - w / 2) >= -edge).all(1)
        if between:  # every window between two neighbours' labelled cores: no digit is central there
            lo, hi = c[:-1] + radius[:-1] + gap, c[1:] - radius[1:] - gap
            is_blank |= clear & ((v[:, None] >= lo[None]) & (v[:, None] <= hi[None])).any(1)
        lab = torch.where(is_digit, digit[near], torch.where(is_blank, 0, -1))
        # the window nearest the junction of two neighbours is blank (the character model needs a blank
        # between them), unless it is the one nearest a digit's centre
        junction = ((e[:-1, 1] + e[1:, 0]) / 2 / stride).round().long()
        central = (c / stride).round().long()
        sep = (junction != central[:-1]) & (junction != central[1:]) & (junction >= 0) & (junction < P)
        lab[junction[sep]] = 0
        lab[int(positions[b]):] = -1
        out[b] = lab
    return out


def sdnn_prototypes(dtype=torch.float32) -> torch.Tensor:
    """The 11 RBF prototypes of the SDNN recognizer ``[11, 84]``: the ten digit codes, then the blank's
    (an empty bitmap: all −1, at Hamming distance ≥ 18 from every digit code)."""
    return torch.cat([digit_prototypes(dtype), -torch.ones(1, 84, dtype=dtype)])


def sdnn_network(model: Optional[nn.Module] = None) -> LeNet5:
    """An 11-output LeNet-5 for the SDNN (outputs 0..9 = digits, 10 = blank), initialised from the 10-class
    ``model`` (its layers copied; a fresh network when ``None``)."""
    net = LeNet5(connections=getattr(model, "connections", "paper"), j=getattr(model, "j", 10.0),
                 prototypes=sdnn_prototypes())
    if model is not None:
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("rbf.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"rbf.prototypes"}:
            raise ValueError(f"cannot initialise the SDNN network from {type(model).__name__}")
    return net.to(next(model.parameters()).dtype) if model is not None else net


def _to_classes(symbols: torch.Tensor) -> torch.Tensor:
    """Frame symbols (0 = blank, d + 1 = digit d) → classes of the 11-output network (d, blank = 10)."""
    return torch.where(symbols == 0, 10, symbols - 1)


def _distorted(digits, seed: int):
    """``(uint8 [N, 28, 28], labels)`` → randomly distorted copies (one `RandomAffine` draw per digit; no
    translation: the renderer places the ink box itself)."""
    from .data import RandomAffine
    images, labels = digits
    g = torch.Generator().manual_seed(seed)
    x = RandomAffine(translate=0.0, rotate=10.0, fill=0.0)(images[:, None].float(), generator=g)
    x = x[:, 0].round().clamp(0, 255)
    x[x < 16] = 0  # drop the faint resampling halo, which would widen the ink box the renderer uses
    return x.to(torch.uint8), labels


def train_windows(reader: "SDNNReader", digits, strings_per_pass: int = 4000, passes: int = 3,
                  batch_size: int = 16, lr: float = 1e-3, seed: int = 0, lengths=(3, 6), distort: bool = False,
                  between: bool = False, progress: bool = False, log=print, **render_kw):
    """Regime (a) of the SDNN: train the swept network on windows of strings rendered from the isolated
    ``digits`` (``(uint8 [N, 28, 28], labels [N])``, freshly rendered every pass), each window labelled by
    `frame_labels`, with the network's MAP criterion per labelled window (blank = output 10). Adam with a
    cosine-decaying rate. ``distort``: every pass renders from freshly distorted copies of the digits
    (`lenet.data.RandomAffine`: scale, squeeze, shear, ±10° rotation). ``between``: see `frame_labels`.
    Needs an 11-output network (`sdnn_network`). Returns the mean loss per pass. Neither ``distort`` nor
    ``between`` helped in our measurements (docs/multi_digit.md); both are off by default."""
    from .progress import progress_bar
    from .strings import make_strings
    model = reader.model
    if model.num_classes != 11:
        raise ValueError("train_windows needs the 11-output SDNN network (lenet.sdnn.sdnn_network)")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = passes * -(-strings_per_pass // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    dtype = next(model.parameters()).dtype
    history = []
    model.train()
    with progress_bar(steps, "(a) window training", "step", enabled=progress) as bar:
        for p in range(passes):
            source = _distorted(digits, seed * 1000 + p) if distort else digits
            strings = make_strings(strings_per_pass, lengths=lengths, seed=seed * 1000 + p, digits=source, **render_kw)
            total, count = 0.0, 0
            for k in range(0, len(strings), batch_size):
                b = strings[k:k + batch_size]
                x, positions, scales = sweep_input([s.image for s in b], return_scales=True,
                                                   ink_height=reader.ink_height)
                pen, positions = swept_penalties(model, x.to(dtype), positions, reader.stride)
                lab = frame_labels([s.extents for s in b], [s.label for s in b], scales, positions, reader.stride,
                                   between=between)
                keep = lab >= 0
                loss = model.loss(pen[:, :lab.shape[1]][keep], _to_classes(lab[keep]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(b)
                count += len(b)
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
            history.append(total / count)
            if log:
                log(f"window training pass {p + 1}/{passes}: mean loss {history[-1]:.4f}")
    model.eval()
    return history


class SDNNReader(nn.Module):
    """The SDNN string reader: LeNet-5 swept over the string + character model + Viterbi (see module doc).

    ``model``: an 11-output network from `sdnn_network` (output 10 = blank; ``blank`` is then a learned offset
    added to its penalty, default 0) or a plain 10-class LeNet-5 (``blank`` is then the blank's constant
    penalty, default 10). ``stride``: 4 (one sweep) or 2 (two interleaved sweeps). ``ink_height``: the
    string's ink is scaled to this many of the window's 32 rows. ``lengths`` (min, max digits): decoding
    reads only strings of those lengths (`counting_character_model`) where it can; ``None`` for no limit.
    Training always uses the unrestricted character model."""

    def __init__(self, model: Optional[nn.Module] = None, blank: Optional[float] = None,
                 lengths: Optional[Tuple[int, int]] = (3, 6), stride: int = 4,
                 ink_height: int = SWEEP_INK_HEIGHT):
        super().__init__()
        self.model = model if model is not None else build("paper")
        if self.model.num_classes not in (10, 11):
            raise ValueError(f"the SDNN needs a 10- or 11-output network, got {self.model.num_classes}")
        if blank is None:
            blank = 0.0 if self.model.num_classes == 11 else 10.0
        self.blank = nn.Parameter(torch.tensor(float(blank)))
        self.lengths = tuple(lengths) if lengths is not None else None
        if stride not in (2, 4):
            raise ValueError(f"stride must be 4 or 2, not {stride}")
        self.stride = stride
        self.ink_height = int(ink_height)

    def _frames(self, pen: torch.Tensor, positions: torch.Tensor, blank=None) -> gtn.DenseFsaVec:
        """Network penalties ``[B, P, 10 or 11]`` → the dense frames ``[B, P, 11]`` (symbol 0 = blank)."""
        blank = self.blank if blank is None else blank
        if pen.shape[-1] == 11:
            bl = pen[..., 10:] + blank
        else:
            bl = (blank + 0 * pen[..., :1]) if torch.is_tensor(blank) else torch.full_like(pen[..., :1], blank)
        return gtn.DenseFsaVec(torch.cat([-bl, -pen[..., :10]], 2), positions)

    def penalties(self, images):
        """``(network penalties [B, P, K], positions [B])`` of the swept windows of ``images``."""
        x, positions = sweep_input(images, ink_height=self.ink_height)
        return swept_penalties(self.model, x.to(self.blank.dtype), positions, self.stride)

    def emissions(self, images) -> gtn.DenseFsaVec:
        """Frame scores ``[B, positions, 11]``: ``-(blank penalty)`` then ``-penalty`` of digits 0..9."""
        return self._frames(*self.penalties(images))

    def loss(self, images, labels: Sequence[str], reduction: str = "mean") -> torch.Tensor:
        """Discriminative forward loss per string: ``forward(model ∩ frames) − forward(target ∩ frames)`` (≥ 0;
        ``+inf`` where no path of the frames spells the label)."""
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        return reduce_loss(self._loss(self.emissions(images), labels), reduction)

    def candidate_losses(self, images, candidates: Sequence[Sequence[str]]) -> torch.Tensor:
        """The loss (`loss`) of every candidate text of every image, each image swept once: ``candidates[i]``
        are image ``i``'s texts; returns one flat tensor in that order."""
        if len(images) != len(candidates):
            raise ValueError(f"{len(images)} images but {len(candidates)} candidate lists")
        idx = [i for i, c in enumerate(candidates) for _ in c]
        texts = [t for c in candidates for t in c]
        if not texts:
            return torch.zeros(0, dtype=self.blank.dtype)
        dense = self.emissions(images)
        idx = torch.tensor(idx, dtype=torch.int64)
        return self._loss(gtn.DenseFsaVec(dense.log_probs[idx], dense.lengths[idx]), texts)

    def _loss(self, dense, labels: Sequence[str]) -> torch.Tensor:
        dtype = self.blank.dtype
        free = gtn.dense_forward_score(character_model(dtype=dtype), dense)
        constrained = gtn.dense_forward_score(target_graphs([digits_to_labels(t) for t in labels], dtype),
                                              dense)
        # a target the frames cannot spell (more digits than frames allow) has no path: loss +inf, like the
        # segmentation reader's, and no gradient (the caller leaves it out of the mean)
        reachable = torch.isfinite(constrained)
        return torch.where(reachable, free - torch.where(reachable, constrained, torch.zeros_like(constrained)),
                           torch.full_like(free, float("inf")))

    @torch.no_grad()
    def decode(self, images, return_frames: bool = False, lexicon=None, return_confidence: bool = False):
        """The digits read along the Viterbi path of ``character model ∩ frames`` (one per run of digit frames).
        ``lexicon`` (digit strings, or a `gtn.Fsa` over the labels 1..10; `lenet.grammars.as_lexicon`): read
        only its words (``frame_graph(lexicon) ∩ frames``); an image that cannot be read as any of them is
        read as without it. ``return_confidence`` also returns (last) each reading's rejection confidence, a
        tensor ``[N]`` in ``[0, 1]``: the paper's ``exp(−E)``, here the posterior of the string read (summed
        over all the frame alignments that read it) among all the paths of the graph it was read from."""
        dense = self.emissions(images)
        out = self._read(dense, return_frames, lexicon)
        if not return_confidence:
            return out
        texts = out[0] if return_frames else out
        conf = self.confidence(dense, texts, lexicon)
        return (*out, conf) if return_frames else (out, conf)

    def confidence(self, dense, texts: Sequence[str], lexicon=None) -> torch.Tensor:
        """``exp(forward(reading's graph ∩ frames) − forward(decoding graph ∩ frames))`` per image, in float64
        (the posteriors of good readings are within 1e-7 of 1): the decoding graph is the one `decode` read
        ``texts`` from (the lexicon's frame graph where a word fits, else the counting or free character
        model), and the reading's graph its paths that read the text (all scores of the character models are
        0, so for them that is `target_graphs`; for a lexicon, the frame graph of the word's own path through
        it, which keeps a weighted lexicon's score). 0 where a reading has no path."""
        dense = gtn.DenseFsaVec(dense.log_probs.detach().double(), dense.lengths)
        dtype = torch.float64
        n = len(texts)
        if lexicon is not None:
            lex = as_lexicon(lexicon, dtype)
            den = gtn.dense_forward_score(frame_graph(lex), dense)
            ok = torch.isfinite(den)
        else:
            ok = torch.zeros(n, dtype=torch.bool)
        if not bool(ok.all()):  # the free reading's graphs (counting model where it has a path)
            free_den = gtn.dense_forward_score(character_model(dtype=dtype), dense)
            if self.lengths is not None:
                count_den = gtn.dense_forward_score(counting_character_model(*self.lengths, dtype=dtype), dense)
                free_den = torch.where(torch.isfinite(count_den), count_den, free_den)
            den = torch.where(ok, den, free_den) if lexicon is not None else free_den
        graphs = []
        for i, t in enumerate(texts):  # one small graph per reading
            if ok[i]:
                word = gtn.connect(gtn.intersect(lex, gtn.linear_fsa(digits_to_labels(t), dtype=dtype)))
                graphs.append(frame_graph(word))
            else:
                graphs.append(_reading_graph(t, dtype))
        num = gtn.dense_forward_score(gtn.FsaVec(graphs), dense)
        return torch.where(torch.isfinite(den) & torch.isfinite(num), torch.exp(num - den),
                           torch.zeros_like(num))

    def _read(self, dense, return_frames=False, lexicon=None):
        """Each image's best frame labels under the first decoding graph that has a path for it: the lexicon's
        frame graph, then the counting character model (the reader's lengths), then the free character model.
        No lattice is built: the fused dense Viterbi score's gradient with respect to the emissions is one-hot
        on the best path's label at every frame (ties go to one path, towards the lowest arc index) and zero
        for an image the graph cannot read (score -inf). `_free_lattice` + `_best_paths` is the lattice
        reading it replaces, kept as the reference the tests compare with."""
        dtype = dense.log_probs.dtype
        graphs = [frame_graph(as_lexicon(lexicon, dtype))] if lexicon is not None else []
        if self.lengths is not None:
            graphs.append(counting_character_model(*self.lengths, dtype=dtype))
        graphs.append(character_model(dtype=dtype))
        lengths = dense.lengths.tolist()
        frames = [None] * len(lengths)
        todo = torch.arange(len(lengths))
        for graph in graphs:
            lp = dense.log_probs[todo].detach().requires_grad_()
            with torch.enable_grad():
                best = gtn.dense_forward_score(graph, gtn.DenseFsaVec(lp, dense.lengths[todo]), log_semiring=False)
                grad, = torch.autograd.grad(best.sum(), lp)
            ok = torch.isfinite(best.detach())
            labels = grad.argmax(-1)
            for j in torch.nonzero(ok).flatten().tolist():  # one short label sequence per image read here
                i = int(todo[j])
                frames[i] = labels[j, :lengths[i]].tolist()
            todo = todo[~ok]
            if todo.numel() == 0:
                break
        # the free character model reads every sequence of at least one frame (all blanks: no digit)
        texts = [self._reading(torch.tensor(f, dtype=torch.int64)) if f is not None else "" for f in frames]
        frames = [f if f is not None else [] for f in frames]
        return (texts, frames) if return_frames else texts

    def _free_lattice(self, dense):
        """``character model ∩ frames``, restricted to the reader's lengths where that leaves a path."""
        dtype = dense.log_probs.dtype
        lat = gtn.intersect_dense(character_model(dtype=dtype), dense)
        if self.lengths is not None:
            # read only 3..6 digits (the lengths); strings the restricted model cannot read keep the free reading
            lat_len = gtn.intersect_dense(counting_character_model(*self.lengths, dtype=dtype), dense)
            ok = torch.isfinite(gtn.viterbi_score(lat_len))
            if bool(ok.all()):
                lat = lat_len
            elif bool(ok.any()):
                lat = _merge(lat_len, lat, ok)
        return lat

    def _best_paths(self, lat, return_frames):
        path = gtn.viterbi_path(lat)
        splits = path.arc_splits.tolist()
        texts, frames = [], []
        for i in range(len(splits) - 1):  # one short path per image
            lab = path.labels[splits[i]:splits[i + 1]]
            lab = lab[lab >= 0]
            texts.append(self._reading(lab))
            frames.append(lab.tolist())
        return (texts, frames) if return_frames else texts

    @staticmethod
    def _reading(lab: torch.Tensor) -> str:
        """The reading rule on frame labels: a run of one digit is one digit, blanks (0) separate."""
        keep = torch.ones_like(lab, dtype=torch.bool)
        keep[1:] = lab[1:] != lab[:-1]
        return labels_to_string(lab[keep & (lab > 0)])

    @torch.no_grad()
    def tune_blank(self, images, labels: Sequence[str], candidates: Sequence[float], batch_size: int = 50) -> float:
        """Choose ``blank`` (the blank's constant penalty, or its offset for an 11-output network) among
        ``candidates`` by string accuracy on (training) strings, the network untouched (its sweep is computed
        once). Sets and returns the best."""
        swept = [self.penalties(images[k:k + batch_size]) for k in range(0, len(images), batch_size)]
        best, best_acc = float(self.blank.detach()), -1.0
        for c in candidates:
            right = 0
            for j, (pen, positions) in enumerate(swept):
                texts = self._read(self._frames(pen, positions, float(c)))
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
        x, _ = sweep_input([image], ink_height=self.ink_height)
        own = ax is None
        if own:
            fig, ax = plt.subplots(figsize=(max(3.0, x.shape[-1] / 12), 2.2))
        ax.imshow(x[0, 0].numpy(), cmap="gray", interpolation="nearest")
        for p, lab in enumerate(frames[0]):
            c = 16 + self.stride * p  # window centre
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
        return {"lengths": list(self.lengths) if self.lengths is not None else None, "stride": self.stride,
                "ink_height": self.ink_height}


CHECKPOINT_KIND = "sdnn_reader"


def save_sdnn(reader: SDNNReader, path, **extra):
    """Write ``reader`` as an ``"sdnn_reader"`` checkpoint (``lenet.load`` / ``lenet.recognize`` read it)."""
    from .checkpoint import save
    return save(path, CHECKPOINT_KIND, {"reader": reader.config(), "model": reader.model.config()},
                reader.state_dict(), **extra)


def _load_sdnn(ckpt) -> SDNNReader:
    cfg = ckpt["config"]
    lengths = cfg["reader"]["lengths"]
    reader = SDNNReader(build(**cfg["model"]), lengths=tuple(lengths) if lengths is not None else None,
                        stride=cfg["reader"].get("stride", 4),
                        ink_height=cfg["reader"].get("ink_height", 20))  # 20: before it was stored
    from .checkpoint import restore
    return restore(reader, ckpt["state_dict"])
