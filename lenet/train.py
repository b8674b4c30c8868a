"""Isolated-digit training of LeNet-5: ``python -m lenet.train --out PATH`` and the ``train()`` behind it.

The recipe is the paper's (§II-C, appendix C) except where noted:

* MAP criterion with constant ``j`` (``lenet.model.map_loss``); cross-entropy for the modern variant.
* Stochastic diagonal Levenberg–Marquardt (``lenet.optim.SDLM``, ``mu = 0.02``) with the Gauss–Newton
  diagonal re-estimated on 500 training samples before every pass.
* The paper's learning-rate schedule (0.0005, 0.0002, 0.0001, 0.00005, then 0.00001 per pass), times
  ``lr_scale`` (1).
* **Not the paper's:** (1) mini-batches of 8, the paper's rate per mini-batch step (the paper updates
  after every digit; one Python step per digit makes a pass about 5× slower on a CPU). (2) A warm-up: the
  first 250 steps at a tenth of the rate, then the curvature is measured again. With the honest
  Gauss–Newton diagonal the paper's rates diverge within a dozen steps from the paper's small initial
  weights: the diagonal curvature of the convolution kernels and of C5 is far below ``mu``, so nearly
  every weight takes the largest step ``eta / mu``, and a diagonal cannot see the direction in which all
  weights of a unit move together. After the warm-up the measured curvature is 10 to 1,000 times larger
  and the paper's rates train stably on batches of 8 (2 to 8 times larger rates did worse; single digits
  at the paper's rate still diverged, even after the warm-up).
* Distortions (``--distort``): every pass sees freshly distorted copies of the training digits
  (``lenet.data.RandomAffine``); the paper added 540,000 distorted digits to its 60,000.

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
from .data import RandomAffine, load_digits, load_idx_dataset, prepare
from .model import VARIANTS, build
from .optim import SDLM, paper_learning_rate

__all__ = ["train", "evaluate", "confusion_matrix", "main", "DEFAULTS"]

#: The defaults of ``train`` and of the command line.
DEFAULTS = dict(epochs=20, batch_size=8, lr_scale=1.0, mu=0.02, j=10.0, curvature_samples=500,
                warmup_steps=250, warmup_factor=0.1)


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


def train(out: Optional[Union[str, Path]] = None, epochs: int = DEFAULTS["epochs"], seed: int = 0,
          variant: str = "paper", distort: bool = False, idx_dir: Optional[Union[str, Path]] = None,
          batch_size: int = DEFAULTS["batch_size"], lr_scale: float = DEFAULTS["lr_scale"],
          mu: float = DEFAULTS["mu"], j: float = DEFAULTS["j"],
          curvature_samples: int = DEFAULTS["curvature_samples"], warmup_steps: int = DEFAULTS["warmup_steps"],
          warmup_factor: float = DEFAULTS["warmup_factor"], limit: Optional[int] = None,
          dtype: torch.dtype = torch.float32, progress: bool = True, plots: bool = True,
          log=print) -> Tuple[torch.nn.Module, List[Dict]]:
    """Train a LeNet-5 variant on isolated digits; returns ``(model, history)``.

    ``out``: where to write the checkpoint (``lenet.load`` reads it back), plus ``<stem>_curve.png`` and
    ``<stem>_confusion.png`` beside it when ``plots``; ``None`` writes nothing. ``idx_dir``: train and test
    on MNIST-format IDX files instead of the bundled digits. ``limit``: use only the first ``limit``
    training digits (quick runs). ``history`` has one dict per pass: ``epoch``, ``lr``, ``train_loss``,
    ``train_error`` (on the pass's own, possibly distorted, batches while training), ``test_error``,
    ``seconds`` (since the start).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if epochs < 1 or batch_size < 1 or curvature_samples < 1:
        raise ValueError("epochs, batch_size and curvature_samples must be >= 1")
    start = time.perf_counter()
    x, y, xt, yt, source = _load_data(idx_dir)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x, xt = x.to(dtype), xt.to(dtype)

    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the modern variant uses PyTorch's default initialisation
        model = build(variant) if variant == "modern" else build(variant, j=j)
    model.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    if variant != "modern":
        model.reset_parameters(gen)
    distorter = RandomAffine() if distort else None
    optimizer = SDLM(model.parameters(), lr=0.0, mu=mu)
    config = dict(epochs=epochs, seed=seed, variant=variant, distort=distort, batch_size=batch_size,
                  lr_scale=lr_scale, mu=mu, j=j if variant != "modern" else None,
                  curvature_samples=curvature_samples, warmup_steps=warmup_steps, warmup_factor=warmup_factor,
                  limit=limit, data=source)
    log(f"training LeNet-5 ({variant}, {sum(p.numel() for p in model.parameters()):,} parameters) on {source}"
        + (", distorted" if distort else "") + f", {epochs} passes, batch {batch_size}, seed {seed}")

    history: List[Dict] = []
    n = len(x)
    steps = math.ceil(n / batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs * steps, unit="step", dynamic_ncols=True)
    model.train()
    for epoch in range(epochs):
        lr = paper_learning_rate(epoch) * lr_scale
        xe = distorter(x, generator=gen) if distorter is not None else x
        warm = warmup_steps if epoch == 0 else 0
        _set_lr(optimizer, lr * warmup_factor if warm else lr)
        optimizer.update_curvature(model, *_curvature_sample(xe, y, curvature_samples, gen), gen)
        order = torch.randperm(n, generator=gen)
        total_loss, wrong = 0.0, 0
        for step in range(steps):
            if warm and step == warm:
                # End of the warm-up: the weights have left the tiny initial regime, measure again.
                _set_lr(optimizer, lr)
                optimizer.update_curvature(model, *_curvature_sample(xe, y, curvature_samples, gen), gen)
            idx = order[step * batch_size:(step + 1) * batch_size]
            penalties = model(xe[idx])
            loss = model.loss(penalties, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} in pass {epoch + 1}, step {step + 1}; "
                                         "lower lr_scale")
            total_loss += loss.item() * len(idx)
            wrong += int((penalties.detach().argmin(-1) != y[idx]).sum())
            if bar is not None:
                bar.update(1)
                if step % 50 == 0 or step == steps - 1:
                    bar.set_description(f"pass {epoch + 1}/{epochs}")
                    bar.set_postfix(loss=f"{total_loss / min(n, (step + 1) * batch_size):.3f}")
        test_error, test_preds = evaluate(model, xt, yt)
        record = dict(epoch=epoch + 1, lr=lr, train_loss=total_loss / n, train_error=wrong / n,
                      test_error=test_error, seconds=time.perf_counter() - start)
        history.append(record)
        message = (f"pass {epoch + 1:2d}/{epochs}: lr {lr:.2e}  train loss {record['train_loss']:.4f}  "
                   f"train error {100 * record['train_error']:.2f}%  test error {100 * test_error:.2f}%  "
                   f"({record['seconds']:.0f} s)")
        if bar is not None:
            bar.write(message)
        else:
            log(message)
    if bar is not None:
        bar.close()
    model.eval()

    if out is not None:
        confusion = confusion_matrix(yt, test_preds, model.num_classes)
        path = checkpoint.save_model(model, out, history=history, train_config=config,
                                     test_error=test_error, confusion=confusion,
                                     wall_seconds=time.perf_counter() - start)
        log(f"wrote {path} (test error {100 * test_error:.2f}%, {time.perf_counter() - start:.0f} s)")
        if plots:
            for p in _plots(path, history, confusion, f"LeNet-5 ({variant}{', distorted' if distort else ''})"):
                log(f"wrote {p}")
    return model, history


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


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lenet.train",
                                description="Train LeNet-5 on isolated digits and write a checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="checkpoint to write (PNGs of the curves go beside it)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="passes over the training set")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random (deterministic runs)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="paper",
                   help="paper: the 1998 network; fullc3: C3 fully connected; modern: ReLU/max-pool/softmax")
    p.add_argument("--distort", action="store_true", help="random affine distortions of the training digits")
    p.add_argument("--idx-dir", help="train/test on MNIST-format IDX files in this directory "
                                     "(train-images-idx3-ubyte[.gz], ..., t10k-labels-idx1-ubyte[.gz])")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr-scale", type=float, default=DEFAULTS["lr_scale"],
                   help="multiplies the paper's learning-rate schedule")
    p.add_argument("--mu", type=float, default=DEFAULTS["mu"], help="SDLM's mu")
    p.add_argument("--warmup-steps", type=int, default=DEFAULTS["warmup_steps"],
                   help="steps at the start of the first pass at a tenth of the rate")
    p.add_argument("--j", type=float, default=DEFAULTS["j"], help="the MAP criterion's constant")
    p.add_argument("--limit", type=int, help="train on only the first LIMIT digits")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small batches gain little from more)")
    p.add_argument("--double", action="store_true", help="train in float64")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNGs")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    train(out=a.out, epochs=a.epochs, seed=a.seed, variant=a.variant, distort=a.distort, idx_dir=a.idx_dir,
          batch_size=a.batch_size, lr_scale=a.lr_scale, mu=a.mu, j=a.j, warmup_steps=a.warmup_steps, limit=a.limit,
          dtype=torch.float64 if a.double else torch.float32, progress=not a.no_progress,
          plots=not a.no_plots)


if __name__ == "__main__":
    main()
