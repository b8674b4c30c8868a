"""facebookresearch/gtn's comparisons, creations, text/binary I/O, drawing and parallel helpers."""
import os
import struct
from typing import Dict, List

import numpy as np
import torch

from .graph import Graph, epsilon


# ---- comparisons ---------------------------------------------------------------------------------------
def _same_counts(a: Graph, b: Graph) -> bool:
    return (a.num_nodes() == b.num_nodes() and a.num_start() == b.num_start()
            and a.num_accept() == b.num_accept() and a.num_arcs() == b.num_arcs())


def equal(first: Graph, second: Graph) -> bool:
    """Same nodes (by index: start/accept flags, in/out degrees) and, node by node, the same out arcs as a
    multiset of (destination, ilabel, olabel, weight): arc order does not matter, node numbering does."""
    a, b = first, second
    if not _same_counts(a, b):
        return False
    wa, wb = a.weights_to_list(), b.weights_to_list()
    for n in range(a.num_nodes()):
        if (len(a._in[n]) != len(b._in[n]) or len(a._out[n]) != len(b._out[n])
                or a._is_start[n] != b._is_start[n] or a._is_accept[n] != b._is_accept[n]):
            return False
        rest = [(b._dst[x], b._il[x], b._ol[x], wb[x]) for x in b._out[n]]
        for x in a._out[n]:
            key = (a._dst[x], a._il[x], a._ol[x], wa[x])
            if key not in rest:
                return False
            rest.remove(key)
    return True


def isomorphic(first: Graph, second: Graph) -> bool:
    """Equal up to a renumbering of the nodes (facebookresearch/gtn's search from the start nodes)."""
    a, b = first, second
    if not _same_counts(a, b):
        return False
    wa, wb = a.weights_to_list(), b.weights_to_list()
    visited: Dict = {}

    def iso(an, bn) -> bool:
        key = (an, bn)
        if key in visited:
            return visited[key]
        visited[key] = True  # assumed good unless found otherwise (cycles)
        if (len(a._in[an]) != len(b._in[bn]) or len(a._out[an]) != len(b._out[bn])
                or a._is_start[an] != b._is_start[bn] or a._is_accept[an] != b._is_accept[bn]):
            visited[key] = False
            return False
        rest = list(b._out[bn])
        for x in a._out[an]:
            for k, y in enumerate(rest):
                if (a._il[x], a._ol[x], wa[x]) != (b._il[y], b._ol[y], wb[y]):
                    continue
                if iso(a._dst[x], b._dst[y]):
                    break
            else:
                visited[key] = False
                return False
            rest.pop(k)
        return True

    found = False
    for s1 in a._starts:
        for s2 in b._starts:
            found |= iso(s1, s2)
    return found or (a.num_nodes() == 0 and b.num_nodes() == 0)


# ---- creations -----------------------------------------------------------------------------------------
def _device_arg(calc_grad, device):
    """facebookresearch/gtn's later creations take a device too; accept it in either place."""
    from .device import Device, DeviceType, as_torch_device
    if isinstance(calc_grad, (Device, DeviceType)):
        calc_grad, device = True, calc_grad
    return bool(calc_grad), (None if device is None else as_torch_device(device))


def scalar_graph(weight: float, calc_grad: bool = True, device=None) -> Graph:
    """Two nodes (start, accept) and one epsilon arc of weight ``weight``."""
    calc_grad, device = _device_arg(calc_grad, device)
    g = Graph(calc_grad)
    g.add_node(True)
    g.add_node(False, True)
    g.add_arc(0, 1, epsilon, epsilon, float(weight))
    return g if device is None else g.to(device)


_LINEAR = {}  # (M, N) -> a template: its structure (and cached core translation) is shared by the copies


def linear_graph(M: int, N: int, calc_grad: bool = True, device=None) -> Graph:
    """``M + 1`` nodes in a chain, ``N`` arcs (labels ``0..N-1``, weight 0) between consecutive nodes; arc
    ``i * N + j`` goes from node ``i`` with label ``j`` (so ``set_weights`` takes a row-major ``[M, N]``)."""
    if M < 0 or N < 0:
        raise ValueError(f"linear_graph: M and N must be >= 0, got {M}, {N}")
    calc_grad, device = _device_arg(calc_grad, device)
    t = _LINEAR.get((M, N))
    if t is None:
        src = [i for i in range(M) for _ in range(N)]
        lab = [j for _ in range(M) for j in range(N)]
        t = Graph._from_lists([True] + [False] * M, [False] * M + [True], src, [s + 1 for s in src], lab, lab,
                              torch.zeros(M * N, dtype=torch.float32), False)
        if len(_LINEAR) > 64:
            _LINEAR.clear()
        _LINEAR[(M, N)] = t
    g = t._structure_copy(calc_grad)
    if device is not None and device.type != "cpu":
        g._device, g._cache = device, {}
    g._w = torch.zeros(M * N, dtype=torch.float32, device=g._device).requires_grad_(calc_grad)
    return g


