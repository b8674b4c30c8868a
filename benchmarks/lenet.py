"""Throughput of the faithful LeNet-5 against a plain ``nn.Sequential`` of the same layer sizes.

    python benchmarks/lenet.py [--batch 64] [--seconds 1.0] [--repeats 5]

Both do forward + backward (the MAP loss for ``LeNet5``, cross-entropy for the plain network) on the same
batch of digits, one torch thread and then all threads, interleaved, in one process: every repeat measures
``LeNet5``, the plain network, the plain network again and ``LeNet5`` again (so a change of load during the
repeat hits both alike); the figures are the median images/s over the repeats, and the ratio is the median
of the repeats' own ratios, with their range. The plain network is what the faithful layers cost against: the same
convolutions (C3 fully connected, as a dense convolution), tanh, 2×2 average pooling without coefficients,
a linear output layer. Goal: ``LeNet5`` at >= 0.8x its throughput.

On a machine whose other cores are busy, OpenMP's default spin-waiting makes every multi-threaded operation
wait for a descheduled thread, and all-thread throughput falls by an order of magnitude for both networks
(the ratio then mostly measures the noise); ``OMP_WAIT_POLICY=PASSIVE python benchmarks/lenet.py`` measures
the networks rather than the scheduler there.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lenet  # noqa: E402
from lenet.data import load_digits  # noqa: E402


def plain_lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(),
        nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))


def images_per_second(step, batch: int, seconds: float) -> float:
    step()  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return count * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()

    torch.manual_seed(0)
    x, y = load_digits("train")
    x, y = x[:a.batch], y[:a.batch]
    paper, plain = lenet.LeNet5(), plain_lenet()

    def step_paper():
        paper.zero_grad(set_to_none=True)
        paper.loss(paper(x), y).backward()

    def step_plain():
        plain.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(plain(x), y).backward()

    all_threads = os.cpu_count() or 1
    print(f"torch {torch.__version__}, batch {a.batch}, forward+backward, median of {a.repeats} x {a.seconds} s, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    # Other processes on the machine change these figures (most with several threads: a parallel region
    # waits for its slowest thread), so the load average is printed beside them.
    print(f"{'threads':>7}  {'LeNet5 img/s':>12}  {'Sequential img/s':>16}  {'ratio':>5}  {'(range)':>11}  load (1 min)")
    for threads in sorted({1, all_threads}):
        torch.set_num_threads(threads)
        ours, theirs, ratios = [], [], []
        for _ in range(a.repeats):  # A B B A, so load changes during the repeat hit both alike
            o1 = images_per_second(step_paper, a.batch, a.seconds / 2)
            t1 = images_per_second(step_plain, a.batch, a.seconds / 2)
            t2 = images_per_second(step_plain, a.batch, a.seconds / 2)
            o2 = images_per_second(step_paper, a.batch, a.seconds / 2)
            ours.append((o1 + o2) / 2)
            theirs.append((t1 + t2) / 2)
            ratios.append(ours[-1] / theirs[-1])
        o, t, r = statistics.median(ours), statistics.median(theirs), statistics.median(ratios)
        print(f"{threads:>7}  {o:>12,.0f}  {t:>16,.0f}  {r:>5.2f}  ({min(ratios):.2f}-{max(ratios):.2f})"
              f"  {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
