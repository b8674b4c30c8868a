"""Input/output: k2's text format (scores, one final state), OpenFst's (costs, several final states with
weights), Graphviz source and pictures (`to_dot`, `draw`), networkx graphs (`to_networkx`, `from_networkx`)
and, when k2 is installed, k2 objects (`to_k2`, `from_k2`)."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from .fsa import Fsa, FsaError, FsaVec

__all__ = ["from_str", "to_str", "to_dot", "draw", "to_networkx", "from_networkx", "to_k2", "from_k2"]


def _fmt_scores(scores: torch.Tensor, negate: bool = False) -> List[str]:
    """Shortest text that reads back to exactly the same value in the scores' dtype."""
    s = scores.detach().cpu()
    if negate:
        s = 0.0 - s  # not -s: a zero cost must print as 0, not -0
    if s.dtype == torch.float64:
        return [repr(float(x)) for x in s.tolist()]
    arr = s.to(torch.float32).numpy()
    return [str(x) for x in arr]  # numpy float32 prints its shortest round-trip form


def _parse_float(tok: str, lineno: int) -> float:
    try:
        return float(tok)
    except ValueError:
        raise FsaError(f"line {lineno}: {tok!r} is not a number") from None


def _parse_int(tok: str, lineno: int) -> int:
    try:
        v = int(tok)
    except ValueError:
        raise FsaError(f"line {lineno}: {tok!r} is not an integer") from None
    if not -2 ** 63 <= v < 2 ** 63:  # states and labels are int64 tensors
        raise FsaError(f"line {lineno}: {tok!r} does not fit in a 64-bit integer")
    return v


def _empty(acceptor: bool, dtype) -> Fsa:
    """The FSA with no states (of the kind asked for: a transducer keeps empty aux_labels)."""
    aux = None if acceptor else torch.zeros(0, dtype=torch.int64)
    return Fsa(torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=dtype), aux, num_states=0)


def from_str(text: str, acceptor: bool = True, openfst: bool = False, dtype: torch.dtype = torch.float32) -> Fsa:
    """Parse one FSA from text.

    k2 format (default): one arc a line, ``src dst label score`` (acceptor) or ``src dst label aux_label score``
    (transducer, ``acceptor=False``); the last line holds the final state alone. Arcs keep the order given
    when it is sorted by source state; otherwise they are stable-sorted by source state.

    OpenFst format (``openfst=True``): ``src dst ilabel [olabel] [cost]`` arcs and ``state [cost]`` final
    lines, costs = ``-score``; the start state is the source of the first arc. States are renumbered so the
    start is 0, and a new last state becomes k2's single final state, entered from each OpenFst final state by
    a ``-1`` arc whose score is minus the final cost.
    """
    lines = [(i + 1, ln.split()) for i, ln in enumerate(text.splitlines())]
    lines = [(i, t) for i, t in lines if t and not t[0].startswith("#")]
    if openfst:
        return _from_openfst(lines, acceptor, dtype)
    if not lines:
        return _empty(acceptor, dtype)
    ncols = 4 if acceptor else 5
    arcs, scores, aux = [], [], []
    final = None
    for k, (lineno, toks) in enumerate(lines):
        if len(toks) == 1:
            if k != len(lines) - 1:
                raise FsaError(f"line {lineno}: a line with one field (the final state) must be the last line")
            final = _parse_int(toks[0], lineno)
            continue
        if len(toks) != ncols:
            want = "src dst label score" if acceptor else "src dst label aux_label score"
            raise FsaError(f"line {lineno}: expected {ncols} fields ({want}), got {len(toks)}: {' '.join(toks)!r}"
                           + ("; pass acceptor=False for a transducer" if acceptor and len(toks) == 5 else ""))
        arcs.append([_parse_int(t, lineno) for t in toks[:3]])
        if not acceptor:
            aux.append(_parse_int(toks[3], lineno))
        scores.append(_parse_float(toks[-1], lineno))
    if final is None:
        raise FsaError("the last line must hold the final state alone")
    if final >= 2 ** 63 - 1:
        raise FsaError(f"final state {final}: the number of states would not fit in a 64-bit integer")
    num_states = final + 1
    arcs_t = torch.tensor(arcs, dtype=torch.int64).view(-1, 3)
    if arcs_t.numel() and int(arcs_t[:, :2].max()) > final:
        i = int(torch.nonzero((arcs_t[:, :2] > final).any(1))[0, 0])
        raise FsaError(f"line {lines[i][0]}: state {int(arcs_t[i, :2].max())} is beyond the final state {final}; "
                       "the final state must be the highest-numbered state")
    return Fsa(arcs_t, torch.tensor(scores, dtype=dtype), None if acceptor else torch.tensor(aux, dtype=torch.int64),
               num_states=num_states)


