"""Benchmark: gtn.compose against pywrapfst.compose on the same inputs, in the same run.

Workloads
  (a) random: an acyclic acceptor (a lattice: levels x width, fan-out 4, labels 1..V with some epsilons)
      composed with a random cyclic transducer (4 states; V labels mapped to 40 output labels, epsilon insertions on
      its input side), from 10^3 to 10^5 lattice arcs.
  (b) lexicon: a lexicon transducer (letter strings -> words, closed under concatenation) composed with a
      bigram grammar over the words (cyclic result), then a letter lattice composed with that result.

Outputs are checked equal: the number of arcs, and the forward score (OpenFst: log64 shortestdistance) where
the result is acyclic. k2's final ``-1`` arcs are given to OpenFst as a fresh ordinary label into its single
final state, so both libraries build the same trimmed product. Times are medians of REPS runs (one torch
thread); "cold" is the first call on fresh graph objects (it includes gtn's per-graph preparation: the
co-accessibility pre-pass and b's label sort, cached on the graph afterwards), "warm" the repeated call.

Usage: python benchmarks/compose.py [--reps 5] [--sizes 1000 10000 100000] [--impl auto|torch]
"""
import argparse
import math
import random
import statistics
import time

import torch

import gtn
from gtn import scoring

torch.set_num_threads(1)
FINAL = 1_000_000  # OpenFst label standing for k2's -1


