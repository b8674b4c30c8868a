"""Timing of the structural operations (gtn.structure) on batches of random lattices.

    python benchmarks/structure.py [--sizes 1e4 1e5 1e6] [--repeats 3] [--openfst]

Prints, for each operation and total arc count, the best time over ``--repeats`` runs, arcs per second, and the
log-log slope of time against arcs (1.0 = linear). Lattices: 32 members, each a chain of states where state s
has arcs to s+1 .. s+3 (labels 0..9, label 0 = epsilon with probability 0.2), so remove_epsilon has short
epsilon runs to fold. With ``--openfst`` it also times pywrapfst's ``rmepsilon`` (log64 arc type, one call per
member, FST construction not timed) on the same lattices and checks that the forward scores agree.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this repository's gtn, not an installed one
import gtn  # noqa: E402
from gtn.fsa import from_arcs  # noqa: E402


def lattices(total_arcs: int, members: int = 32, eps: float = 0.2, seed: int = 0) -> gtn.FsaVec:
    g = torch.Generator().manual_seed(seed)
    n = max(4, total_arcs // (3 * members))  # states per member; ~3 arcs per state
    s = torch.arange(n - 2).repeat_interleave(3)
    d = s + torch.arange(1, 4).repeat(n - 2)
    keep = d <= n - 2
    s, d = s[keep], d[keep]
    s = torch.cat([s, torch.tensor([n - 2])])
    d = torch.cat([d, torch.tensor([n - 1])])
    A = s.numel()
    lab = torch.randint(1, 10, (members, A), generator=g)
    lab[torch.rand(members, A, generator=g) < eps] = 0
    lab[:, -1] = -1
    arcs = torch.stack([s.repeat(members), d.repeat(members), lab.reshape(-1)], 1)
    scores = torch.randn(members * A, generator=g) * 0.5
    arc_splits = torch.arange(members + 1) * A
    state_splits = torch.arange(members + 1) * n
    return from_arcs(arcs, scores, arc_splits, state_splits)


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def to_openfst(f: gtn.Fsa):
    import pywrapfst as fst
    o = fst.VectorFst(arc_type="log64")
    o.add_states(f.num_states)
    o.set_start(0)
    o.set_final(f.num_states - 1, fst.Weight.one("log64"))
    for (s, d, l), w in zip(f.arcs.tolist(), f.scores.tolist()):
        o.add_arc(s, fst.Arc(max(l, 0), max(l, 0), fst.Weight("log64", -w), d))
    return o


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--openfst", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, 32 lattices per batch")
    ops = {
        "union(v, v)": lambda v: gtn.union(v, v),
        "concat(v, v)": lambda v: gtn.concat(v, v),
        "closure(v)": lambda v: gtn.closure(v),
        "invert(v)": lambda v: gtn.invert(v),
        "remove_epsilon(v)": lambda v: gtn.remove_epsilon(v, connect=False),
        "remove_epsilon + connect": lambda v: gtn.remove_epsilon(v),
        "remove_epsilon + fwd + bwd": None,
    }
    rows = {k: [] for k in ops}
    sizes = []
    for size in args.sizes:
        v = lattices(int(size))
        sizes.append(v.num_arcs)
        for name, fn in ops.items():
            if fn is None:
                def fn(v=v):
                    s = v.scores.detach().requires_grad_()
                    x = from_arcs(v.arcs, s, v.arc_splits, v.state_splits)
                    gtn.forward_score(gtn.remove_epsilon(x, connect=False)).sum().backward()
            t = best_time(lambda: fn(v) if ops[name] is not None else fn(), args.repeats)
            rows[name].append(t)
    print(f"| operation | " + " | ".join(f"{a:,} arcs" for a in sizes) + " | arcs/s at the largest | slope |")
    print("|---|" + "---|" * len(sizes) + "---|---|")
    for name, ts in rows.items():
        slope = (math.log(ts[-1]) - math.log(ts[0])) / (math.log(sizes[-1]) - math.log(sizes[0])) \
            if len(ts) > 1 else float("nan")
        print(f"| {name} | " + " | ".join(f"{t * 1e3:.1f} ms" for t in ts) + f" | {sizes[-1] / ts[-1]:.3g} | "
              f"{slope:.2f} |")
    if args.openfst:
        import pywrapfst as fst
        v = lattices(int(args.sizes[0]))
        fsts = [to_openfst(m) for m in v]

        def run_openfst():
            for o in fsts:
                o.copy().rmepsilon()

        t_o = best_time(run_openfst, args.repeats)
        t_g = best_time(lambda: gtn.remove_epsilon(v), args.repeats)
        ours = gtn.forward_score(gtn.remove_epsilon(v.to(torch.float64)))
        theirs = []
        for o in fsts:
            r = o.copy().rmepsilon()
            theirs.append(-float(str(fst.shortestdistance(r, reverse=True, delta=1e-12)[r.start()])))
        err = max(abs(a - b) for a, b in zip(ours.tolist(), theirs))
        print(f"\nremove_epsilon on {v.num_arcs:,} arcs (32 lattices): gtn {t_g * 1e3:.1f} ms (with connect), "
              f"OpenFst rmepsilon {t_o * 1e3:.1f} ms (ratio {t_g / t_o:.2f}); max |forward difference| {err:.1e}")


if __name__ == "__main__":
    main()