# ---- text ----------------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    """The shortest text that reads back to the same float32 (``2.1``, not ``2.0999999046325684``)."""
    return str(np.float32(x)) if np.isfinite(x) else ("inf" if x > 0 else ("-inf" if x < 0 else "nan"))


def _text(g: Graph) -> str:
    """facebookresearch/gtn's text form: the start nodes, the accept nodes, then one arc a line
    ``src dst ilabel olabel weight``."""
    lines = [" ".join(map(str, g._starts)), " ".join(map(str, g._accepts))]
    w = g.weights_to_list()
    lines += [f"{g._src[a]} {g._dst[a]} {g._il[a]} {g._ol[a]} {_fmt(w[a])}" for a in range(g.num_arcs())]
    return "\n".join(lines) + "\n"


def _parse_nodes(line, what, lineno):
    toks = line.split()
    try:
        nodes = [int(t) for t in toks]
    except ValueError:
        raise ValueError(f"loadtxt: line {lineno}: the {what} nodes must be integers, got {line.strip()!r}") from None
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"loadtxt: line {lineno}: repeated {what} node")
    return nodes


def _from_text(text: str, calc_grad: bool = True) -> Graph:
    lines = text.split("\n")
    if len(lines) < 2:
        raise ValueError("loadtxt: the first two lines must list the start and the accept nodes")
    starts = _parse_nodes(lines[0], "start", 1)
    accepts = _parse_nodes(lines[1], "accept", 2)
    g = Graph(calc_grad)
    idx = {}
    for s in starts:
        idx[s] = g.add_node(True, s in accepts)
    for a in accepts:
        if a not in idx:
            idx[a] = g.add_node(False, True)
    for k, line in enumerate(lines[2:], start=3):
        toks = line.split()
        if not toks:
            continue
        if not 3 <= len(toks) <= 5:
            raise ValueError(f"loadtxt: line {k}: an arc is 'src dst ilabel [olabel [weight]]', got {line!r}")
        try:
            src, dst, il = int(toks[0]), int(toks[1]), int(toks[2])
            ol = int(toks[3]) if len(toks) > 3 else il
            w = float(toks[4]) if len(toks) > 4 else 0.0
        except ValueError:
            raise ValueError(f"loadtxt: line {k}: cannot read {line!r}") from None
        for n in (src, dst):
            if n not in idx:
                idx[n] = g.add_node()
        g.add_arc(idx[src], idx[dst], il, ol, w)
    return g


def savetxt(file_name, graph: Graph) -> None:
    """Write ``graph`` in facebookresearch/gtn's text format."""
    with open(file_name, "w") as f:
        f.write(_text(graph))


def loadtxt(file_name, calc_grad: bool = True) -> Graph:
    """Read a graph in facebookresearch/gtn's text format: line 1 the start nodes, line 2 the accept nodes,
    then ``src dst ilabel [olabel [weight]]`` per arc. Nodes are numbered as facebookresearch/gtn numbers
    them: start nodes first, then accept nodes, then the others in order of appearance."""
    if not os.path.exists(file_name):
        raise ValueError(f"loadtxt: no such file {file_name!r}")
    with open(file_name) as f:
        return _from_text(f.read(), calc_grad)


_MAGIC = b"GTNCOMPAT1\n"


def save(file_name, graph: Graph) -> None:
    """Write ``graph`` in a compact binary form (`load` reads it back exactly, float32 weights included).
    Not facebookresearch/gtn's binary layout: use `savetxt` to exchange graphs with it."""
    n, A = graph.num_nodes(), graph.num_arcs()
    with open(file_name, "wb") as f:
        f.write(_MAGIC)
        f.write(struct.pack("<qq", n, A))
        f.write(np.array(graph._is_start, dtype=np.uint8).tobytes())
        f.write(np.array(graph._is_accept, dtype=np.uint8).tobytes())
        f.write(np.array([graph._src, graph._dst, graph._il, graph._ol], dtype=np.int64).reshape(4, A).tobytes())
        f.write(graph.weights_to_numpy().astype("<f4").tobytes())


