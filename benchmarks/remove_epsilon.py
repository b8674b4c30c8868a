"""`gtn.remove_epsilon` against OpenFst's `rmepsilon` on a sweep of random graphs, interleaved in one process.

    python benchmarks/remove_epsilon.py [--arcs 1e3 1e4 1e5 1e6] [--semiring log tropical] [--rounds 7]
                                        [--check-max 1e5] [--threads 1]

Graphs (seeded, one per size, built outside the timing; the same graph for both sides): about arcs / 3 states,
an arc ``s -> s + 1`` from every state (so every state is accessible and co-accessible) and the other arcs from a
uniformly drawn state to one 1..8 states further on, labels 1..100 with 30 % of them epsilon (label 0), scores
uniform in [-2, 0), one ``-1`` arc into the final state. Every arc goes forward, so the epsilon subgraph is
acyclic (as `remove_epsilon` requires) and so is the whole graph (so both results can be checked by their
shortest distances).

Semirings and dtypes: ``log`` is `gtn.remove_epsilon(g, semiring="log")` on float64 scores against OpenFst's
``log64`` arc type (double weights); ``tropical`` is ``semiring="tropical"`` on float32 scores against the
``standard`` arc type (float weights). Both sides connect (trim) the result, as OpenFst's ``rmepsilon`` does by
default.

Timing: each round times one call of each side, alternating which goes first. The project runs on a fresh
clone of the input (made outside the timing, so nothing is cached on it from an earlier round); OpenFst runs
``rmepsilon`` in place on a fresh copy of its VectorFst with its own arcs (`own_copy`), made outside the timing
(the copy's own time is printed as ``copy ms``, not included in ``OpenFst ms``). One untimed warm-up call
each first (numba loads its compiled kernels there). Printed per size: input arcs, output arcs of both
(OpenFst's are fewer: it merges parallel arcs with equal labels), the median wall-clock ms of each side, the
median over rounds of the per-round ratio project / OpenFst (``ratio``), the same for the CPU time of the
process (``cpu ratio``: less disturbed by other processes on a loaded machine), ns per input arc (project wall
clock, project CPU, OpenFst CPU), the check and the 1-minute load average; then the slope of log time against
log arcs over the sweep (1.0 = linear).

Check (sizes up to ``--check-max`` arcs): both results have the same number of states; the per-state shortest
distances of the two results agree as sorted vectors (OpenFst numbers its states in another order), both to the
final state (reverse `shortestdistance` for OpenFst, `gtn.backward_scores` in the same semiring for the
project: the weight of everything a state accepts) and from the start (`gtn.forward_scores`); and the
project's total equals the input's forward (log) or Viterbi (tropical) score. The largest relative difference
is printed (pywrapfst prints weights with 9 digits, so ~1e-9 in log64; float weights in standard); the script
stops with an error if it exceeds 1e-7 (log) or 1e-4 (tropical). `tests/test_structure.py` checks the
weighted language itself, string by string, against brute force and OpenFst on small graphs.
"""
import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/lenet.py would shadow the package
import gtn  # noqa: E402

ARC_TYPE = {"log": "log64", "tropical": "standard"}
DTYPE = {"log": torch.float64, "tropical": torch.float32}


