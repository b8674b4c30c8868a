"""The three reference workloads: the project against its baseline, interleaved in one process.

    python benchmarks/reference.py forward [--rounds 11] [--size N L W K]     (default 64 50 20 5)
    python benchmarks/reference.py compose [--rounds 21] [--size L W K V]     (default 60 20 5 30)
    python benchmarks/reference.py ctc     [--rounds 21] [--size B T C U]     (default 16 200 28 40)

Workloads (seeded; the checksums are the ones every implementation must print):

  forward  forward (log) score + backward over N lattice-shaped DAGs (start state, L levels of W states,
           fan-out K, labels 1..30, scores U(-1, 1), a final state): 316,160 arcs by default, float32.
           project fresh: `gtn.forward_score` on a new FsaVec each round (a clone made outside the timing),
             so the level structure ("plan") is built inside the timing, as for the output of `compose`;
           project cached: the same FsaVec every round (its plan cached on the graph after the first call);
           baseline: OpenFst (pywrapfst) `shortestdistance` reverse and forward on each lattice.
           Checksum: the sum of the N total scores, 5760.213 by default.
  compose  intersect a word lattice (L levels x W states, fan-out K, words 1..V) with a cyclic bigram grammar
           over V words, then the forward score (log, float64) of the result: 5,940 x 960 -> 26,963 arcs.
           project: `gtn.intersect` + `gtn.forward_score`; baseline: OpenFst `intersect` + `connect` +
           `shortestdistance`. Checksum: the forward score, 56.2737 by default (93.4065 at 100 40 5 30).
  ctc      CTC loss (reduction sum) forward + backward through `log_softmax`, logits [T, B, C], targets
           [B, U] of labels 1..C-1, full lengths. project: `gtn.ctc_loss`; baseline:
           `torch.nn.functional.ctc_loss`. Checksum: the loss, 8757.6367 by default.

Each round times one call of every implementation (the order alternates between rounds, so neither side always
runs right after the other), after one untimed warm-up call each (numba loads its compiled kernels there).
Printed: the median and minimum ms of each implementation, the median over rounds of its time divided by the
baseline's in the same round, the torch thread count and the load average before and after. Timings on a
loaded machine are noisy; the per-round ratio is the figure to compare.
"""
import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this folder's lenet.py would shadow the package
import gtn  # noqa: E402

DEFAULT_SIZE = {"forward": (64, 50, 20, 5), "compose": (60, 20, 5, 30), "ctc": (16, 200, 28, 40)}
DEFAULT_ROUNDS = {"forward": 11, "compose": 21, "ctc": 21}


# ---------------------------------------------------------------------------------------------- workloads
def lattice_arcs(seed, L, W, K):
    """One lattice of the forward workload: (src, dst, label, score) arcs, label -1 into the final state."""
    r = random.Random(seed)
    final = 1 + L * W
    arcs = [(0, 1 + j, r.randint(1, 30), r.uniform(-1, 1)) for j in range(W)]
    for lv in range(L - 1):
        for j in range(W):
            for _ in range(K):
                arcs.append((1 + lv * W + j, 1 + (lv + 1) * W + r.randrange(W), r.randint(1, 30), r.uniform(-1, 1)))
    arcs += [(1 + (L - 1) * W + j, final, -1, r.uniform(-1, 1)) for j in range(W)]
    return arcs, final


def rescoring_arcs(L, W, K, V):
    """The compose workload: a word lattice and a bigram grammar (state 0: no history, q: last word q,
    V + 1: final), both as sorted (src, dst, label, score) lists with their final state, one seeded stream."""
    r = random.Random(0)
    final = 1 + L * W
    lat = [(0, 1 + j, r.randint(1, V), r.uniform(-1, 1)) for j in range(W)]
    for lv in range(L - 1):
        for j in range(W):
            for _ in range(K):
                lat.append((1 + lv * W + j, 1 + (lv + 1) * W + r.randrange(W), r.randint(1, V), r.uniform(-1, 1)))
    lat += [(1 + (L - 1) * W + j, final, -1, 0.0) for j in range(W)]
    gram = [(p, q, q, r.uniform(-2, 0)) for p in range(V + 1) for q in range(1, V + 1)]
    gram += [(p, V + 1, -1, 0.0) for p in range(1, V + 1)]
    return (sorted(lat), final), (sorted(gram), V + 1)


