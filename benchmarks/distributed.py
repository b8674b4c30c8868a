"""Data-parallel global training throughput: training strings per second with 1 and with 2 processes (one
torch thread each, gloo on the CPU) on the same global batches (lenet.distributed).

    python benchmarks/distributed.py                       # HOS reader, 192 strings, global batches of 16
    python benchmarks/distributed.py --system sdnn --strings 192

Each run is one pass of ``lenet.global_train.train_globally`` (no DataLoader worker: each process segments
and crops its own share of every batch in line) after a short warm-up pass (numba compilation, caches); the
figure is the pass's strings over its wall time, measured on rank 0 between two barriers. The processes
start with ``torch.multiprocessing`` and join the group as torchrun's workers would (the same
``lenet.distributed.init``). Also printed: the machine's load (``os.getloadavg``): on a busy machine two
processes cannot reach twice one's rate.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lenet, not an installed one

from lenet.distributed import init, teardown  # noqa: E402
from lenet.global_train import GlobalRecipe, train_globally  # noqa: E402
from lenet.model import LeNet5  # noqa: E402
from lenet.strings import make_strings  # noqa: E402


def _reader(system):
    torch.manual_seed(0)
    if system == "hos":
        from lenet.data import load_digits
        from lenet.recognizer import StringReader
        reader = StringReader(LeNet5(), lengths=(3, 6))
        reader.calibrate(load_digits("train", raw=True)[0][:500])
        return reader
    from lenet.sdnn import SDNNReader, sdnn_network
    return SDNNReader(sdnn_network(LeNet5()), lengths=(3, 6))


def _worker(rank, world, port, args, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init("cpu")
    try:
        reader = _reader(args.system)
        recipe = GlobalRecipe(global_epochs=1, batch_size=args.batch_size, lr=1e-4, seg_lr=1e-3, fresh=False,
                              workers=0)
        warm = make_strings(2 * args.batch_size, "train", seed=1)
        strings = make_strings(args.strings, "train", seed=2)
        train_globally(reader, warm, recipe, 0, False, [], ctx=ctx)
        ctx.barrier()
        t = time.perf_counter()
        train_globally(reader, strings, recipe, 0, False, [], ctx=ctx)
        ctx.barrier()
        if ctx.is_main:
            (Path(folder) / "seconds").write_text(repr(time.perf_counter() - t))
    finally:
        teardown(ctx)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world, args):
    """Seconds of one pass with ``world`` processes."""
    with tempfile.TemporaryDirectory() as folder:
        if world == 1:
            os.environ.pop("WORLD_SIZE", None)
            _worker_alone(args, folder)
        else:
            mp.spawn(_worker, args=(world, _free_port(), args, folder), nprocs=world, join=True)
        return float((Path(folder) / "seconds").read_text())


def _worker_alone(args, folder):
    """One process, no process group at all: the path every run without torchrun takes."""
    reader = _reader(args.system)
    recipe = GlobalRecipe(global_epochs=1, batch_size=args.batch_size, lr=1e-4, seg_lr=1e-3, fresh=False,
                          workers=0)
    train_globally(reader, make_strings(2 * args.batch_size, "train", seed=1), recipe, 0, False, [])
    strings = make_strings(args.strings, "train", seed=2)
    t = time.perf_counter()
    train_globally(reader, strings, recipe, 0, False, [])
    (Path(folder) / "seconds").write_text(repr(time.perf_counter() - t))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", choices=["hos", "sdnn"], default="hos")
    p.add_argument("--strings", type=int, default=192, help="training strings of the timed pass")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split between the processes)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s), load average before "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.system} reader, one pass of {args.strings} "
          f"strings in global batches of {args.batch_size}, one thread per process")
    rates = {}
    for world in args.processes:
        seconds = measure(world, args)
        rates[world] = args.strings / seconds
        print(f"{world} process(es): {seconds:.1f} s, {rates[world]:.2f} training strings/s"
              + (f" ({rates[world] / rates[args.processes[0]]:.2f}x {args.processes[0]})"
                 if world != args.processes[0] else ""))
    print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