def _from_openfst(lines, acceptor: bool, dtype) -> Fsa:
    arc_rows, finals = [], {}
    start = None
    for lineno, toks in lines:
        n = len(toks)
        if n <= 2:
            st = _parse_int(toks[0], lineno)
            if st < 0:
                raise FsaError(f"line {lineno}: negative state {st} in OpenFst text")
            cost = _parse_float(toks[1], lineno) if n == 2 else 0.0
            finals[st] = cost
            if start is None and not arc_rows:
                start = st
            continue
        if acceptor:
            if n not in (3, 4):
                raise FsaError(f"line {lineno}: an OpenFst acceptor arc is 'src dst label [cost]', got {n} fields"
                               + ("; pass acceptor=False for a transducer" if n == 5 else ""))
            src, dst, il = (_parse_int(t, lineno) for t in toks[:3])
            ol, cost = il, (_parse_float(toks[3], lineno) if n == 4 else 0.0)
        else:
            if n not in (4, 5):
                raise FsaError(f"line {lineno}: an OpenFst transducer arc is 'src dst ilabel olabel [cost]', got {n} fields")
            src, dst, il, ol = (_parse_int(t, lineno) for t in toks[:4])
            cost = _parse_float(toks[4], lineno) if n == 5 else 0.0
        if min(src, dst) < 0 or min(il, ol) < 0:
            raise FsaError(f"line {lineno}: negative state or label in OpenFst text")
        if start is None:
            start = src
        arc_rows.append((src, dst, il, ol, 0.0 - cost))  # 0.0 - 0.0 is 0.0, where -0.0 would print as -0
    if start is None:
        return _empty(acceptor, dtype)
    ids = [r[0] for r in arc_rows] + [r[1] for r in arc_rows] + list(finals) + [start]
    n_old = max(ids) + 1
    if n_old >= 2 ** 63 - 1:
        raise FsaError(f"state {n_old - 1} leaves no 64-bit number for the final state")
    final = n_old

    def ren(s):  # swap the start state with state 0
        return 0 if s == start else (start if s == 0 else s)

    rows = [(ren(s), ren(d), il, ol, sc) for s, d, il, ol, sc in arc_rows]
    rows += [(ren(s), final, -1, -1, 0.0 - c) for s, c in finals.items() if c != float("inf")]
    arcs = torch.tensor([r[:3] for r in rows], dtype=torch.int64).view(-1, 3)
    aux = None if acceptor else torch.tensor([r[3] for r in rows], dtype=torch.int64)
    scores = torch.tensor([r[4] for r in rows], dtype=dtype)
    return Fsa(arcs, scores, aux, num_states=final + 1)


def to_str(fsa: Fsa, openfst: bool = False) -> str:
    """Text of one FSA: k2's format (``from_str(to_str(x)) == x``), or OpenFst's with ``openfst=True``.

    In OpenFst text the ``-1`` arcs become final weights (cost = ``-score``) of their source states when each
    state has at most one; otherwise they are written as epsilon arcs into k2's final state, which is final
    with cost 0. Either way the weighted language is the same."""
    if isinstance(fsa, FsaVec):
        raise FsaError("to_str takes one Fsa; use vec[i] for a member of an FsaVec")
    arcs = fsa.arcs.cpu().tolist()
    aux = None if fsa.aux_labels is None else fsa.aux_labels.cpu().tolist()
    n = fsa.num_states
    if not openfst:
        sc = _fmt_scores(fsa.scores)
        out = []
        for i, (s, d, l) in enumerate(arcs):
            out.append(f"{s} {d} {l} {sc[i]}" if aux is None else f"{s} {d} {l} {aux[i]} {sc[i]}")
        if n:
            out.append(str(n - 1))
        return "\n".join(out) + ("\n" if out else "")
    if n == 0:
        return ""
    costs = _fmt_scores(fsa.scores, negate=True)
    final = n - 1
    into_final = [s for s, d, l in arcs if l == -1]
    use_weights = len(into_final) == len(set(into_final))
    out, finals = [], []
    for i, (s, d, l) in enumerate(arcs):
        if l == -1 and use_weights:
            finals.append(f"{s}\t{costs[i]}")
            continue
        il = 0 if l == -1 else l
        ol = il if aux is None else (0 if aux[i] == -1 else aux[i])
        out.append(f"{s}\t{d}\t{il}\t{costs[i]}" if aux is None else f"{s}\t{d}\t{il}\t{ol}\t{costs[i]}")
    if not use_weights:
        finals.append(f"{final}\t0")
    lines = out + finals
    if not lines or lines[0].split("\t")[0] != "0":  # OpenFst's start state is the first line's state
        lines.insert(0, "0\tInfinity")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- Graphviz
