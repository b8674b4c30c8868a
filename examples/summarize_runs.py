"""Mean ± spread over seeds of `examples/multi_digit.py` runs: the headline figures and the robustness grid.

    for s in 0 1 2; do python examples/multi_digit.py --out runs/reader_s$s.pt --seed $s; done
    python examples/summarize_runs.py runs/reader_s*_metrics.json
    python examples/summarize_runs.py runs/grid_s*.json   # the --json of examples/robustness_grid.py: grids alone

Reads the ``<stem>_metrics.json`` that each run writes beside its checkpoint and prints, over the runs, the
mean and the spread (min–max) of the test strings' string accuracy and digit error before and after global
training and with the lengths known, the isolated error and ceiling of the error budget, the wall times, and
the robustness grid cell by cell (with how many cells miss the goal: overlap ≤ 3 columns, within 3 points of
the ceiling and at least 88 %).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np


def fmt(values, scale=100.0, digits=1, unit=" %"):
    v = scale * np.asarray(values, dtype=float)
    return f"{v.mean():.{digits}f}{unit} ± {(v.max() - v.min()) / 2:.{digits}f} ({v.min():.{digits}f}–{v.max():.{digits}f})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", nargs="+", help="the runs' <stem>_metrics.json files (or the grids that "
                                                   "examples/robustness_grid.py --json writes)")
    a = ap.parse_args(argv)
    runs = []
    for p in a.metrics:
        try:
            run = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            sys.exit(f"cannot read {p}: {e}")
        if isinstance(run, list):   # the rows examples/robustness_grid.py --json writes: a grid alone
            run = {"grid": run, "system": "robustness grid"}
        runs.append(run)
    seeds = [r.get("seed") for r in runs]
    systems = {r.get("system") for r in runs}
    if len(systems) != 1:
        sys.exit(f"the runs mix systems {sorted(map(str, systems))}: summarize one system at a time")
    m = runs[0].get("machine", {})
    print(f"{len(runs)} runs ({systems.pop()}), seeds {seeds}; torch {m.get('torch', '?')}, "
          f"{m.get('threads', '?')} thread(s), CPU {m.get('cpu', '?')} ({m.get('cpu_capability', '?')} kernels)")
    print("± is half the spread (max − min) over the runs; the range follows in brackets")
    for key, name in (("before", "(a) before global training"), ("after", "(b) after global training"),
                      ("known_length", "(b), each length known")):
        rows = [r[key] for r in runs if key in r]
        if rows:
            print(f"{name}: string accuracy {fmt([x['string_accuracy'] for x in rows])}, digit error "
                  f"{fmt([x['digit_error'] for x in rows], digits=2)}")
    budgets = [r["after"]["budget"] for r in runs if "budget" in r.get("after", {})]
    if budgets:
        print(f"isolated error of the final network on the test digits {fmt([b['isolated_error'] for b in budgets], digits=2)}; "
              f"ceiling {fmt([b['ceiling'] for b in budgets])}")
    times = [r.get("timings", {}).get("total") for r in runs]
    if all(t is not None for t in times):
        print(f"wall time {fmt(times, scale=1.0, digits=0, unit=' s')}")
    grids = [r.get("grid") for r in runs]
    if all(grids):
        cells = len(grids[0])
        print("\nrobustness grid, mean over the runs (± half the spread):")
        with_causes = all("causes" in cell for g in grids for cell in g)
        CAUSES = list(grids[0][0]["causes"]) if with_causes else []  # lenet.robustness.CAUSES, in its order
        head = "| height | touching | overlap ≤ | string accuracy | digit error | ceiling | gap |"
        rule = "| --- | --- | --- | --- | --- | --- | --- |"
        if with_causes:
            head += " wrong (mean): " + " / ".join(CAUSES) + " |"
            rule += " --- |"
        print(head)
        print(rule)
        missed = dict.fromkeys(CAUSES, 0.0)
        miss = 0
        counted = 0
        for i in range(cells):
            c = grids[0][i]
            acc = np.array([g[i]["string_accuracy"] for g in grids])
            err = np.array([g[i]["digit_error"] for g in grids])
            ceil = np.array([g[i]["ceiling"] for g in grids])
            gap = ceil.mean() - acc.mean()
            line = (f"| {c['height']} | {100 * c['touch']:.0f} % | {c['max_overlap']} | "
                    f"{100 * acc.mean():.1f} ± {50 * (acc.max() - acc.min()):.1f} % | "
                    f"{100 * err.mean():.2f} % | {100 * ceil.mean():.1f} % | {100 * gap:+.1f} |")
            why = {k: float(np.mean([g[i]["causes"].get(k, 0) for g in grids])) for k in CAUSES} if with_causes else {}
            if with_causes:
                line += " " + " / ".join(f"{v:.1f}" for v in why.values()) + " |"
            print(line)
            if c["max_overlap"] <= 3:
                counted += 1
                bad = gap > 0.03 or acc.mean() < 0.88
                miss += bad
                if bad:
                    for k, v in why.items():
                        missed[k] += v
        allacc = np.array([[g[i]["string_accuracy"] for i in range(cells)] for g in grids])
        print(f"mean over the {cells} cells {100 * allacc.mean():.1f} % (per run: "
              f"{', '.join(f'{100 * x:.1f} %' for x in allacc.mean(1))}); cells with overlap ≤ 3 more than 3 points "
              f"below their ceiling or under 88 % (means): {miss} of {counted}")
        if with_causes and miss:
            n = max(sum(missed.values()), 1e-9)
            print("wrong strings of those cells by cause (mean over the runs): " +
                  ", ".join(f"{k} {v:.1f} ({100 * v / n:.0f} %)" for k, v in missed.items()))


if __name__ == "__main__":
    main()