def random_graph(num_arcs: int, seed: int = 0, eps: float = 0.3, span: int = 8, labels: int = 100):
    """(arcs [A, 3] sorted by source, scores float64 [A], num_states) of the benchmark graph (see above)."""
    g = torch.Generator().manual_seed(seed)
    n = max(4, num_arcs // 3)  # states; the final state is n - 1, entered by the one -1 arc from n - 2
    chain = torch.arange(n - 2)
    extra = max(0, num_arcs - (n - 2) - 1)
    src = torch.randint(0, n - 2, (extra,), generator=g)
    dst = torch.clamp(src + torch.randint(1, span + 1, (extra,), generator=g), max=n - 2)
    src = torch.cat([chain, src, torch.tensor([n - 2])])
    dst = torch.cat([chain + 1, dst, torch.tensor([n - 1])])
    A = src.numel()
    lab = torch.randint(1, labels + 1, (A,), generator=g)
    lab[torch.rand(A, generator=g) < eps] = 0
    lab[-1] = -1
    scores = -2.0 * torch.rand(A, generator=g, dtype=torch.float64)
    order = torch.sort(src, stable=True).indices
    return torch.stack([src, dst, lab], 1)[order], scores[order], n


def to_openfst(arcs: torch.Tensor, scores: torch.Tensor, n: int, arc_type: str):
    """The same weighted acceptor as a VectorFst (costs = -scores; the final state has final weight one), compiled
    from text: weights are printed with enough digits to read back the exact double (log64) or float (standard)
    value. Label -1 becomes the label 2**30, an ordinary symbol: for gtn the -1 arc is not an epsilon arc
    either, so both sides solve the same problem (same states and arcs in the result)."""
    import pywrapfst as fst
    a = arcs.numpy()
    lab = np.where(a[:, 2] == -1, 2 ** 30, a[:, 2])
    cost = -scores.numpy()
    fmt = "%.17g" if arc_type == "log64" else "%.9g"
    lines = [f"{s}\t{d}\t{x}\t{x}\t{fmt % c}" for s, d, x, c in zip(a[:, 0].tolist(), a[:, 1].tolist(),
                                                                      lab.tolist(), cost.tolist())]
    c = fst.Compiler(arc_type=arc_type)
    c.write("\n".join(lines) + f"\n{n - 1}\n")
    return c.compile()


def openfst_distances(o, reverse: bool) -> np.ndarray:
    """Per state: the score (-cost) of everything it accepts (``reverse``), or of everything that reaches it."""
    import pywrapfst as fst
    zero = fst.Weight.zero(o.weight_type())
    d = fst.shortestdistance(o, reverse=reverse, delta=1e-12)
    out = np.full(o.num_states(), -np.inf)
    for s in range(min(len(d), o.num_states())):
        if d[s] != zero:
            out[s] = -float(str(d[s]))
    return out


def check(ours: gtn.Fsa, theirs, inp: gtn.Fsa, semiring: str) -> float:
    """Largest relative difference between the results' state distances (raises if they disagree; see the
    module docstring). OpenFst's arcs differ too: it merges parallel arcs with equal labels, which an arc map
    cannot express."""
    log = semiring == "log"
    if ours.num_states != theirs.num_states():
        raise SystemExit(f"check failed: project result has {ours.num_states} states, OpenFst's "
                         f"{theirs.num_states()}")
    x = ours.double()
    tot = (gtn.forward_score if log else gtn.viterbi_score)(inp.double()).item()
    b = gtn.backward_scores(x, log_semiring=log).numpy()
    tol = 1e-7 if log else 1e-4  # pywrapfst prints weights with 9 digits; standard: float weights summed in float
    err = abs(b[0] - tot) / (1 + abs(tot))
    for mine, reverse in ((b, True), (gtn.forward_scores(x, log_semiring=log).numpy(), False)):
        theirs_d = np.sort(openfst_distances(theirs, reverse))
        mine = np.sort(mine)
        fin = np.isfinite(theirs_d)
        if not np.array_equal(fin, np.isfinite(mine)):
            raise SystemExit("check failed: the numbers of states with a successful path differ")
        if fin.any():
            err = max(err, float((np.abs(mine[fin] - theirs_d[fin]) / (1 + np.abs(theirs_d[fin]))).max()))
    if err > tol:
        raise SystemExit(f"check failed: distances differ by {err:.2e} > {tol:g}")
    return err


def own_copy(o):
    """A copy of the VectorFst with its own arcs: ``copy()`` alone shares them until the first change (which
    would then copy inside the timed ``rmepsilon``); setting the start state forces the copy here."""
    c = o.copy()
    c.set_start(c.start())
    return c


def interleave(impls, rounds):
    """Warm up each side once, then time one call of each per round, alternating the order (as
    benchmarks/reference.py). ``impls``: (name, fn, prepare) with prepare run outside the timing. Returns the
    warm-up outputs and, per side, the wall-clock and the CPU (process) seconds of each round."""
    def call(fn, prep):
        arg = prep()
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn(arg)
        return out, time.perf_counter() - t0, time.process_time() - c0

    outs = {name: call(fn, prep)[0] for name, fn, prep in impls}
    times = {name: [] for name, _, _ in impls}
    cpu = {name: [] for name, _, _ in impls}
    for r in range(rounds):
        for name, fn, prep in (impls if r % 2 == 0 else impls[::-1]):
            _, t, c = call(fn, prep)
            times[name].append(t)
            cpu[name].append(c)
    return outs, times, cpu


def print_row(r):
    chk = "-" if r["err"] is None else f"{r['err']:.0e}"
    print(f"{r['arcs']:>10,} {r['out_arcs']:>10,} {r['fst_out_arcs']:>10,} {r['project_ms']:>11.2f} "
          f"{r['openfst_ms']:>11.2f} {r['copy_ms']:>8.2f} {r['ratio']:>6.2f} {r['cpu_ratio']:>9.2f} "
          f"{r['ns_arc']:>7.0f} {r['cpu_ns_arc']:>10.0f} {r['fst_cpu_ns_arc']:>14.0f} {chk:>7} {r['load']:>5.2f}",
          flush=True)


def sweep(sizes, semiring, rounds, check_max, backend="auto", report=None):
    """One row per size: dict of arcs, out_arcs, fst_out_arcs, project_ms, openfst_ms (medians), copy_ms,
    ratio and cpu_ratio (medians of the per-round ratios), ns_arc, cpu_ns_arc (project), fst_cpu_ns_arc, err
    (None: not checked), load (1-minute load average after the size)."""
    rows = []
    for size in sizes:
        arcs, scores, n = random_graph(int(size))
        inp = gtn.Fsa(arcs, scores.to(DTYPE[semiring]), num_states=n)
        o = to_openfst(arcs, scores, n, ARC_TYPE[semiring])
        impls = [("project", lambda x: gtn.remove_epsilon(x, semiring=semiring, backend=backend),
                  lambda: inp.clone()),
                 ("openfst", lambda x: x.rmepsilon(), lambda: own_copy(o))]
        outs, times, cpu = interleave(impls, rounds)
        t_copy = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            own_copy(o)
            t_copy.append(time.perf_counter() - t0)
        err = check(outs["project"], outs["openfst"], inp, semiring) if inp.num_arcs <= check_max else None
        tp, to = times["project"], times["openfst"]
        cp, co = cpu["project"], cpu["openfst"]
        fst_out = outs["openfst"]
        rows.append(dict(arcs=inp.num_arcs, out_arcs=outs["project"].num_arcs,
                         fst_out_arcs=sum(fst_out.num_arcs(q) for q in fst_out.states()),
                         project_ms=1e3 * statistics.median(tp), openfst_ms=1e3 * statistics.median(to),
                         copy_ms=1e3 * statistics.median(t_copy),
                         ratio=statistics.median(a / b for a, b in zip(tp, to)),
                         cpu_ratio=statistics.median(a / max(b, 1e-9) for a, b in zip(cp, co)),
                         ns_arc=1e9 * statistics.median(tp) / inp.num_arcs,
                         cpu_ns_arc=1e9 * statistics.median(cp) / inp.num_arcs,
                         fst_cpu_ns_arc=1e9 * statistics.median(co) / inp.num_arcs, err=err,
                         load=os.getloadavg()[0]))
        if report is not None:
            report(rows[-1])
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--arcs", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6], help="input arcs per graph")
    ap.add_argument("--semiring", nargs="+", choices=["log", "tropical"], default=["log", "tropical"])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per size (default 7)")
    ap.add_argument("--check-max", type=float, default=1e5, help="check the results up to this many arcs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--backend", choices=["auto", "numba", "torch"], default="auto",
                    help="the project's backend (default auto: the numba kernel on CPU)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if min(args.arcs) < 10:
        ap.error("--arcs values must be at least 10")
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); rounds: {args.rounds}; backend: "
          f"{args.backend}; load average before " + " ".join(f"{x:.2f}" for x in load0))
    for semiring in args.semiring:
        print(f"\nsemiring {semiring}: project {str(DTYPE[semiring])[6:]} vs OpenFst {ARC_TYPE[semiring]}; "
              "OpenFst ms excludes its copy (copy ms)")
        print(f"{'arcs':>10} {'out arcs':>10} {'fst out':>10} {'project ms':>11} {'OpenFst ms':>11} "
              f"{'copy ms':>8} {'ratio':>6} {'cpu ratio':>9} {'ns/arc':>7} {'cpu ns/arc':>10} "
              f"{'fst cpu ns/arc':>14} {'check':>7} {'load':>5}")
        rows = sweep(args.arcs, semiring, args.rounds, args.check_max, args.backend, print_row)
        if len(rows) > 1:
            a0, a1 = math.log(rows[0]["arcs"]), math.log(rows[-1]["arcs"])
            slope = {k: (math.log(rows[-1][k]) - math.log(rows[0][k])) / (a1 - a0)
                     for k in ("project_ms", "openfst_ms", "cpu_ns_arc", "fst_cpu_ns_arc")}
            print(f"slope of log time against log arcs, {rows[0]['arcs']:,} to {rows[-1]['arcs']:,} arcs (1 = linear):"
                  f" project {slope['project_ms']:.2f} (CPU {1 + slope['cpu_ns_arc']:.2f}), OpenFst "
                  f"{slope['openfst_ms']:.2f} (CPU {1 + slope['fst_cpu_ns_arc']:.2f})")
    print("\nload average after " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
