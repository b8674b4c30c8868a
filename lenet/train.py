"""Isolated-digit training of LeNet-5: ``python -m lenet.train --out PATH`` and the ``train()`` behind it.

Two recipes, both on the MAP criterion with constant ``j`` (``lenet.model.map_loss``; cross-entropy for the
modern variant), chosen by ``optimizer``:

* ``"adam"`` (the default): AdamW on mini-batches of 32, a short linear warm-up and then a cosine decay of
  the rate to zero over all passes, and freshly distorted training digits on every pass
  (``lenet.data.RandomAffine``, including a small rotation). With 8,000 training digits instead of the
  paper's 60,000 the paper's network fits the undistorted digits within a few passes and then stops
  improving on new ones; distortions on every pass keep it learning, and they make many more passes
  useful, which a larger batch makes affordable. 60 passes: on two folds of 1,000 held-out training digits
  (``validation_offset`` 1,000 and 2,000) they made 1.30 % and 0.80 % validation error against 1.50 % and
  1.10 % for 30 passes (and 0.90 % against 0.80 % on the last 1,000). The choices were made on training
  digits held out (``validation``), not on the test digits. Optional: elastic distortions (``elastic``;
  they did not help here), a moving average of the weights (``ema``), a share of undistorted digits per
  pass (``distort_fraction``).
* ``"sgd"``: the same with SGD, Nesterov momentum 0.9, peak rate 0.003 (0.01 and 0.05 diverged in the first
  pass on batches of 32; Adam did better on the validation digits, 0.7 % against 1.3 %).
* ``"sdlm"``: the paper's optimiser, stochastic diagonal Levenberg–Marquardt (``lenet.optim.SDLM``,
  ``mu = 0.02``) with the Gauss–Newton diagonal re-estimated on 500 training samples before every pass and
  the paper's learning-rate schedule (0.0005, 0.0002, 0.0001, 0.00005, then 0.00001 per pass) times
  ``lr_scale``. **Not the paper's:** (1) mini-batches of 8, the paper's rate per mini-batch step (the paper
  updates after every digit; one Python step per digit makes a pass about 5× slower on a CPU). (2) A
  warm-up: the first 250 steps at a tenth of the rate, then the curvature is measured again. With the
  honest Gauss–Newton diagonal the paper's rates diverge within a dozen steps from the paper's small
  initial weights: the diagonal curvature of the convolution kernels and of C5 is far below ``mu``, so
  nearly every weight takes the largest step ``eta / mu``, and a diagonal cannot see the direction in
  which all weights of a unit move together. After the warm-up the measured curvature is 10 to 1,000
  times larger and the paper's rates train stably on batches of 8 (2 to 8 times larger rates did worse;
  single digits at the paper's rate still diverged, even after the warm-up).

Defaults that depend on the recipe (``None`` in ``train``'s signature) come from ``RECIPES``.
Distortions are on by default (``distort=False`` / ``--no-distort`` turns them off); the paper added
540,000 distorted digits to its 60,000.

Training is deterministic for a given ``seed`` and thread count: the initial weights, the order, the
distortions and the curvature samples all come from it.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from . import checkpoint
from .distributed import SINGLE, Context, init, teardown
from .resume import States, rng_states, set_rng_states
from .data import ElasticDistortion, RandomAffine, load_digits, load_idx_dataset, prepare
from .model import VARIANTS, build
from .optim import SDLM, paper_learning_rate

__all__ = ["train", "evaluate", "mix_distorted", "confusion_matrix", "cosine_rate", "main", "DEFAULTS", "RECIPES", "OPTIMIZERS"]

#: The recipe-independent defaults of ``train`` and of the command line.
DEFAULTS = dict(optimizer="adam", j=10.0, distort=True, rotate=10.0, elastic=0.0, elastic_sigma=4.0, validation=0)

#: Per-optimizer defaults for the arguments that ``train`` leaves at ``None``.
RECIPES = {
    "adam": dict(epochs=60, batch_size=32, lr=1e-2, weight_decay=0.0, warmup_steps=100),
    "sgd": dict(epochs=30, batch_size=32, lr=0.003, weight_decay=0.0, warmup_steps=100),
    "sdlm": dict(epochs=20, batch_size=8, lr=None, weight_decay=0.0, warmup_steps=250),
}
OPTIMIZERS = tuple(RECIPES)

#: SDLM only: its ``mu``, the curvature sample size, and the warm-up's fraction of the rate.
SDLM_DEFAULTS = dict(mu=0.02, curvature_samples=500, warmup_factor=0.1)


def _load_data(idx_dir: Optional[Union[str, Path]]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    if idx_dir is None:
        x, y = load_digits("train")
        xt, yt = load_digits("test")
        return x, y, xt, yt, "bundled mnist9k (8,000 train / 1,000 test)"
    ri, y = load_idx_dataset(idx_dir, "train")
    rti, yt = load_idx_dataset(idx_dir, "test")
    return prepare(ri), y, prepare(rti), yt, f"IDX files in {idx_dir} ({len(y):,} train / {len(yt):,} test)"


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 1000) -> Tuple[float, torch.Tensor]:
    """``(error rate, predictions)`` of ``model`` on prepared ``images [N, 1, 32, 32]``."""
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    preds = torch.cat([model(images[i:i + batch_size].to(dtype)).argmin(-1)
                       for i in range(0, len(images), batch_size)]) if len(images) else torch.zeros(0, dtype=torch.long)
    model.train(was_training)
    error = (preds != labels).double().mean().item() if len(labels) else float("nan")
    return error, preds


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """``[true, predicted]`` counts."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes ** 2).view(num_classes, num_classes)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _curvature_sample(x: torch.Tensor, y: torch.Tensor, count: int, gen: torch.Generator):
    rows = torch.randperm(len(x), generator=gen)[:count]
    return x[rows], y[rows]