def rounded(s):
    return float(f"{s:.6f}")  # scores to 6 decimals, as the reference scripts' k2 text gave both sides


def gtn_fsa(arcs, final):
    """The graph `gtn.Fsa.from_str` makes of the arcs' k2 text (float32 scores), built from tensors: parsing
    the forward workload's text takes seconds, building it this way about a quarter of that."""
    return gtn.Fsa(torch.tensor([a[:3] for a in arcs]), torch.tensor([rounded(a[3]) for a in arcs]),
                   num_states=final + 1)


def openfst(arcs, final, fst):
    """A log-semiring VectorFst: label -1 (k2's final arcs) becomes epsilon, costs are -scores."""
    o = fst.VectorFst(arc_type="log")
    for _ in range(final + 1):
        o.add_state()
    o.set_start(0)
    for a, b, lab, s in arcs:
        lab = max(lab, 0)
        o.add_arc(a, fst.Arc(lab, lab, fst.Weight("log", -rounded(s)), b))
    o.set_final(final, fst.Weight("log", 0))
    return o


def fresh_copy(fsas):
    """The same graphs as a new object with nothing cached on it (no plan, no level structure): what scoring
    the output of `compose` starts from."""
    return fsas.clone()


def forward_workload(N, L, W, K):
    import pywrapfst as fst
    data = [lattice_arcs(i, L, W, K) for i in range(N)]
    fsas = gtn.FsaVec([gtn_fsa(a, f) for a, f in data])
    fsts = [openfst(a, f, fst) for a, f in data]

    def project(x):
        x.requires_grad_(True)
        x.scores.grad = None
        tot = gtn.forward_score(x)
        tot.sum().backward()
        return float(tot.detach().sum())

    fresh = {}

    def prepare_fresh():  # outside the timing
        fresh["x"] = fresh_copy(fsas)

    def run_openfst():
        # forward and reverse state potentials: the work of a forward-backward pass
        t = 0.0
        for o in fsts:
            d = fst.shortestdistance(o, reverse=True)
            fst.shortestdistance(o)
            t += -float(str(d[0]))
        return t

    impls = [("project fresh", lambda: project(fresh.pop("x")), prepare_fresh),
             ("project cached", lambda: project(fsas), None),
             ("openfst", run_openfst, None)]
    desc = (f"forward (log) score + backward, {N} lattices of {L} levels x {W} states, fan-out {K}: "
            f"{fsas.num_arcs:,} arcs, float32")
    return desc, impls, 3


def compose_workload(L, W, K, V):
    import pywrapfst as fst
    (lat, lf), (gram, gf) = rescoring_arcs(L, W, K, V)
    A, B = gtn_fsa(lat, lf), gtn_fsa(gram, gf)
    oA, oB = openfst(lat, lf, fst), openfst(gram, gf, fst)
    oA.arcsort("olabel")
    oB.arcsort("ilabel")
    arcs = {}

    def project():
        C = gtn.intersect(A, B)
        arcs["project"] = C.num_arcs
        return float(gtn.forward_score(C.to(torch.float64)))

    def run_openfst():
        C = fst.intersect(oA, oB)
        C.connect()
        arcs["openfst"] = sum(C.num_arcs(s) for s in C.states())
        return -float(str(fst.shortestdistance(C, reverse=True)[C.start()]))

    desc = (f"intersect a {L} x {W} lattice (fan-out {K}, {len(lat):,} arcs) with a bigram grammar over {V} words "
            f"({len(gram):,} arcs), + forward score (log, float64)")
    return desc, [("project", project, None), ("openfst", run_openfst, None)], 4, arcs


