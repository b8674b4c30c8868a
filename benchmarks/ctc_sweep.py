"""CTC at speech shapes: `gtn.ctc_loss` against `torch.nn.functional.ctc_loss` over a sweep of shapes (CPU).

    python benchmarks/ctc_sweep.py                           # the whole sweep (24 shapes x threads 1 and all)
    python benchmarks/ctc_sweep.py --B 8 --C 5000 --rounds 3 # a subset: any of --B --T --C --U narrows it
    python benchmarks/ctc_sweep.py --no-memory               # timings only (no peak-memory subprocesses)

The sweep is B in {8, 32}, T in {200, 1000}, C in {28, 500, 5000}, U in {40, 200} (shapes with U >= T are
skipped). Each step is the reference workload's (`benchmarks/reference.py ctc`, same seeded inputs): CTC loss
(reduction sum) forward + backward through `log_softmax`, logits ``[T, B, C]`` float32, full lengths.

Timing: both losses in one process on the same inputs, one untimed warm-up step each (numba loads its kernels
there), then ``--rounds`` rounds of one step each, the order alternating between rounds. Printed per shape and
thread count: the median ms of each, the median over rounds of project / torch in the same round (the figure
to compare on a loaded machine), the torch thread count and the 1-minute load average when the row started.

Peak memory (unless ``--no-memory``): each loss in its own fresh subprocess, which builds the inputs, runs the
step once on a tiny problem (loads the libraries and kernels), then runs one step at the shape; the figure is the
growth of the process's peak resident set size over that step (Linux: the high-water mark ``VmHWM`` reset
through ``/proc/self/clear_refs`` just before the step, minus ``VmRSS`` then; MiB), with glibc's mmap threshold
fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that a freed large block leaves the resident set at once: every byte
the step allocates, torch's allocations and numpy's alike, the step's shared part (the logits' copy,
`log_softmax` and its gradient) included.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's gtn, from any folder
sys.path.insert(1, str(Path(__file__).resolve().parent))
import gtn  # noqa: E402
from reference import ctc_inputs, ctc_step  # noqa: E402  (the reference workload's inputs and step)

SWEEP = dict(B=(8, 32), T=(200, 1000), C=(28, 500, 5000), U=(40, 200))
IMPLS = {"project": gtn.ctc_loss, "torch": torch.nn.functional.ctc_loss}


def shapes(Bs, Ts, Cs, Us):
    return [(B, T, C, U) for B in Bs for T in Ts for C in Cs for U in Us if U < T]


def time_shape(shape, rounds):
    """(checksums, {impl: [seconds per round]}) of the two losses interleaved in this process."""
    inputs = ctc_inputs(*shape)
    names = list(IMPLS)
    checks = {n: ctc_step(IMPLS[n], inputs) for n in names}  # warm-up
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            ctc_step(IMPLS[n], inputs)
            times[n].append(time.perf_counter() - t0)
    return checks, times


def peak_growth(impl, shape, threads):
    """Peak RSS growth (MiB) of one step of ``impl`` at ``shape``, in a fresh process."""
    # glibc otherwise raises its mmap threshold after the first large free and keeps later freed blocks in
    # the heap, so RSS would count memory already released; a fixed threshold returns large blocks at once
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--peak-of", impl, *map(str, shape), str(threads)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"peak-memory subprocess failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["mib"]


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(field + ":"))


def _peak_child(impl, B, T, C, U, threads):
    torch.set_num_threads(threads)
    inputs = ctc_inputs(B, T, C, U)
    ctc_step(IMPLS[impl], ctc_inputs(2, 6, C, 2))  # libraries and kernels loaded outside the measurement
    # Linux: ru_maxrss keeps the parent's peak across exec, so reset this process's own high-water mark
    # (VmHWM) to its current RSS and read it back after the step
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    ctc_step(IMPLS[impl], inputs)
    print(json.dumps(dict(mib=(_status_kib("VmHWM") - before) / 1024)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    for k, v in SWEEP.items():
        ap.add_argument(f"--{k}", type=int, nargs="+", default=list(v), help=f"default {' '.join(map(str, v))}")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per shape (default 5)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count()],
                    help="torch thread counts (default: 1 and all)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--peak-of", nargs=6, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.peak_of:
        impl, *rest = a.peak_of
        _peak_child(impl, *map(int, rest))
        return
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    todo = shapes(a.B, a.T, a.C, a.U)
    if not todo:
        ap.error("no shape with U < T in the selection")
    print(f"CTC forward + backward through log_softmax, float32, reduction sum; {a.rounds} interleaved rounds; "
          f"peak = RSS growth over one step in a fresh process")
    print("| B | T | C | U | threads | load | project ms | torch ms | project / torch | "
          "peak MiB project | peak MiB torch | loss |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for threads in a.threads:
        for shape in todo:
            torch.set_num_threads(threads)
            load = os.getloadavg()[0]
            checks, times = time_shape(shape, a.rounds)
            p, t = checks["project"], checks["torch"]
            if abs(p - t) > 1e-4 * abs(t):
                raise SystemExit(f"losses disagree at {shape}: project {p!r}, torch {t!r}")
            ratio = statistics.median(x / y for x, y in zip(times["project"], times["torch"]))
            worst = max(worst, ratio)
            mem = ("-", "-") if a.no_memory else tuple(f"{peak_growth(n, shape, threads):.0f}" for n in IMPLS)
            med = {n: 1e3 * statistics.median(v) for n, v in times.items()}
            print(f"| {' | '.join(map(str, shape))} | {torch.get_num_threads()} | {load:.1f} | "
                  f"{med['project']:.1f} | {med['torch']:.1f} | {ratio:.2f} | {mem[0]} | {mem[1]} | {t:.2f} |",
                  flush=True)
    print(f"worst project / torch: {worst:.2f}; load average now "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
