"""Train the boundary network (`lenet.boundary_net`) that ``SegmentParams(cut_cost="learned")`` uses.

    python examples/train_boundary_net.py --out lenet/data/boundary_net.pt     # the weights the package ships

Renders ``--strings`` strings of **training** digits in the renderer's wide mix of styles
(`lenet.strings.RenderRanges`) with most neighbouring pairs touching (60-100 %, ink boxes overlapping by 1-4
columns; half of the strings upright within 3°, half within 5°: slanted strings rarely lay one digit's stroke on
another's, the case the network is for), and fits the network to the renderer's owner maps: for every pair of
neighbouring inked pixels, whether the two belong to different digits. Then it compares, on other strings of
training digits (60 % of pairs touching, overlaps of 2-4 columns, heights 24/32/40; no test digit is used), the
coverage of the segmentation graph with cut paths priced by their ink and by the learned cost, and writes the
weights. One torch thread: the weights are the same on every run of the same torch build.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lenet  # noqa: E402
from lenet.boundary_net import BoundaryNet, save_boundary_net, train_boundary_net  # noqa: E402
from lenet.segment import SegmentParams, _segment, as_float_image, segment, true_path  # noqa: E402
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


def coverage_with(model: BoundaryNet, strings):
    """(covered with the ink cost, covered with the learned cost, arcs per string for each)."""
    ink = learned = arcs_ink = arcs_learned = 0
    for s in strings:
        a = segment(s.image, PARAMS)
        b = _segment(s.image, PARAMS, apart=model.apart(as_float_image(s.image).numpy()))
        ink += true_path(a, s.image, s.owner) is not None
        learned += true_path(b, s.image, s.owner) is not None
        arcs_ink += a.num_segments
        arcs_learned += b.num_segments
    n = max(len(strings), 1)
    return ink / n, learned / n, arcs_ink / n, arcs_learned / n


def training_strings(n: int, seed: int, digits):
    """``n`` strings of training digits, most neighbours touching (see the module docstring)."""
    half = n // 2
    return list(make_strings(half, "train", seed=877 + 1000 * seed, digits=digits,
                             vary=RenderRanges(touch=(0.6, 1.0), max_overlap=(1, 4), slant=(-3.0, 3.0)))) + \
        list(make_strings(n - half, "train", seed=878 + 1000 * seed, digits=digits,
                          vary=RenderRanges(touch=(0.6, 1.0), max_overlap=(1, 4), slant=(-5.0, 5.0))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="lenet/data/boundary_net.pt")
    ap.add_argument("--strings", type=int, default=8000, help="training strings (of training digits)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--width", type=int, default=16, help="channels of the network's body")
    ap.add_argument("--fine", type=int, default=8, help="channels of its full-resolution features")
    ap.add_argument("--pos-weight", type=float, default=5.0,
                    help="weight of the pairs of pixels of different digits in the loss (they are rare)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-strings", type=int, default=25, help="validation strings per setting (9 settings)")
    a = ap.parse_args(argv)
    if a.strings < 1 or a.epochs < 1 or a.width < 1 or a.fine < 1 or a.pos_weight <= 0 or a.val_strings < 0:
        ap.error("--strings, --epochs, --width and --fine must be at least 1, --pos-weight positive, "
                 "--val-strings at least 0")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    digits = lenet.load_digits("train", raw=True)
    strings = training_strings(a.strings, a.seed, digits)
    print(f"{a.strings} training strings ({time.perf_counter() - t0:.0f} s)", flush=True)
    model = train_boundary_net(strings, epochs=a.epochs, width=a.width, fine=a.fine, pos_weight=a.pos_weight,
                               batch_size=8, seed=a.seed,
                               progress=lambda e, loss: print(f"epoch {e + 1}/{a.epochs}: loss {loss:.4f} "
                                                              f"({time.perf_counter() - t0:.0f} s)", flush=True))
    if a.val_strings:
        val = validation_strings(a.val_strings, digits)
        ink, learned, arcs_ink, arcs_learned = coverage_with(model, val)
        print(f"validation ({len(val)} strings of training digits, 60 % touching, overlaps 2-4): coverage "
              f"{100 * ink:.1f} % priced by ink ({arcs_ink:.1f} arcs), {100 * learned:.1f} % by the learned cost "
              f"({arcs_learned:.1f} arcs)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_boundary_net(model, a.out)
    print(f"wrote {a.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
