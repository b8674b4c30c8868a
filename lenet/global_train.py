"""Global training of a string reader (paper §V–§VI): the discriminative forward criterion through the graph,
from string labels alone, and the evaluation loop around it.

`train_globally` trains any reader with ``loss(images, labels, reduction="none")`` (`lenet.recognizer
.StringReader`, `lenet.sdnn.SDNNReader`) with Adam, the network and the reader's other parameters (the
segmentation score, the blank offset) at their own rates, both decaying from their peaks to zero along half a
cosine over all steps; the recipe is a `GlobalRecipe`. A pass's batches come from `PassBatches`, which can run
in a ``DataLoader`` worker process (segmentation and crops overlap with training; the run stays
deterministic). `evaluate` decodes strings and returns their metrics; `mean_loss` is the loss on a fixed set
of strings (the monitor). ``examples/multi_digit.py`` is the script around these calls.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional, Union

import torch

from .distributed import SINGLE, Context
from .metrics import error_reject, string_metrics
from .progress import progress_bar
from .resume import States, rng_states, set_rng_states

__all__ = ["GlobalRecipe", "train_globally", "PassBatches", "IsolatedDigits", "evaluate", "mean_loss", "batches"]


@dataclass(frozen=True)
class GlobalRecipe:
    """The recipe of global training (defaults: the segmentation reader's default run,
    ``python examples/multi_digit.py``).

    ``global_epochs``: passes over ``len(strings)`` training strings; ``batch_size``: strings per step;
    ``lr``: peak Adam rate of the network; ``seg_lr``: peak rate of the reader's other parameters;
    ``fresh``: every pass after the first trains on new strings (``render(pass)``); ``workers``: data-loading
    worker processes that render, segment and crop the batches while the network trains (0: none).
    ``isolated_weight``: weight of an *isolated-digit term* added to every step's loss: the network's own
    criterion (``model.loss``, LeNet-5's MAP loss) on ``isolated_batch`` training digits shown alone, freshly
    distorted as in isolated training (`IsolatedDigits`). It holds the recognizer's reading of single digits
    while the graph's criterion adapts it to segments (not in the paper; 0, off, trains on strings alone)."""

    global_epochs: int = 16
    batch_size: int = 16
    lr: float = 1e-3
    seg_lr: float = 1e-2
    fresh: bool = True
    workers: int = 1
    isolated_weight: float = 0.0
    isolated_batch: int = 16

    def __post_init__(self):
        if self.isolated_weight < 0 or self.isolated_batch < 1:
            raise ValueError(f"isolated_weight must be >= 0 and isolated_batch >= 1, got {self.isolated_weight} "
                             f"and {self.isolated_batch}")

    @classmethod
    def of(cls, recipe: Union["GlobalRecipe", Mapping[str, Any]]) -> "GlobalRecipe":
        """A `GlobalRecipe` as it is, or one from a mapping (e.g. the example's run configurations) that has
        at least ``global_epochs``, ``batch_size``, ``lr`` and ``seg_lr``; ``fresh`` and ``workers`` default
        to off; other keys are ignored."""
        if isinstance(recipe, cls):
            return recipe
        if not isinstance(recipe, Mapping):
            raise TypeError(f"a recipe is a GlobalRecipe or a mapping, got {type(recipe).__name__}")
        missing = [k for k in ("global_epochs", "batch_size", "lr", "seg_lr") if k not in recipe]
        if missing:
            raise ValueError(f"the recipe lacks {', '.join(missing)}")
        names = {f.name for f in fields(cls)}
        kw = {"fresh": False, "workers": 0, **{k: v for k, v in recipe.items() if k in names}}
        return cls(**kw)

    def asdict(self) -> dict:
        return asdict(self)


def batches(items, size):
    """Consecutive slices of ``items`` of ``size`` (the last may be shorter)."""
    for k in range(0, len(items), size):
        yield items[k:k + size]


def evaluate(reader, strings, progress, desc):
    """Decode ``strings``; returns (metrics dict with the decoding time in ``seconds`` and the error-reject
    operating points in ``reject``, predicted texts, their rejection confidences)."""
    t = time.perf_counter()
    preds, conf = [], []
    with progress_bar(len(strings), desc, "str", enabled=progress) as bar:
        for b in batches(strings, 50):
            texts, c = reader.decode([s.image for s in b], return_confidence=True)
            preds.extend(texts)
            conf.extend(c.tolist())
            bar.update(len(b))
    m = string_metrics(preds, [s.label for s in strings])
    m["seconds"] = time.perf_counter() - t
    m["reject"] = error_reject(conf, [p == s.label for p, s in zip(preds, strings)])["points"]
    return m, preds, conf


@torch.no_grad()
def mean_loss(reader, strings, size=32):
    """Mean loss over the strings whose label the graph can spell (see `train_globally`); ``nan`` when there
    is none (no strings, or none spellable)."""
    total, count = 0.0, 0
    for b in batches(strings, size):
        losses = reader.loss([s.image for s in b], [s.label for s in b], reduction="none")
        finite = torch.isfinite(losses)
        total += float(losses[finite].sum())
        count += int(finite.sum())
    return total / count if count else float("nan")


class PassBatches(torch.utils.data.IterableDataset):
    """The batches of one pass of global training, as ``(prepared images, labels)``: pass ``k``'s strings
    (``strings`` for the first pass, ``render(k)`` for later ones when given), in a seeded random order, each
    batch run through ``prepare`` (the reader's network-independent work: segmentation and crops). Run in a
    ``DataLoader`` worker process, this overlaps with training on the other core. ``shard`` (data-parallel
    training, `lenet.distributed.Context.shard`): each batch is cut to this process's share before
    ``prepare``; an empty share yields ``(None, [])``. A string is indexed only when its batch (its share) is
    made, so strings from ``make_strings(..., lazy=True)`` (a `lenet.strings.StringSet`) are drawn by the
    process (or worker) that trains on them, and by no other."""

    def __init__(self, k, strings, render, batch_size, seed, prepare, shard=None):
        super().__init__()
        self.k, self.strings, self.render, self.batch_size = k, strings, render, batch_size
        self.seed, self.prepare, self.shard = seed, prepare, shard

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            torch.set_num_threads(1)  # the other core(s): leave the main process its own
        strings = self.render(self.k) if self.render is not None and self.k > 0 else self.strings
        order = torch.randperm(len(strings), generator=torch.Generator().manual_seed(self.seed * 1000 + self.k))
        info = torch.utils.data.get_worker_info()
        share, of = (info.id, info.num_workers) if info is not None else (0, 1)
        for j, rows in enumerate(batches(order.tolist(), self.batch_size)):
            if j % of == share:  # each worker its share; the DataLoader interleaves them back in order
                if self.shard is not None:
                    rows = self.shard(rows)
                    if not rows:
                        yield None, []
                        continue
                # indexed only now: strings from make_strings(..., lazy=True) are drawn here, this share's alone
                b = [strings[i] for i in rows]
                yield self.prepare([s.image for s in b]), [s.label for s in b]


class IsolatedDigits:
    """Batches of single training digits for the isolated-digit term of global training
    (``GlobalRecipe.isolated_weight``). ``digits``: ``(images, labels)``, MNIST-style ``[N, 28, 28]`` (raw
    ``uint8`` or floats, see `lenet.data.prepare`) or already prepared ``[N, 1, 32, 32]``. Step ``k``'s batch
    (`batch`) is ``size`` digits drawn at random and distorted by the isolated training's `RandomAffine`
    (rotation ±10°), all from a generator seeded by ``(seed, k)`` alone: the same step draws the same batch in a
    resumed run, on every rank of a data-parallel run, and in any process."""

    def __init__(self, digits, size: int, seed: int):
        from .data import RandomAffine, prepare
        from .train import DEFAULTS
        images, labels = digits
        images = torch.as_tensor(images)
        self.x = images.float() if images.dim() == 4 and images.shape[-1] == 32 else prepare(images)
        self.y = torch.as_tensor(labels).long()
        if len(self.x) != len(self.y) or len(self.y) == 0:
            raise ValueError(f"isolated digits: {len(self.x)} images and {len(self.y)} labels; need as many, "
                             "and at least one")
        self.size, self.seed = int(size), int(seed)
        self.distort = RandomAffine(rotate=DEFAULTS["rotate"])

    def batch(self, step: int):
        """Step ``step``'s ``(images [size, 1, 32, 32], labels [size])``."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7 + step)
        rows = torch.randint(len(self.y), (self.size,), generator=gen)
        return self.distort(self.x[rows], generator=gen), self.y[rows]


def train_globally(reader, strings, recipe: Union[GlobalRecipe, Mapping[str, Any]], seed: int, progress: bool,
                   monitor, render=None, ctx: Context = SINGLE, states: Optional[States] = None, digits=None):
    """Discriminative forward training through the graph; returns the history (per-step and per-epoch).

    ``strings`` are the first pass's training strings; with ``recipe.fresh`` every later pass trains on new
    strings ``render(pass)`` (new combinations of the same training digits, never a test digit). Either may
    be a lazy `lenet.strings.StringSet` (``make_strings(..., lazy=True)``): each process then draws only the
    strings of its shares. The rates
    decay from their peaks to zero along half a cosine over all steps. A string whose label no path of its
    graph can spell (its digits overlap so much that no segmentation separates them) has an infinite loss and
    teaches nothing: it is left out of the batch's mean and counted. With ``recipe.workers`` > 0 the strings are
    rendered, segmented and cropped in that many worker processes while the network trains (the run stays
    deterministic).

    ``ctx`` (`lenet.distributed.init` under torchrun): data-parallel training, each process segmenting and
    training on its share of every batch, the gradient that of the mean over the whole batch; only rank 0
    computes the monitor loss (``nan`` elsewhere) and writes resume states. ``states`` (`lenet.resume.States`):
    write a resume state after every pass, and start from the one ``states.resume`` names. ``digits``
    (``(images, labels)`` of training digits, see `IsolatedDigits`): needed when ``recipe.isolated_weight`` > 0;
    the history then holds each pass's mean isolated-digit loss (``isolated_loss``)."""
    cfg = GlobalRecipe.of(recipe)
    anchor = None
    if cfg.isolated_weight > 0:
        if digits is None:
            raise ValueError("recipe.isolated_weight > 0 needs digits=(images, labels) of training digits")
        anchor = IsolatedDigits(digits, cfg.isolated_batch, seed)
    net_params = list(reader.model.parameters())
    net_ids = {id(p) for p in net_params}
    other = [p for p in reader.parameters() if id(p) not in net_ids]
    opt = torch.optim.Adam([{"params": net_params, "lr": cfg.lr}, {"params": other, "lr": cfg.seg_lr}])
    peaks = [g["lr"] for g in opt.param_groups]
    params = net_params + other
    steps = math.ceil(len(strings) / cfg.batch_size)
    total_steps = cfg.global_epochs * steps
    prepare = getattr(reader, "prepare", None) or (lambda images: images)
    workers = cfg.workers
    ctx.broadcast_module(reader)  # every rank starts from rank 0's parameters (they should be equal anyway)
    state = states.start(ctx) if states is not None else None
    first = 0
    step = 0
    if state is None:
        hist = {"step_loss": [], "epoch_loss": [], "unreachable": 0, "isolated_loss": [],
                "monitor_loss": [mean_loss(reader, monitor) if ctx.is_main else float("nan")]}
    else:
        reader.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        hist, first, step = state["history"], state["pass"], state["step"]
        set_rng_states(state["rng"])
    reader.train()
    resumed = state is not None and ctx.is_main
    with progress_bar(total_steps, "global training", "step", enabled=progress, initial=step if resumed else 0) as bar:
        if resumed:
            bar.write(f"resumed from {states.resumed_from} (after pass {first}/{cfg.global_epochs})")
        for epoch in range(first, cfg.global_epochs):
            data = PassBatches(epoch, strings, render if cfg.fresh else None, cfg.batch_size, seed,
                               prepare, shard=ctx.shard if ctx.distributed else None)
            if workers > 0:
                data = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=4)
            total, counted, iso_total, iso_steps = 0.0, 0, 0.0, 0
            for images, labels in data:
                factor = 0.5 * (1 + math.cos(math.pi * step / total_steps))
                for group, peak in zip(opt.param_groups, peaks):
                    group["lr"] = peak * factor
                if ctx.distributed:
                    loss, v, count, unreachable = _shared_loss(reader, images, labels, ctx)
                else:
                    losses = reader.loss(images, labels, reduction="none")
                    finite = torch.isfinite(losses.detach())
                    count, unreachable = int(finite.sum()), int((~finite).sum())
                    loss = losses[finite].mean() if count else None
                hist["unreachable"] += unreachable
                step += 1
                bar.update(1)
                if not count:
                    continue
                opt.zero_grad(set_to_none=True)
                if anchor is not None:
                    x, y = anchor.batch(step - 1)
                    iso = reader.model.loss(reader.model(x.to(net_params[0].dtype)), y)
                    iso_total += float(iso.detach())
                    iso_steps += 1
                    # every rank draws the same batch and adds its share: the gradients summed over the ranks
                    # (ctx.average_gradients) hold the term once, as in one process
                    total_loss = (cfg.isolated_weight / ctx.world_size) * iso + (loss if loss is not None else 0.0)
                    total_loss.backward()
                elif loss is not None:
                    loss.backward()
                ctx.average_gradients(params)
                opt.step()
                if not ctx.distributed:
                    v = float(loss.detach())
                if not math.isfinite(v):
                    raise FloatingPointError(f"the loss became {v}; lower --lr")
                hist["step_loss"].append(v)
                total += v * count
                counted += count
                bar.set_postfix(loss=f"{v:.3f}", refresh=False)
            hist["epoch_loss"].append(total / max(counted, 1))
            if anchor is not None:
                hist.setdefault("isolated_loss", []).append(iso_total / max(iso_steps, 1))
            hist["monitor_loss"].append(mean_loss(reader, monitor) if ctx.is_main else float("nan"))
            if ctx.is_main:
                seen = (f", loss on the {len(monitor)} monitor strings {hist['monitor_loss'][-1]:.4f}"
                        if len(monitor) else "")
                iso = f", isolated-digit loss {hist['isolated_loss'][-1]:.4f}" if anchor is not None else ""
                bar.write(f"pass {epoch + 1}/{cfg.global_epochs}: mean training loss {hist['epoch_loss'][-1]:.4f}"
                          + iso + seen)
            if states is not None:
                states.save(epoch + 1, {"model": reader.state_dict(), "optimizer": opt.state_dict(),
                                        "history": hist, "step": step, "rng": rng_states()})
    reader.eval()
    return hist


def _shared_loss(reader, images, labels, ctx: Context):
    """One process's part of a data-parallel step: ``(loss to back-propagate or None, the global mean loss,
    the global count of finite losses, the global count of unreachable strings)``. The local loss is the sum
    of this share's finite losses over the *global* count, so the gradients summed over the ranks are those
    of the global mean."""
    if labels:
        losses = reader.loss(images, labels, reduction="none")
        finite = torch.isfinite(losses.detach())
        local = losses[finite].sum() if bool(finite.any()) else None
        stats = [int(finite.sum()), float(local.detach()) if local is not None else 0.0, int((~finite).sum())]
    else:
        local, stats = None, [0, 0.0, 0]
    count, total, unreachable = ctx.sum(stats)
    count, unreachable = int(round(count)), int(round(unreachable))
    loss = local / count if local is not None and count else None
    return loss, total / max(count, 1), count, unreachable
