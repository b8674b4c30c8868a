"""Combine trained string readers into one (`lenet.combined.CombinedReader`) and evaluate it.

    python examples/multi_digit.py --out runs/reader.pt                  # the segmentation reader
    python examples/multi_digit.py --out runs/sdnn.pt --system sdnn      # the SDNN reader
    python examples/combine_readers.py runs/reader.pt runs/sdnn.pt --out runs/both.pt

The combined reader reads every string with each reader and, where they disagree, keeps the reading whose
product of the readers' posteriors is highest (each reader's discriminative forward loss is minus the log of
its posterior; `lenet.combined`). Nothing is trained or tuned here: the weights are 1 unless ``--weights``
says otherwise.

Prints, on the same 1,000 test strings as ``examples/multi_digit.py --seed S`` (3-6 digits of the 1,000
test-split digits, seed S + 3; S is the readers' own seed, read from their checkpoints, or ``--seed``): the
string accuracy and digit error of every reader and of the combination, how often the readers agree, the
share of strings each accepts at 0.5 / 1 / 2 % error when the least confident are rejected (the paper's way of
reporting a reader; the combination's confidence is the product of the readers' posteriors of its reading), the
combination with each string's length known, every reader on ``--varied-strings`` strings of test digits in
varied styles (slant, stroke thickness, jitter, sizes: what the grid does not vary), its error budget (the ceiling: strings whose digits the readers'
networks read right together, each digit alone), and the robustness grid (`lenet.robustness`; the same strings
as every other reader's grid). Writes the combined checkpoint at ``--out`` (``lenet.recognize(images, PATH)``
reads with it) and ``<stem>_metrics.json`` beside it, which ``examples/summarize_runs.py`` averages over seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import lenet
from lenet.checkpoint import from_checkpoint, read
from lenet.combined import CombinedReader, save_combined
from lenet.metrics import error_budget, error_reject, string_metrics
from lenet.report import machine, reject_lines
from lenet.robustness import robustness, robustness_table
from lenet.strings import RenderRanges, make_strings


def picture(path, both, names, strings, reads, preds, n=6):
    """The first ``n`` test strings the readers read differently: the image, every distinct reading with its
    energy under each reader (minus the log of its posterior), the combination's choice marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [i for i in range(len(strings)) if len({r[i] for r in reads}) > 1][:n]
    if not rows:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "the readers read every test string alike", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    fig, axes = plt.subplots(len(rows), 1, figsize=(6.5, 1.15 * max(len(rows), 1)), squeeze=False)
    for ax, i in zip(axes[:, 0], rows):
        s = strings[i]
        cands = list(dict.fromkeys(r[i] for r in reads if r[i]))
        per = [m.candidate_losses([s.image], [cands]).detach().double().tolist() for m in both.members]
        ax.imshow(s.image.numpy(), cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        lines = [f"truth {s.label}"]
        for k, c in enumerate(cands):
            who = ", ".join(nm for nm, r in zip(names, reads) if r[i] == c)
            energy = " + ".join(f"{p[k]:.1f}" for p in per)
            mark = "  <- combined" if c == preds[i] else ""
            lines.append(f"{c} ({who}): {energy}{mark}")
        ax.text(1.02, 0.5, "\n".join(lines), transform=ax.transAxes, va="center", fontsize=7, family="monospace")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("readers", nargs="+", help="two or more reader checkpoints (examples/multi_digit.py --out)")
    ap.add_argument("--out", required=True, help="the combined checkpoint to write")
    ap.add_argument("--weights", type=float, nargs="+", help="one exponent per reader (default: all 1)")
    ap.add_argument("--seed", type=int, help="the test strings' seed is this + 3 (default: the readers' seed)")
    ap.add_argument("--test-strings", type=int, default=1000)
    ap.add_argument("--grid-strings", type=int, default=200, help="strings per grid cell (0: skip the grid)")
    ap.add_argument("--varied-strings", type=int, default=1000,
                    help="also read this many strings of test digits drawn in varied styles "
                         "(lenet.strings.RenderRanges: slant, stroke thickness, jitter, sizes, touching, overlap, "
                         "height; seed S + 7) with every reader (0: skip)")
    ap.add_argument("--lengths", type=int, nargs=2, default=(3, 6), metavar=("MIN", "MAX"),
                    help="digits per test and grid string (as examples/multi_digit.py --lengths)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true", help="no progress bar over the grid")
    ap.add_argument("--picture", help="write a PNG of test strings the readers read differently, with each "
                                      "reading, its energy under each reader and the combination's choice")
    a = ap.parse_args(argv)
    if len(a.readers) < 2:
        ap.error("give at least two reader checkpoints")
    torch.set_num_threads(a.threads)
    members, seeds = [], set()
    for path in a.readers:
        try:
            ckpt = read(path)
            r = from_checkpoint(ckpt, path)
        except (OSError, ValueError) as e:
            sys.exit(str(e))
        if not hasattr(r, "decode"):
            sys.exit(f"{path} is not a string reader checkpoint (it holds a {type(r).__name__})")
        members.append(r)
        try:   # the seed examples/multi_digit.py trained it with
            seeds.add(json.loads(ckpt.get("metrics", "{}")).get("seed"))
        except ValueError:
            seeds.add(None)
    try:
        both = CombinedReader(members, a.weights)
    except (TypeError, ValueError) as e:
        sys.exit(str(e))
    seed = a.seed
    if seed is None:
        if len(seeds) != 1 or None in seeds:
            sys.exit(f"the readers' seeds differ or are not recorded ({sorted(map(str, seeds))}): pass --seed")
        seed = seeds.pop()
    test_digits = lenet.load_digits("test", raw=True)
    lengths = tuple(a.lengths)
    strings = make_strings(a.test_strings, "test", lengths, seed=seed + 3, digits=test_digits)
    images, labels = [s.image for s in strings], [s.label for s in strings]
    t0 = time.perf_counter()

    for r in [*members, both]:   # warm up (compiled kernels, caches) before anything is timed
        lenet.recognize(images[:8], r)
    reads, rows = [], {}
    for path, m in zip(a.readers, members):
        t = time.perf_counter()
        p = lenet.recognize(images, m)
        rows[path] = dict(string_metrics(p, labels), seconds=time.perf_counter() - t)
        reads.append(p)
    t = time.perf_counter()
    preds = lenet.recognize(images, both)
    after = dict(string_metrics(preds, labels), seconds=time.perf_counter() - t, system="combined",
                 training="combined")
    after["budget"] = error_budget(both, strings, preds, test_digits)
    agree = [all(r[i] == reads[0][i] for r in reads) for i in range(len(strings))]
    right_agree = sum(ok and reads[0][i] == labels[i] for i, ok in enumerate(agree))
    # the paper's operating points: each reader's and the combination's confidence (for the combination, the
    # product of the readers' posteriors of the string read)
    rejects = {}
    for name, r in [*zip(a.readers, members), ("combined", both)]:
        sure = lenet.recognize(images, r, confidence=True)
        rejects[name] = {"training": name, "reject": error_reject([c for _, c in sure],
                                                                  [t == l for (t, _), l in zip(sure, labels)])["points"]}
    after["reject"] = rejects["combined"]["reject"]
    for path in a.readers:
        rows[path]["reject"] = rejects[path]["reject"]
    t = time.perf_counter()
    known = lenet.recognize(images, both, length=[len(s) for s in labels])
    known = dict(string_metrics(known, labels), seconds=time.perf_counter() - t, system="combined",
                 training="combined, each length known")

    print(f"test strings: {len(strings)} strings of {lengths[0]}-{lengths[1]} test-split digits (seed {seed + 3})")
    print("| reader | string accuracy | digit error | strings/s |")
    print("| --- | --- | --- | --- |")
    for path, r in rows.items():
        print(f"| {path} | {100 * r['string_accuracy']:.1f} % | {100 * r['digit_error']:.2f} % | "
              f"{len(strings) / r['seconds']:.0f} |")
    for name, r in (("combined", after), ("combined, each length known", known)):
        print(f"| **{name}** | **{100 * r['string_accuracy']:.1f} %** | {100 * r['digit_error']:.2f} % | "
              f"{len(strings) / r['seconds']:.0f} |")
    n_agree = sum(agree)
    print(f"the readers agree on {n_agree} of {len(strings)} strings ({right_agree} of them right); where they "
          f"differ the combination reads {sum(p == l for p, l, ok in zip(preds, labels, agree) if not ok)} of "
          f"{len(strings) - n_agree} right")
    print(reject_lines(list(rejects.values())))
    varied = None
    if a.varied_strings > 0:
        vs = make_strings(a.varied_strings, "test", lengths, seed=seed + 7, digits=test_digits, vary=RenderRanges())
        vl = [s.label for s in vs]
        varied = {name: string_metrics(lenet.recognize([s.image for s in vs], r), vl)
                  for name, r in [*zip(a.readers, members), ("combined", both)]}
        print(f"{len(vs)} strings of test digits in varied styles (lenet.strings.RenderRanges, seed {seed + 7}): " +
              "; ".join(f"{name} {100 * m['string_accuracy']:.1f} % ({100 * m['digit_error']:.2f} % digit error)"
                        for name, m in varied.items()))
    b = after["budget"]
    print(f"error budget: the networks together misread {100 * b['isolated_error']:.2f} % of the test digits "
          f"alone; ceiling {100 * b['ceiling']:.1f} %; of {b['wrong']} wrong strings {b['wrong_with_misread_digit']} "
          f"hold such a digit")
    grid = None
    if a.grid_strings > 0:
        t = time.perf_counter()
        grid = robustness(both, test_digits, strings_per_cell=a.grid_strings, lengths=lengths,
                          progress=sys.stderr.isatty() and not a.no_progress)
        print(f"\nrobustness grid ({a.grid_strings} strings of test digits per cell; ceiling: the strings whose "
              f"digits the networks read right together, each digit alone), {time.perf_counter() - t:.0f} s:")
        print(robustness_table(grid))
    if a.picture:
        picture(a.picture, both, [a_.split("/")[-1] for a_ in a.readers], strings, reads, preds)
        print(f"wrote {a.picture}")
    timings = {"total": time.perf_counter() - t0}
    metrics = {"after": after, "known_length": known, "members": rows, "agree": n_agree, "varied": varied, "seed": seed,
               "system": "combined", "weights": both.weights, "grid": grid, "timings": timings,
               "machine": machine()}
    out = Path(a.out)
    save_combined(both, out, metrics=json.dumps(metrics))
    stem = str(out.with_suffix(""))
    Path(f"{stem}_metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"wrote {out} and {stem}_metrics.json")


if __name__ == "__main__":
    main()
