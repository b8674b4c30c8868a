"""Benchmark: gtn.compose_score (the fused product kernel) against composing then scoring, in the same run.

Workload: the multi-digit reader's lexicon decoding, synthetic so that it needs no checkpoint. Each of N
"interpretation graphs" is a segmentation DAG over P pieces (a segment of 1..3 consecutive pieces is an arc,
and each segment arc carries 10 digit arcs, labels 1..10, with random scores), as `lenet.StringReader` builds
them; the lexicon is a prefix tree of W random digit strings of lengths 3..6 (as `lenet.recognizer.lexicon_fsa`
builds it; not imported from there, because this folder's lenet.py would shadow the package).
Both routes are checked equal (scores to 1e-6 relative, gradients to 1e-4, best paths' labels identical)
before they are timed; "forward + grad" is the forward score and its backward to both graphs' scores.
Times are medians of REPS runs, one torch thread.

Usage: python benchmarks/compose_score.py [--graphs 60] [--pieces 9] [--words 10000] [--reps 3]
"""
import argparse
import random
import statistics
import time

import torch

import gtn

torch.set_num_threads(1)


def segmentation_graph(pieces: int, r: random.Random) -> gtn.Fsa:
    arcs, scores = [], []
    for i in range(pieces):
        for k in range(1, 4):
            if i + k <= pieces:
                for d in range(1, 11):
                    arcs.append((i, i + k, d))
                    scores.append(r.gauss(-3.0, 2.0))
    arcs.append((pieces, pieces + 1, -1))
    scores.append(0.0)
    return gtn.Fsa(arcs, torch.tensor(scores), num_states=pieces + 2)


def lexicon_fsa(words) -> gtn.Fsa:
    prefixes = sorted({w[:k] for w in words for k in range(1, len(w) + 1)}, key=lambda q: (len(q), q))
    ids = {"": 0, **{q: i + 1 for i, q in enumerate(prefixes)}}
    final = len(prefixes) + 1
    arcs = [(ids[q[:-1]], ids[q], int(q[-1]) + 1) for q in prefixes] + [(ids[w], final, -1) for w in sorted(words)]
    return gtn.Fsa(arcs, torch.zeros(len(arcs)), num_states=final + 1)


def median_time(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=int, default=60)
    ap.add_argument("--pieces", type=int, default=9)
    ap.add_argument("--words", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    r = random.Random(0)
    g = gtn.FsaVec([segmentation_graph(args.pieces + r.randint(-2, 2), r) for _ in range(args.graphs)])
    words = {"".join(r.choice("0123456789") for _ in range(r.randint(3, 6))) for _ in range(args.words)}
    lex = lexicon_fsa(words)
    print(f"{args.graphs} graphs, {g.num_arcs} arcs in all; lexicon {len(words)} words, {lex.num_states} states, "
          f"{lex.num_arcs} arcs; one torch thread, median of {args.reps}")
    with torch.no_grad():
        c = gtn.compose(g, lex)
        print(f"the composition: {c.num_arcs} arcs ({c.num_arcs / args.graphs:.0f} a graph)")
        for name, ls in (("Viterbi score", False), ("forward score", True)):
            ref = (gtn.forward_score if ls else gtn.viterbi_score)(gtn.compose(g, lex))
            got = gtn.compose_score(g, lex, log_semiring=ls, backend="numba")
            fin = torch.isfinite(ref)
            assert torch.equal(fin, torch.isfinite(got))
            assert torch.allclose(got[fin].double(), ref[fin].double(), rtol=1e-6, atol=1e-5)
            t_ref = median_time(lambda: (gtn.forward_score if ls else gtn.viterbi_score)(gtn.compose(g, lex)),
                                args.reps)
            t_got = median_time(lambda: gtn.compose_score(g, lex, log_semiring=ls, backend="numba"), args.reps)
            print(f"{name:14s}: compose + score {t_ref * 1e3:8.1f} ms, compose_score {t_got * 1e3:7.1f} ms, "
                  f"ratio {t_got / t_ref:.3f}")
        def grads(fused):
            x, y = g.clone().requires_grad_(), lex.clone().requires_grad_()
            with torch.enable_grad():
                z = gtn.compose_score(x, y, backend="numba") if fused else gtn.forward_score(gtn.compose(x, y))
                z[torch.isfinite(z)].sum().backward()
            return x.scores.grad, y.scores.grad

        (ga, gb), (ra, rb) = grads(True), grads(False)
        assert torch.allclose(ga, ra, atol=1e-4) and torch.allclose(gb, rb, atol=1e-4)
        t_ref = median_time(lambda: grads(False), args.reps)
        t_got = median_time(lambda: grads(True), args.reps)
        print(f"{'forward + grad':14s}: compose + score {t_ref * 1e3:8.1f} ms, compose_score {t_got * 1e3:7.1f} ms, "
              f"ratio {t_got / t_ref:.3f}")
        ref = gtn.viterbi_path(gtn.compose(g, lex))
        _, got = gtn.compose_score(g, lex, log_semiring=False, return_path=True, backend="numba")
        assert torch.equal(ref.labels, got.labels) and torch.equal(ref.arc_splits, got.arc_splits)
        t_ref = median_time(lambda: gtn.viterbi_path(gtn.compose(g, lex)), args.reps)
        t_got = median_time(lambda: gtn.compose_score(g, lex, log_semiring=False, return_path=True,
                                                      backend="numba"), args.reps)
        print(f"{'Viterbi path':14s}: compose + path  {t_ref * 1e3:8.1f} ms, compose_score {t_got * 1e3:7.1f} ms, "
              f"ratio {t_got / t_ref:.3f}")


if __name__ == "__main__":
    main()