def lattice(n_arcs, V, r, eps=0.05, width=20, fan=4):
    """Acyclic acceptor with about n_arcs arcs: levels of `width` states, `fan` arcs per state."""
    L = max(2, n_arcs // (width * fan))
    F = 1 + L * width
    arcs = [(0, 1 + j, r.randint(1, V), r.uniform(-1, 0)) for j in range(width)]
    for l in range(L - 1):
        for j in range(width):
            for _ in range(fan):
                lab = 0 if r.random() < eps else r.randint(1, V)
                arcs.append((1 + l * width + j, 1 + (l + 1) * width + r.randrange(width), lab, r.uniform(-1, 0)))
    arcs += [(1 + (L - 1) * width + j, F, -1, 0.0) for j in range(width)]
    arcs.sort()
    t = torch.tensor([a[:3] for a in arcs])
    return gtn.Fsa(t, torch.tensor([a[3] for a in arcs], dtype=torch.float64), num_states=F + 1)


def mapper(V, W, S, r, n_eps=1):
    """Cyclic transducer: S states; from each state one arc per input label 1..V (random output 1..W, random
    next state) and `n_eps` input-epsilon arcs to higher states (insertions; no epsilon cycle)."""
    arcs, aux = [], []
    for s in range(S):
        for l in range(1, V + 1):
            arcs.append((s, r.randrange(S), l, r.uniform(-1, 0)))
            aux.append(r.randint(1, W))
        for _ in range(n_eps if s < S - 1 else 0):
            arcs.append((s, r.randint(s + 1, S - 1), 0, r.uniform(-3, -2)))
            aux.append(r.randint(1, W))
        arcs.append((s, S, -1, 0.0))
        aux.append(-1)
    t = torch.tensor([a[:3] for a in arcs])
    return gtn.Fsa(t, torch.tensor([a[3] for a in arcs], dtype=torch.float64), torch.tensor(aux), num_states=S + 1)


def lexicon_and_grammar(W, r, letters=26):
    """Lexicon (letters -> words, word label on the first letter, closure through state 0) and a bigram
    grammar over the W words (state 0 = start, q = last word q)."""
    arcs, aux = [], []
    nxt = 1
    spellings = set()
    while len(spellings) < W:
        spellings.add(tuple(r.randint(1, letters) for _ in range(r.randint(3, 8))))
    for w, sp in enumerate(sorted(spellings), start=1):
        src = 0
        for i, c in enumerate(sp):
            dst = 0 if i == len(sp) - 1 else nxt
            if dst:
                nxt += 1
            arcs.append((src, dst, c, 0.0))
            aux.append(w if i == 0 else 0)
            src = dst
    arcs.append((0, nxt, -1, 0.0))
    aux.append(-1)
    lex = gtn.Fsa(torch.tensor([a[:3] for a in arcs]), torch.tensor([a[3] for a in arcs], dtype=torch.float64),
                  torch.tensor(aux), num_states=nxt + 1)
    g = [(p, q, q, r.uniform(-3, 0)) for p in range(W + 1) for q in range(1, W + 1) if p == 0 or r.random() < 0.8]
    g += [(p, W + 1, -1, 0.0) for p in range(1, W + 1)]
    g.sort()
    G = gtn.Fsa(torch.tensor([a[:3] for a in g]), torch.tensor([a[3] for a in g], dtype=torch.float64),
                num_states=W + 2)
    return lex, G, sorted(spellings)


def letter_lattice(spellings, n_words, r, alts=3):
    """A lattice of letters: n_words word slots, each with `alts` alternative spellings (chains)."""
    arcs = []
    nxt = 1
    state = 0
    for _ in range(n_words):
        end = None
        chains = [r.choice(spellings) for _ in range(alts)]
        end = nxt
        nxt += 1
        for sp in chains:
            src = state
            for i, c in enumerate(sp):
                dst = end if i == len(sp) - 1 else nxt
                if dst != end:
                    nxt += 1
                arcs.append((src, dst, c, r.uniform(-1, 0)))
                src = dst
        state = end
    arcs.append((state, nxt, -1, 0.0))
    arcs.sort()
    return gtn.Fsa(torch.tensor([a[:3] for a in arcs]), torch.tensor([a[3] for a in arcs], dtype=torch.float64),
                   num_states=nxt + 1)


def shared_workload(L=60, W=20, K=5, V=30):
    """The word lattice and bigram grammar of `benchmarks/reference.py compose` (same seeded generator)."""
    r = random.Random(0)
    F = 1 + L * W
    lat = [(0, 1 + j, r.randint(1, V), r.uniform(-1, 1)) for j in range(W)]
    for l in range(L - 1):
        for j in range(W):
            for _ in range(K):
                lat.append((1 + l * W + j, 1 + (l + 1) * W + r.randrange(W), r.randint(1, V), r.uniform(-1, 1)))
    lat += [(1 + (L - 1) * W + j, F, -1, 0.0) for j in range(W)]
    lat.sort()
    G = [(p, q, q, r.uniform(-2, 0)) for p in range(V + 1) for q in range(1, V + 1)]
    G += [(p, V + 1, -1, 0.0) for p in range(1, V + 1)]
    G.sort()
    lat_txt = "\n".join(f"{a} {b} {l} {s:.6f}" for a, b, l, s in lat) + f"\n{F}\n"
    g_txt = "\n".join(f"{a} {b} {l} {s:.6f}" for a, b, l, s in G) + f"\n{V + 1}\n"
    return gtn.Fsa.from_str(lat_txt), gtn.Fsa.from_str(g_txt)


def breakdown(size, reps):
    """Where the time of the shared reference workload goes: intersect (kernel / torch reference), the forward
    score of a fresh result (building its scoring plan, then the DP) and with the plan cached, and OpenFst's
    steps."""
    import pywrapfst as fst
    A, B = shared_workload(*size)
    med = lambda f: statistics.median(_times(f, reps)) * 1e3  # noqa: E731
    C = gtn.intersect(A, B)
    t_nb = med(lambda: gtn.intersect(A, B, impl="numba"))
    t_torch = med(lambda: gtn.intersect(A, B, impl="torch"))
    fresh = iter([gtn.intersect(A, B).to(torch.float64) for _ in range(reps + 1)])  # each scored once: no plan yet
    t_fwd_fresh = med(lambda: gtn.forward_score(next(fresh)))
    C64 = C.to(torch.float64)
    t_fwd_cached = med(lambda: gtn.forward_score(C64))
    # the scoring plan alone (what a fresh result adds), by the numba pass and by the tensor reference
    # (on clones: a clone has an empty cache, so nothing of an earlier plan, Kahn's levels included, is reused)
    fresh = iter([C64.clone() for _ in range(reps + 1)])
    t_plan_nb = med(lambda: scoring._Plan(next(fresh)))
    fresh = iter([C64.clone() for _ in range(reps + 1)])
    t_plan_torch = med(lambda: scoring._Plan(next(fresh), use_kernel=False))
    Ao, Bo = to_fst(A), to_fst(B)
    Ao.arcsort("olabel")
    Bo.arcsort("ilabel")
    t_fi = med(lambda: fst.intersect(Ao, Bo))
    Co = fst.intersect(Ao, Bo)
    t_fsd = med(lambda: fst.shortestdistance(Co, reverse=True))
    assert C.num_arcs == fst_arcs(Co)
    assert abs(float(gtn.forward_score(C64)) - fst_forward(Co)) < 1e-6 * abs(fst_forward(Co))
    return dict(size=size, out=C.num_arcs, nb=t_nb, torch=t_torch, fwd_fresh=t_fwd_fresh, fwd_cached=t_fwd_cached,
                plan_nb=t_plan_nb, plan_torch=t_plan_torch, ofst_intersect=t_fi, ofst_sd=t_fsd)


def _times(f, reps):
    f()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        out.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------------- OpenFst
def to_fst(f):
    import pywrapfst as fst
    o = fst.VectorFst(arc_type="log64")
    n = f.num_states
    for _ in range(n):
        o.add_state()
    o.set_start(0)
    o.set_final(n - 1, fst.Weight.one("log64"))
    olab = (f.aux_labels if f.aux_labels is not None else f.labels).tolist()
    for (s, d, l), ol, w in zip(f.arcs.tolist(), olab, f.scores.detach().tolist()):
        m = lambda x: FINAL if x == -1 else x  # noqa: E731
        o.add_arc(s, fst.Arc(m(l), m(ol), fst.Weight("log64", -w), d))
    return o


def fst_arcs(o):
    return sum(o.num_arcs(s) for s in o.states())


def fst_forward(o):
    import pywrapfst as fst
    if o.num_states() == 0:
        return -math.inf
    d = fst.shortestdistance(o, reverse=True)
    return -float(str(d[o.start()]))


# ---------------------------------------------------------------------------------------------------- timing
def clone(f):
    """A fresh object with the same tensors (no cached preparation)."""
    return f.clone()


def time_pair(a, b, reps, impl, check_forward=True):
    import pywrapfst as fst
    A, B = to_fst(a), to_fst(b)
    A.arcsort("olabel")
    B.arcsort("ilabel")
    gtn.compose(clone(a), clone(b), impl=impl)  # numba compile / warm-up on other objects
    ca, cb = clone(a), clone(b)
    t0 = time.perf_counter()
    ours = gtn.compose(ca, cb, impl=impl)
    cold = time.perf_counter() - t0
    warm, ofst = [], []
    for _ in range(reps):  # interleaved
        t0 = time.perf_counter()
        ours = gtn.compose(ca, cb, impl=impl)
        warm.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = fst.compose(A, B)
        ofst.append(time.perf_counter() - t0)
    n_ours, n_theirs = ours.num_arcs, fst_arcs(theirs)
    assert n_ours == n_theirs, (n_ours, n_theirs)
    fs = None
    if check_forward:
        fs = float(gtn.forward_score(ours))
        ref = fst_forward(theirs)
        assert fs == ref or abs(fs - ref) <= 1e-6 * max(1.0, abs(ref)), (fs, ref)
        assert fs > -math.inf, "the workload should have paths"

    return dict(in_arcs=a.num_arcs + b.num_arcs, out_arcs=n_ours, cold=cold * 1e3,
                warm=statistics.median(warm) * 1e3, ofst=statistics.median(ofst) * 1e3, fwd=fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    ap.add_argument("--impl", default="auto", choices=["auto", "torch", "numba"])
    args = ap.parse_args()
    r = random.Random(0)
    rows = []
    V, W = 50, 40
    b = mapper(V, W, 4, r)
    for n in args.sizes:  # (a)
        a = lattice(n, V, r)
        rows.append((f"(a) lattice {a.num_arcs} arcs o transducer {b.num_arcs} arcs",
                     time_pair(a, b, args.reps, args.impl)))
    for w in (100, 300):
        lex, G, spellings = lexicon_and_grammar(w, r)
        lg = time_pair(lex, G, args.reps, args.impl, check_forward=False)
        rows.append((f"(b) lexicon {lex.num_arcs} arcs o bigram {G.num_arcs} arcs (cyclic)", lg))
        LG = gtn.compose(lex, G)
        lat = letter_lattice(spellings, 20, r)
        rows.append((f"(b) letter lattice {lat.num_arcs} arcs o (L o G) {LG.num_arcs} arcs",
                     time_pair(lat, LG, args.reps, args.impl)))
    print(f"impl={args.impl}, reps={args.reps}, torch threads={torch.get_num_threads()}")
    print("\nshared reference workload (lattice o cyclic bigram), medians in ms:")
    print("| L W K V | out arcs | gtn.intersect (numba) | gtn.intersect (torch reference) | forward_score of a fresh "
          "result | forward_score, plan cached | scoring plan (numba) | scoring plan (torch reference) | "
          "OpenFst intersect | OpenFst shortestdistance |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in ((60, 20, 5, 30), (100, 40, 5, 30)):
        d = breakdown(size, args.reps)
        print(f"| {' '.join(map(str, size))} | {d['out']} | {d['nb']:.2f} | {d['torch']:.1f} | {d['fwd_fresh']:.2f} | "
              f"{d['fwd_cached']:.2f} | {d['plan_nb']:.2f} | {d['plan_torch']:.2f} | {d['ofst_intersect']:.2f} | "
              f"{d['ofst_sd']:.2f} |")
    print("\nrandom and lexicon workloads:")
    print("| workload | out arcs | gtn cold ms | gtn warm ms | OpenFst ms | warm / OpenFst | gtn warm us per out arc |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, d in rows:
        print(f"| {name} | {d['out_arcs']} | {d['cold']:.2f} | {d['warm']:.2f} | {d['ofst']:.2f} | "
              f"{d['warm'] / d['ofst']:.3f} | {1e3 * d['warm'] / max(d['out_arcs'], 1):.3f} |")


if __name__ == "__main__":
    main()
