"""Speed of the segmentation reader: training and decoding strings per second, straight cuts vs cut paths.

    python benchmarks/reader_speed.py [--checkpoint runs/reader.pt] [--strings 160] [--rounds 3]

Times, in one process with one torch thread, for the default segmentation (straight vertical cuts,
``SegmentParams(cut_paths=0)``, up to 6 pieces a segment), cut paths
(``SegmentParams(cut_paths=0.3, max_pieces=10)``), cut paths from every column (the same with
``cut_starts="every"``), those kept in the learned order (``cut_rank="learned"``) and those priced by the boundary
network (``cut_cost="learned"``), on the same strings (the example's test setting: 3-6 test digits, 30 % touching,
overlaps up to 2 columns) and the same network:

* **training**: ``--strings`` strings in batches of 16 through ``reader.prepare`` (segmentation and crops),
  ``reader.loss`` and its backward (an Adam step with a zero rate), all in this one process — the example
  moves the preparation to a worker process on the other core, which this does not measure;
* **decoding**: ``reader.decode`` of the same strings in batches of 50.

The settings alternate over ``--rounds`` rounds; the medians are printed with their ratios, the load
average and the mean graph size. The network is ``--checkpoint``'s (a reader or a LeNet-5), or a fresh one.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this folder's lenet.py would shadow the package
import lenet  # noqa: E402
from lenet.recognizer import StringReader  # noqa: E402
from lenet.segment import SegmentParams  # noqa: E402
from lenet.strings import make_strings  # noqa: E402

SETTINGS = {"straight cuts (the default)": SegmentParams(cut_paths=0.0, max_pieces=6),
            "cut paths": SegmentParams(cut_paths=0.3, max_pieces=10),
            "cut paths from every column": SegmentParams(cut_paths=0.3, max_pieces=10, cut_starts="every"),
            "the same, kept in the learned order": SegmentParams(cut_paths=0.3, max_pieces=10, cut_starts="every",
                                                                 cut_rank="learned"),
            "the same, priced by the boundary network": SegmentParams(cut_paths=0.3, max_pieces=10,
                                                                      cut_starts="every", cut_cost="learned")}


def train_rate(reader, strings, batch=16):
    opt = torch.optim.Adam(reader.parameters(), lr=0.0)
    reader.train()
    t = time.perf_counter()
    for k in range(0, len(strings), batch):
        b = strings[k:k + batch]
        p = reader.prepare([s.image for s in b])
        losses = reader.loss(p, [s.label for s in b], reduction="none")
        loss = losses[torch.isfinite(losses)].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(strings) / (time.perf_counter() - t)


@torch.no_grad()
def decode_rate(reader, strings, batch=50):
    reader.eval()
    t = time.perf_counter()
    for k in range(0, len(strings), batch):
        reader.decode([s.image for s in strings[k:k + batch]])
    return len(strings) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a reader or LeNet-5 checkpoint (default: a fresh network)")
    ap.add_argument("--strings", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    net = None
    if a.checkpoint:
        obj = lenet.load(a.checkpoint)
        net = obj.model if hasattr(obj, "transformer") else obj
    net = (net if net is not None else lenet.model.build("paper")).float()
    strings = make_strings(a.strings, "test", seed=3)
    readers = {name: StringReader(net, params) for name, params in SETTINGS.items()}
    for r in readers.values():   # warm-up: numba compilation, allocator
        train_rate(r, strings[:16])
        decode_rate(r, strings[:16])
    rates = {name: {"train": [], "decode": []} for name in readers}
    for _ in range(a.rounds):
        for name, r in readers.items():
            rates[name]["train"].append(train_rate(r, strings))
            rates[name]["decode"].append(decode_rate(r, strings))
    arcs = {name: sum(s.num_segments for s in r.segment([x.image for x in strings])[1]) / len(strings)
            for name, r in readers.items()}
    print(f"{a.strings} strings, {a.rounds} rounds, 1 torch thread, load average {os.getloadavg()[0]:.1f}")
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in rates.items()}
    for name in readers:
        print(f"{name}: {arcs[name]:.1f} segment arcs per string; training {med[name]['train']:.1f} strings/s, "
              f"decoding {med[name]['decode']:.1f} strings/s")
    base, *others = list(readers)
    for name in others:   # time per string, relative to the default's
        print(f"training time ratio {name} / default: {med[base]['train'] / med[name]['train']:.2f}x; "
              f"decoding: {med[base]['decode'] / med[name]['decode']:.2f}x")


if __name__ == "__main__":
    main()
