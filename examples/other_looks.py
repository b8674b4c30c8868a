"""A trained reader on the same test strings in other looks: scanner and camera backgrounds, faint ink, noise,
blur, other sizes, a stretch, a slight rotation — read as they are and cleaned first (`lenet.recognize`'s
default, `lenet.crops.clean_image`).

    python examples/other_looks.py runs/reader.pt [--strings 500] [--seed 3] [--json out.json]
    python examples/other_looks.py runs/reader_s0.pt runs/reader_s1.pt runs/reader_s2.pt   # + mean ± spread
    python examples/other_looks.py runs/reader.pt --picture docs/img/other_looks.png   # each look, as is and cleaned
    python examples/other_looks.py runs/reader.pt --max-width 1.6   # segmentation: allow wider segments

Renders ``--strings`` strings of 3-6 **test-split** digits at the renderer's default setting (the example's test
setting: 30 % of neighbouring pairs touching, overlaps up to 2 columns, height 32; seed ``--seed``), turns each
into every look of `lenet.robustness.LOOKS` and prints `lenet.robustness.looks_table`: string accuracy and digit
error of each look with ``clean=False`` and with ``clean=True``. Any reader checkpoint (segmentation, SDNN or
combined); the same ``--seed`` gives every reader the same images. Given several checkpoints (e.g. the seeds of
one configuration) it reads the same images with each and then prints the string accuracy of every look as the
mean ± half the spread over them.
"""
import argparse
import dataclasses
import json
import sys

import numpy as np
import torch

import lenet
from lenet.report import machine
from lenet.robustness import LOOKS, looks_table, other_looks
from lenet.strings import make_strings


def picture(image, out: str):
    """One string in every look (left) and cleaned (right), as `lenet.recognize` sees it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lenet.crops import clean_image
    from lenet.segment import as_float_image

    x = as_float_image(image)
    fig, axes = plt.subplots(len(LOOKS), 2, figsize=(7, 0.75 * len(LOOKS) + 0.4))
    for j, (name, look) in enumerate(LOOKS.items()):
        y = look(x, np.random.default_rng([0, j, 0]))
        for ax, im, what in ((axes[j, 0], y, name), (axes[j, 1], clean_image(y), "cleaned")):
            ax.imshow(im.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(what if ax is axes[j, 0] else "", rotation=0, ha="right", va="center", fontsize=7)
    axes[0, 0].set_title("as it comes", fontsize=8)
    axes[0, 1].set_title("cleaned (lenet.crops.clean_image)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def spread_table(every) -> str:
    """Several readers' `other_looks` rows (the same looks) → one line per look: the string accuracy as is and
    cleaned, mean ± half the spread over the readers, and the means over the looks."""
    def cell(values):
        v = 100 * np.asarray(values)
        return f"{v.mean():.1f} % ± {(v.max() - v.min()) / 2:.1f}"
    lines = ["| look | as is | cleaned |", "| --- | --- | --- |"]
    for j, row in enumerate(every[0]):
        lines.append(f"| {row['look']} | " + " | ".join(cell([rows[j][k]["string_accuracy"] for rows in every])
                                                       for k in ("as_is", "cleaned")) + " |")
    means = {k: [float(np.mean([r[k]["string_accuracy"] for r in rows])) for rows in every] for k in ("as_is", "cleaned")}
    lines.append(f"mean over the {len(every[0])} looks: as is {cell(means['as_is'])}, cleaned {cell(means['cleaned'])}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                    help="reader checkpoints written by examples/multi_digit.py or combine_readers.py")
    ap.add_argument("--strings", type=int, default=500, help="test strings (default 500)")
    ap.add_argument("--seed", type=int, default=3, help="the strings' seed and the looks' random draws (default 3)")
    ap.add_argument("--json", help="also write the rows as JSON here (one list per checkpoint)")
    ap.add_argument("--picture", help="also draw the first string in every look, as is and cleaned (PNG)")
    ap.add_argument("--max-width", type=float,
                    help="segmentation readers (alone or in a combination): read with this widest segment (× ink "
                         "height) instead of the checkpoint's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.strings < 1:
        sys.exit(f"--strings must be at least 1, got {a.strings}")
    torch.set_num_threads(a.threads)
    readers = []
    for path in a.checkpoints:   # all checked before any reading
        reader = lenet.load(path)
        if not hasattr(reader, "decode"):
            sys.exit(f"{path} is not a reader checkpoint (this is a {type(reader).__name__}; "
                     f"examples/multi_digit.py --out PATH trains a reader)")
        if a.max_width is not None:
            segmenting = [m for m in getattr(reader, "members", [reader]) if hasattr(m, "params")]
            if not segmenting:
                sys.exit(f"--max-width applies to segmentation readers; {path} has none")
            for m in segmenting:
                m.params = dataclasses.replace(m.params, max_width=a.max_width)
        readers.append(reader)
    strings = make_strings(a.strings, "test", seed=a.seed)
    m = machine()
    every = []
    for path, reader in zip(a.checkpoints, readers):
        rows = other_looks(reader, strings, seed=a.seed, progress=sys.stderr.isatty() and not a.no_progress)
        how = f" (segments up to {a.max_width} × the ink height wide)" if a.max_width is not None else ""
        print(f"{path}{how}: {a.strings} strings of 3-6 test digits (seed {a.seed}) in {len(rows)} looks; {m['cpu']} "
              f"({m['cpu_capability']}), torch {m['torch']}, {m['threads']} torch thread(s)")
        print(looks_table(rows), flush=True)
        every.append(rows)
    if len(every) > 1:
        print(f"\nmean ± half the spread over the {len(every)} readers (string accuracy):")
        print(spread_table(every))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(every if len(every) > 1 else every[0], f, indent=1)
    if a.picture:
        picture(strings[0].image, a.picture)
        print(f"picture: {a.picture}")


if __name__ == "__main__":
    main()
