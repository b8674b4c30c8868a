"""LeNet-5 as LeCun, Bottou, Bengio and Haffner built it in 1998, with two variants for comparison.

``LeNet5`` follows §II-B of "Gradient-Based Learning Applied to Document Recognition" layer by layer:

=======  ===================================================================  ==========
layer    what                                                                 parameters
=======  ===================================================================  ==========
C1       6 maps 28×28, 5×5 convolution                                        156
S2       6 maps 14×14: 2×2 sum × trainable coefficient + trainable bias        12
C3       16 maps 10×10, 5×5 kernels on the paper's subsets of S2 (Table I)    1,516
S4       16 maps 5×5, like S2                                                 32
C5       120 maps 1×1, 5×5 on all 16 S4 maps                                  48,120
F6       84 units, full                                                       10,164
output   10 Euclidean RBF units on fixed ±1 prototypes (7×12 digit bitmaps)  0 (840 fixed)
=======  ===================================================================  ==========

Every unit from C1 to F6 computes a weighted sum plus a bias and passes it through the squashing function
``f(a) = 1.7159 tanh(2a/3)`` ("units in layers up to F6 ... are passed through a sigmoid squashing
function"). Weights and biases start uniform in ``±2.4 / F``, ``F`` the unit's fan-in (25 for C1, 4 for the
subsampling units, 75/100/150 for C3 depending on how many S2 maps feed the map, 400 for C5, 120 for F6).

The forward pass returns **penalties** ``[batch, 10]`` (squared distances to the prototypes): lower is
better, ``penalties.argmin(1)`` is the prediction. Every variant here follows that contract, so code written
for one (the multi-digit reader, ``lenet.classify``) runs with all of them:

* ``LeNet5()``: the paper's network, exactly 60,000 trainable parameters.
* ``LeNet5FullC3()`` (= ``LeNet5(connections="full")``): C3 connected to all six S2 maps (60,900
  parameters); the paper reports about 1.0 % error for it against 0.95 %.
* ``LeNet5Modern()``: what most libraries call LeNet: ReLU, 2×2 max-pooling, a linear output layer and
  cross-entropy. Its penalties are ``-log_softmax(logits)``, so ``penalties[target]`` is the cross-entropy.

Each model also has ``sweep(x)``: for an input ``[batch, 1, 32, W]`` with ``W >= 32`` it runs the network
convolutionally along the width (the paper's space-displacement neural network, §VII) and returns
``[batch, positions, 10]`` penalties, position ``p`` being the 32×32 window that starts at column
``4 p`` (``model.stride``). Because C5 is a convolution, this costs one pass over the wide image and equals
running ``forward`` on each window.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "A",
    "S",
    "C3_TABLE",
    "DIGIT_BITMAPS",
    "digit_prototypes",
    "squash",
    "map_loss",
    "Subsampling",
    "SparseConv2d",
    "EuclideanRBF",
    "LeNet5",
    "LeNet5FullC3",
    "LeNet5Modern",
    "VARIANTS",
    "build",
]

#: Amplitude and slope of the squashing function ``f(a) = A tanh(S a)`` (paper, §II-B and appendix A).
A = 1.7159
S = 2.0 / 3.0

#: The paper's Table I: which S2 maps feed each C3 map.
C3_TABLE: Tuple[Tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)

# The output layer's fixed codes: a stylised 7-wide, 12-high bitmap of each digit ('#' = +1, '.' = -1),
# read row by row into the 84 F6 targets, as in the paper's Fig. 3. Drawn for this project (the paper
# prints its bitmaps but not as data); the smallest Hamming distance between two codes is 12 (3 vs 8).
DIGIT_BITMAPS: Tuple[Tuple[str, ...], ...] = (
    ("..###..",  # 0
     ".#...#.",
     "#.....#",
     "#.....#",
     "#.....#",
     "#.....#",
     "#.....#",
     "#.....#",
     "#.....#",
     "#.....#",
     ".#...#.",
     "..###.."),
    ("...#...",  # 1
     "..##...",
     ".#.#...",
     "#..#...",
     "...#...",
     "...#...",
     "...#...",
     "...#...",
     "...#...",
     "...#...",
     "...#...",
     "#######"),
    (".#####.",  # 2
     "#.....#",
     "......#",
     "......#",
     ".....#.",
     "....#..",
     "...#...",
     "..#....",
     ".#.....",
     "#......",
     "#......",
     "#######"),
    (".#####.",  # 3
     "#.....#",
     "......#",
     "......#",
     "......#",
     "..####.",
     "......#",
     "......#",
     "......#",
     "......#",
     "#.....#",
     ".#####."),
    ("....#..",  # 4
     "...##..",
     "..#.#..",
     ".#..#..",
     "#...#..",
     "#...#..",
     "#######",
     "....#..",
     "....#..",
     "....#..",
     "....#..",
     "....#.."),
    ("#######",  # 5
     "#......",
     "#......",
     "#......",
     "#####..",
     ".....#.",
     "......#",
     "......#",
     "......#",
     "......#",
     "#....#.",
     ".####.."),
    ("..####.",  # 6
     ".#.....",
     "#......",
     "#......",
     "#......",
     "#.####.",
     "##....#",
     "#.....#",
     "#.....#",
     "#.....#",
     "#.....#",
     ".#####."),
    ("#######",  # 7
     "......#",
     "......#",
     ".....#.",
     ".....#.",
     "....#..",
     "....#..",
     "...#...",
     "...#...",
     "..#....",
     "..#....",
     "..#...."),
    (".#####.",  # 8
     "#.....#",
     "#.....#",
     "#.....#",
     ".#...#.",
     "..###..",
     ".#...#.",
     "#.....#",
     "#.....#",
     "#.....#",
     "#.....#",
     ".#####."),
    (".#####.",  # 9
     "#.....#",
     "#.....#",
     "#.....#",
     "#.....#",
     "#....##",
     ".####.#",
     "......#",
     "......#",
     "......#",
     ".....#.",
     ".####.."),
)


def digit_prototypes(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ten RBF prototypes ``[10, 84]`` (entries ±1) drawn from ``DIGIT_BITMAPS``."""
    rows = []
    for digit, bitmap in enumerate(DIGIT_BITMAPS):
        if len(bitmap) != 12 or any(len(r) != 7 or set(r) - {"#", "."} for r in bitmap):
            raise ValueError(f"bitmap of digit {digit} must be 12 rows of 7 characters '#' or '.'")
        rows.append([1.0 if c == "#" else -1.0 for r in bitmap for c in r])
    return torch.tensor(rows, dtype=dtype)


