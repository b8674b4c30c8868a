"""gtn.compat against the native batched API: forward score + backward over many small graphs.

facebookresearch/gtn's users score a batch by building one graph per example and looping with
``gtn.parallel_for`` (see its examples/pytorch_loss.py). This times that pattern on gtn.compat against our
native batched API (one FsaVec, one forward_score, one backward), in the same run, one torch thread:

  compat, parallel_for  per example: linear_graph(T, C), set_weights, forward_score, backward, grad()
  compat, list form     the same graphs scored with one forward_score([...]) call (batched underneath)
  native FsaVec         gtn.FsaVec of the B linear FSAs, gtn.forward_score(...).sum().backward()

All three compute the same numbers (checked). Prints the best time over --repeats runs and the ratios.

Usage: python benchmarks/compat.py [--batch 64] [--frames 20] [--classes 10] [--repeats 7]
"""
import argparse
import os
import time

import torch

import gtn
import gtn.compat as compat


def compat_parallel_for(x):
    B, T, C = x.shape
    grads = torch.empty(B, T, C)
    scores = [0.0] * B

    def process(b):
        g = compat.linear_graph(T, C)
        g.set_weights(x[b].flatten().tolist())
        f = compat.forward_score(g)
        compat.backward(f)
        scores[b] = f.item()
        grads[b] = torch.tensor(g.grad().weights_to_list()).view(T, C)

    compat.parallel_for(process, range(B))
    return torch.tensor(scores), grads


def compat_list(x):
    B, T, C = x.shape
    gs = [compat.linear_graph(T, C) for _ in range(B)]
    for b, g in enumerate(gs):
        g.set_weights(x[b].flatten().tolist())
    fs = compat.forward_score(gs)
    compat.backward(fs)
    return (torch.tensor([f.item() for f in fs]),
            torch.stack([torch.tensor(g.grad().weights_to_list()).view(T, C) for g in gs]))


def linear_arcs(T, C):
    src = torch.arange(T).repeat_interleave(C)
    arcs = torch.stack([src, src + 1, torch.arange(C).repeat(T) + 1], 1)
    return torch.cat([arcs, torch.tensor([[T, T + 1, -1]])])


def native(x, arcs):
    B, T, C = x.shape
    s = x.reshape(B, T * C).clone().requires_grad_()
    scores = torch.cat([s, s.new_zeros(B, 1)], 1)
    vec = gtn.FsaVec([gtn.Fsa(arcs, scores[b]) for b in range(B)])
    tot = gtn.forward_score(vec)
    tot.sum().backward()
    return tot.detach(), s.grad.view(B, T, C)


def best(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(a.batch, a.frames, a.classes)
    arcs = linear_arcs(a.frames, a.classes)
    for fn in (lambda: compat_parallel_for(x), lambda: compat_list(x), lambda: native(x, arcs)):
        fn()  # warm up (numba kernels load from their cache)
    t_pf, (s1, g1) = best(lambda: compat_parallel_for(x), a.repeats)
    t_ls, (s2, g2) = best(lambda: compat_list(x), a.repeats)
    t_nv, (s3, g3) = best(lambda: native(x, arcs), a.repeats)
    for s, g in ((s1, g1), (s2, g2)):
        assert torch.allclose(s, s3, atol=1e-4) and torch.allclose(g, g3, atol=1e-5), "results differ"
    print(f"B={a.batch} graphs of T={a.frames} frames x C={a.classes} classes "
          f"({a.frames * a.classes} arcs each), one torch thread, best of {a.repeats}; load {os.getloadavg()[0]:.2f}")
    print(f"{'route':<24}{'time (ms)':>10}{'vs native':>11}")
    for name, t in (("compat, parallel_for", t_pf), ("compat, list form", t_ls), ("native FsaVec", t_nv)):
        print(f"{name:<24}{t * 1e3:>10.2f}{t / t_nv:>10.1f}x")


if __name__ == "__main__":
    main()
