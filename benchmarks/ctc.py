"""CTC loss, forward + backward through log_softmax: gtn (fused and generic routes) against torch, CPU.

Usage:  python benchmarks/ctc.py [--repeats 9] [--rounds 2] [--shapes 16,200,28,40 32,500,80,100]
        python benchmarks/ctc.py --interleaved --repeats 31     (torch and gtn alternating in one process)

Implementations (each timed in its own subprocess, so peak memory is per implementation):
  torch        torch.nn.functional.ctc_loss
  gtn          gtn.ctc_loss (CTC graphs + the fused frame loop; numba kernel on CPU)
  gtn-torch    gtn.ctc_loss with GTN_DENSE_BACKEND=torch (the pure-torch frame loop)
  fused-graph  the generic fused route with a user-built graph: gtn.dense_forward_score(graphs, DenseFsaVec)
               where graphs = gtn.compose(gtn.ctc_topo(C), linear_fsa(targets)) built once, outside the timing
  lattice      the generic lattice route: gtn.forward_score(gtn.intersect_dense(graphs, dense)) (same graphs)

Each configuration runs with 1 thread and with all threads; rounds are interleaved (torch, gtn, ... then again)
to spread the machine's noise. Reported: median ms of `repeats` steps (after one untimed warm-up step, which
also keeps numba's first-call compilation out), the ratio to torch in the same round, and the peak RSS growth
during the steps (ru_maxrss after - before, MiB, measured after a tiny warm-up problem has loaded the libraries
and kernels). The loss checksum must agree across implementations.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time


def run_one(impl, B, T, C, U, threads, repeats, warm=True):
    if impl == "gtn-torch":
        os.environ["GTN_DENSE_BACKEND"] = "torch"
    import torch
    import gtn
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    logits0 = torch.randn(T, B, C, generator=g)
    targets = torch.randint(1, C, (B, U), generator=g)
    il = torch.full((B,), T)
    tl = torch.full((B,), U)
    if impl == "torch":
        def loss_fn(lp):
            return torch.nn.functional.ctc_loss(lp, targets, il, tl, reduction="sum")
    elif impl in ("gtn", "gtn-torch"):
        def loss_fn(lp):
            return gtn.ctc_loss(lp, targets, il, tl, reduction="sum")
    else:
        from gtn.compose import compose
        graphs = compose(gtn.ctc_topo(C), gtn.linear_fsa(targets.tolist()))

        if impl == "fused-graph":
            def loss_fn(lp):
                return -gtn.dense_forward_score(graphs, gtn.DenseFsaVec(lp.transpose(0, 1), il)).sum()
        elif impl == "lattice":
            def loss_fn(lp):
                return -gtn.forward_score(gtn.intersect_dense(graphs, gtn.DenseFsaVec(lp.transpose(0, 1), il))).sum()
        else:
            raise SystemExit(f"unknown impl {impl}")

    def step():
        x = logits0.clone().requires_grad_(True)
        loss = loss_fn(x.log_softmax(-1))
        loss.backward()
        return float(loss.detach())

    if warm:  # load libraries and numba kernels on a tiny problem first, so the peak below is the computation's
        run_one(impl, 2, 6, C, 2, threads, 1, warm=False)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = step()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ts.sort()
    if warm:
        print(json.dumps(dict(ms=1e3 * ts[len(ts) // 2], min_ms=1e3 * ts[0], loss=loss, peak_mib=(rss1 - rss0) / 1024)))


def interleaved(shapes, threads, repeats):
    """torch and gtn.ctc_loss alternating step by step in one process: the per-pair ratio is robust to the
    load of a shared machine changing from second to second."""
    import torch
    import gtn
    from reference import ctc_inputs, ctc_step   # this folder's reference workloads (same seeded inputs)
    torch.set_num_threads(threads)
    print(f"| B,T,C,U | threads | torch median ms | gtn median ms | median of per-pair ratios gtn/torch | "
          f"min ms torch / gtn |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shape in shapes:
        B, T, C, U = (int(x) for x in shape.split(","))
        inputs = ctc_inputs(B, T, C, U)      # the reference workload's seeded inputs

        def step(fn):
            return ctc_step(fn, inputs)

        fns = (torch.nn.functional.ctc_loss, gtn.ctc_loss)
        losses = [step(f) for f in fns]  # warm-up (numba kernels load here)
        assert abs(losses[0] - losses[1]) <= 1e-4 * abs(losses[0]), losses
        ts = [[], []]
        for _ in range(repeats):
            for i, f in enumerate(fns):
                t0 = time.perf_counter()
                step(f)
                ts[i].append(time.perf_counter() - t0)
        ratios = sorted(b / a for a, b in zip(*ts))
        med = [1e3 * sorted(t)[len(t) // 2] for t in ts]
        print(f"| {shape} | {threads} | {med[0]:.1f} | {med[1]:.1f} | {ratios[len(ratios) // 2]:.2f} | "
              f"{1e3 * min(ts[0]):.1f} / {1e3 * min(ts[1]):.1f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", nargs="*", default=["16,200,28,40", "32,500,80,100"])
    ap.add_argument("--impls", default="torch,gtn,gtn-torch,fused-graph,lattice")
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}")
    ap.add_argument("--one", nargs=7, help=argparse.SUPPRESS)
    ap.add_argument("--interleaved", action="store_true",
                    help="torch and gtn.ctc_loss alternating in one process (per-pair ratios), then exit")
    a = ap.parse_args()
    if a.interleaved:
        for threads in a.threads.split(","):
            interleaved(a.shapes, int(threads), a.repeats)
        return
    if a.one:
        impl, B, T, C, U, threads, repeats = a.one
        run_one(impl, int(B), int(T), int(C), int(U), int(threads), int(repeats))
        return
    impls = a.impls.split(",")
    print(f"| B,T,C,U | threads | impl | median ms (rounds) | ratio to torch | peak RSS growth MiB | loss |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for shape in a.shapes:
        B, T, C, U = shape.split(",")
        for threads in a.threads.split(","):
            res = {i: [] for i in impls}
            for _ in range(a.rounds):
                for impl in impls:
                    reps = a.repeats if impl != "gtn-torch" and impl != "lattice" else max(3, a.repeats // 3)
                    out = subprocess.run([sys.executable, __file__, "--one", impl, B, T, C, U, threads, str(reps)],
                                         capture_output=True, text=True)
                    if out.returncode:
                        print(out.stderr, file=sys.stderr)
                        raise SystemExit(out.returncode)
                    res[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
            for impl in impls:
                ms = [r["ms"] for r in res[impl]]
                ratios = [r["ms"] / t["ms"] for r, t in zip(res[impl], res["torch"])] if "torch" in res else []
                print(f"| {shape} | {threads} | {impl} | {' / '.join(f'{m:.1f}' for m in ms)} | "
                      f"{' / '.join(f'{x:.2f}' for x in ratios)} | {max(r['peak_mib'] for r in res[impl]):.1f} | "
                      f"{res[impl][0]['loss']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