def _sym(table: Optional[Dict[int, str]], x: int) -> str:
    if table is not None and x in table:
        return str(table[x])
    return str(x)


def _arc_labels(fsa: Fsa, symbols=None, aux_symbols=None, show_scores: bool = True, precision: int = 3,
                show_attrs: bool = False) -> List[str]:
    """The text shown on each arc: ``label[:aux_label][/score][ name=value ...]``."""
    lab = fsa.labels.tolist()
    aux = None if fsa.aux_labels is None else fsa.aux_labels.tolist()
    sc = fsa.scores.detach().double().cpu().tolist()
    attrs = {k: v.detach().cpu().tolist() for k, v in fsa.attrs.items()} if show_attrs else {}
    out = []
    for i, l in enumerate(lab):
        t = _sym(symbols, l)
        if aux is not None:
            t += ":" + _sym(aux_symbols, aux[i])
        if show_scores:
            t += "/" + (f"{sc[i]:.{precision}g}" if sc[i] != float("-inf") else "-inf")
        for k, v in attrs.items():
            t += f" {k}={v[i]:.{precision}g}" if isinstance(v[i], float) else f" {k}={v[i]}"
        out.append(t)
    return out


def _dot_escape(t: str) -> str:
    return t.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(fsa: Union[Fsa, FsaVec], title: Optional[str] = None, symbols: Optional[Dict[int, str]] = None,
           aux_symbols: Optional[Dict[int, str]] = None, show_scores: bool = True, precision: int = 3,
           show_attrs: bool = False, rankdir: str = "LR") -> str:
    """Graphviz (dot) source of an `Fsa`, or of an `FsaVec` with one cluster per member.

    Arcs are labelled ``label/score`` (acceptor) or ``label:aux_label/score`` (transducer); ``symbols`` /
    ``aux_symbols`` map label ids to names, ``show_attrs`` appends the extra per-arc attributes. The start
    state is drawn bold, the final state as a double circle. Render it with ``dot -Tsvg`` or `draw`."""
    lines = ["digraph FSA {", f"  rankdir = {rankdir};", '  node [shape = circle, fontsize = 14];',
             '  edge [fontsize = 12];']
    if title:
        lines.append(f'  label = "{_dot_escape(title)}"; labelloc = t;')
    vec = fsa if isinstance(fsa, FsaVec) else None
    members = list(vec) if vec is not None else [fsa]
    for m, f in enumerate(members):
        pre = f"f{m}s" if vec is not None else ""
        indent = "    " if vec is not None else "  "
        if vec is not None:
            lines.append(f"  subgraph cluster_{m} {{")
            lines.append(f'    label = "FSA {m}";')
        n = f.num_states
        for s in range(n):
            shape = "doublecircle" if s == n - 1 else "circle"
            style = ', style = bold' if s == 0 else ""
            lines.append(f'{indent}"{pre}{s}" [label = "{s}", shape = {shape}{style}];')
        texts = _arc_labels(f, symbols, aux_symbols, show_scores, precision, show_attrs)
        for (s, d, _), t in zip(f.arcs.tolist(), texts):
            lines.append(f'{indent}"{pre}{s}" -> "{pre}{d}" [label = "{_dot_escape(t)}"];')
        if vec is not None:
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


_MPL_FORMATS = ("png", "svg", "pdf")