def _make_optimizer(name: str, model: torch.nn.Module, lr: float, weight_decay: float, mu: float):
    if name == "adam":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if weight_decay:
        raise ValueError("weight decay is not part of the SDLM recipe")
    return SDLM(model.parameters(), lr=0.0, mu=mu)


def mix_distorted(originals: torch.Tensor, distorted: torch.Tensor, fraction: float,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each row from ``distorted`` with probability ``fraction``, else from ``originals`` (one draw per row).

    A random share of the digits is kept as it is on every pass: the paper's training set was its 60,000
    originals plus 540,000 distorted copies."""
    keep = torch.rand(len(originals), generator=generator) >= fraction
    return torch.where(keep.view((-1,) + (1,) * (originals.dim() - 1)), originals, distorted)


class PassDistortions:
    """One pass's distorted training digits, resampled when indexed: the pass's draws (a transform per digit,
    then, with ``fraction`` < 1, which digits stay as they are) are made at once, exactly as
    ``distorter(x, generator=gen)`` and `mix_distorted` make them, and ``self[rows]`` resamples those rows
    alone — bit for bit the same rows. Data-parallel training uses it so that each process distorts only its
    shares of the pass."""

    def __init__(self, x: torch.Tensor, distorter: RandomAffine, fraction: float, gen: torch.Generator):
        self.x, self.distorter = x, distorter
        self.theta = distorter.theta(len(x), x.shape[-2], x.shape[-1], gen)
        self.keep = torch.rand(len(x), generator=gen) >= fraction if fraction < 1 else None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, rows) -> torch.Tensor:
        x = self.x[rows]
        out = self.distorter.warp(x, self.theta[rows])
        if self.keep is not None:
            out = torch.where(self.keep[rows].view((-1,) + (1,) * (x.dim() - 1)), x, out)
        return out


@torch.no_grad()
def _copy_into(params: List[torch.Tensor], values: List[torch.Tensor]) -> None:
    for p, v in zip(params, values):
        p.copy_(v)


def cosine_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """The rate of the ``adam``/``sgd`` recipes at ``step`` (from 0) of ``total``: linear warm-up over the
    first ``warmup`` steps, then ``peak`` decaying to zero along half a cosine over all steps."""
    rate = peak * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    return rate * (step + 1) / warmup if step < warmup else rate


def train(out: Optional[Union[str, Path]] = None, epochs: Optional[int] = None, seed: int = 0,
          variant: str = "paper", distort: bool = DEFAULTS["distort"], idx_dir: Optional[Union[str, Path]] = None,
          batch_size: Optional[int] = None, optimizer: str = DEFAULTS["optimizer"], lr: Optional[float] = None,
          weight_decay: Optional[float] = None, lr_scale: float = 1.0, mu: float = SDLM_DEFAULTS["mu"],
          j: float = DEFAULTS["j"], rotate: float = DEFAULTS["rotate"], elastic: float = DEFAULTS["elastic"],
          elastic_sigma: float = DEFAULTS["elastic_sigma"], affine: bool = True, ema: float = 0.0,
          distort_fraction: float = 1.0,
          curvature_samples: int = SDLM_DEFAULTS["curvature_samples"], warmup_steps: Optional[int] = None,
          warmup_factor: float = SDLM_DEFAULTS["warmup_factor"], limit: Optional[int] = None,
          validation: int = DEFAULTS["validation"], validation_offset: int = 0, dtype: torch.dtype = torch.float32, progress: bool = True,
          plots: bool = True, log=print, ctx: Context = SINGLE,
          states: Optional[States] = None) -> Tuple[torch.nn.Module, List[Dict]]:
    """Train a LeNet-5 variant on isolated digits; returns ``(model, history)``.

    ``optimizer``: ``"adam"`` (default), ``"sgd"`` or ``"sdlm"`` (the paper's; see the module docstring);
    ``epochs``, ``batch_size``, ``lr`` (peak rate of adam/sgd), ``weight_decay`` and ``warmup_steps`` default
    to the recipe's values in ``RECIPES``. ``lr_scale``, ``mu``, ``curvature_samples`` and ``warmup_factor``
    are SDLM's. ``distort``: freshly distorted training digits every pass (``RandomAffine`` with its
    defaults and ``rotate`` degrees of rotation; ``affine=False`` leaves it out). ``elastic``: with
    ``distort``, add elastic distortions (``ElasticDistortion``, scale ``elastic`` pixels, smoothing
    ``elastic_sigma`` pixels; 0 = none), composed with the affine draw in one resampling;
    ``distort_fraction``: the share of digits distorted each pass (a fresh random choice every pass). ``ema``: keep an
    exponential moving average of the weights (decay ``ema`` per step, 0 = off); the per-pass errors and the
    returned model use the averaged weights. ``out``: where to write the checkpoint (``lenet.load``
    reads it back), plus ``<stem>_curve.png`` and ``<stem>_confusion.png`` beside it when ``plots``;
    ``None`` writes nothing. ``idx_dir``: train and test on MNIST-format IDX files instead of the bundled
    digits. ``limit``: use only the first ``limit`` training digits (quick runs). ``validation``: hold out
    the last ``validation`` of those training digits and report the error on them every pass (for choosing
    a recipe without looking at the test digits); ``validation_offset``: hold out the ``validation`` digits
    that end this many digits before the last instead (another fold). ``history`` has one dict per pass: ``epoch``, ``lr`` (at
    the pass's last step), ``train_loss``, ``train_error`` (on the pass's own, possibly distorted, batches
    while training), ``val_error`` and ``val_loss`` (when ``validation``), ``test_error``, ``seconds`` (since
    the start).

    ``ctx`` (`lenet.distributed.init` under torchrun): data-parallel training, each process running its share
    of every mini-batch (the distortions, the order and the curvature samples are drawn alike on every rank,
    from the same generator; with the affine distortions, `PassDistortions`, a rank resamples only the digits
    of its shares), the gradient that of the mean over the whole mini-batch; rank 0 alone
    evaluates, logs and writes. ``states`` (`lenet.resume.States`): write a resume state after every pass and
    start from the one ``states.resume`` names.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if optimizer not in RECIPES:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {list(RECIPES)}")
    recipe = RECIPES[optimizer]
    epochs = recipe["epochs"] if epochs is None else epochs
    batch_size = recipe["batch_size"] if batch_size is None else batch_size
    lr = recipe["lr"] if lr is None else lr
    weight_decay = recipe["weight_decay"] if weight_decay is None else weight_decay
    warmup_steps = recipe["warmup_steps"] if warmup_steps is None else warmup_steps
    if epochs < 1 or batch_size < 1 or curvature_samples < 1:
        raise ValueError("epochs, batch_size and curvature_samples must be >= 1")
    if warmup_steps < 0 or validation < 0 or rotate < 0 or weight_decay < 0 or elastic < 0:
        raise ValueError("warmup_steps, validation, rotate, elastic and weight_decay must be >= 0")
    if elastic_sigma <= 0:
        raise ValueError("elastic_sigma must be > 0")
    if not 0 <= ema < 1:
        raise ValueError("ema must be in [0, 1)")
    if not 0 <= distort_fraction <= 1:
        raise ValueError("distort_fraction must be in [0, 1]")
    if distort and not affine and not elastic:
        raise ValueError("distort without affine distortions needs elastic > 0")
    start = time.perf_counter()
    if not ctx.is_main:
        log, progress, out = (lambda *args: None), False, None
    x, y, xt, yt, source = _load_data(idx_dir)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    xv = yv = None
    if validation_offset < 0 or (validation_offset and not validation):
        raise ValueError("validation_offset must be >= 0, and needs validation")
    if validation:
        if validation + validation_offset >= len(x):
            raise ValueError(f"validation ({validation}) and validation_offset ({validation_offset}) must leave "
                             f"training digits (of {len(x)})")
        stop = len(x) - validation_offset
        held = torch.zeros(len(x), dtype=torch.bool)
        held[stop - validation:stop] = True
        x, y, xv, yv = x[~held], y[~held], x[held].to(dtype), y[held]
        where = "last" if not validation_offset else f"{validation_offset:,} digits before the last"
        source += f", {validation:,} training digits held out for validation (the {where})"
    x, xt = x.to(dtype), xt.to(dtype)

    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the modern variant uses PyTorch's default initialisation
        model = build(variant) if variant == "modern" else build(variant, j=j)
    model.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    if variant != "modern":
        model.reset_parameters(gen)
    distorter = None
    if distort:
        distorter = RandomAffine(rotate=rotate) if affine else None
        if elastic > 0:  # the affine draw (if any) and the elastic field in one resampling
            distorter = ElasticDistortion(alpha=elastic, sigma=elastic_sigma, affine=distorter)
    params = [p for p in model.parameters() if p.requires_grad]
    averaged = [p.detach().clone() for p in params] if ema else None
    opt = _make_optimizer(optimizer, model, lr, weight_decay, mu)
    sdlm = optimizer == "sdlm"
    config = dict(epochs=epochs, seed=seed, variant=variant, distort=distort,
                  rotate=rotate if distort and affine else None, elastic=elastic if distort else None,
                  affine=affine if distort else None, ema=ema,
                  distort_fraction=distort_fraction if distort else None,
                  elastic_sigma=elastic_sigma if distort and elastic else None, optimizer=optimizer, batch_size=batch_size,
                  lr=None if sdlm else lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                  j=j if variant != "modern" else None, limit=limit, validation=validation, data=source)
    if validation_offset:
        config["validation_offset"] = validation_offset
    if sdlm:
        config.update(lr_scale=lr_scale, mu=mu, curvature_samples=curvature_samples, warmup_factor=warmup_factor)
    log(f"training LeNet-5 ({variant}, {sum(p.numel() for p in model.parameters()):,} parameters) on {source}"
        + (", distorted" if distort else "") + f", {optimizer}, {epochs} passes, batch {batch_size}, seed {seed}")

    history: List[Dict] = []
    ctx.broadcast_module(model)
    first = 0
    state = states.start(ctx) if states is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        set_rng_states(state["rng"])
        history, first = state["history"], state["pass"]
        if averaged is not None:
            _copy_into(averaged, state["averaged"])
            if first < epochs:  # the state holds the averaged weights in the model (see below); train on
                _copy_into(params, state["current"])
        log(f"resumed from {states.resumed_from} (after pass {first}/{epochs})")
    n = len(x)
    test_error, test_preds = float("nan"), None
    steps = math.ceil(n / batch_size)
    total_steps = epochs * steps
    bar = None
    if progress:
        from .progress import progress_bar
        bar = progress_bar(total_steps, unit="step", initial=first * steps)
    model.train()
    for epoch in range(first, epochs):
        if ctx.distributed and isinstance(distorter, RandomAffine) and distorter.draws_apart():
            xe = PassDistortions(x, distorter, distort_fraction, gen)  # each process resamples its shares
        else:
            xe = distorter(x, generator=gen) if distorter is not None else x
            if distorter is not None and distort_fraction < 1:
                xe = mix_distorted(x, xe, distort_fraction, gen)
        if sdlm:
            lr_now = paper_learning_rate(epoch) * lr_scale
            warm = warmup_steps if epoch == 0 else 0
            _set_lr(opt, lr_now * warmup_factor if warm else lr_now)
            opt.update_curvature(model, *_curvature_sample(xe, y, curvature_samples, gen), gen)
        order = torch.randperm(n, generator=gen)
        total_loss, wrong = 0.0, 0
        for step in range(steps):
            if sdlm:
                if warm and step == warm:
                    # End of the warm-up: the weights have left the tiny initial regime, measure again.
                    _set_lr(opt, lr_now)
                    opt.update_curvature(model, *_curvature_sample(xe, y, curvature_samples, gen), gen)
            else:
                lr_now = cosine_rate(epoch * steps + step, total_steps, lr, warmup_steps)
                _set_lr(opt, lr_now)
            idx = order[step * batch_size:(step + 1) * batch_size]
            if ctx.distributed:
                loss, wrong_here = _shared_step(model, xe, y, idx, opt, params, ctx)
            else:
                penalties = model(xe[idx])
                loss = model.loss(penalties, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                wrong_here = int((penalties.detach().argmin(-1) != y[idx]).sum())
            if averaged is not None:
                # Exponential moving average of the weights, with a shorter memory at the start.
                t = epoch * steps + step
                with torch.no_grad():
                    torch._foreach_lerp_(averaged, [p.detach() for p in params], 1 - min(ema, (1 + t) / (10 + t)))
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} in pass {epoch + 1}, step {step + 1}; "
                                         "lower the learning rate")
            total_loss += loss.item() * len(idx)
            wrong += wrong_here
            if bar is not None:
                bar.update(1)
                if step % 50 == 0 or step == steps - 1:
                    bar.set_description(f"pass {epoch + 1}/{epochs}", refresh=False)
                    bar.set_postfix(loss=f"{total_loss / min(n, (step + 1) * batch_size):.3f}", refresh=False)
        if averaged is not None:  # evaluate (and finally keep) the averaged weights
            current = [p.detach().clone() for p in params]
            _copy_into(params, averaged)
        test_error, test_preds = evaluate(model, xt, yt) if ctx.is_main else (float("nan"), None)
        record = dict(epoch=epoch + 1, lr=lr_now, train_loss=total_loss / n, train_error=wrong / n)
        if xv is not None and ctx.is_main:
            record["val_error"] = evaluate(model, xv, yv)[0]
            with torch.no_grad():
                model.eval()
                record["val_loss"] = model.loss(model(xv), yv).item()
                model.train()
        record.update(test_error=test_error, seconds=time.perf_counter() - start)
        history.append(record)
        if states is not None:
            states.save(epoch + 1, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "generator": gen.get_state(), "rng": rng_states(), "history": history,
                                    **({"averaged": averaged, "current": current} if averaged is not None else {})})
        if averaged is not None and epoch < epochs - 1:
            _copy_into(params, current)
        message = (f"pass {epoch + 1:2d}/{epochs}: lr {lr_now:.2e}  train loss {record['train_loss']:.4f}  "
                   f"train error {100 * record['train_error']:.2f}%  "
                   + (f"validation error {100 * record['val_error']:.2f}% (loss {record['val_loss']:.4f})  "
                      if xv is not None else "")
                   + f"test error {100 * test_error:.2f}%  ({record['seconds']:.0f} s)")
        if bar is not None:
            bar.write(message)
        else:
            log(message)
    if bar is not None:
        bar.close()
    model.eval()

    if out is not None:
        if test_preds is None or first == epochs:  # resumed after the last pass: evaluate the final weights
            test_error, test_preds = evaluate(model, xt, yt)
        confusion = confusion_matrix(yt, test_preds, model.num_classes)
        path = checkpoint.save_model(model, out, history=history, train_config=config,
                                     test_error=test_error, confusion=confusion,
                                     wall_seconds=time.perf_counter() - start)
        log(f"wrote {path} (test error {100 * test_error:.2f}%, {time.perf_counter() - start:.0f} s)")
        if plots:
            title = f"LeNet-5 ({variant}, {optimizer}{', distorted' if distort else ''})"
            for p in _plots(path, history, confusion, title):
                log(f"wrote {p}")
    return model, history


