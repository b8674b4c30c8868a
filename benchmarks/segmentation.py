"""Coverage of the segmentation graph over the robustness grid: how often the true segmentation is a path.

    python benchmarks/segmentation.py [--strings 200] [--tolerance 0.1 0.2] [--picture docs/img/cut_paths.png]
    python benchmarks/segmentation.py --bounds   # also what any grouping of the pieces, any vertical cuts, cut
                                                 # paths placed row by row, or a graph of cuts could
    python benchmarks/segmentation.py --bounds owner   # only the cut paths priced with the owner map's knowledge

For every cell of `lenet.strings.GRID` (heights 24/32/40; no touching pairs, or 30 % / 60 % touching with ink
boxes overlapping by up to 0-4 columns) it renders ``--strings`` strings of 3-6 test digits and reports, for
the straight vertical cuts (``SegmentParams(cut_paths=0)``, the default), for the least-ink cut paths
(``SegmentParams(cut_paths=0.3, max_pieces=10)``, the example's ``--cut-paths 0.3 --max-pieces 10``) and for the
same cut paths started from every column (``cut_starts="every"``, ``--cut-starts every``), for those kept in the
learned order (``cut_rank="learned"``, `lenet.cut_ranker`, ``--cut-rank learned``) and for those priced by the
boundary network (``cut_cost="learned"``, `lenet.boundary_net`, ``--cut-cost learned``), the **coverage** — the share
of strings whose true segmentation is a path of their graph (`lenet.segment.true_path`: each segment holds at least
1 - tolerance of its digit's ink and at least 1 - tolerance of its ink is that digit's, judged on the renderer's
owner map) — with the graph's size (segment arcs per string) and the segmentation time per string (one torch
thread). ``--picture`` draws both segmentations of a few strings with overlapping digits; ``--misses-picture``
strings the cut paths from every column miss, beside the cut paths placed row by row with the owner map's
knowledge; ``--boundary-picture`` strings the boundary network's price covers and the ink price does not.
``--bounds`` adds what bounds the coverage, among them the cut paths from every column taken in the order of their
closeness to the true boundaries instead of their ink cost (`lenet.segment.ranked_path_bound`), and a graph whose
states are the least-ink cut paths started from every column, none dropped (`lenet.segment.cut_graph`): its
coverage and arcs per string, with cuts that split the ink alike merged at each setting of ``CUT_GRAPH_MERGES``;
and the cut paths from every column priced with the owner map's knowledge (`lenet.segment.owner_cost_bound`:
severing two pixels of different digits costs nothing), what a perfect boundary network would give. ``--bounds NAME
...`` measures only the bounds named (`BOUNDS`).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this folder's lenet.py would shadow the package
import lenet  # noqa: E402
from lenet.segment import (INK_THRESHOLD, SegmentParams, column_bound, cut_graph, cut_graph_bound,  # noqa: E402
                           grouping_bound, owner_cost_segment, row_cut_bound, row_cuts, segment, true_path, truth_ranked_segment)
from lenet.strings import GRID, make_strings  # noqa: E402

#: `--bounds`: the graphs of cuts measured (`lenet.segment.cut_graph`'s ``merge``: cuts splitting the ink alike up
#: to this × unit² pixels are one state); the first is the table's column.
CUT_GRAPH_MERGES = (0.0, 0.01, 0.02, 0.04)

CONFIGS = {"straight cuts": SegmentParams(cut_paths=0.0), "cut paths": SegmentParams(cut_paths=0.3, max_pieces=10),
           "cut paths from every column": SegmentParams(cut_paths=0.3, max_pieces=10, cut_starts="every"),
           "the same, kept in the learned order": SegmentParams(cut_paths=0.3, max_pieces=10, cut_starts="every",
                                                                cut_rank="learned"),
           "the same, priced by the boundary network": SegmentParams(cut_paths=0.3, max_pieces=10,
                                                                     cut_starts="every", cut_cost="learned")}
#: What ``--bounds`` can measure (all by default): any grouping of each configuration's pieces, vertical cuts at
#: any columns, cut paths placed row by row, the candidates ranked by the truth, graphs of cuts, and the cut paths
#: from every column priced with the owner map's knowledge.
BOUNDS = ("grouping", "columns", "rows", "ranked", "graph", "owner")


def picture(path, n=4, seed=5):
    """Straight cuts (left) and cut paths (right) on strings whose neighbours all touch and overlap."""
    strings = make_strings(40, "test", seed=seed, touch=1.0, max_overlap=3, lengths=(3, 4))
    shown = []
    shown_configs = {n: CONFIGS[n] for n in ("straight cuts", "cut paths")}
    for s in strings:   # strings the cut paths cover and the straight cuts do not
        a, b = (segment(s.image, p) for p in shown_configs.values())
        if true_path(a, s.image, s.owner) is None and true_path(b, s.image, s.owner) is not None:
            shown.append((s, a, b))
        if len(shown) == n:
            break
    _draw(path, [(s, [(name, seg.piece_map) for name, seg in zip(shown_configs, segs)]) for s, *segs in shown])


def _draw(path, rows):
    """One row of panels per string: ``rows`` = ``[(string, [(title, piece_map), ...]), ...]``, every piece (or
    digit) of a map in its own colour (colours repeat every ten), shaded by the string's ink; a floating-point map
    (a chance per pixel) is drawn in red over the grey ink."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(rows), len(rows[0][1]), figsize=(7, 1.25 * len(rows)), squeeze=False)
    cm = plt.get_cmap("tab10")
    for row, (s, maps) in zip(axes, rows):
        x = s.image.numpy() / 255.0
        for ax, (name, pm) in zip(row, maps):
            pm = np.asarray(pm)
            if np.issubdtype(pm.dtype, np.floating):
                grey = 0.6 * x
                rgb = np.stack([np.maximum(grey, pm), grey * (1 - pm), grey * (1 - pm)], -1)
            else:
                rgb = np.array([cm(i % 10)[:3] for i in pm.ravel()]).reshape(*pm.shape, 3) * x[..., None]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {s.label}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def boundary_picture(path, n=4, seed=5):
    """Strings whose neighbours all touch and overlap that the cut paths from every column cover when priced by
    the boundary network and not when priced by their ink: the ink-priced pieces (left), the network's chance
    that a pixel and its left or lower neighbour belong to different digits (the larger of the two, on pairs of
    inked pixels, middle),
    and the network-priced pieces (right)."""
    from lenet.boundary_net import default_boundary_net
    from lenet.segment import as_float_image
    net = default_boundary_net()
    by_ink, priced = CONFIGS["cut paths from every column"], CONFIGS["the same, priced by the boundary network"]
    strings = make_strings(60, "test", seed=seed, touch=1.0, max_overlap=3, lengths=(3, 4))
    rows = []
    for s in strings:
        a, b = segment(s.image, by_ink), segment(s.image, priced)
        if true_path(a, s.image, s.owner) is None and true_path(b, s.image, s.owner) is not None:
            x = as_float_image(s.image).numpy()
            across, under = net.apart(x)
            ink = x > INK_THRESHOLD           # only pairs of two inked pixels are priced: the others are not shown
            across = across * ink * np.concatenate([ink[:, :1], ink[:, :-1]], 1)
            under = under * ink[:-1] * ink[1:]
            chance = np.maximum(across, np.concatenate([under, np.zeros_like(under[:1])]))
            rows.append((s, [("priced by ink", a.piece_map), ("two digits meet", chance),
                             ("priced by the network", b.piece_map)]))
        if len(rows) == n:
            break
    _draw(path, rows)


