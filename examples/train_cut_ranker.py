"""Train the cut-path ranker (`lenet.cut_ranker`) that ``SegmentParams(cut_rank="learned")`` uses.

    python examples/train_cut_ranker.py --out lenet/data/cut_ranker.pt     # the weights the package ships

Renders ``--strings`` strings of **training** digits (half in the renderer's wide mix of styles,
`lenet.strings.RenderRanges()`, half with 30-100 % of neighbouring pairs touching and slants within 5°), collects
the candidate cut paths the segmenter meets (``--cut-paths 0.3 --max-pieces 10 --cut-starts every``) with the
renderer's true boundaries, and fits the ranker to the pairs of candidates the segmenter must choose between.
Then it compares, on other strings of training digits (60 % of pairs touching, overlaps of 2-4 columns, heights
24/32/40; no test digit is used), the coverage of the segmentation graph with the candidates kept cheapest first
and in the ranker's order, and writes the weights. One torch thread: the weights are the same on every run of
the same torch build.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lenet  # noqa: E402
from lenet.cut_ranker import CutRanker, cut_examples, save_ranker, train_cut_ranker  # noqa: E402
from lenet.segment import SegmentParams, _segment, segment, true_path  # noqa: E402
from lenet.strings import RenderRanges, make_strings  # noqa: E402

PARAMS = SegmentParams(cut_paths=0.3, max_pieces=10, cut_starts="every")


def validation_strings(n_per_cell: int, digits):
    """Strings of training digits in the hard cells' settings (60 % touching, overlaps 2-4, three heights)."""
    out = []
    for height in (24, 32, 40):
        for overlap in (2, 3, 4):
            out += make_strings(n_per_cell, "train", seed=60_000 + height + overlap, digits=digits, touch=0.6,
                                max_overlap=overlap, height=height)
    return out


def coverage_with(model: CutRanker, strings):
    """(covered cheapest first, covered in the ranker's order, arcs per string for each)."""
    ink = learned = arcs_ink = arcs_learned = 0
    for s in strings:
        a = segment(s.image, PARAMS)
        b = _segment(s.image, PARAMS, lambda x, unit, job, paths, costs:
                     model.priority(x, job[0], paths, costs, job[2], job[3], unit))
        ink += true_path(a, s.image, s.owner) is not None
        learned += true_path(b, s.image, s.owner) is not None
        arcs_ink += a.num_segments
        arcs_learned += b.num_segments
    n = max(len(strings), 1)
    return ink / n, learned / n, arcs_ink / n, arcs_learned / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="lenet/data/cut_ranker.pt")
    ap.add_argument("--strings", type=int, default=6000, help="training strings (of training digits)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--width", type=int, default=16, help="channels of the ranker's first convolution")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-strings", type=int, default=25, help="validation strings per setting (9 settings)")
    a = ap.parse_args(argv)
    if a.strings < 2 or a.epochs < 1 or a.width < 1 or a.val_strings < 0:
        ap.error("--strings must be at least 2, --epochs and --width at least 1, --val-strings at least 0")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    digits = lenet.load_digits("train", raw=True)
    half = a.strings // 2
    strings = (make_strings(half, "train", seed=777 + 1000 * a.seed, digits=digits, vary=RenderRanges()) +
               make_strings(a.strings - half, "train", seed=778 + 1000 * a.seed, digits=digits,
                            vary=RenderRanges(touch=(0.3, 1.0), slant=(-5.0, 5.0))))
    ex = cut_examples(strings, PARAMS, seed=a.seed)
    print(f"{a.strings} training strings: {len(ex['apart'])} candidate cut paths, {len(ex['pairs'])} pairs "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    model = train_cut_ranker(ex, epochs=a.epochs, width=a.width, seed=a.seed,
                             progress=lambda e, loss: print(f"epoch {e + 1}/{a.epochs}: loss {loss:.4f} "
                                                            f"({time.perf_counter() - t0:.0f} s)", flush=True))
    if a.val_strings:
        val = validation_strings(a.val_strings, digits)
        ink, learned, arcs_ink, arcs_learned = coverage_with(model, val)
        print(f"validation ({len(val)} strings of training digits, 60 % touching, overlaps 2-4): coverage "
              f"{100 * ink:.1f} % cheapest first ({arcs_ink:.1f} arcs), {100 * learned:.1f} % ranked "
              f"({arcs_learned:.1f} arcs)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_ranker(model, a.out)
    print(f"wrote {a.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
