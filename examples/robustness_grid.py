"""The robustness grid of a trained reader: string accuracy, digit error and ceiling at every rendering setting.

    python examples/robustness_grid.py runs/reader.pt [--strings 200] [--json out.json]
    python examples/robustness_grid.py runs/reader.pt --cut-paths 0.3 --max-pieces 10   # read with cut paths
    python examples/robustness_grid.py runs/cp.pt --cut-starts every   # cut paths started from every column
    python examples/robustness_grid.py runs/cpe.pt --cut-rank learned   # candidates kept in the ranker's order
    python examples/robustness_grid.py runs/reader.pt --split-coverage   # right among covered / uncovered strings

Reads ``--strings`` strings of 3-6 test digits at every cell of `lenet.strings.GRID` (heights 24/32/40; no
touching pairs, or 30 % / 60 % touching with ink boxes overlapping by up to 0-4 columns) with the checkpoint's
reader (either system) and prints `lenet.robustness.robustness_table`: the same strings and the same table as
`examples/multi_digit.py` prints at the end of training, for any checkpoint, including older ones.
"""
import argparse
import json
import sys

import torch

import lenet
from lenet.robustness import robustness, robustness_table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a reader checkpoint written by examples/multi_digit.py")
    ap.add_argument("--strings", type=int, default=200, help="strings per cell (default 200)")
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cut-paths", type=float, help="segmentation reader: read with these cut paths instead of "
                                                     "the checkpoint's (× ink height; 0: straight cuts)")
    ap.add_argument("--max-pieces", type=int, help="segmentation reader: most pieces in one segment")
    ap.add_argument("--cut-starts", choices=["candidates", "every"],
                    help="segmentation reader with cut paths: where the cut paths start (SegmentParams.cut_starts)")
    ap.add_argument("--cut-rank", choices=["ink", "learned"],
                    help="segmentation reader with cut paths: the order the candidate cut paths are kept in "
                         "(SegmentParams.cut_rank: cheapest first, or the shipped ranker's, lenet.cut_ranker)")
    ap.add_argument("--cut-cost", choices=["ink", "learned"],
                    help="segmentation reader with cut paths: what severing ink costs a cut path "
                         "(SegmentParams.cut_cost: its grey level, or discounted by the shipped boundary network, "
                         "lenet.boundary_net)")
    ap.add_argument("--split-coverage", action="store_true",
                    help="segmentation reader: also count the strings whose true segmentation is not a path of "
                         "the graph, and how many of them (and of the others) are read right")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    reader = lenet.load(a.checkpoint)
    if not hasattr(reader, "decode"):
        sys.exit(f"{a.checkpoint} is not a reader checkpoint (lenet.recognize reads readers; this is "
                 f"{type(reader).__name__})")
    if any(v is not None for v in (a.cut_paths, a.max_pieces, a.cut_starts, a.cut_rank, a.cut_cost)):
        if not hasattr(reader, "params"):
            sys.exit("--cut-paths, --max-pieces, --cut-starts, --cut-rank and --cut-cost apply to segmentation "
                     "readers only")
        import dataclasses
        change = {k: v for k, v in (("cut_paths", a.cut_paths), ("max_pieces", a.max_pieces),
                                    ("cut_starts", a.cut_starts), ("cut_rank", a.cut_rank),
                                    ("cut_cost", a.cut_cost)) if v is not None}
        try:
            reader.params = dataclasses.replace(reader.params, **change)
        except ValueError as e:   # e.g. --cut-starts every on a reader with straight cuts
            sys.exit(f"{a.checkpoint}: {e}")
    if a.split_coverage and not hasattr(reader, "interpret"):
        sys.exit("--split-coverage applies to segmentation readers only")
    rows = robustness(reader, strings_per_cell=a.strings, progress=sys.stderr.isatty(),
                      split_coverage=a.split_coverage)
    seg = getattr(reader, "params", None)
    starts = f", cut_starts {seg.cut_starts}" if seg is not None and seg.cut_starts != "candidates" else ""
    if seg is not None and getattr(seg, "cut_rank", "ink") != "ink":
        starts += f", cut_rank {seg.cut_rank}"
    if seg is not None and getattr(seg, "cut_cost", "ink") != "ink":
        starts += f", cut_cost {seg.cut_cost}"
    how = f" (segmentation: cut_paths {seg.cut_paths}, max_pieces {seg.max_pieces}{starts})" if seg is not None else ""
    print(f"{a.checkpoint}: {a.strings} strings of test digits per cell{how}")
    print(robustness_table(rows))
    if a.split_coverage:
        n = sum(r["strings"] for r in rows)
        unc = sum(r["uncovered"] for r in rows)
        unc_right = sum(r["uncovered_right"] for r in rows)
        right = sum(round(r["string_accuracy"] * r["strings"]) for r in rows)
        print(f"true segmentation not a path of the graph (tolerance 0.1): {unc} of {n} strings; read right: "
              f"{unc_right} of those {unc} ({100 * unc_right / max(unc, 1):.1f} %), {right - unc_right} of the other "
              f"{n - unc} ({100 * (right - unc_right) / max(n - unc, 1):.1f} %)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