def _shared_step(model, xe, y, idx, opt, params, ctx: Context):
    """One data-parallel step on the mini-batch ``idx``: this rank's share of it forward and backward, with
    the loss summed over the share and divided by the whole batch's size, the gradients summed over the
    ranks, the optimiser step. Returns ``(the batch's mean loss as a 0-d tensor, the batch's wrong count)``."""
    local = ctx.shard(idx)
    opt.zero_grad(set_to_none=True)
    if len(local):
        penalties = model(xe[local])
        loss = model.loss(penalties, y[local], reduction="sum")
        (loss / len(idx)).backward()
        stats = [float(loss.detach()), int((penalties.detach().argmin(-1) != y[local]).sum())]
    else:
        stats = [0.0, 0]
    ctx.average_gradients(params)
    opt.step()
    total, wrong = ctx.sum(stats)
    return torch.tensor(total / len(idx), dtype=torch.float64), int(round(wrong))


def _plots(path: Path, history: List[Dict], confusion: torch.Tensor, title: str) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set before pyplot is imported
    import matplotlib.pyplot as plt

    stem = path.with_suffix("")
    written = []
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-")
    ax1.set(xlabel="pass", ylabel="training loss", title="loss", yscale="log")
    ax2.plot(epochs, [100 * h["train_error"] for h in history], "o-", label="training (during the pass)")
    if "val_error" in history[0]:
        ax2.plot(epochs, [100 * h["val_error"] for h in history], "^-", label="validation")
    ax2.plot(epochs, [100 * h["test_error"] for h in history], "s-", label="test")
    ax2.set(xlabel="pass", ylabel="error (%)", title="error", yscale="log")
    ax2.legend()
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    curve = Path(f"{stem}_curve.png")
    fig.savefig(curve, dpi=100)
    plt.close(fig)
    written.append(curve)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    c = confusion.numpy()
    ax.imshow(c, cmap="Blues")
    for i in range(c.shape[0]):
        for k in range(c.shape[1]):
            if c[i, k]:
                ax.text(k, i, str(c[i, k]), ha="center", va="center", fontsize=8,
                        color="white" if c[i, k] > c.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(c.shape[1]), yticks=range(c.shape[0]),
           title=f"{title}\ntest error {100 * (1 - c.trace() / max(c.sum(), 1)):.2f}% of {c.sum()}")
    fig.tight_layout()
    conf = Path(f"{stem}_confusion.png")
    fig.savefig(conf, dpi=100)
    plt.close(fig)
    written.append(conf)
    return written


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    # Options whose default depends on --optimizer (None here) say so in their own help.
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lenet.train",
                                description="Train LeNet-5 on isolated digits and write a checkpoint.",
                                formatter_class=_HelpFormatter)
    p.add_argument("--out", required=True, help="checkpoint to write (PNGs of the curves go beside it)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random (deterministic runs)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="paper",
                   help="paper: the 1998 network; fullc3: C3 fully connected; modern: ReLU/max-pool/softmax")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS["optimizer"],
                   help="adam: AdamW + cosine decay (default); sgd: Nesterov momentum + cosine decay; "
                        "sdlm: the paper's stochastic diagonal Levenberg-Marquardt and schedule")
    p.add_argument("--distort", action=argparse.BooleanOptionalAction, default=DEFAULTS["distort"],
                   help="freshly distorted training digits every pass (random affine + rotation)")
    p.add_argument("--rotate", type=float, default=DEFAULTS["rotate"],
                   help="largest rotation of the distortions, in degrees")
    p.add_argument("--elastic", type=float, default=DEFAULTS["elastic"],
                   help="with --distort: scale alpha (pixels) of elastic distortions (Simard et al. 2003) on top "
                        "of the affine ones; 0 = none")
    p.add_argument("--elastic-sigma", type=float, default=DEFAULTS["elastic_sigma"],
                   help="smoothing (Gaussian sigma, pixels) of the elastic displacement field")
    p.add_argument("--affine", action=argparse.BooleanOptionalAction, default=True,
                   help="with --distort: the random affine distortions (--no-affine with --elastic: elastic only)")
    p.add_argument("--distort-fraction", type=float, default=1.0,
                   help="with --distort: the share of training digits distorted each pass (the rest as they are)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="keep and finally use an exponential moving average of the weights with this decay "
                        "per step (0 = off)")
    p.add_argument("--idx-dir", help="train/test on MNIST-format IDX files in this directory "
                                     "(train-images-idx3-ubyte[.gz], ..., t10k-labels-idx1-ubyte[.gz])")
    p.add_argument("--epochs", type=int, help="passes over the training set (default: the optimizer's, "
                                              + ", ".join(f"{k} {v['epochs']}" for k, v in RECIPES.items()) + ")")
    p.add_argument("--batch-size", type=int, help="default: the optimizer's, "
                                                  + ", ".join(f"{k} {v['batch_size']}" for k, v in RECIPES.items()))
    p.add_argument("--lr", type=float, help="peak learning rate of adam/sgd (default: "
                                            + ", ".join(f"{k} {RECIPES[k]['lr']}" for k in ("adam", "sgd")) + ")")
    p.add_argument("--weight-decay", type=float, help="adam/sgd weight decay (default 0)")
    p.add_argument("--lr-scale", type=float, default=1.0, help="sdlm: multiplies the paper's learning-rate schedule")
    p.add_argument("--mu", type=float, default=SDLM_DEFAULTS["mu"], help="sdlm: its mu")
    p.add_argument("--warmup-steps", type=int,
                   help="adam/sgd: steps of linear warm-up; sdlm: steps at a tenth of the rate at the start "
                        "(default: " + ", ".join(f"{k} {v['warmup_steps']}" for k, v in RECIPES.items()) + ")")
    p.add_argument("--j", type=float, default=DEFAULTS["j"], help="the MAP criterion's constant")
    p.add_argument("--limit", type=int, help="train on only the first LIMIT digits")
    p.add_argument("--validation", type=int, default=0,
                   help="hold out the last N training digits and report the error on them every pass")
    p.add_argument("--validation-offset", type=int, default=0,
                   help="hold out the N digits that end this many digits before the last (another fold)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small batches gain little from more)")
    p.add_argument("--double", action="store_true", help="train in float64")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNGs")
    p.add_argument("--resume", metavar="PATH|auto",
                   help="continue from a resume state (written beside --out after every pass, "
                        "<stem>_isolated_pass<k>.state.pt); auto: the latest one, or afresh if there is none")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ctx = init("cpu")  # under torchrun: join the job (lenet.distributed); alone: one process, as ever
    try:
        _run(a, ctx)
    finally:
        teardown(ctx)


def _run(a, ctx: Context) -> None:
    train(out=a.out, epochs=a.epochs, seed=a.seed, variant=a.variant, distort=a.distort, idx_dir=a.idx_dir,
          batch_size=a.batch_size, optimizer=a.optimizer, lr=a.lr, weight_decay=a.weight_decay,
          lr_scale=a.lr_scale, mu=a.mu, j=a.j, rotate=a.rotate,
          elastic=a.elastic, elastic_sigma=a.elastic_sigma, affine=a.affine, ema=a.ema,
          distort_fraction=a.distort_fraction, warmup_steps=a.warmup_steps, limit=a.limit,
          validation=a.validation, validation_offset=a.validation_offset, dtype=torch.float64 if a.double else torch.float32,
          progress=not a.no_progress, plots=not a.no_plots,
          ctx=ctx, states=States(a.out, "isolated", a.resume, writer=ctx.is_main))

if __name__ == "__main__":
    main()
