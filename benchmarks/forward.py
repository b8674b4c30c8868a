"""Forward score + backward on lattice-shaped FsaVecs from ~1e3 to ~1e6 total arcs.

Each lattice: a start state, LEVELS levels of WIDTH states, FANOUT random arcs from each state to the next
level, and a final state (the shape of `benchmarks/reference.py forward`, shorter). The batch grows from 1 to
1024 lattices, so the depth stays fixed and the time should grow linearly with the arcs (log-log slope ~1).

Prints, for the numba kernels (CPU default when numba imports) and for the pure-torch level DP: the best time
of forward_score(...).sum().backward() over REPEATS runs, arcs per second, and the log-log slope of time
against arcs. The level structure is cached on the FsaVec, as in a training loop; the first (untimed) call
builds it.

Usage: python benchmarks/forward.py [--repeats 7] [--threads 1] [--max-lattices 1024]
"""
import argparse
import math
import time

import torch

import gtn
from gtn import scoring
from gtn.fsa import from_arcs

LEVELS, WIDTH, FANOUT = 10, 20, 5


def lattices(n: int, seed: int = 0, dtype=torch.float32) -> gtn.FsaVec:
    """n random lattices in one FsaVec, built with tensor ops (arcs sorted by (member, src))."""
    g = torch.Generator().manual_seed(seed)
    L, W, K = LEVELS, WIDTH, FANOUT
    final = 1 + L * W
    first = torch.stack([torch.zeros(W, dtype=torch.int64), 1 + torch.arange(W)], 1)  # start -> level 0
    src_mid = (1 + torch.arange((L - 1) * W)).repeat_interleave(K)  # K arcs per state of levels 0..L-2
    lvl = (src_mid - 1) // W
    dst_mid = 1 + (lvl + 1).unsqueeze(0) * W + torch.randint(0, W, (n, src_mid.numel()), generator=g)
    last = torch.stack([1 + (L - 1) * W + torch.arange(W), torch.full((W,), final)], 1)
    na = W + src_mid.numel() + W
    arcs = torch.empty(n, na, 3, dtype=torch.int64)
    arcs[:, :W, :2] = first
    arcs[:, W:W + src_mid.numel(), 0] = src_mid
    arcs[:, W:W + src_mid.numel(), 1] = dst_mid
    arcs[:, W + src_mid.numel():, :2] = last
    arcs[:, :, 2] = torch.randint(1, 31, (n, na), generator=g)
    arcs[:, -W:, 2] = -1
    scores = torch.rand(n * na, generator=g, dtype=torch.float64).mul(2).sub(1).to(dtype)
    arc_splits = torch.arange(n + 1, dtype=torch.int64) * na
    state_splits = torch.arange(n + 1, dtype=torch.int64) * (final + 1)
    return from_arcs(arcs.view(-1, 3), scores, arc_splits, state_splits)


def time_fb(v: gtn.FsaVec, repeats: int) -> float:
    v.requires_grad_(True)

    def run():
        v.scores.grad = None
        tot = gtn.forward_score(v)
        tot.sum().backward()
        return tot

    run()  # builds and caches the level structure (and compiles numba kernels on first use)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    # the minimum: on a shared machine the other processes only ever add time
    return min(ts)


def slope(xs, ys):
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-lattices", type=int, default=1024)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    has_numba = scoring._kernels() is not None
    print(f"torch {torch.__version__}, torch threads: {torch.get_num_threads()}, numba kernels: "
          f"{'yes' if has_numba else 'no'}; lattices of {LEVELS} levels x {WIDTH} states, fan-out {FANOUT}; "
          f"forward_score + backward, float32, best of {args.repeats}")
    sizes = []
    n = 1
    while n <= args.max_lattices:
        sizes.append(n)
        n *= 4
    rows = []
    for n in sizes:
        v = lattices(n)
        r = {"n": n, "arcs": v.num_arcs}
        for name, flag in (("numba", True), ("torch", False)):
            if flag and not has_numba:
                continue
            scoring.use_numba(flag)
            w = gtn.FsaVec._from_parts(v.arcs, v.scores.detach().clone(), v.arc_splits, v.state_splits)
            r[name] = time_fb(w, args.repeats)
        scoring.use_numba(True)
        rows.append(r)
        cols = [f"{r['n']:>5} lattices {r['arcs']:>9,} arcs"]
        for name in ("numba", "torch"):
            if name in r:
                cols.append(f"{name}: {1e3 * r[name]:9.2f} ms {r['arcs'] / r[name] / 1e6:7.2f} M arcs/s")
        print(" | ".join(cols), flush=True)
    for name in ("numba", "torch"):
        if name in rows[0]:
            print(f"log-log slope of time vs arcs ({name}): {slope([r['arcs'] for r in rows], [r[name] for r in rows]):.3f}"
                  f"   (over the 3 largest sizes: "
                  f"{slope([r['arcs'] for r in rows[-3:]], [r[name] for r in rows[-3:]]):.3f})")


if __name__ == "__main__":
    main()