def draw(fsa: Union[Fsa, FsaVec], path: Union[str, os.PathLike], engine: str = "auto", **kwargs) -> str:
    """Write a picture of ``fsa`` to ``path``; the format is the file suffix. Returns the path.

    ``.dot``/``.gv`` write the Graphviz source. Other suffixes (``.svg``, ``.png``, ``.pdf``, ...) are rendered
    by Graphviz's ``dot`` program when it is installed (``engine="graphviz"`` requires it); otherwise
    (``engine="auto"``) or with ``engine="matplotlib"``, ``.png``/``.svg``/``.pdf`` are drawn with matplotlib
    (states in columns by distance from the start, curved arcs with their labels). ``kwargs`` go to `to_dot`
    (``title``, ``symbols``, ``aux_symbols``, ``show_scores``, ``precision``, ``show_attrs``).
    Raises RuntimeError when no renderer can produce the format."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if not ext:
        raise FsaError(f"draw: {path!r} needs a suffix that says the format (.svg, .png, .pdf, .dot)")
    if engine not in ("auto", "graphviz", "matplotlib"):
        raise FsaError(f"draw: engine must be 'auto', 'graphviz' or 'matplotlib', got {engine!r}")
    if ext in ("dot", "gv"):
        with open(path, "w") as fh:
            fh.write(to_dot(fsa, **kwargs))
        return path
    dot = shutil.which("dot")
    if engine == "graphviz" or (engine == "auto" and dot is not None):
        if dot is None:
            raise RuntimeError("draw: Graphviz's `dot` program is not installed (e.g. `apt-get install graphviz`); "
                               "use engine='matplotlib' for .png/.svg/.pdf")
        res = subprocess.run([dot, f"-T{ext}", "-o", path], input=to_dot(fsa, **kwargs).encode(),
                             capture_output=True)
        if res.returncode != 0:
            raise RuntimeError(f"draw: dot -T{ext} failed: {res.stderr.decode(errors='replace').strip()}")
        return path
    if ext not in _MPL_FORMATS:
        raise RuntimeError(f"draw: .{ext} needs Graphviz's `dot` program, which is not installed "
                           f"(without it, .png/.svg/.pdf are drawn with matplotlib)")
    _draw_matplotlib(fsa, path, **kwargs)
    return path


def _layout(f: Fsa):
    """Column of each state: its breadth-first distance from the start (unreachable states after the rest);
    the final state in the last column. Row: order within the column."""
    n = f.num_states
    out = [[] for _ in range(n)]
    for s, d, _ in f.arcs.tolist():
        out[s].append(d)
    col = [-1] * n
    if n:
        col[0] = 0
        todo = [0]
        while todo:
            nxt = []
            for s in todo:
                for d in out[s]:
                    if col[d] < 0:
                        col[d] = col[s] + 1
                        nxt.append(d)
            todo = nxt
        last = max(col) + 1
        col = [c if c >= 0 else last for c in col]
        col[n - 1] = max(col[: n - 1] + [0]) + 1 if n > 1 else 0
    rows: Dict[int, int] = {}
    row = [0] * n
    for s in range(n):
        row[s] = rows.get(col[s], 0)
        rows[col[s]] = row[s] + 1
    height = {c: k for c, k in rows.items()}
    return [(2.0 * col[s], (height[col[s]] - 1) / 2.0 - row[s]) for s in range(n)]


def _draw_matplotlib(fsa, path, title=None, symbols=None, aux_symbols=None, show_scores=True, precision=3,
                     show_attrs=False, rankdir="LR"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyArrowPatch

    members = list(fsa) if isinstance(fsa, FsaVec) else [fsa]
    layouts, y0, width, spans = [], 0.0, 1.0, []
    for f in members:  # members stacked vertically
        pos = _layout(f)
        if pos:
            top = max(y for _, y in pos)
            bot = min(y for _, y in pos)
            pos = [(x, y - top + y0) for x, y in pos]
            width = max(width, max(x for x, _ in pos) + 1)
            spans.append((y0, y0 - (top - bot)))
            y0 -= (top - bot) + 2.0
        else:
            spans.append((y0, y0))
            y0 -= 1.5
        layouts.append(pos)
    height = max(1.0, -y0)
    fig = Figure(figsize=(min(2 + 1.6 * width, 40), min(1.2 + 1.1 * height, 40)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax.set_aspect("equal")
    ax.axis("off")
    r = 0.3
    for m, (f, pos) in enumerate(zip(members, layouts)):
        n = f.num_states
        if len(members) > 1:
            ax.text(-0.8, spans[m][0] + 0.6, f"FSA {m}", fontsize=10, weight="bold")
        for s, (x, y) in enumerate(pos):
            ax.add_patch(Circle((x, y), r, fill=False, lw=2.2 if s == 0 else 1.2))
            if s == n - 1:
                ax.add_patch(Circle((x, y), r * 0.8, fill=False, lw=1.0))
            ax.text(x, y, str(s), ha="center", va="center", fontsize=10)
        texts = _arc_labels(f, symbols, aux_symbols, show_scores, precision, show_attrs)
        seen: Dict[tuple, int] = {}
        for (s, d, _), t in zip(f.arcs.tolist(), texts):
            k = seen.get((s, d), 0)
            seen[(s, d)] = k + 1
            (x1, y1), (x2, y2) = pos[s], pos[d]
            if s == d:  # self-loop: a small arc above the state
                lift = r * (1.0 + 0.6 * k)
                arrow = FancyArrowPatch((x1 - r * 0.5, y1 + r * 0.8), (x1 + r * 0.5, y1 + r * 0.8),
                                        connectionstyle=f"arc3,rad=-{1.5 + 0.3 * k}", arrowstyle="-|>",
                                        mutation_scale=10, lw=0.9)
                ax.add_patch(arrow)
                ax.text(x1, y1 + r + lift + 0.1, t, ha="center", va="bottom", fontsize=8)
                continue
            rad = 0.25 * (k - (0 if x2 > x1 else -1)) * (1 if k % 2 == 0 else -1) + (0.35 if x2 <= x1 else 0)
            arrow = FancyArrowPatch((x1, y1), (x2, y2), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                    mutation_scale=10, lw=0.9, shrinkA=r * 72 / 2.5, shrinkB=r * 72 / 2.5)
            ax.add_patch(arrow)
            # label near the middle of the curve (arc3 bends by rad * length, perpendicular to the chord)
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            dx, dy = x2 - x1, y2 - y1
            ax.text(mx + rad * dy / 2, my - rad * dx / 2, t, ha="center", va="center", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    xs = [x for pos in layouts for x, _ in pos] or [0.0]
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(y0 + 1.0, 1.5)
    if title:
        ax.set_title(title)
    fig.savefig(path, bbox_inches="tight")


# ---------------------------------------------------------------------------------------------------- networkx
_EDGE_KEYS = ("label", "aux_label", "score", "arc")


def to_networkx(fsa: Union[Fsa, FsaVec]):
    """A ``networkx.MultiDiGraph`` of an `Fsa` (a list of them for an `FsaVec`).

    Nodes are the states ``0..n-1`` with boolean attributes ``start`` and ``final``. Each arc is an edge keyed
    by its arc index, with attributes ``label``, ``aux_label`` (transducers), ``score`` (a Python float),
    ``arc`` (the arc index) and one attribute per extra per-arc tensor (its row as a Python number or list).
    The graph attributes ``acceptor``, ``num_states``, ``dtype`` and ``attr_dtypes`` let `from_networkx`
    rebuild exactly the same FSA. The graph is a copy: scores are not connected for autograd."""
    import networkx as nx
    if isinstance(fsa, FsaVec):
        return [to_networkx(m) for m in fsa]
    if not isinstance(fsa, Fsa):
        raise FsaError(f"to_networkx takes an Fsa or FsaVec, got {type(fsa).__name__}")
    n = fsa.num_states
    g = nx.MultiDiGraph(acceptor=fsa.aux_labels is None, num_states=n, dtype=str(fsa.dtype).replace("torch.", ""),
                        attr_dtypes={k: str(v.dtype).replace("torch.", "") for k, v in fsa.attrs.items()})
    g.add_nodes_from((s, {"start": s == 0, "final": s == n - 1}) for s in range(n))
    cols = {"label": fsa.labels.tolist(), "score": fsa.scores.detach().cpu().double().tolist()}
    if fsa.aux_labels is not None:
        cols["aux_label"] = fsa.aux_labels.tolist()
    for k, v in fsa.attrs.items():
        cols[k] = v.detach().cpu().tolist()
    names = list(cols)
    rows = zip(*(cols[k] for k in names)) if names else []
    g.add_edges_from((s, d, i, dict(zip(names, vals), arc=i))
                     for i, ((s, d, _), vals) in enumerate(zip(fsa.arcs.tolist(), rows)))
    return g


def _torch_dtype(name, what):
    t = getattr(torch, str(name).replace("torch.", ""), None)
    if not isinstance(t, torch.dtype):
        raise FsaError(f"from_networkx: {what} {name!r} is not a torch dtype")
    return t


def from_networkx(g, dtype: Optional[torch.dtype] = None) -> Fsa:
    """An `Fsa` from a networkx (Multi)DiGraph.

    Nodes: the integers ``0..n-1`` (0 = start, ``n-1`` = final), or any hashable nodes of which exactly one
    has the attribute ``start=True`` and one ``final=True`` (they become 0 and ``n-1``; the others keep their
    insertion order). Edges: attribute ``label`` (required), ``score`` (default 0), ``aux_label`` (on every
    edge or on none: a transducer), ``arc`` (the arc order; default: edge order), and any other attribute
    present on every edge becomes a per-arc tensor attribute. ``dtype`` defaults to the graph attribute
    ``dtype`` or float32. ``Fsa.from_networkx(fsa.to_networkx()) == fsa``. The FSA rules are checked
    (`FsaError` naming the arc)."""
    nodes = list(g.nodes)
    n = len(nodes)
    if n and all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in nodes) \
            and sorted(int(x) for x in nodes) == list(range(n)):
        ids = {x: int(x) for x in nodes}
    elif n:
        starts = [x for x, a in g.nodes(data=True) if a.get("start")]
        finals = [x for x, a in g.nodes(data=True) if a.get("final")]
        if len(starts) != 1 or len(finals) != 1 or starts[0] == finals[0]:
            raise FsaError("from_networkx: nodes are not the integers 0..n-1, so exactly one node needs start=True "
                           f"and another final=True (found {len(starts)} start and {len(finals)} final nodes)")
        rest = [x for x in nodes if x != starts[0] and x != finals[0]]
        ids = {x: i for i, x in enumerate([starts[0]] + rest + [finals[0]])}
    else:
        ids = {}
    if g.is_multigraph():
        edges = [(u, v, d) for u, v, _, d in g.edges(keys=True, data=True)]
    else:
        edges = list(g.edges(data=True))
    for i, (u, v, d) in enumerate(edges):
        if "label" not in d:
            raise FsaError(f"from_networkx: edge {i} ({u} -> {v}) has no 'label' attribute")
    if edges and all("arc" in d for _, _, d in edges):
        edges.sort(key=lambda e: e[2]["arc"])
    has_aux = [("aux_label" in d) for _, _, d in edges]
    if any(has_aux) and not all(has_aux):
        i = has_aux.index(False)
        raise FsaError(f"from_networkx: edge {i} has no 'aux_label' but others have: a transducer needs it on "
                       "every edge")
    if dtype is None:
        dtype = _torch_dtype(g.graph["dtype"], "graph dtype") if "dtype" in g.graph else torch.float32
    arcs = torch.tensor([[ids[u], ids[v], int(d["label"])] for u, v, d in edges], dtype=torch.int64).view(-1, 3)
    scores = torch.tensor([float(d.get("score", 0.0)) for _, _, d in edges], dtype=torch.float64).to(dtype)
    aux = torch.tensor([int(d["aux_label"]) for _, _, d in edges], dtype=torch.int64) if edges and all(has_aux) \
        else None
    if not edges and g.graph.get("acceptor") is False:
        aux = torch.zeros(0, dtype=torch.int64)
    extra = set()
    for _, _, d in edges:
        extra |= set(d) - set(_EDGE_KEYS)
    attr_dtypes = g.graph.get("attr_dtypes", {})
    attrs = {}
    for k in sorted(extra):
        if not all(k in d for _, _, d in edges):
            continue  # attributes missing on some edges are not per-arc tensors
        vals = [d[k] for _, _, d in edges]
        if all(isinstance(x, torch.Tensor) for x in vals):
            t = torch.stack(vals)
        else:
            try:
                t = torch.tensor(vals)
            except (TypeError, ValueError, RuntimeError):
                continue  # non-numeric edge data (e.g. a colour for drawing) is not an FSA attribute
        if k in attr_dtypes:
            t = t.to(_torch_dtype(attr_dtypes[k], f"attribute {k!r} dtype"))
        attrs[k] = t
    for k, name in attr_dtypes.items():  # attributes of an FSA without arcs
        if not edges:
            attrs[k] = torch.zeros(0, dtype=_torch_dtype(name, f"attribute {k!r} dtype"))
    return Fsa(arcs, scores, aux, num_states=n, **attrs)


# ---------------------------------------------------------------------------------------------------- k2
def _import_k2():
    try:
        import k2  # noqa: F401
    except ImportError as e:  # k2 needs its own wheels, matched to the torch version
        raise ImportError("k2 is not installed: to_k2/from_k2 need `import k2` to work (see "
                          "https://k2-fsa.github.io/k2/installation/)") from e
    return k2


def to_k2(fsa: Union[Fsa, FsaVec]):
    """A ``k2.Fsa`` with the same arcs, scores (float32, k2's only score type; connected for autograd),
    ``aux_labels`` (int32) and extra per-arc attributes. An `FsaVec` gives a k2 FsaVec (``create_fsa_vec``).
    Needs k2 (raises ImportError otherwise).

    Any valid FSA converts, also one whose final state no arc enters (no successful path): k2's tensor
    constructor infers the number of states from the arcs and guesses such a final state wrongly (or
    fails), so those go through k2's text reader with the final state's line, as ``k2.Fsa.from_str`` would
    build them."""
    k2 = _import_k2()
    if isinstance(fsa, FsaVec):
        return k2.create_fsa_vec([to_k2(m) for m in fsa])
    scores = fsa.scores.to(torch.float32)
    aux = None if fsa.aux_labels is None else fsa.aux_labels.to(torch.int32)
    if fsa.num_states and not bool((fsa.labels == -1).any()):
        out = k2.Fsa.from_str(to_str(fsa.detach().cpu()), acceptor=fsa.aux_labels is None).to(fsa.device)
    else:
        arcs = torch.cat([fsa.arcs.to(torch.int32), scores.detach().contiguous().view(torch.int32).view(-1, 1)], 1)
        out = k2.Fsa(arcs.contiguous(), aux)
    out.scores = scores  # keeps the autograd graph (k2 stores the tensor as the scores attribute)
    for k, v in fsa.attrs.items():
        setattr(out, k, v)
    return out


def from_k2(k2fsa) -> Union[Fsa, FsaVec]:
    """An `Fsa` (or `FsaVec` for a k2 FsaVec) from a ``k2.Fsa``: arcs, scores (the same tensor, so gradients
    flow back into k2), tensor ``aux_labels`` and tensor attributes (ragged ones are refused). Needs k2."""
    _import_k2()
    vals = k2fsa.arcs.values()
    arcs = vals[:, :3].to(torch.int64)
    scores = k2fsa.scores
    aux = getattr(k2fsa, "aux_labels", None) if hasattr(k2fsa, "aux_labels") else None
    if aux is not None and not isinstance(aux, torch.Tensor):
        raise FsaError("from_k2: ragged aux_labels have no equivalent here (one output label per arc)")
    aux = None if aux is None else aux.to(torch.int64)
    attrs = {}
    for name, value in k2fsa.named_tensor_attr(include_scores=False):
        if name in ("labels", "aux_labels"):
            continue
        if not isinstance(value, torch.Tensor):
            raise FsaError(f"from_k2: attribute {name!r} is ragged; only tensor attributes convert")
        attrs[name] = value
    shape = k2fsa.arcs.shape()
    if len(k2fsa.shape) == 2:
        return Fsa(arcs, scores, aux, num_states=int(k2fsa.shape[0]), **attrs)
    state_splits = shape.row_splits(1).to(torch.int64)
    arc_splits = shape.row_splits(2).to(torch.int64)[state_splits]
    from .fsa import validate
    v = FsaVec._from_parts(arcs, scores, arc_splits, state_splits, aux, attrs)
    validate(v)
    return v