def misses_picture(path, n=4, seed=5):
    """Strings whose neighbours all touch and overlap that the cut paths from every column miss: their pieces
    (left) against the cut paths placed row by row with the owner map's knowledge (`row_cuts`, right), each piece
    or digit in its own colour (colours repeat every ten)."""
    params = CONFIGS["cut paths from every column"]
    strings = make_strings(60, "test", seed=seed, touch=1.0, max_overlap=3, lengths=(3, 4))
    shown = []
    for s in strings:
        seg = segment(s.image, params)
        if true_path(seg, s.image, s.owner) is None and row_cut_bound(s.image, s.owner):
            shown.append((s, seg))
        if len(shown) == n:
            break
    _draw(path, [(s, [("cut paths from every column", seg.piece_map),
                      ("cut paths placed row by row", row_cuts(s.image, s.owner))]) for s, seg in shown])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strings", type=int, default=200, help="strings per grid cell")
    ap.add_argument("--tolerance", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--picture", help="write a PNG of both segmentations of overlapping digits")
    ap.add_argument("--misses-picture", help="write a PNG of strings the cut paths from every column miss, beside "
                                             "the cut paths placed row by row (lenet.segment.row_cuts)")
    ap.add_argument("--boundary-picture", help="write a PNG of strings the boundary network's price covers and the "
                                               "ink price does not, with the network's map")
    ap.add_argument("--bounds", nargs="*", choices=BOUNDS, metavar="BOUND",
                    help=f"also the bounds at the first tolerance (all, or those named: {', '.join(BOUNDS)}): "
                         "the share of strings whose pieces some grouping "
                         "could make the true segmentation (lenet.segment.grouping_bound), the share that "
                         "vertical cuts at some columns could (lenet.segment.column_bound), the share that cut "
                         "paths placed row by row with the owner map's knowledge do (lenet.segment.row_cut_bound), "
                         "the share that the cut paths from every column ranked by their closeness to the true "
                         "boundaries make (lenet.segment.ranked_path_bound), and the share that a graph whose states "
                         "are the least-ink cut paths from every column, none dropped, holds "
                         "(lenet.segment.cut_graph_bound), with its arcs, for the merge settings CUT_GRAPH_MERGES, "
                         "and the share that the cut paths from every column priced with the owner map's knowledge "
                         "make (lenet.segment.owner_cost_bound: a perfect boundary network), with its arcs")
    a = ap.parse_args()
    bounds = set() if a.bounds is None else set(a.bounds or BOUNDS)
    torch.set_num_threads(1)
    digits = lenet.load_digits("test", raw=True)
    cells = [(c, make_strings(a.strings, "test", seed=30_000 + i, digits=digits, **c)) for i, c in enumerate(GRID)]
    res = {}
    for name, params in CONFIGS.items():
        rows = []
        for cell, strings in cells:
            t = time.perf_counter()
            segs = [segment(s.image, params) for s in strings]
            ms = 1000 * (time.perf_counter() - t) / len(strings)
            cov = [np.mean([true_path(g, s.image, s.owner, tol) is not None for g, s in zip(segs, strings)])
                   for tol in a.tolerance]
            group = (np.mean([grouping_bound(g, s.image, s.owner, a.tolerance[0]) for g, s in zip(segs, strings)])
                     if "grouping" in bounds else None)
            rows.append((cov, np.mean([g.num_segments for g in segs]), ms, group))
        res[name] = rows
    columns = ([np.mean([column_bound(s.image, s.owner, a.tolerance[0]) for s in strings]) for _, strings in cells]
               if "columns" in bounds else None)
    row_cuts = ([np.mean([row_cut_bound(s.image, s.owner, a.tolerance[0]) for s in strings]) for _, strings in cells]
                if "rows" in bounds else None)
    every = CONFIGS["cut paths from every column"]
    ranked = owner = None   # per cell: (share covered, arcs per string)
    for name, build in (("ranked", truth_ranked_segment), ("owner", owner_cost_segment)):
        if name not in bounds:
            continue
        per_cell = []
        for _, strings in cells:
            segs = [build(s.image, s.owner, every) for s in strings]
            per_cell.append((np.mean([true_path(g, s.image, s.owner, a.tolerance[0]) is not None
                                      for g, s in zip(segs, strings)]), np.mean([g.num_segments for g in segs])))
        ranked, owner = (per_cell, owner) if name == "ranked" else (ranked, per_cell)
    graphs = {}   # merge -> per cell: (share covered, arcs per string)
    for merge in (CUT_GRAPH_MERGES if "graph" in bounds else ()):
        per_cell = []
        for _, strings in cells:
            gs = [cut_graph(s.image, CONFIGS["cut paths from every column"], merge) for s in strings]
            per_cell.append((np.mean([cut_graph_bound(s.image, s.owner, tolerance=a.tolerance[0], graph=g)
                                      for g, s in zip(gs, strings)]), np.mean([g.num_arcs for g in gs])))
        graphs[merge] = per_cell
    tols = " / ".join(f"{t:g}" for t in a.tolerance)
    head = " | ".join(f"{n}: coverage at {tols}, arcs" for n in CONFIGS)
    print(f"{a.strings} strings of 3-6 test digits per cell; tolerance {tols} of each digit's ink")
    print(f"| height | touching | overlap ≤ | {head} |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in CONFIGS) + " |")
    for i, (cell, _) in enumerate(cells):
        parts = [" / ".join(f"{100 * c:.1f} %" for c in res[n][i][0]) + f", {res[n][i][1]:.0f}" for n in CONFIGS]
        print(f"| {cell['height']} | {100 * cell['touch']:.0f} % | {cell['max_overlap']} | " + " | ".join(parts) + " |")
    for n in CONFIGS:
        cov = np.array([r[0] for r in res[n]])          # [cells, tolerances]
        ov = np.array([c["max_overlap"] for c, _ in cells])
        summary = ", ".join(f"tolerance {t:g}: mean {100 * cov[:, k].mean():.1f} %, worst {100 * cov[:, k].min():.1f} %"
                            f" (overlap ≤ 2: worst {100 * cov[ov <= 2, k].min():.1f} %)"
                            for k, t in enumerate(a.tolerance))
        print(f"{n}: {summary}; {np.mean([r[1] for r in res[n]]):.1f} arcs and "
              f"{np.mean([r[2] for r in res[n]]):.1f} ms per string")
    if bounds:
        t0 = a.tolerance[0]
        ov = np.array([c["max_overlap"] for c, _ in cells])

        def pct(v):
            return f"{100 * v:.1f} %"

        def worst(v):
            v = np.asarray(v)
            return (f"mean {pct(v.mean())}, worst {pct(v.min())} (overlap ≤ 2: worst {pct(v[ov <= 2].min())}, "
                    f"overlap 3: worst {pct(v[ov == 3].min())})")

        cols = []   # (heading, per-cell text)
        if "grouping" in bounds:
            cols += [(f"{n}: coverage / any grouping", [f"{pct(r[0][0])} / {pct(r[3])}" for r in res[n]])
                     for n in CONFIGS]
        if columns is not None:
            cols.append(("cuts at any columns", [pct(v) for v in columns]))
        if row_cuts is not None:
            cols.append(("cut paths placed row by row", [pct(v) for v in row_cuts]))
        if ranked is not None:
            cols.append(("cut paths from every column, ranked by the truth: coverage, arcs",
                         [f"{pct(c)}, {n:.0f}" for c, n in ranked]))
        if graphs:
            cols.append(("graph of cuts: coverage, arcs",
                         [f"{pct(c)}, {n:.0f}" for c, n in graphs[CUT_GRAPH_MERGES[0]]]))
        if owner is not None:
            cols.append(("cut paths from every column, priced by the owner map: coverage, arcs",
                         [f"{pct(c)}, {n:.0f}" for c, n in owner]))
        print(f"\nbounds at tolerance {t0:g}: coverage / any grouping of the same pieces, per segmentation; "
              f"vertical cuts at any columns; cut paths placed row by row (lenet.segment.row_cut_bound); the cut "
              f"paths from every column taken nearest the true boundaries first (lenet.segment.ranked_path_bound), "
              f"and its arcs; a graph of every least-ink cut path from every column "
              f"(lenet.segment.cut_graph_bound), and its arcs; the cut paths from every column priced with the owner "
              f"map's knowledge (lenet.segment.owner_cost_bound), and its arcs (those asked for)")
        print("| height | touching | overlap ≤ | " + " | ".join(h for h, _ in cols) + " |")
        print("| --- | --- | --- | " + " | ".join("---" for _ in cols) + " |")
        for i, (cell, _) in enumerate(cells):
            print(f"| {cell['height']} | {100 * cell['touch']:.0f} % | {cell['max_overlap']} | "
                  + " | ".join(v[i] for _, v in cols) + " |")
        if "grouping" in bounds:
            for n in CONFIGS:
                cov = np.array([r[0][0] for r in res[n]])
                grp = np.array([r[3] for r in res[n]])
                print(f"{n}: coverage mean {pct(cov.mean())}, any grouping of its pieces mean {pct(grp.mean())}"
                      f" (the two differ in {int((cov != grp).sum())} of {len(cells)} cells)")
        if columns is not None:
            print(f"cuts at any columns: {worst(columns)}")
        if row_cuts is not None:
            print(f"cut paths placed row by row: {worst(row_cuts)}")
        if ranked is not None:
            print(f"cut paths from every column, ranked by the truth: {worst([c for c, _ in ranked])}; "
                  f"{np.mean([n for _, n in ranked]):.1f} arcs per string")
        for merge, per_cell in graphs.items():
            print(f"graph of cuts, cuts merged below {merge:g} × unit² ink pixels apart: "
                  f"{worst([c for c, _ in per_cell])}; {np.mean([n for _, n in per_cell]):.1f} arcs per string")
        if owner is not None:
            print(f"cut paths from every column, priced by the owner map: {worst([c for c, _ in owner])}; "
                  f"{np.mean([n for _, n in owner]):.1f} arcs per string")
    if a.picture:
        picture(a.picture)
        print(f"wrote {a.picture}")
    if a.misses_picture:
        misses_picture(a.misses_picture)
        print(f"wrote {a.misses_picture}")
    if a.boundary_picture:
        boundary_picture(a.boundary_picture)
        print(f"wrote {a.boundary_picture}")


if __name__ == "__main__":
    main()
