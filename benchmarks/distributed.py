"""Data-parallel global training throughput: training strings per second with 1 and with 2 processes (one
torch thread each, gloo on the CPU) on the same global batches (lenet.distributed).

    python benchmarks/distributed.py                       # HOS reader, 192 strings, global batches of 16
    python benchmarks/distributed.py --system sdnn --strings 192

Each run is one pass of ``lenet.global_train.train_globally`` (no DataLoader worker: each process segments
and crops its own share of every batch in line) after a short warm-up pass (numba compilation, caches). The
timed pass makes its strings and trains on them, as every pass of the default run does (fresh strings): one
process renders them all (``make_strings``), each of several processes makes every string's random draws and
renders only its shares (``make_strings(..., lazy=True)``). The figure is the pass's strings over its wall
time, measured on rank 0 between two barriers; the one-process line also says how much of its pass went to
rendering, and how long the strings' random draws alone take (``lazy=True``: what every process repeats).
The processes start with ``torch.multiprocessing`` and join the group as torchrun's workers would
(the same ``lenet.distributed.init``). Also printed: the machine (CPU model, cores) and its load
(``os.getloadavg``) before and after: on a busy machine two processes cannot reach twice one's rate.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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
        warm = make_strings(2 * args.batch_size, "train", seed=1, lazy=True)
        train_globally(reader, warm, recipe, 0, False, [], ctx=ctx)
        ctx.barrier()
        t = time.perf_counter()
        strings = make_strings(args.strings, "train", seed=2, lazy=True)  # this rank draws its shares alone
        train_globally(reader, strings, recipe, 0, False, [], ctx=ctx)
        ctx.barrier()
        if ctx.is_main:
            _write(folder, seconds=time.perf_counter() - t, threads=torch.get_num_threads())
    finally:
        teardown(ctx)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(folder, **values):
    (Path(folder) / "result.json").write_text(json.dumps(values))


def measure(world, args):
    """``{"seconds": of one pass with world processes, "threads": torch threads of rank 0, ...}``."""
    with tempfile.TemporaryDirectory() as folder:
        if world == 1:
            os.environ.pop("WORLD_SIZE", None)
            _worker_alone(args, folder)
        else:
            mp.spawn(_worker, args=(world, _free_port(), args, folder), nprocs=world, join=True)
        return json.loads((Path(folder) / "result.json").read_text())


def _worker_alone(args, folder):
    """One process, no process group at all: the path every run without torchrun takes."""
    torch.set_num_threads(1)
    reader = _reader(args.system)
    recipe = GlobalRecipe(global_epochs=1, batch_size=args.batch_size, lr=1e-4, seg_lr=1e-3, fresh=False,
                          workers=0)
    train_globally(reader, make_strings(2 * args.batch_size, "train", seed=1), recipe, 0, False, [])
    t = time.perf_counter()
    make_strings(args.strings, "train", seed=2, lazy=True)  # what every process of a job repeats: the draws
    draws = time.perf_counter() - t
    t = time.perf_counter()
    strings = make_strings(args.strings, "train", seed=2)
    rendered = time.perf_counter()
    train_globally(reader, strings, recipe, 0, False, [])
    _write(folder, seconds=time.perf_counter() - t, render_seconds=rendered - t, draw_seconds=draws,
           threads=torch.get_num_threads())


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                        platform.processor() or platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", choices=["hos", "sdnn"], default="hos")
    p.add_argument("--strings", type=int, default=192, help="training strings of the timed pass")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split between the processes)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"machine: {_cpu()}, {os.cpu_count()} CPU(s), {platform.system()} {platform.release()}; "
          f"torch {torch.__version__}; load average before {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.system} reader, one pass of {args.strings} fresh strings (rendered in the pass) in global "
          f"batches of {args.batch_size}")
    rates = {}
    for world in args.processes:
        got = measure(world, args)
        seconds = got["seconds"]
        rates[world] = args.strings / seconds
        print(f"{world} process(es), {got['threads']} torch thread(s) each: {seconds:.1f} s, "
              f"{rates[world]:.2f} training strings/s"
              + (f" ({rates[world] / rates[args.processes[0]]:.2f}x {args.processes[0]})"
                 if world != args.processes[0] else "")
              + (f"; rendering the strings took {got['render_seconds']:.2f} s of it "
                 f"({100 * got['render_seconds'] / seconds:.0f} %), their random draws alone "
                 f"{got['draw_seconds']:.2f} s" if "render_seconds" in got else ""))
    print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
