"""Draw the pictures of the docs: one panel per operation, its inputs beside its result.

    python docs/pictures.py [OUT_DIR]        # default: docs/img (needs Graphviz's `dot`)

Every graph is built here with the library itself (the same small graphs as the docs' code examples), so the
pictures show what the code computes. Each panel is one Graphviz picture whose clusters are the operation's
inputs and result, drawn by `gtn.to_dot` (arcs ``label/score`` or ``label:aux_label/score``; the start state
bold, the final state a double circle).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import gtn
from lenet.recognizer import SYMBOLS, lexicon_fsa
from lenet.sdnn import frame_graph

#: digit labels 1..10 print as the digits 0..9 (label 0 is epsilon, or the SDNN's blank)
DIGITS = {i + 1: c for i, c in enumerate(SYMBOLS)}


def panel(parts, path, title=None):
    """One Graphviz picture of several graphs side by side: ``parts`` is a list of ``(caption, graph,
    to_dot keyword arguments)``. Writes ``path`` (format from its suffix) and returns it."""
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("docs/pictures.py needs Graphviz's `dot` (apt-get install graphviz)")
    lines = ["digraph G {", "  rankdir = LR;", "  node [shape = circle, fontsize = 14];", "  edge [fontsize = 12];",
             "  compound = true; newrank = true;"]
    if title:
        lines.append(f'  label = "{title}"; labelloc = t; fontsize = 16;')
    # Graphviz stacks the clusters of a left-to-right graph bottom-up: emit them last first, so that the
    # inputs come out on top and the result below
    for k, (caption, graph, kw) in reversed(list(enumerate(parts))):
        body = gtn.to_dot(graph, **kw).splitlines()[4:-1]      # drop the header lines and the closing brace
        lines.append(f"  subgraph cluster_{k} {{")
        caption = caption.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'    label = "{caption}"; fontsize = 14; style = rounded; color = gray70;')
        for line in body:
            # node ids "3" become "k_3" so that the panels do not share states (labels keep "3")
            line = re.sub(r'^(\s*)"(\d+)"', rf'\1"{k}_\2"', line)
            line = re.sub(r'-> "(\d+)"', rf'-> "{k}_\1"', line)
            lines.append("  " + line)
        lines.append("  }")
    lines.append("}")
    res = subprocess.run([dot, f"-T{Path(path).suffix.lstrip('.')}", "-o", str(path)],
                         input="\n".join(lines).encode(), capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"dot failed: {res.stderr.decode(errors='replace')}")
    return path


def pictures(out: Path):
    """All the panels, written to ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    made = []

    # composition (docs/compose.md's example)
    a = gtn.Fsa.from_str("0 1 1 5 0.5\n0 1 2 0 1.0\n1 2 -1 -1 0.0\n2\n", acceptor=False)
    b = gtn.Fsa.from_str("0 1 5 0.25\n0 2 -1 0.0\n1 2 -1 0.0\n2\n")
    made.append(panel([("a (transducer)", a, {}), ("b (acceptor)", b, {}), ("compose(a, b)", gtn.compose(a, b), {})],
                      out / "compose.svg"))

    # the structural operations (docs/structure.md's examples)
    x = gtn.Fsa.from_str("0 1 1 -0.5\n0 1 2 -1.2\n1 2 -1 0\n2\n")
    y = gtn.Fsa.from_str("0 1 3 -0.1\n1 2 0 -0.7\n1 2 4 -0.3\n2 3 -1 0\n3\n")
    made.append(panel([("a", x, {}), ("b", y, {}), ("concat(a, b)", gtn.concat(x, y), {})], out / "concat.svg"))
    made.append(panel([("b", y, {}), ("remove_epsilon(b)", gtn.remove_epsilon(y), {})], out / "remove_epsilon.svg"))

    # the best path (docs/scoring.md): Viterbi path of a small lattice
    lat = gtn.Fsa.from_str("0 1 1 0.5\n0 1 2 1.5\n1 2 3 -1.0\n1 2 4 0.25\n1 2 5 0.75\n2 3 -1 0.0\n3\n")
    made.append(panel([("lattice", lat, {}), ("viterbi_path(lattice)", gtn.viterbi_path(lat), {})],
                      out / "viterbi_path.svg"))

    # dense intersection (docs/dense_ctc.md): the CTC graph of "1 2" against 4 frames of 3 symbols
    g = torch.Generator().manual_seed(0)
    dense = gtn.DenseFsaVec(torch.randn(1, 4, 3, generator=g).log_softmax(-1))
    graph = gtn.ctc_graph([[1, 2]])[0]
    made.append(panel([("ctc_graph([1, 2]) (0 = blank)", graph, {}),
                       ("intersect_dense(graph, 4 frames): states by frame", gtn.intersect_dense(graph, dense)[0],
                        {"precision": 2})], out / "intersect_dense.svg"))

    # the multi-digit reader's lexicon (docs/multi_digit.md): a prefix tree and its SDNN frame graph
    made.append(panel([('lexicon_fsa(["12", "123", "45"])', lexicon_fsa(["12", "123", "45"]),
                        {"symbols": DIGITS, "show_scores": False})], out / "lexicon.svg"))
    made.append(panel([('frame_graph(lexicon_fsa(["7", "12"])) (0 = blank)', frame_graph(lexicon_fsa(["7", "12"])),
                        {"symbols": {0: "blank", **DIGITS}, "show_scores": False})], out / "frame_graph.svg"))
    return made


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "img"
    for p in pictures(target):
        print(f"wrote {p}")
