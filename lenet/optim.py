"""The paper's optimiser: stochastic diagonal Levenberg–Marquardt (SDLM), with its learning-rate schedule.

SDLM (paper, appendix C; LeCun et al., "Efficient BackProp", 1998) is plain stochastic gradient descent with
one step size per parameter, ``eta / (mu + h_kk)``, where ``h_kk`` is the diagonal of a Gauss–Newton
approximation of the Hessian re-estimated on a few hundred samples (500 in the paper) before each pass and
kept fixed during the pass; ``mu`` (0.02) keeps the step bounded where the curvature is tiny.

``gauss_newton_diagonal`` computes that diagonal honestly, without the paper's extra approximation of
dropping off-diagonal terms while back-propagating. Write the network as ``x = trunk(w)`` (the F6 state, or
the logits of the modern variant) followed by the loss ``l(x)``. The Gauss–Newton matrix of one sample is
``J^T H J`` with ``J = dx/dw`` and ``H = d²l/dx²``, which is positive semi-definite for the MAP criterion
and for cross-entropy (see the models' ``loss_hessian_sample``). For a random vector ``u`` with
``E[u u^T] = H``, the per-sample gradient ``g = J^T u`` (one back-propagation of ``u . x``) satisfies
``E[g ⊙ g] = diag(J^T H J)``: squaring per-sample gradients and averaging over the samples gives an
unbiased estimate of the average Gauss–Newton diagonal, at the cost of one per-sample backward pass each
(vectorised with ``torch.func.vmap``).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = ["SDLM", "gauss_newton_diagonal", "paper_learning_rate", "PAPER_SCHEDULE"]

#: (first pass that no longer uses it, global learning rate): the paper's schedule for its 20 passes,
#: "0.0005 for the first two passes, 0.0002 for the next three, 0.0001 for the next three, 0.00005 for the
#: next 4, and 0.00001 thereafter".
PAPER_SCHEDULE = ((2, 5e-4), (5, 2e-4), (8, 1e-4), (12, 5e-5), (math.inf, 1e-5))


def paper_learning_rate(epoch: int) -> float:
    """The paper's global learning rate ``eta`` for pass ``epoch`` (counted from 0)."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    for end, lr in PAPER_SCHEDULE:
        if epoch < end:
            return lr
    raise AssertionError("unreachable")


class _Features(nn.Module):
    # functional_call runs a module's forward; this one's forward is the model's trunk at 32x32.
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def gauss_newton_diagonal(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                          generator: Optional[torch.Generator] = None, chunk: int = 100) -> Dict[nn.Parameter, torch.Tensor]:
    """An unbiased estimate of the per-sample average Gauss–Newton diagonal of ``model.loss`` over
    ``images [N, 1, 32, 32]`` with ``targets [N]``: ``{parameter: tensor of its shape}`` (see the module
    docstring). ``model`` is one of ``lenet``'s networks (it needs ``features`` and
    ``loss_hessian_sample``); ``chunk`` bounds how many per-sample gradients are held at once.

    The per-sample gradients are batched with ``torch.func.vmap``, about ten times faster than a loop of
    single-sample backward passes; the first call in a process pays a few seconds for importing
    ``torch._dynamo``, which ``torch.func`` uses.
    """
    from torch.func import functional_call, grad, vmap

    if len(images) != len(targets) or len(images) == 0:
        raise ValueError(f"need as many targets as images (and at least one), got {len(images)} and {len(targets)}")
    wrapper = _Features(model)
    named = {n: p for n, p in wrapper.named_parameters() if p.requires_grad}
    buffers = dict(wrapper.named_buffers())
    with torch.no_grad():
        u = model.loss_hessian_sample(model.features(images), targets, generator)

    def projected(params, x, v):
        out = functional_call(wrapper, (params, buffers), (x.unsqueeze(0),))
        return (out[0] * v).sum()

    per_sample = vmap(grad(projected), in_dims=(None, 0, 0))
    detached = {n: p.detach() for n, p in named.items()}
    total = {n: torch.zeros_like(p) for n, p in detached.items()}
    for start in range(0, len(images), chunk):
        grads = per_sample(detached, images[start:start + chunk], u[start:start + chunk])
        for n, g in grads.items():
            total[n] += g.pow(2).sum(0)
    return {named[n]: t / len(images) for n, t in total.items()}


class SDLM(Optimizer):
    """Stochastic diagonal Levenberg–Marquardt: ``w -= lr * grad / (mu + h)`` with a fixed per-parameter
    curvature ``h`` set by ``set_curvature`` (or ``update_curvature``) before each pass.

    ``lr`` is the paper's global rate ``eta`` (see ``paper_learning_rate``), ``mu`` its 0.02. The paper
    steps after every sample; with mini-batches of ``B`` samples and a mean loss, multiply ``lr`` by ``B``
    to move as far per pass.
    """

    def __init__(self, params: Iterable, lr: float = 5e-4, mu: float = 0.02):
        if lr < 0 or mu <= 0:
            raise ValueError(f"need lr >= 0 and mu > 0, got lr={lr}, mu={mu}")
        super().__init__(params, dict(lr=lr, mu=mu))

    @torch.no_grad()
    def set_curvature(self, curvature: Mapping[torch.Tensor, torch.Tensor]) -> None:
        """Set ``h`` for every parameter (a mapping parameter → non-negative tensor of its shape)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p not in curvature:
                    raise ValueError(f"no curvature given for a parameter of shape {tuple(p.shape)}")
                h = curvature[p]
                if h.shape != p.shape:
                    raise ValueError(f"curvature of shape {tuple(h.shape)} for a parameter of shape {tuple(p.shape)}")
                if bool((h < 0).any()) or not bool(torch.isfinite(h).all()):
                    raise ValueError("curvature must be finite and non-negative")
                self.state[p]["hessian"] = h.detach().to(p).clone()

    def update_curvature(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                         generator: Optional[torch.Generator] = None) -> None:
        """``set_curvature(gauss_newton_diagonal(model, images, targets, generator))``."""
        self.set_curvature(gauss_newton_diagonal(model, images, targets, generator))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu = group["lr"], group["mu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                h = self.state[p].get("hessian")
                if h is None:
                    raise RuntimeError("SDLM has no curvature estimate: call set_curvature() or "
                                       "update_curvature() before step()")
                p.addcdiv_(p.grad, h + mu, value=-lr)
        return loss