def load(file_name, calc_grad: bool = True) -> Graph:
    """Read a graph written by `save`, or a text file in facebookresearch/gtn's format."""
    if not os.path.exists(file_name):
        raise ValueError(f"load: no such file {file_name!r}")
    with open(file_name, "rb") as f:
        data = f.read()
    if not data.startswith(_MAGIC):
        return _from_text(data.decode(), calc_grad)
    off = len(_MAGIC)
    try:
        n, A = struct.unpack_from("<qq", data, off)
        off += 16
        st = np.frombuffer(data, np.uint8, n, off).astype(bool).tolist()
        off += n
        ac = np.frombuffer(data, np.uint8, n, off).astype(bool).tolist()
        off += n
        arcs = np.frombuffer(data, np.int64, 4 * A, off).reshape(4, A)
        off += 32 * A
        w = np.frombuffer(data, "<f4", A, off).copy()
    except (struct.error, ValueError) as e:
        raise ValueError(f"load: {file_name!r} is truncated or corrupt ({e})") from None
    s, d, il, ol = (arcs[i].tolist() for i in range(4))
    if any(not 0 <= x < n for x in s + d):
        raise ValueError(f"load: {file_name!r} has an arc to a node that does not exist")
    return Graph._from_lists(st, ac, s, d, il, ol, torch.from_numpy(w), calc_grad)


def _dot(g: Graph, isymbols=None, osymbols=None) -> str:
    isymbols, osymbols = isymbols or {}, osymbols or {}

    def name(symbols, label):
        if not symbols:
            return str(label)
        return "ε" if label == epsilon else str(symbols[label])

    w = g.weights_to_list()
    out = ['digraph FST {', '  margin = 0;', '  rankdir = LR;', '  label = "";', '  center = 1;',
           '  ranksep = "0.4";', '  nodesep = "0.25";']

    def node(n):
        shape = "doublecircle" if g._is_accept[n] else "circle"
        pen = "2.0" if g._is_start[n] else "1.0"
        out.append(f'  {n} [label = "{n}", shape = {shape}, penwidth = {pen}, fontsize = 14];')
        for a in g._out[n]:
            lab = name(isymbols, g._il[a])
            if osymbols:
                lab += ":" + name(osymbols, g._ol[a])
            out.append(f'  {g._src[a]} -> {g._dst[a]} [label = "{lab}/{_fmt(w[a])}", fontsize = 14];')

    # start nodes first, accept nodes last, as facebookresearch/gtn lays them out
    order = g._starts + [n for n in range(g.num_nodes()) if not g._is_start[n] and not g._is_accept[n]]
    order += [n for n in g._accepts if not g._is_start[n]]
    for n in order:
        node(n)
    out.append("}")
    return "\n".join(out)


def draw(graph: Graph, file_name, isymbols=None, osymbols=None) -> None:
    """Graphviz: ``.dot``/``.gv`` (or no suffix) writes the source; ``.png``/``.svg``/``.pdf`` renders it with
    the ``dot`` program. ``isymbols``/``osymbols`` map labels to names."""
    src = _dot(graph, isymbols, osymbols)
    ext = os.path.splitext(str(file_name))[1].lower().lstrip(".")
    if ext in ("", "dot", "gv", "txt"):
        with open(file_name, "w") as f:
            f.write(src)
        return
    import subprocess
    try:
        subprocess.run(["dot", f"-T{ext}", "-o", str(file_name)], input=src.encode(), check=True,
                       capture_output=True)
    except FileNotFoundError:
        raise ValueError("draw: rendering a picture needs Graphviz's `dot` program; write a .dot file "
                         "instead") from None
    except subprocess.CalledProcessError as e:
        raise ValueError(f"draw: dot failed: {e.stderr.decode().strip()}") from None


write_dot = draw


# ---- parallel helpers ----------------------------------------------------------------------------------
def parallel_for(function, indices) -> None:
    """Call ``function(i)`` for each ``i`` in ``indices``. facebookresearch/gtn ran these on a thread pool;
    here they run in order on the calling thread (torch's own ops use its intra-op threads), which keeps
    autograd and Python state safe. For speed, batch instead: the list forms of `forward_score`,
    `viterbi_score` score all graphs in one call."""
    for i in indices:
        function(i)


def parallel_map(function, *args) -> List:
    """``[function(a, b, ...) for a, b, ... in zip(*args)]`` with one-element lists broadcast, as
    facebookresearch/gtn's ``parallel_map`` (run in order, see `parallel_for`)."""
    lists = [list(a) for a in args]
    if not lists:
        raise ValueError("parallel_map: give at least one list of inputs")
    n = max(len(x) for x in lists)
    for k, x in enumerate(lists):
        if len(x) == 1:
            lists[k] = x * n
        elif len(x) != n:
            raise ValueError(f"parallel_map: input lists have lengths {[len(y) for y in args]}")
    return [function(*xs) for xs in zip(*lists)]
