"""Semirings over log-domain score tensors (torch-struct style): the DP in `gtn.scoring` is written once and
parameterized by one of these.

* `LogSemiring`: plus = log-sum-exp, times = +, zero = -inf, one = 0 (forward scores, posteriors).
* `TropicalSemiring`: plus = max, times = +, zero = -inf, one = 0 (Viterbi).

The one non-trivial primitive is `segment_plus(index, values, size)`: the semiring sum of ``values`` grouped
by ``index`` into ``size`` slots (empty slots get zero = -inf). The log version subtracts a per-slot max before
exponentiating (stable for scores of +-1e30) and never forms ``-inf - -inf`` (no NaN).
"""
from __future__ import annotations

import torch

__all__ = ["Semiring", "LogSemiring", "TropicalSemiring", "LOG", "TROPICAL", "get"]

NEG_INF = float("-inf")


class Semiring:
    """Base class: ``zero`` and ``one`` are the additive and multiplicative identities (as floats)."""
    name = "?"
    zero = NEG_INF
    one = 0.0

    @staticmethod
    def times(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    @staticmethod
    def plus(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def segment_plus(index: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class LogSemiring(Semiring):
    """plus = log(exp(a) + exp(b)); sums over paths are forward scores."""
    name = "log"

    @staticmethod
    def plus(a, b):
        return torch.logaddexp(a, b)  # handles -inf, -inf -> -inf

    @staticmethod
    def segment_plus(index, values, size):
        m = torch.full((size,), NEG_INF, dtype=values.dtype, device=values.device)
        m.scatter_reduce_(0, index, values, "amax")
        # a slot whose max is -inf (no finite entry) is shifted by the lowest finite float instead:
        # exp(-inf - lowest) = 0 and log(0) + lowest = -inf, never -inf - -inf = NaN
        m.clamp_(min=torch.finfo(values.dtype).min)
        e = (values - m.index_select(0, index)).exp_()
        s = torch.zeros((size,), dtype=values.dtype, device=values.device).index_add_(0, index, e)
        return s.log_().add_(m)


class TropicalSemiring(Semiring):
    """plus = max; the sum over paths is the Viterbi score."""
    name = "tropical"

    @staticmethod
    def plus(a, b):
        return torch.maximum(a, b)

    @staticmethod
    def segment_plus(index, values, size):
        m = torch.full((size,), NEG_INF, dtype=values.dtype, device=values.device)
        return m.scatter_reduce_(0, index, values, "amax")


LOG = LogSemiring()
TROPICAL = TropicalSemiring()


def get(log_semiring: bool) -> Semiring:
    """`LOG` when ``log_semiring`` else `TROPICAL`."""
    return LOG if log_semiring else TROPICAL
