"""Train and evaluate the 1998 GTN multi-digit reader end to end, from string labels alone.

    python examples/multi_digit.py --out reader.pt            # the default run (about an hour on a 2-core CPU shared with other runs)
    python examples/multi_digit.py --out reader.pt --quick    # a smoke run (< 1 min); CI runs this one
    python examples/multi_digit.py --out sdnn.pt --system sdnn
    python examples/multi_digit.py --out both.pt --system both   # both readers, then the two read together

What it does (LeCun, Bottou, Bengio, Haffner 1998, §IV–§VII):

1. **(a) isolated training**: LeNet-5 trained on isolated digits (``lenet.train.train``), then used as the
   recognizer of the graph system unchanged, and evaluated on strings of test-split digits.
2. **(b) global training**: the same network trained further *through the graph* on strings of
   training-split digits with the discriminative forward criterion
   ``forward(G_int) − forward(G_int ∘ linear(label))``: no segmentation is ever given, only the label string.
   Evaluated again on the same test strings.

``--system hos`` (default) is the heuristic over-segmentation reader (``lenet.recognizer.StringReader``);
``--system sdnn`` the space-displacement network (``lenet.sdnn.SDNNReader``): LeNet-5 swept over the string.

The script only strings library calls together: ``lenet.train.train`` for (a), ``lenet.global_train``
(``train_globally`` with a ``GlobalRecipe``, ``evaluate``) for (b), ``lenet.metrics`` and ``lenet.report`` for
the report.

At the end: a metrics table (string accuracy, digit error rate by edit distance, before/after global
training, wall times), the checkpoint at ``--out`` (``lenet.recognize(images, PATH)`` reads strings with it),
and PNGs beside it: ``<stem>_example.png`` (a test string, its candidate cuts and the decoded path) and
``<stem>_curves.png`` (training curves). The run fails (exit status 1) if global training did not lower the
loss on a fixed set of training strings.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

import lenet
from lenet.global_train import GlobalRecipe, evaluate, train_globally
from lenet.metrics import error_budget, error_reject, string_metrics
from lenet.recognizer import StringReader, save_reader
from lenet.report import budget_lines, machine, plot_curves, plot_example, plot_reject, reject_lines, table
from lenet.robustness import robustness, robustness_table
from lenet.segment import SegmentParams
from lenet.strings import RenderRanges, make_strings, touching_fraction
from lenet.distributed import SINGLE, init, teardown  # torchrun: data-parallel training (README)
from lenet.resume import States


#: Run sizes. The default run takes about an hour on this project's 2-core CPU with other runs beside it (16
#: global passes: 8 read 0.6 points fewer test strings and 1.0 fewer over the robustness grid, docs/multi_digit.md);
#: --quick takes < 1 minute.
CONFIGS = {
    "default": dict(iso_epochs=60, iso_limit=None, distort=True, train_strings=4000, global_epochs=16,
                    workers=1, fresh=True, batch_size=16, test_strings=1000, monitor_strings=200, lr=1e-3,
                    seg_lr=1e-2, vary=False, cut_paths=0.0, cut_starts="candidates", cut_rank="ink", cut_cost="ink",
                    max_pieces=6,
                    grid_strings=200,
                    val_digits=500, val_strings=500, isolated_weight=0.0),
    "quick": dict(iso_epochs=1, iso_limit=1500, distort=False, train_strings=128, global_epochs=1,
                  workers=1, fresh=False, batch_size=16, test_strings=40, monitor_strings=24, lr=1e-3,
                  seg_lr=1e-2, vary=False, cut_paths=0.0, cut_starts="candidates", cut_rank="ink", cut_cost="ink",
                  max_pieces=6,
                  grid_strings=2,
                  val_digits=100, val_strings=24, isolated_weight=0.0),
}
#: The segmentation reader holds out the last ``val_digits`` training digits from both trainings and, after
#: global training, tunes its segmentation bias (the score each segment of a path earns) on ``val_strings``
#: strings of them, drawn with varied rendering (`lenet.strings.RenderRanges`): the current bias plus each of
#: `BIAS_OFFSETS`, smallest changes first. Global training learns the bias on training strings, whose digits the
#: network reads with lower penalties than new ones, which leaves it too low for new digits: the reader then
#: merges neighbouring digits into one segment (docs/multi_digit.md, "Tuning the segmentation bias").
BIAS_OFFSETS = (0.0, 2.0, -2.0, 4.0, -4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 24.0, 28.0)
#: ``--vary`` trains on strings of varied styles (`lenet.strings.RenderRanges`' documented defaults: overlap 0–4
#: columns, 0–60 % of pairs touching, heights 24–40, slant ±15°, stroke thickness −0.5..1, vertical jitter 0–3 px,
#: digit sizes ×0.8–1.15) and ``--cut-paths 0.3 --max-pieces 10`` segments with least-ink cut paths. Both are off
#: by default: with both on, three seeds read fewer test strings and fewer strings over the robustness grid than
#: the default did with the same isolated network (docs/multi_digit.md, "Results"). The test strings stay at the
#: renderer's own defaults (30 % touching, overlaps up to 2 columns, height 32); the robustness grid
#: (`lenet.strings.GRID`) reads strings of every other setting. ``--isolated-weight`` (0, off, by default) adds
#: LeNet-5's own loss on single training digits to global training: it keeps the network's isolated error lower
#: and reads fewer strings over the robustness grid (three seeds, docs/multi_digit.md).
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
    p.add_argument("--system", choices=["hos", "sdnn", "both"], default="hos",
                   help="hos: heuristic over-segmentation + recognition transformer; sdnn: swept LeNet-5; both: "
                        "the two, trained one after the other (<stem>_hos.pt, <stem>_sdnn.pt), then read together "
                        "(examples/combine_readers.py; the other options apply to both runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random (deterministic runs)")
    p.add_argument("--lengths", type=int, nargs=2, default=(3, 6), metavar=("MIN", "MAX"),
                   help="string lengths of training and test strings (and the decoding grammar)")
    p.add_argument("--lenet", help="start from this isolated-digit checkpoint (python -m lenet.train) "
                                   "instead of training one")
    for k in ("iso_epochs", "train_strings", "global_epochs", "batch_size", "test_strings"):
        p.add_argument("--" + k.replace("_", "-"), type=int, help=f"override the config's {k}")
    for k in ("lr", "seg_lr"):
        p.add_argument("--" + k.replace("_", "-"), type=float, help=f"override the config's {k}")
    p.add_argument("--isolated-weight", type=float,
                   help="global training: weight of an isolated-digit term (LeNet-5's loss on distorted single "
                        "training digits, added to every step's string loss; 0: strings alone)")
    p.add_argument("--cut-paths", type=float, help="segmentation: radius of the least-ink cut paths inside a "
                                                    "component, × ink height (0: straight vertical cuts)")
    p.add_argument("--cut-starts", choices=["candidates", "every"],
                   help="segmentation, with --cut-paths: start the cut paths at the straight cuts' candidate "
                        "columns (default) or at every column of a wide component, keeping the cheapest paths "
                        "at least the smallest piece apart (lenet.segment.SegmentParams.cut_starts)")
    p.add_argument("--cut-rank", choices=["ink", "learned"],
                   help="segmentation, with --cut-paths: keep the candidate cut paths cheapest first (default) or "
                        "in the order of the shipped cut-path ranker (lenet.cut_ranker, "
                        "lenet.segment.SegmentParams.cut_rank)")
    p.add_argument("--cut-cost", choices=["ink", "learned"],
                   help="segmentation, with --cut-paths: what severing ink costs a cut path: its grey level "
                        "(default), or that discounted where the shipped boundary network sees two digits meet "
                        "(lenet.boundary_net, lenet.segment.SegmentParams.cut_cost)")
    p.add_argument("--max-pieces", type=int, help="segmentation: most pieces in one segment")
    p.add_argument("--vary", action=argparse.BooleanOptionalAction, default=None,
                   help="train on strings of varied rendering settings (lenet.strings.RenderRanges; default off)")
    p.add_argument("--val-digits", type=int,
                   help="segmentation reader: training digits held out of both trainings, on whose strings the "
                        "segmentation bias is tuned after global training (0: none, the bias stays as learned)")
    p.add_argument("--val-strings", type=int, help="validation strings drawn from the held-out digits")
    p.add_argument("--grid-strings", type=int, help="strings per cell of the robustness grid (0: skip the grid)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: LeNet-5's small batches gain little from more)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--resume", metavar="PATH|auto",
                   help="continue global training from a resume state (<stem>_global_pass<k>.state.pt, written "
                        "beside --out after every pass; auto: the latest, or afresh if none); the isolated "
                        "training resumes from its own latest state")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.system == "both" and args.resume not in (None, "auto"):
        sys.exit("--system both resumes with --resume auto only (each reader from its own states)")
    ctx = init("cpu")  # under torchrun: join the job (lenet.distributed); alone: SINGLE, as ever
    try:
        return run_both(args, ctx) if args.system == "both" else run(args, ctx)
    finally:
        teardown(ctx)


def run_both(args, ctx=SINGLE):
    """``--system both``: the segmentation reader, then the SDNN, each as its own run beside ``--out``
    (``<stem>_hos.pt``, ``<stem>_sdnn.pt``, with their figures and PNGs), then the two read together
    (`lenet.combined.CombinedReader`) and evaluated by ``examples/combine_readers.py`` into ``--out``."""
    stem = Path(args.out).with_suffix("")
    paths, status = [], 0
    for system in ("hos", "sdnn"):
        sub = copy.copy(args)
        sub.system, sub.out = system, f"{stem}_{system}.pt"
        print(f"\n==== --system both: the {system.upper()} reader -> {sub.out}")
        status = max(status, run(sub, ctx))
        paths.append(sub.out)
    if not ctx.is_main:
        return status
    cfg = dict(CONFIGS["quick" if args.quick else "default"])
    tests = args.test_strings if args.test_strings is not None else cfg["test_strings"]
    grid = args.grid_strings if args.grid_strings is not None else cfg["grid_strings"]
    print(f"\n==== --system both: the two readers read together -> {args.out}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import combine_readers
    combine_readers.main([*paths, "--out", str(args.out), "--seed", str(args.seed), "--test-strings", str(tests),
                          "--varied-strings", str(tests),
                          "--grid-strings", str(grid), "--threads", str(args.threads), "--lengths",
                          *map(str, args.lengths)] + (["--no-progress"] if args.no_progress else []))
    return status


def run(args, ctx=SINGLE):
    if not ctx.is_main:  # the other ranks of a torchrun job train their shares and print nothing
        sys.stdout = open(os.devnull, "w")
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
    seg_params = None
    if args.system == "hos":   # bad segmentation settings: refused now, not after the isolated training
        try:
            seg_params = SegmentParams(cut_paths=cfg["cut_paths"], cut_starts=cfg["cut_starts"],
                                       cut_rank=cfg["cut_rank"], cut_cost=cfg["cut_cost"],
                                       max_pieces=cfg["max_pieces"])
        except ValueError as e:
            sys.exit(f"segmentation settings: {e}")
    progress = not args.no_progress and ctx.is_main
    torch.manual_seed(args.seed)
    out = Path(args.out)
    stem = out.with_suffix("")
    lengths = tuple(args.lengths)
    timings = {}
    m = machine()
    print(f"torch {m['torch']}, {m['threads']} thread(s), CPU {m['cpu']} ({m['cpu_capability']} kernels), seed {args.seed}")

    # ---- data: training strings from training-split digits, test strings from test-split digits only
    t = time.perf_counter()
    vary = RenderRanges() if cfg.get("vary") else None
    # under torchrun the training strings are lazy (lenet.strings.StringSet): every rank makes every string's
    # random draws, and draws the pixels of its own shares alone; rank 0 alone draws the test strings
    lazy = ctx.distributed
    # the segmentation reader holds the last val_digits training digits out of both trainings (see BIAS_OFFSETS)
    held = cfg["val_digits"] if args.system == "hos" else 0
    digits = lenet.load_digits("train", raw=True)
    fit = (digits[0][:len(digits[0]) - held], digits[1][:len(digits[1]) - held])
    train_strings = make_strings(cfg["train_strings"], "train", lengths, seed=args.seed + 1, vary=vary, lazy=lazy,
                                 digits=fit)
    monitor = make_strings(cfg["monitor_strings"], "train", lengths, seed=args.seed + 2, vary=vary, digits=fit)
    test_digits = lenet.load_digits("test", raw=True)
    test_strings = make_strings(cfg["test_strings"], "test", lengths, seed=args.seed + 3, digits=test_digits,
                                lazy=not ctx.is_main)
    timings["render strings"] = time.perf_counter() - t
    per_pass = " per pass, new ones every pass" if cfg.get("fresh") else ""
    if ctx.is_main:
        print(f"{len(train_strings)} training strings ({len(fit[0])} train digits{', varied rendering' if vary else ''})"
              f"{per_pass}, "
              f"{len(test_strings)} test strings (test digits), "
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
        # isolated training holds out the same digits (with iso_limit, the first iso_limit digits lie before them)
        model, iso_history = train(out=None, epochs=cfg["iso_epochs"], seed=args.seed, distort=cfg["distort"],
                                   limit=cfg["iso_limit"], validation=held if cfg["iso_limit"] is None else 0,
                                   progress=progress, plots=False, ctx=ctx,
                                   states=States(out, "isolated", args.resume and "auto", writer=ctx.is_main))
    timings["(a) isolated training"] = time.perf_counter() - t
    model = model.float()

    if args.system == "hos":
        reader = StringReader(model, seg_params, lengths=lengths)
        bias = reader.calibrate(fit[0])
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
    if ctx.is_main:  # rank 0 alone evaluates
        before, preds_a, conf_a = evaluate(reader, test_strings, progress, "evaluate (a)")
        regime_a = "(a) isolated digits only" if args.system == "hos" else "(a) isolated digits + SDNN windows"
        before.update(system=args.system, training=regime_a)
        print(f"{regime_a}: string accuracy {100 * before['string_accuracy']:.1f} %, digit error "
              f"{100 * before['digit_error']:.2f} %")
        if args.system == "hos":
            before["budget"] = error_budget(reader, test_strings, preds_a, test_digits)
        reader_a = copy.deepcopy(reader)

    # ---- (b) global training through the graph
    t = time.perf_counter()
    hist = train_globally(reader, train_strings, GlobalRecipe.of(cfg), args.seed, progress, monitor,
                          render=lambda k: make_strings(cfg["train_strings"], "train", lengths,
                                                        seed=args.seed + 100 + k, vary=vary, lazy=lazy,
                                                        digits=fit),
                          ctx=ctx, states=States(out, "global", args.resume, writer=ctx.is_main),
                          digits=fit)
    timings["(b) global training"] = time.perf_counter() - t
    if not ctx.is_main:  # rank 0 alone evaluates, reports and writes
        return 0
    if hist.get("unreachable"):
        print(f"{hist['unreachable']} training strings had a label no path of their graph could spell "
              f"(digits no segmentation separates); left out of the loss")
    tuning = None
    if args.system == "hos" and held and cfg["val_strings"] > 0:
        val = make_strings(cfg["val_strings"], "train", lengths, seed=args.seed + 4,
                           digits=(digits[0][-held:], digits[1][-held:]), vary=RenderRanges())
        learned = float(reader.transformer.seg_bias.detach())
        bias, accs = reader.tune_bias([s.image for s in val], [s.label for s in val], offsets=BIAS_OFFSETS,
                                      details=True)
        tuning = {"learned": learned, "tuned": bias, "strings": len(val), "digits": held,
                  "accuracy": {f"{b:.3f}": a for b, a in accs.items()}}
        print(f"segmentation bias tuned on {len(val)} validation strings (varied rendering) of the {held} "
              f"held-out training digits: {learned:.2f} (learned) -> {bias:.2f}; string accuracy there "
              f"{100 * accs[learned]:.1f} % -> {100 * accs[bias]:.1f} %")
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

    # ---- the robustness grid: test digits drawn at every setting of lenet.strings.GRID
    grid = None
    if cfg["grid_strings"] > 0:
        t = time.perf_counter()
        grid = robustness(reader, test_digits, strings_per_cell=cfg["grid_strings"], lengths=lengths,
                          progress=progress)
        timings["robustness grid"] = time.perf_counter() - t

    # ---- report
    rows = [before, after]
    print()
    print(table(rows + [known]))
    if args.system == "hos":
        print(budget_lines(rows))
    print(reject_lines(rows + [known]))
    if grid is not None:
        print(f"\nrobustness grid ((b), {cfg['grid_strings']} strings of test digits per cell; ceiling: the "
              f"strings whose digits the network reads right alone):")
        print(robustness_table(grid))
    err_a, err_b = 1 - before["string_accuracy"], 1 - after["string_accuracy"]
    if err_a > 0:
        print(f"string error {100 * err_a:.1f} % -> {100 * err_b:.1f} %: global training changed it by "
              f"{100 * (err_b - err_a) / err_a:+.0f} % (relative)")
    loss0, loss1 = hist["monitor_loss"][0], hist["monitor_loss"][-1]
    timings["total"] = time.perf_counter() - t0
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    metrics = {"before": before, "after": after, "known_length": known, "monitor_loss_before": loss0, "monitor_loss_after": loss1,
               "timings": timings, "config": cfg, "seed": args.seed, "system": args.system, "grid": grid,
               "bias_tuning": tuning,
               "machine": machine()}
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