def squash(a: torch.Tensor) -> torch.Tensor:
    """The paper's sigmoid ``f(a) = 1.7159 tanh(2a/3)``: ``f(±1) = ±1`` and ``f''`` is largest at ±1."""
    return A * torch.tanh(S * a)


def map_loss(penalties: torch.Tensor, targets: torch.Tensor, j: float, reduction: str = "mean") -> torch.Tensor:
    """The paper's MAP criterion (§II-C, eq. 9) on RBF penalties ``[..., K]`` and integer targets ``[...]``.

    ``E = y_D + log(exp(-j) + sum_i exp(-y_i))``: the penalty of the correct class plus a soft-min over all
    classes and a "rubbish" class of constant penalty ``j``. ``exp(-E)`` is the posterior of the correct class
    among the K classes and the rubbish class, so ``E >= 0``. The second term pushes wrong classes' penalties
    up, but only those that come below about ``j``; far-away classes cost nothing.
    """
    if penalties.shape[:-1] != targets.shape:
        raise ValueError(f"penalties {tuple(penalties.shape)} and targets {tuple(targets.shape)} do not match")
    rubbish = penalties.new_full(penalties.shape[:-1] + (1,), -float(j))
    soft_min = torch.logsumexp(torch.cat([rubbish, -penalties], dim=-1), dim=-1)
    losses = penalties.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1) + soft_min
    return _reduce(losses, reduction)


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def _categorical_cov_sqrt_times(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``M r`` for ``M = diag(sqrt q) - q sqrt(q)^T``, which satisfies ``M M^T = diag(q) - q q^T`` when
    ``sum(q) = 1``: the square root of a categorical distribution's covariance (the softmax Hessian)."""
    sq = q.sqrt()
    return sq * r - q * (sq * r).sum(-1, keepdim=True)


def _rademacher(shape, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return bits.to(like.dtype) * 2 - 1


class Subsampling(nn.Module):
    """S2/S4: each unit sums a 2×2 block of its map, times one trainable coefficient per map, plus one
    trainable bias per map (the squashing is applied by the network, like every layer's)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor, weight_scale: float = 1.0, bias_scale: float = 1.0) -> torch.Tensor:
        """``bias_scale * bias + weight_scale * coefficient * (2x2 sum of x)`` per map (scales: see
        ``LeNet5.trunk``)."""
        # 2x2 sum = 4 * mean; the 4 goes into the (small) coefficient vector, the affine into one addcmul.
        pooled = F.avg_pool2d(x, 2)
        return torch.addcmul((self.bias * bias_scale).view(1, -1, 1, 1), pooled,
                             (self.weight * (4 * weight_scale)).view(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.channels}, 2x2 sum x coefficient + bias"


class SparseConv2d(nn.Module):
    """A convolution in which output map ``o`` sees only the input maps ``table[o]`` (the paper's C3).

    Only the used kernels are parameters (``weight`` is ``[num_connections, k, k]``, in the table's order),
    so parameter counts are the paper's. The forward scatters them into a dense ``[out, in, k, k]`` kernel
    (zeros where there is no connection; the scatter is differentiable) and runs one ordinary convolution:
    a dense 6→16 convolution is faster in PyTorch than 60 separate small ones, and the scatter is 2,400
    numbers.
    """

    def __init__(self, table: Sequence[Sequence[int]], in_channels: int, kernel_size: int):
        super().__init__()
        self.table = tuple(tuple(int(i) for i in row) for row in table)
        self.in_channels = in_channels
        self.out_channels = len(self.table)
        self.kernel_size = kernel_size
        flat = []
        for o, row in enumerate(self.table):
            if len(set(row)) != len(row) or any(not 0 <= i < in_channels for i in row):
                raise ValueError(f"row {o} of the connection table {row} must list distinct maps in 0..{in_channels - 1}")
            flat.extend(o * in_channels + i for i in row)
        # Derived from the table, so not saved in state dicts (persistent=False).
        self.register_buffer("index", torch.tensor(flat, dtype=torch.long), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(flat), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_channels))

    @property
    def mask(self) -> torch.Tensor:
        """``[out, in]`` booleans: True where output map ``o`` is connected to input map ``i``."""
        m = torch.zeros(self.out_channels * self.in_channels, dtype=torch.bool)
        m[self.index.cpu()] = True
        return m.view(self.out_channels, self.in_channels)

    def fan_in(self) -> torch.Tensor:
        """The fan-in of each output map's units (``k*k`` times the number of connected input maps)."""
        return torch.tensor([len(row) * self.kernel_size ** 2 for row in self.table])

    def dense_weight(self) -> torch.Tensor:
        """The ``[out, in, k, k]`` kernel, zeros where the table has no connection."""
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels * self.in_channels, k, k)
        return dense.index_copy(0, self.index, self.weight).view(self.out_channels, self.in_channels, k, k)

    def forward(self, x: torch.Tensor, weight_scale: float = 1.0, bias_scale: float = 1.0) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight() * weight_scale, self.bias * bias_scale)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, connections={len(self.index)}"


class EuclideanRBF(nn.Module):
    """Output units ``y_i = sum_j (x_j - w_ij)^2`` on fixed prototypes ``w`` (a buffer, never trained)."""

    def __init__(self, prototypes: torch.Tensor):
        super().__init__()
        if prototypes.dim() != 2:
            raise ValueError(f"prototypes must be [classes, features], got shape {tuple(prototypes.shape)}")
        self.register_buffer("prototypes", prototypes.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sum_j (x_j - w_ij)^2 = |x|^2 - 2 x.w_i + |w_i|^2: one matrix product on [rows, features] instead of
        # a [rows, classes, features] difference tensor (three passes over it forward, more backward). For
        # the +-1 codes |w_i|^2 and x.w_i are exact when x = w_i, so a state equal to a code still scores 0;
        # rounding elsewhere can go a hair below 0, hence the clamp.
        w = self.prototypes
        flat = x.reshape(-1, x.shape[-1])
        y = torch.addmm(w.pow(2).sum(-1), flat, w.t(), alpha=-2)
        y = (y + flat.pow(2).sum(-1, keepdim=True)).clamp_min(0)
        return y.view(x.shape[:-1] + (w.shape[0],))

    def extra_repr(self) -> str:
        return f"{self.prototypes.shape[1]} -> {self.prototypes.shape[0]}, fixed prototypes"


def _scaled(layer: nn.Module, x: torch.Tensor, weight_scale: float, bias_scale: float,
            on_output: bool = False) -> torch.Tensor:
    """``layer`` applied with its weight times ``weight_scale`` and its bias times ``bias_scale``.
    ``on_output``: multiply the (linear) layer's output by ``weight_scale`` instead of its weight, the same
    function, cheaper where the weight is bigger than the output (C5: 48,000 weights, 120 outputs)."""
    if on_output and isinstance(layer, nn.Conv2d):
        return torch.add((layer.bias * bias_scale).view(-1, 1, 1), F.conv2d(x, layer.weight), alpha=weight_scale)
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, layer.weight * weight_scale, layer.bias * bias_scale)
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight * weight_scale, layer.bias * bias_scale)
    return layer(x, weight_scale, bias_scale)  # SparseConv2d


class _LeNetBase(nn.Module):
    """What all variants share: the 32×32 input contract, ``forward``/``sweep``/``predict``, checkpoint
    configuration. A subclass defines ``trunk`` (input → per-position vectors ``[B, P, D]``), ``head``
    (vectors → penalties), ``loss`` and ``loss_hessian_sample`` (for the Gauss–Newton curvature in
    ``lenet.optim``)."""

    #: Side of the input window, and the shift in input pixels between two positions of ``sweep``.
    input_size = 32
    stride = 4
    variant = ""

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, penalties: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        raise NotImplementedError

    def loss_hessian_sample(self, features: torch.Tensor, targets: torch.Tensor,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> Dict:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor, sweep: bool) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        ok = x.dim() == 4 and x.shape[1] == 1 and x.shape[2] == self.input_size
        ok = ok and (x.shape[3] >= self.input_size if sweep else x.shape[3] == self.input_size)
        if not ok:
            want = "[batch, 1, 32, W] with W >= 32" if sweep else "[batch, 1, 32, 32] (use sweep() for wider input)"
            raise ValueError(f"{type(self).__name__} expects {want}, got shape {tuple(x.shape)}; "
                             "lenet.prepare() turns 28x28 uint8 digits into network input")
        if not x.is_floating_point():
            raise ValueError(f"input must be a floating-point tensor (see lenet.prepare), got {x.dtype}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The vectors the head scores, ``[batch, D]`` for ``[batch, 1, 32, 32]`` input."""
        self._check_input(x, sweep=False)
        return self.trunk(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Penalties ``[batch, num_classes]`` for 32×32 crops ``[batch, 1, 32, 32]``; lower is better."""
        return self.head(self.features(x))

    def sweep(self, x: torch.Tensor) -> torch.Tensor:
        """Penalties ``[batch, positions, num_classes]`` of every 32×32 window of ``[batch, 1, 32, W]``
        whose left edge is a multiple of ``stride`` (``positions = (W - 32) // 4 + 1``), in one pass."""
        self._check_input(x, sweep=True)
        return self.head(self.trunk(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes ``[batch]`` (the smallest penalty)."""
        return self(x).argmin(-1)


class LeNet5(_LeNetBase):
    """The 1998 LeNet-5 (see the module docstring). ``connections="paper"`` (default) uses Table I for C3,
    ``"full"`` connects every C3 map to all S2 maps. ``j`` is the MAP criterion's constant (``loss``).
    ``prototypes`` (``[K, 84]``, entries ±1) replaces the digit bitmaps, e.g. to add classes."""

    def __init__(self, connections: str = "paper", j: float = 10.0, prototypes: Optional[torch.Tensor] = None):
        super().__init__()
        if connections not in ("paper", "full"):
            raise ValueError(f"connections must be 'paper' or 'full', not {connections!r}")
        if prototypes is None:
            prototypes = digit_prototypes()
        prototypes = torch.as_tensor(prototypes, dtype=torch.get_default_dtype())
        if prototypes.dim() != 2 or prototypes.shape[1] != 84 or not bool(((prototypes == 1) | (prototypes == -1)).all()):
            raise ValueError("prototypes must be a [classes, 84] tensor of +1/-1 entries")
        self.connections = connections
        self.j = float(j)
        self.c1 = nn.Conv2d(1, 6, 5)
        self.s2 = Subsampling(6)
        self.c3 = SparseConv2d(C3_TABLE, 6, 5) if connections == "paper" else nn.Conv2d(6, 16, 5)
        self.s4 = Subsampling(16)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.rbf = EuclideanRBF(prototypes)
        self.reset_parameters()

    @property
    def num_classes(self) -> int:
        return self.rbf.prototypes.shape[0]

    @property
    def variant(self) -> str:
        return "fullc3" if self.connections == "full" else "paper"

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """The paper's initialisation: weights and biases uniform in ``±2.4 / fan_in``."""
        def uniform_(t: torch.Tensor, bound) -> None:
            u = torch.rand(t.shape, generator=generator, dtype=t.dtype, device=t.device) * 2 - 1
            t.copy_(u * bound)

        for layer, fan in ((self.c1, 25), (self.c5, 400), (self.f6, 120)):
            uniform_(layer.weight, 2.4 / fan)
            uniform_(layer.bias, 2.4 / fan)
        for layer in (self.s2, self.s4):
            uniform_(layer.weight, 2.4 / 4)
            uniform_(layer.bias, 2.4 / 4)
        if isinstance(self.c3, SparseConv2d):
            fan = self.c3.fan_in().to(self.c3.weight)
            per_connection = torch.repeat_interleave(fan, torch.tensor([len(r) for r in self.c3.table]))
            uniform_(self.c3.weight, (2.4 / per_connection).view(-1, 1, 1))
            uniform_(self.c3.bias, 2.4 / fan)
        else:
            uniform_(self.c3.weight, 2.4 / 150)
            uniform_(self.c3.bias, 2.4 / 150)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """F6 states ``[B, P, 84]``, one per horizontal position of the C5 output.

        Computes ``h = squash(layer(h))`` for C1, S2, C3, S4, C5, F6 in turn, with the squashing constants
        moved from the (large) activation maps to the (small) weights: every layer is affine, so with
        ``h = A t``, ``squash(layer(h)) = A tanh(S W (A t) + S b) = A tanh(W' t + b')`` where
        ``W' = S A W`` and ``b' = S b``. Same function, same parameters, two fewer passes over every
        activation map forward and backward (``test_folded_squash_equals_layer_by_layer``). C5 has far more
        weights (48,000) than outputs (120 per position), so there the factor multiplies the output instead.
        """
        sa = S * A
        t = torch.tanh(_scaled(self.c1, x, S, S))   # the input is not squashed: no A
        t = torch.tanh(self.s2(t, sa, S))
        t = torch.tanh(_scaled(self.c3, t, sa, S))
        t = torch.tanh(self.s4(t, sa, S))
        t = torch.tanh(_scaled(self.c5, t, sa, S, on_output=True))  # [B, 120, H', W'], 1x1 for 32x32 input
        t = t.flatten(2).transpose(1, 2)            # [B, H'W', 120]: F6 is applied at every position
        return A * torch.tanh(_scaled(self.f6, t, sa, S))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.rbf(features)

    def loss(self, penalties: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The MAP criterion with this model's ``j`` (see ``map_loss``)."""
        return map_loss(penalties, targets, self.j, reduction)

    def loss_hessian_sample(self, features: torch.Tensor, targets: torch.Tensor,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Random vectors ``u`` (one per row of ``features`` ``[N, 84]``) with ``E[u u^T]`` = the Hessian of
        ``loss(head(x), target)`` with respect to the F6 state ``x``.

        That Hessian is ``2 q_r I + 4 Cov_q(x - w)``, where ``q`` is the posterior over the K classes and the
        rubbish class (``q_r``) and ``Cov_q`` the covariance of the displacement ``x - w_i`` (zero for the
        rubbish class) under ``q``: positive semi-definite, so the Gauss–Newton matrix built on it is too.
        """
        x = features.detach()
        d = x.unsqueeze(-2) - self.rbf.prototypes                      # [N, K, 84]
        y = d.pow(2).sum(-1)                                           # penalties [N, K]
        logits = torch.cat([-y, x.new_full(y.shape[:-1] + (1,), -self.j)], -1)
        q = torch.softmax(logits, -1)                                  # [N, K+1], rubbish last
        r = _rademacher(q.shape, x, generator)
        mr = _categorical_cov_sqrt_times(q, r)                         # [N, K+1]
        u = 2 * (mr[..., :-1].unsqueeze(-1) * d).sum(-2)               # 2 D^T M r (rubbish row of D is 0)
        eps = _rademacher(x.shape, x, generator)
        return u + (2 * q[..., -1:]).sqrt() * eps

    def config(self) -> Dict:
        return {"variant": self.variant, "j": self.j,
                "num_classes": self.num_classes}


class LeNet5FullC3(LeNet5):
    """LeNet-5 with C3 connected to all six S2 maps (60,900 parameters): the paper's "about 1.0 %" variant."""

    def __init__(self, j: float = 10.0, prototypes: Optional[torch.Tensor] = None):
        super().__init__(connections="full", j=j, prototypes=prototypes)


class LeNet5Modern(_LeNetBase):
    """The usual modern "LeNet": same layer sizes, ReLU, 2×2 max-pooling, a linear 84→10 output and
    cross-entropy, PyTorch's default initialisation. ``forward`` returns ``-log_softmax(logits)`` as
    penalties (lower is better; ``penalties[target]`` is the cross-entropy); ``logits`` gives the raw
    outputs."""

    variant = "modern"

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.out = nn.Linear(84, num_classes)

    @property
    def num_classes(self) -> int:
        return self.out.out_features

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, P, K]``, one per horizontal position."""
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        h = F.max_pool2d(F.relu(self.c3(h)), 2)
        h = F.relu(self.c5(h)).flatten(2).transpose(1, 2)
        return self.out(F.relu(self.f6(h)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return -torch.log_softmax(features, -1)

    def loss(self, penalties: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy: the penalty of the target class."""
        if penalties.shape[:-1] != targets.shape:
            raise ValueError(f"penalties {tuple(penalties.shape)} and targets {tuple(targets.shape)} do not match")
        return _reduce(penalties.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1), reduction)

    def loss_hessian_sample(self, features: torch.Tensor, targets: torch.Tensor,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``u`` with ``E[u u^T] = diag(p) - p p^T``, the cross-entropy Hessian w.r.t. the logits."""
        p = torch.softmax(features.detach(), -1)
        return _categorical_cov_sqrt_times(p, _rademacher(p.shape, p, generator))

    def config(self) -> Dict:
        return {"variant": "modern", "num_classes": self.num_classes}


#: The variants by name (``python -m lenet.train --variant NAME``; checkpoints' ``config["variant"]``).
VARIANTS = {"paper": LeNet5, "fullc3": LeNet5FullC3, "modern": LeNet5Modern}


def build(variant: str = "paper", **kwargs) -> _LeNetBase:
    """A fresh model of the named variant; ``kwargs`` go to its constructor (``j``, ``num_classes``)."""
    try:
        cls = VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}") from None
    if cls is not LeNet5Modern and "num_classes" in kwargs:
        k = kwargs.pop("num_classes")
        if k != 10:
            # The checkpoint's prototypes buffer overwrites these placeholders on load.
            kwargs["prototypes"] = torch.ones(k, 84)
    return cls(**kwargs)
