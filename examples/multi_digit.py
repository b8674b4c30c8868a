"""Train and evaluate the 1998 GTN multi-digit reader end to end, from string labels alone.

    python examples/multi_digit.py --out reader.pt            # the default run (< 15 min on a 2-core CPU)
    python examples/multi_digit.py --out reader.pt --quick    # a smoke run (< 1 min); CI runs this one
    python examples/multi_digit.py --out sdnn.pt --system sdnn

What it does (LeCun, Bottou, Bengio, Haffner 1998, §IV–§VII):

1. **(a) isolated training**: LeNet-5 trained on isolated digits (``lenet.train.train``), then used as the
   recognizer of the graph system unchanged, and evaluated on strings of test-split digits.
2. **(b) global training**: the same network trained further *through the graph* on strings of
   training-split digits with the discriminative forward criterion
   ``forward(G_int) − forward(G_int ∘ linear(label))``: no segmentation is ever given, only the label string.
   Evaluated again on the same test strings.

``--system hos`` (default) is the heuristic over-segmentation reader (``lenet.recognizer.StringReader``);
``--system sdnn`` the space-displacement network (``lenet.sdnn.SDNNReader``): LeNet-5 swept over the string.

At the end: a metrics table (string accuracy, digit error rate by edit distance, before/after global
training, wall times), the checkpoint at ``--out`` (``lenet.recognize(images, PATH)`` reads strings with it),
and PNGs beside it: ``<stem>_example.png`` (a test string, its candidate cuts and the decoded path) and
``<stem>_curves.png`` (training curves). The run fails (exit status 1) if global training did not lower the
loss on a fixed set of training strings.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import lenet
from lenet.recognizer import StringReader, error_budget, error_reject, save_reader, string_metrics
from lenet.strings import make_strings, touching_fraction

#: Run sizes. The default run is sized for < 15 minutes on this project's 2-core CPU; --quick for < 1 minute.
CONFIGS = {
    "default": dict(iso_epochs=60, iso_limit=None, distort=True, train_strings=4000, global_epochs=8,
                    workers=1, fresh=True, batch_size=16, test_strings=1000, monitor_strings=200, lr=1e-3,
                    seg_lr=1e-2),
    "quick": dict(iso_epochs=1, iso_limit=1500, distort=False, train_strings=128, global_epochs=1,
                  workers=1, fresh=False, batch_size=16, test_strings=40, monitor_strings=24, lr=1e-3,
                  seg_lr=1e-2),
}
#: The SDNN: (a) after the isolated digits, "isolated-character" training on windows of strings rendered from
#: the isolated training digits (each window labelled digit / blank from the renderer's digit positions: the
#: paper's SDNN training images), fresh strings every pass; (b) global training from string labels. Its
#: global training costs less per string than the HOS reader's (one sweep, no crops, the fused dense forward),
#: so it gets 24 passes at a peak rate of 3e-3 (chosen on validation strings: 4 passes at 1e-3 lowered the
#: string accuracy by 3 points, 12 at 3e-3 raised it by 6.6, 24 at 3e-3 by 10; docs/multi_digit.md).
SDNN_OVERRIDES = {
    "default": dict(iso_epochs=20, window_strings=4000, window_passes=20, window_lr=3e-3, window_distort=False,
                    window_between=False, stride=2, ink_height=24,
                    train_strings=4000, global_epochs=24, lr=3e-3),
    "quick": dict(window_strings=1000, window_passes=2, window_lr=3e-3, window_distort=False,
                  window_between=False, stride=2, ink_height=24, lr=1e-3),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="checkpoint to write; the PNGs go beside it")
    p.add_argument("--quick", action="store_true", help="a tiny run (< 1 minute) that checks the pipeline")
    p.add_argument("--system", choices=["hos", "sdnn"], default="hos",
                   help="hos: heuristic over-segmentation + recognition transformer; sdnn: swept LeNet-5")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random (deterministic runs)")
    p.add_argument("--lengths", type=int, nargs=2, default=(3, 6), metavar=("MIN", "MAX"),
                   help="string lengths of training and test strings (and the decoding grammar)")
    p.add_argument("--lenet", help="start from this isolated-digit checkpoint (python -m lenet.train) "
                                   "instead of training one")
    for k in ("iso_epochs", "train_strings", "global_epochs", "batch_size", "test_strings"):
        p.add_argument("--" + k.replace("_", "-"), type=int, help=f"override the config's {k}")
    for k in ("lr", "seg_lr"):
        p.add_argument("--" + k.replace("_", "-"), type=float, help=f"override the config's {k}")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: LeNet-5's small batches gain little from more)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def batches(items, size):
    for k in range(0, len(items), size):
        yield items[k:k + size]


def evaluate(reader, strings, progress, desc):
    """Decode ``strings``; returns (metrics dict with the decoding time in ``seconds`` and the error-reject
    operating points in ``reject``, predicted texts, their rejection confidences)."""
    from tqdm.auto import tqdm
    t = time.perf_counter()
    preds, conf = [], []
    with tqdm(total=len(strings), desc=desc, unit="str", disable=not progress, dynamic_ncols=True) as bar:
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
    """Mean loss over the strings whose label the graph can spell (see `train_globally`)."""
    total, count = 0.0, 0
    for b in batches(strings, size):
        losses = reader.loss([s.image for s in b], [s.label for s in b], reduction="none")
        finite = torch.isfinite(losses)
        total += float(losses[finite].sum())
        count += int(finite.sum())
    return total / max(count, 1)


class PassBatches(torch.utils.data.IterableDataset):
    """The batches of one pass of global training, as ``(prepared images, labels)``: pass ``k``'s strings
    (``strings`` for the first pass, ``render(k)`` for later ones when given), in a seeded random order, each
    batch run through ``prepare`` (the reader's network-independent work: segmentation and crops). Run in a
    ``DataLoader`` worker process, this overlaps with training on the other core."""

    def __init__(self, k, strings, render, batch_size, seed, prepare):
        super().__init__()
        self.k, self.strings, self.render, self.batch_size = k, strings, render, batch_size
        self.seed, self.prepare = seed, prepare

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            torch.set_num_threads(1)  # the other core(s): leave the main process its own
        strings = self.render(self.k) if self.render is not None and self.k > 0 else self.strings
        order = torch.randperm(len(strings), generator=torch.Generator().manual_seed(self.seed * 1000 + self.k))
        info = torch.utils.data.get_worker_info()
        share, of = (info.id, info.num_workers) if info is not None else (0, 1)
        for j, b in enumerate(batches([strings[i] for i in order.tolist()], self.batch_size)):
            if j % of == share:  # each worker its share; the DataLoader interleaves them back in order
                yield self.prepare([s.image for s in b]), [s.label for s in b]


def train_globally(reader, strings, cfg, seed, progress, monitor, render=None):
    """Discriminative forward training through the graph; returns the history (per-step and per-epoch).

    ``strings`` are the first pass's training strings; with ``cfg["fresh"]`` every later pass trains on new
    strings ``render(pass)`` (new combinations of the same training digits, never a test digit). The rates
    decay from their peaks to zero along half a cosine over all steps. A string whose label no path of its graph can spell (its digits overlap so much that
    no segmentation separates them) has an infinite loss and teaches nothing: it is left out of the batch's
    mean and counted. With ``cfg["workers"]`` > 0 the strings are rendered, segmented and cropped in that many
    worker processes while the network trains (the run stays deterministic)."""
    from tqdm.auto import tqdm
    net_params = list(reader.model.parameters())
    net_ids = {id(p) for p in net_params}
    other = [p for p in reader.parameters() if id(p) not in net_ids]
    opt = torch.optim.Adam([{"params": net_params, "lr": cfg["lr"]}, {"params": other, "lr": cfg["seg_lr"]}])
    peaks = [g["lr"] for g in opt.param_groups]
    steps = math.ceil(len(strings) / cfg["batch_size"])
    total_steps = cfg["global_epochs"] * steps
    prepare = getattr(reader, "prepare", None) or (lambda images: images)
    workers = cfg.get("workers", 0)
    hist = {"step_loss": [], "epoch_loss": [], "monitor_loss": [mean_loss(reader, monitor)], "unreachable": 0}
    reader.train()
    step = 0
    with tqdm(total=total_steps, desc="global training", unit="step",
              disable=not progress, dynamic_ncols=True) as bar:
        for epoch in range(cfg["global_epochs"]):
            data = PassBatches(epoch, strings, render if cfg.get("fresh") else None, cfg["batch_size"], seed,
                               prepare)
            if workers > 0:
                data = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=4)
            total, counted = 0.0, 0
            for images, labels in data:
                factor = 0.5 * (1 + math.cos(math.pi * step / total_steps))
                for group, peak in zip(opt.param_groups, peaks):
                    group["lr"] = peak * factor
                losses = reader.loss(images, labels, reduction="none")
                finite = torch.isfinite(losses.detach())
                hist["unreachable"] += int((~finite).sum())
                step += 1
                bar.update(1)
                if not bool(finite.any()):
                    continue
                loss = losses[finite].mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                v = float(loss.detach())
                if not math.isfinite(v):
                    raise FloatingPointError(f"the loss became {v}; lower --lr")
                hist["step_loss"].append(v)
                total += v * int(finite.sum())
                counted += int(finite.sum())
                bar.set_postfix(loss=f"{v:.3f}")
            hist["epoch_loss"].append(total / max(counted, 1))
            hist["monitor_loss"].append(mean_loss(reader, monitor))
            bar.write(f"pass {epoch + 1}/{cfg['global_epochs']}: mean training loss {hist['epoch_loss'][-1]:.4f}, "
                      f"loss on the {len(monitor)} monitor strings {hist['monitor_loss'][-1]:.4f}")
    reader.eval()
    return hist


def plot_curves(path, hist, iso_history, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    if iso_history:
        ax = axes[0]
        ax.plot([h["epoch"] for h in iso_history], [100 * h["test_error"] for h in iso_history], "o-")
        ax.set_xlabel("pass over the isolated digits")
        ax.set_ylabel("isolated-digit test error (%)")
        ax.set_title("(a) isolated training of LeNet-5")
        ax.grid(alpha=0.3)
    else:
        axes[0].set_axis_off()
    ax = axes[1]
    sl = torch.tensor(hist["step_loss"])
    ax.plot(sl.numpy(), alpha=0.3, label="per batch")
    k = max(1, len(sl) // 30)
    if len(sl) >= k:
        sm = torch.nn.functional.avg_pool1d(sl[None, None], k, stride=1)[0, 0]
        ax.plot(range(k - 1, len(sl)), sm.numpy(), label=f"running mean ({k} batches)")
    steps_per_epoch = len(sl) / max(1, len(hist["monitor_loss"]) - 1)
    ax.plot([i * steps_per_epoch for i in range(len(hist["monitor_loss"]))], hist["monitor_loss"], "ko-",
            label="monitor strings")
    ax.set_xlabel("global training step")
    ax.set_ylabel("discriminative forward loss")
    ax.set_yscale("log")
    ax.set_title("(b) global training through the graph")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_example(path, reader_before, reader_after, s, name_a="(a) isolated"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(max(4.0, s.image.shape[1] / 14), 4.4))
    for ax, (name, r) in zip(axes, [(name_a, reader_before), ("(b) global", reader_after)]):
        r.plot_decoding(s.image, ax=ax, title=f"{name}: read", truth=s.label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reject_lines(rows):
    """The paper's operating points: how many strings are accepted (and read right) at a given error."""
    lines = ["rejecting the least confident strings (confidence exp(-E), the posterior of the reading):"]
    for r in rows:
        pts = "; ".join(f"at {100 * p['error']:g} % error {100 * p['accepted']:.1f} % accepted"
                        for p in r["reject"])
        lines.append(f"  {r['training']}: {pts}")
    return "\n".join(lines)


def plot_reject(path, runs, strings, title):
    """Error among the accepted strings against the share rejected, one line per (name, texts, confidences)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, preds, conf in runs:
        c = error_reject(conf, [p == s.label for p, s in zip(preds, strings)])["curve"]
        ax.plot([100 * x for x in c["rejected"]], [100 * e for e in c["error"]], label=name)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("strings rejected (%)")
    ax.set_ylabel("error among the accepted (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, None)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows):
    head = ["system", "training", "string accuracy", "digit error", "strings", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['system']} | {r['training']} | {100 * r['string_accuracy']:.1f} % | "
                     f"{100 * r['digit_error']:.2f} % | {r['strings']} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def budget_lines(rows):
    """Where the wrong test strings come from (`lenet.recognizer.error_budget`), one line per regime."""
    lines = []
    for r in rows:
        b = r["budget"]
        lines.append(f"{r['training']}: the network misreads {100 * b['isolated_error']:.1f} % of the test digits on "
                     f"their own; {100 * (1 - b['ceiling']):.1f} % of the test strings contain one (a perfect "
                     f"segmenter reading each digit as alone would read {100 * b['ceiling']:.1f} %); of the {b['wrong']} wrong strings "
                     f"{b['wrong_with_misread_digit']} contain one, {b['wrong_without']} do not (segmentation or "
                     f"context)")
    return "\n".join(lines)


def main(argv=None):
    args = parse(argv)
    t0 = time.perf_counter()
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # results appear as they come, even in a log file
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "default"
    cfg = dict(CONFIGS[mode])
    if args.system == "sdnn":
        cfg.update(SDNN_OVERRIDES[mode])
    for k in list(cfg):
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    progress = not args.no_progress
    torch.manual_seed(args.seed)
    out = Path(args.out)
    stem = out.with_suffix("")
    lengths = tuple(args.lengths)
    timings = {}

    # ---- data: training strings from training-split digits, test strings from test-split digits only
    t = time.perf_counter()
    train_strings = make_strings(cfg["train_strings"], "train", lengths, seed=args.seed + 1)
    monitor = make_strings(cfg["monitor_strings"], "train", lengths, seed=args.seed + 2)
    test_digits = lenet.load_digits("test", raw=True)
    test_strings = make_strings(cfg["test_strings"], "test", lengths, seed=args.seed + 3, digits=test_digits)
    timings["render strings"] = time.perf_counter() - t
    per_pass = " per pass, new ones every pass" if cfg.get("fresh") else ""
    print(f"{len(train_strings)} training strings (train digits){per_pass}, {len(test_strings)} test strings (test digits), "
          f"lengths {lengths[0]}-{lengths[1]}; {100 * touching_fraction(test_strings):.0f} % of neighbouring "
          f"test digits touch or overlap")

    # ---- (a) LeNet-5 on isolated digits
    t = time.perf_counter()
    iso_history = []
    if args.lenet:
        model = lenet.load(args.lenet)
        print(f"isolated-digit LeNet-5 from {args.lenet}")
    else:
        from lenet.train import train
        model, iso_history = train(out=None, epochs=cfg["iso_epochs"], seed=args.seed, distort=cfg["distort"],
                                   limit=cfg["iso_limit"], progress=progress, plots=False)
    timings["(a) isolated training"] = time.perf_counter() - t
    model = model.float()

    if args.system == "hos":
        reader = StringReader(model, lengths=lengths)
        bias = reader.calibrate(lenet.load_digits("train", raw=True)[0])
        bias = reader.tune_bias([s.image for s in monitor], [s.label for s in monitor])
        print(f"segmentation bias (median best penalty of isolated training digits, then the best multiple "
              f"of it on the {len(monitor)} monitor training strings): {bias:.3f}")
    else:
        from lenet.sdnn import SDNNReader, sdnn_network, train_windows
        # an 11th output (the blank), the other layers copied from the isolated-digit network
        reader = SDNNReader(sdnn_network(model), lengths=lengths, stride=cfg["stride"],
                            ink_height=cfg["ink_height"])
        t = time.perf_counter()
        train_windows(reader, lenet.load_digits("train", raw=True), strings_per_pass=cfg["window_strings"],
                      passes=cfg["window_passes"], batch_size=cfg["batch_size"], lr=cfg["window_lr"],
                      seed=args.seed, lengths=lengths, distort=cfg["window_distort"], between=cfg["window_between"],
                      progress=progress)
        timings["(a) window training"] = time.perf_counter() - t
        blank = reader.tune_blank([s.image for s in monitor], [s.label for s in monitor],
                                  [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0])
        print(f"blank offset (the best of a few on the {len(monitor)} monitor training strings): {blank:.1f}")
    reader.eval()
    before, preds_a, conf_a = evaluate(reader, test_strings, progress, "evaluate (a)")
    regime_a = "(a) isolated digits only" if args.system == "hos" else "(a) isolated digits + SDNN windows"
    before.update(system=args.system, training=regime_a)
    print(f"{regime_a}: string accuracy {100 * before['string_accuracy']:.1f} %, digit error "
          f"{100 * before['digit_error']:.2f} %")
    if args.system == "hos":
        before["budget"] = error_budget(reader, test_strings, preds_a, test_digits)
    import copy
    reader_a = copy.deepcopy(reader)

    # ---- (b) global training through the graph
    t = time.perf_counter()
    hist = train_globally(reader, train_strings, cfg, args.seed, progress, monitor,
                          render=lambda k: make_strings(cfg["train_strings"], "train", lengths,
                                                        seed=args.seed + 100 + k))
    timings["(b) global training"] = time.perf_counter() - t
    if hist.get("unreachable"):
        print(f"{hist['unreachable']} training strings had a label no path of their graph could spell "
              f"(digits no segmentation separates); left out of the loss")
    after, preds_b, conf_b = evaluate(reader, test_strings, progress, "evaluate (b)")
    after.update(system=args.system, training="(b) + global training")
    if args.system == "hos":
        after["budget"] = error_budget(reader, test_strings, preds_b, test_digits)
    # the same reader told each string's length (as for ZIP codes): a different, easier task, reported beside
    t = time.perf_counter()
    read_k = lenet.recognize([s.image for s in test_strings], reader, length=[len(s.label) for s in test_strings],
                             confidence=True)
    preds_k, conf_k = [r[0] for r in read_k], [r[1] for r in read_k]
    known = string_metrics(preds_k, [s.label for s in test_strings])
    known.update(seconds=time.perf_counter() - t, system=args.system, training="(b), each length known",
                 reject=error_reject(conf_k, [p == s.label for p, s in zip(preds_k, test_strings)])["points"])

    # ---- report
    rows = [before, after]
    print()
    print(table(rows + [known]))
    if args.system == "hos":
        print(budget_lines(rows))
    print(reject_lines(rows + [known]))
    err_a, err_b = 1 - before["string_accuracy"], 1 - after["string_accuracy"]
    if err_a > 0:
        print(f"string error {100 * err_a:.1f} % -> {100 * err_b:.1f} %: global training changed it by "
              f"{100 * (err_b - err_a) / err_a:+.0f} % (relative)")
    loss0, loss1 = hist["monitor_loss"][0], hist["monitor_loss"][-1]
    timings["total"] = time.perf_counter() - t0
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    metrics = {"before": before, "after": after, "known_length": known, "monitor_loss_before": loss0, "monitor_loss_after": loss1,
               "timings": timings, "config": cfg, "seed": args.seed, "system": args.system}
    if args.system == "hos":
        path = save_reader(reader, out, metrics=json.dumps(metrics), history=hist)
    else:
        from lenet.sdnn import save_sdnn
        path = save_sdnn(reader, out, metrics=json.dumps(metrics), history=hist)
    print(f"wrote {path}")
    plot_curves(f"{stem}_curves.png", hist, iso_history,
                f"{args.system.upper()} reader, seed {args.seed}: string accuracy "
                f"{100 * before['string_accuracy']:.1f} % -> {100 * after['string_accuracy']:.1f} %")
    print(f"wrote {stem}_curves.png")
    # show a string that global training fixed, if there is one
    fixed = [i for i, s in enumerate(test_strings) if preds_a[i] != s.label and preds_b[i] == s.label]
    plot_example(f"{stem}_example.png", reader_a, reader, test_strings[fixed[0] if fixed else 0],
                 "(a) isolated" if args.system == "hos" else "(a) isolated + windows")
    print(f"wrote {stem}_example.png")
    plot_reject(f"{stem}_reject.png", [(regime_a, preds_a, conf_a), ("(b) + global training", preds_b, conf_b),
                                        ("(b), each length known", preds_k, conf_k)], test_strings,
                f"{args.system.upper()} reader: rejecting the least confident test strings")
    print(f"wrote {stem}_reject.png")
    with open(f"{stem}_metrics.json", "w") as f:
        json.dump(metrics, f, indent=1)
    print(f"wrote {stem}_metrics.json")
    ok = loss1 < loss0
    print(f"global training {'lowered' if ok else 'did NOT lower'} the loss on the monitor strings: "
          f"{loss0:.4f} -> {loss1:.4f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