def ctc_inputs(B, T, C, U):
    """The seeded CTC workload: ``(logits [T, B, C], targets [B, U], input lengths, target lengths)``."""
    g = torch.Generator().manual_seed(0)
    logits0 = torch.randn(T, B, C, generator=g)
    targets = torch.randint(1, C, (B, U), generator=g)
    return logits0, targets, torch.full((B,), T), torch.full((B,), U)


def ctc_step(fn, inputs):
    """One forward + backward of the CTC loss ``fn`` (gtn's or torch's) through ``log_softmax``; the loss."""
    logits0, targets, il, tl = inputs
    x = logits0.clone().requires_grad_(True)
    loss = fn(x.log_softmax(-1), targets, il, tl, reduction="sum")
    loss.backward()
    return float(loss.detach())


def ctc_workload(B, T, C, U):
    inputs = ctc_inputs(B, T, C, U)
    impls = [("project", lambda: ctc_step(gtn.ctc_loss, inputs), None),
             ("torch", lambda: ctc_step(torch.nn.functional.ctc_loss, inputs), None)]
    desc = f"CTC loss B={B} T={T} C={C} U={U}, forward + backward through log_softmax, float32"
    return desc, impls, 4


# ---------------------------------------------------------------------------------------------- timing
def interleave(impls, rounds):
    """Warm up each implementation once, then time one call of each per round, alternating the order.
    Returns the checksums (from the warm-up) and the per-implementation lists of seconds."""
    def call(fn, prep):
        if prep is not None:
            prep()
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    checks = {name: call(fn, prep)[0] for name, fn, prep in impls}
    times = {name: [] for name, _, _ in impls}
    for r in range(rounds):
        for name, fn, prep in (impls if r % 2 == 0 else impls[::-1]):
            times[name].append(call(fn, prep)[1])
    return checks, times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("workload", choices=sorted(DEFAULT_SIZE))
    ap.add_argument("--rounds", type=int, help="timed rounds (default: forward 11, compose and ctc 21)")
    ap.add_argument("--size", type=int, nargs=4, metavar="X", help="the workload's four sizes (see above)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be at least 1")
    size = tuple(args.size or DEFAULT_SIZE[args.workload])
    if min(size) < 1:
        ap.error("--size values must be positive")
    rounds = args.rounds or DEFAULT_ROUNDS[args.workload]
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()

    arcs = None
    if args.workload == "forward":
        desc, impls, digits = forward_workload(*size)
    elif args.workload == "compose":
        desc, impls, digits, arcs = compose_workload(*size)
    else:
        B, T, C, U = size
        if U > T or C < 2:
            ap.error("ctc needs U <= T and C >= 2")
        desc, impls, digits = ctc_workload(*size)
    checks, times = interleave(impls, rounds)
    load1 = os.getloadavg()

    base = impls[-1][0]
    print(f"{args.workload}: {desc}")
    print(f"torch threads: {torch.get_num_threads()}; rounds: {rounds}; load average before "
          + " ".join(f"{x:.2f}" for x in load0) + ", after " + " ".join(f"{x:.2f}" for x in load1))
    print(f"{'implementation':<16} {'median ms':>10} {'min ms':>9} {'x ' + base + ' (median per round)':>28}")
    for name, _, _ in impls:
        ts = times[name]
        ratio = statistics.median(t / b for t, b in zip(ts, times[base]))
        print(f"{name:<16} {1e3 * statistics.median(ts):>10.2f} {1e3 * min(ts):>9.2f} {ratio:>28.3f}")
    if arcs is not None:
        print("result arcs: " + ", ".join(f"{k} {v:,}" for k, v in arcs.items())
              + " (not a checksum: OpenFst reads the final arcs' label 0 as epsilon and composes them through its"
              " epsilon filter)")
    ref = checks[base]
    for name, v in checks.items():
        if not math.isclose(v, ref, rel_tol=1e-5, abs_tol=1e-4):
            raise SystemExit(f"checksum mismatch: {name} {v!r} vs {base} {ref!r}")
    print("checksum: " + ", ".join(f"{name} {v:.{digits}f}" for name, v in checks.items()))


if __name__ == "__main__":
    main()
