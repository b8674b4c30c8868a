"""gtn.io: k2 text, OpenFst text (checked against pywrapfst), networkx, Graphviz/matplotlib pictures, k2 interop."""
import re
import shutil
from collections import defaultdict

import networkx as nx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gtn
from gtn import io
from strategies import enumerate_paths, forward_oracle, fsa_vecs, fsas, logsumexp

LAW = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
NEG_INF = float("-inf")


def close(x, y, tol=1e-9):
    if x == NEG_INF or y == NEG_INF:
        return x == y
    return abs(x - y) <= tol * (1 + abs(y))


def language(f):
    """label string (epsilon 0 and -1 dropped; pairs for transducers) -> log-sum-exp of path scores."""
    lab = f.labels.tolist()
    aux = None if f.aux_labels is None else f.aux_labels.tolist()
    out = defaultdict(list)
    for arcs, s in enumerate_paths(f):
        if aux is None:
            key = tuple(lab[i] for i in arcs if lab[i] > 0)
        else:
            key = tuple((max(lab[i], 0), max(aux[i], 0)) for i in arcs if (max(lab[i], 0), max(aux[i], 0)) != (0, 0))
        out[key].append(s)
    # strings of weight zero (score -inf) are not in the language (OpenFst drops infinite final costs)
    return {k: w for k, w in ((k, logsumexp(v)) for k, v in out.items()) if w != NEG_INF}


# ---------------------------------------------------------------------------------------------------- k2 text
@LAW
@given(fsas(max_states=12, transducer=None, dtype=torch.float32, acyclic=False), st.booleans())
def test_k2_text_round_trip(x, double):
    x = x.double() if double else x
    text = x.to_str()
    y = gtn.Fsa.from_str(text, acceptor=x.aux_labels is None, dtype=x.dtype)
    assert y == x  # exact: scores print in their shortest round-trip form
    assert gtn.from_str(text, acceptor=x.aux_labels is None, dtype=x.dtype).to_str() == text


def test_k2_text_keeps_given_order_and_sorts_unsorted_input():
    text = "0 1 2 0.5\n0 1 1 0.25\n1 2 -1 0\n2\n"
    f = gtn.Fsa.from_str(text)
    assert f.labels.tolist() == [2, 1, -1]
    g = gtn.Fsa.from_str("1 2 -1 0\n0 1 2 0.5\n0 1 1 0.25\n2\n")
    assert g.labels.tolist() == [2, 1, -1] and g.scores.tolist() == [0.5, 0.25, 0.0]


@pytest.mark.parametrize("text,msg", [
    ("0 1 1\n1\n", "expected 4 fields"),
    ("0 1 x 0.5\n1 2 -1 0\n2\n", "'x' is not an integer"),
    ("0 1 1 zz\n1 2 -1 0\n2\n", "'zz' is not a number"),
    ("0 1 1 0.5\n1\n1 2 -1 0\n", "must be the last line"),
    ("0 1 1 0.5\n1 2 -1 0\n", "final state alone"),
    ("0 3 1 0.5\n1 2 -1 0\n2\n", "beyond the final state"),
    ("0 1 1 0.5 0.1\n1 2 -1 -1 0\n2\n", "acceptor=False"),
    ("0 1 1 0.5\n1 2 3 0\n2\n", "only label -1 may enter the final state"),
    ("0 1 99999999999999999999 0.5\n1 2 -1 0\n2\n", "does not fit in a 64-bit integer"),
])
def test_k2_text_errors(text, msg):
    with pytest.raises(gtn.FsaError, match=re.escape(msg)):
        gtn.Fsa.from_str(text)


# ---------------------------------------------------------------------------------------------------- OpenFst text
def compile_openfst(text: str, acceptor: bool):
    import pywrapfst as fst
    c = fst.Compiler(arc_type="log64", acceptor=acceptor)
    c.write(text)
    return c.compile()


def openfst_total(f) -> float:
    import pywrapfst as fst
    d = fst.shortestdistance(f, reverse=True, delta=1e-12)
    return -float(str(d[f.start()])) if f.start() >= 0 and f.start() < len(d) else NEG_INF


@LAW
@given(fsas(max_states=10, max_paths=60, transducer=None, dtype=torch.float64))
def test_openfst_round_trip_and_pywrapfst(x):
    """to_openfst text -> from_openfst keeps the weighted language; pywrapfst's compiler reads our text and
    its shortestdistance (log64) equals the forward score."""
    text = x.to_openfst()
    y = gtn.Fsa.from_openfst(text, acceptor=x.aux_labels is None, dtype=torch.float64)
    F = forward_oracle(x)
    assert close(forward_oracle(y), F)
    assert language(y).keys() == language(x).keys()
    assert all(close(language(y)[k], v) for k, v in language(x).items())
    if x.num_states >= 2:
        o = compile_openfst(text, acceptor=x.aux_labels is None)
        assert close(openfst_total(o), F, 1e-8)  # OpenFst prints weights with 9 significant digits
        assert close(gtn.forward_score(y).item(), F)


@LAW
@given(st.integers(0, 2 ** 31), st.booleans())
def test_from_openfst_reads_pywrapfst_output(seed, transducer):
    """FSTs built by pywrapfst with several final states (with final weights) and the start state not 0 are
    parsed into k2's single-final-state form with the same total weight."""
    import random

    import pywrapfst as fst
    r = random.Random(seed)
    n = r.randint(1, 7)
    f = fst.VectorFst(arc_type="log64")
    f.add_states(n)
    order = list(range(n))
    r.shuffle(order)  # a random topological order, so the FST is acyclic
    f.set_start(order[0])
    for _ in range(r.randint(0, 2 * n)):
        i = r.randint(0, n - 1)
        j = r.randint(i, n - 1)
        if i == j:
            continue
        il, ol = r.randint(0, 4), r.randint(0, 4)
        f.add_arc(order[i], fst.Arc(il, ol if transducer else il, fst.Weight("log64", round(r.uniform(-2, 3), 2)), order[j]))
    for s in r.sample(range(n), r.randint(0, n)):
        f.set_final(s, fst.Weight("log64", round(r.uniform(-1, 2), 2)))
    text = f.print(acceptor=not transducer, show_weight_one=True)  # weights: 2 decimals print exactly
    y = gtn.Fsa.from_openfst(text, acceptor=not transducer, dtype=torch.float64)
    assert close(forward_oracle(y), openfst_total(f), 1e-8)


def test_openfst_errors():
    with pytest.raises(gtn.FsaError, match="acceptor=False"):
        gtn.Fsa.from_openfst("0 1 2 3 0.5\n1\n")
    with pytest.raises(gtn.FsaError, match="negative"):
        gtn.Fsa.from_openfst("0 1 -2 0.5\n1\n")
    with pytest.raises(gtn.FsaError, match="line 1: negative state -1"):
        gtn.Fsa.from_openfst("-1 inf\n")
    with pytest.raises(gtn.FsaError, match="64-bit"):
        gtn.Fsa.from_openfst("0 9223372036854775807 2 0.5\n9223372036854775807\n")
    with pytest.raises(gtn.FsaError, match="64-bit"):
        gtn.Fsa.from_str("9223372036854775807\n")


TOKENS = ["0", "1", "2", "3", "-1", "-2", "0.5", "-0.5", "nan", "inf", "-inf", "1e400", "x", "+1", ".5", "0x1",
          "99999999999999999999", "9223372036854775807", "#", " ", "\t", "\n", "\n", "\n", ""]


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))  # most soups are refused
@given(st.lists(st.sampled_from(TOKENS), max_size=30), st.booleans(), st.booleans())
def test_any_text_parses_or_raises_fsa_error(tokens, acceptor, openfst):
    """Bad text of any shape gives an `FsaError` (a ValueError naming the line), never another exception;
    text that parses prints back to text that parses to the same graph."""
    text = " ".join(tokens)
    try:
        f = gtn.Fsa.from_str(text, acceptor=acceptor, openfst=openfst)
    except gtn.FsaError:
        return
    g = gtn.Fsa.from_str(f.to_str(openfst=openfst), acceptor=acceptor, openfst=openfst)
    if openfst:  # OpenFst text names no unused states: compare the trimmed graphs
        f, g = gtn.connect(f), gtn.connect(g)
    assert torch.equal(g.arcs, f.arcs) and g.num_states == f.num_states
    assert torch.equal(g.scores, f.scores)  # nan == nan is not needed: a nan score is refused by Fsa


# ---------------------------------------------------------------------------------------------------- networkx
@LAW
@given(fsas(max_states=12, transducer=None, attr=True, dtype=torch.float32, acyclic=False), st.booleans())
def test_networkx_round_trip(x, double):
    x = x.double() if double else x
    g = x.to_networkx()
    assert isinstance(g, nx.MultiDiGraph)
    assert g.number_of_nodes() == x.num_states and g.number_of_edges() == x.num_arcs
    for (s, d, k, data), (s2, d2, l2) in zip(sorted(g.edges(keys=True, data=True), key=lambda e: e[2]),
                                             x.arcs.tolist()):
        assert (s, d, data["label"], data["arc"]) == (s2, d2, l2, k)
        assert data["score"] == float(x.scores[k])
        assert data["seg"] == float(x.seg[k]) and data["idx"] == int(x.idx[k])
        if x.aux_labels is not None:
            assert data["aux_label"] == int(x.aux_labels[k])
    y = gtn.Fsa.from_networkx(g)
    assert y == x and y.dtype == x.dtype and y.idx.dtype == torch.int64 and y.seg.dtype == x.seg.dtype


def test_networkx_vec_and_hand_built_graph():
    v = gtn.FsaVec([gtn.Fsa([(0, 1, 3, 0.5), (1, 2, -1, 0.0)]), gtn.Fsa([(0, 1, -1, 1.0)])])
    gs = gtn.to_networkx(v)
    assert [gtn.Fsa.from_networkx(g) for g in gs] == list(v)
    g = nx.MultiDiGraph()
    g.add_node("begin", start=True)
    g.add_node("mid")
    g.add_node("end", final=True)
    g.add_edge("begin", "mid", label=4, score=0.25, colour="red")
    g.add_edge("begin", "mid", label=5, score=-1.0, colour="blue")
    g.add_edge("mid", "end", label=-1)
    f = gtn.Fsa.from_networkx(g)
    assert f.arcs.tolist() == [[0, 1, 4], [0, 1, 5], [1, 2, -1]]
    assert f.scores.tolist() == [0.25, -1.0, 0.0] and f.attrs == {}  # strings are not per-arc tensors
    d = nx.DiGraph()
    d.add_edge(0, 1, label=2, score=1.5, weight=2)
    d.add_edge(1, 2, label=-1, weight=3)
    f = gtn.Fsa.from_networkx(d, dtype=torch.float64)
    assert f.dtype == torch.float64 and f.weight.tolist() == [2, 3]


def test_networkx_errors():
    g = nx.MultiDiGraph()
    g.add_edge(0, 1, score=1.0)
    with pytest.raises(gtn.FsaError, match="no 'label'"):
        gtn.Fsa.from_networkx(g)
    g = nx.MultiDiGraph()
    g.add_edge(0, 1, label=1, aux_label=2)
    g.add_edge(1, 2, label=-1)
    with pytest.raises(gtn.FsaError, match="aux_label"):
        gtn.Fsa.from_networkx(g)
    g = nx.MultiDiGraph()
    g.add_edge("a", "b", label=-1)
    with pytest.raises(gtn.FsaError, match="start=True"):
        gtn.Fsa.from_networkx(g)
    g = nx.MultiDiGraph()
    g.add_edge(0, 1, label=3)  # a labelled arc into the final state
    with pytest.raises(gtn.FsaError, match="only label -1 may enter"):
        gtn.Fsa.from_networkx(g)


# ---------------------------------------------------------------------------------------------------- dot / draw
@LAW
@given(fsa_vecs(max_fsas=3, max_states=10, transducer=None, acyclic=False), st.booleans())
def test_to_dot_contains_every_arc(v, as_vec):
    x = v if as_vec else v[0]
    dot = x.to_dot()
    assert dot.startswith("digraph FSA {") and dot.rstrip().endswith("}")
    edges = re.findall(r'"(f\d+s)?(\d+)" -> "(f\d+s)?(\d+)" \[label = "([^"]*)"\]', dot)
    assert len(edges) == x.num_arcs
    members = list(v) if as_vec else [x]
    want = []
    for m, f in enumerate(members):
        texts = io._arc_labels(f)
        want += [((f"f{m}s" if as_vec else ""), s, d, t) for (s, d, _), t in zip(f.arcs.tolist(), texts)]
    assert [(p, int(s), int(d), t) for p, s, _, d, t in edges] == want
    if as_vec:
        assert dot.count("subgraph cluster_") == len(v)


def test_to_dot_labels_symbols_and_attrs():
    f = gtn.Fsa([(0, 1, 1, 0.5), (1, 2, -1, float("-inf"))], aux_labels=[7, -1], seg=torch.tensor([3, 4]))
    dot = f.to_dot(symbols={1: 'a"b'}, aux_symbols={7: "seven"}, show_attrs=True, title="T")
    assert '"0" -> "1" [label = "a\\"b:seven/0.5 seg=3"];' in dot
    assert '"1" -> "2" [label = "-1:-1/-inf seg=4"];' in dot
    assert "doublecircle" in dot and 'label = "T"' in dot


@pytest.mark.parametrize("suffix", ["png", "svg", "pdf"])
def test_draw_matplotlib(tmp_path, suffix):
    f = gtn.Fsa([(0, 1, 1, 0.5), (0, 1, 2, 0.1), (1, 1, 3, 0.0), (1, 0, 4, 0.0), (1, 2, -1, 0.0)])
    for x in (f, gtn.FsaVec([f, f])):
        p = tmp_path / f"m.{suffix}"
        assert gtn.draw(x, p, engine="matplotlib") == str(p)
        head = p.read_bytes()[:8]
        assert {"png": head.startswith(b"\x89PNG"), "svg": b"<?xml" in head or b"<svg" in head,
                "pdf": head.startswith(b"%PDF")}[suffix]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's `dot` program is not installed")
def test_draw_graphviz(tmp_path):
    f = gtn.Fsa([(0, 1, 1, 0.5), (1, 2, -1, 0.0)])
    p = f.draw(tmp_path / "g.svg")
    assert "<svg" in open(p).read()
    p = f.draw(str(tmp_path / "g.png"), engine="graphviz")
    assert open(p, "rb").read(4) == b"\x89PNG"


def test_draw_without_graphviz(tmp_path, monkeypatch):
    f = gtn.Fsa([(0, 1, 1, 0.5), (1, 2, -1, 0.0)])
    monkeypatch.setattr(io.shutil, "which", lambda name: None)
    assert open(f.draw(tmp_path / "x.png"), "rb").read(4) == b"\x89PNG"  # matplotlib fallback
    with pytest.raises(RuntimeError, match="needs Graphviz"):
        f.draw(tmp_path / "x.gif")
    with pytest.raises(RuntimeError, match="not installed"):
        f.draw(tmp_path / "x.svg", engine="graphviz")
    assert open(f.draw(tmp_path / "x.dot")).read() == f.to_dot()
    with pytest.raises(gtn.FsaError, match="suffix"):
        f.draw(tmp_path / "noext")


# ---------------------------------------------------------------------------------------------------- k2
def test_k2_round_trip():
    k2 = pytest.importorskip("k2", reason="k2 is not installed (it needs its own wheel index); to_k2/from_k2 "
                                           "are checked only where it is")
    f = gtn.Fsa([(0, 1, 1, 0.5), (0, 1, 2, 0.1), (1, 2, -1, 0.0)], aux_labels=[5, 6, -1], seg=torch.tensor([1, 2, 3]))
    s = f.scores.clone().requires_grad_()
    f.scores = s
    k = gtn.to_k2(f)
    assert isinstance(k, k2.Fsa)
    back = gtn.from_k2(k)
    assert back.equal(f) and back.seg.tolist() == [1, 2, 3]
    back.scores.sum().backward()
    assert s.grad.tolist() == [1.0, 1.0, 1.0]
    v = gtn.FsaVec([f.detach(), f.detach()])
    assert gtn.from_k2(gtn.to_k2(v)).equal(v)


@LAW
@given(fsa_vecs(max_fsas=4, max_states=8, transducer=None, dtype=torch.float32))
def test_to_k2_takes_any_valid_fsa(v):
    """Law: every valid FSA converts, also those whose final state no arc enters (no successful path: k2's
    tensor constructor guesses their number of states wrongly): to_k2 gives the FSA ``k2.Fsa.from_str`` builds
    from the same text, single and batched, and from_k2 gives it back."""
    k2 = pytest.importorskip("k2", reason="k2 is not installed (it needs its own wheel index); to_k2 is "
                                           "compared with k2.Fsa.from_str only where k2 imports")
    for f in v:
        f = f.detach()
        k = gtn.to_k2(f)
        ref = k2.Fsa.from_str(gtn.to_str(f), acceptor=f.aux_labels is None)
        assert k.shape == ref.shape and torch.equal(k.arcs.values()[:, :3], ref.arcs.values()[:, :3])
        assert torch.equal(k.scores, f.scores)
        assert gtn.from_k2(k).equal(f)
    assert gtn.from_k2(gtn.to_k2(v.detach())).equal(v.detach())


def test_k2_text_of_an_fsa_without_a_path_keeps_its_final_state():
    """The text to_k2 hands k2 for an FSA whose final state no arc enters keeps the final state's line, so the
    number of states survives (checked through our own k2-text reader, with or without k2)."""
    for f in (gtn.Fsa([(0, 1, 3, 0.5), (1, 2, 4, 0.25)], num_states=5),
              gtn.Fsa([(0, 1, 3, 0.5)], aux_labels=[7], num_states=3),
              gtn.Fsa(torch.zeros(0, 3, dtype=torch.int64), num_states=2)):
        t = gtn.to_str(f)
        assert t.splitlines()[-1] == str(f.num_states - 1)
        assert gtn.from_str(t, acceptor=f.aux_labels is None).equal(f)


def test_k2_missing_gives_clear_error():
    try:
        import k2  # noqa: F401
        pytest.skip("k2 is installed: the missing-k2 error cannot occur")
    except ImportError:
        pass
    f = gtn.Fsa([(0, 1, -1, 0.0)])
    with pytest.raises(ImportError, match="k2 is not installed"):
        gtn.to_k2(f)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's `dot` program is not installed")
def test_docs_pictures_script_draws_every_panel(tmp_path):
    """docs/pictures.py (the docs' pictures) runs and writes one SVG per panel, each with its captions."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("pictures", Path(__file__).resolve().parents[1] / "docs" / "pictures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    made = mod.pictures(tmp_path)
    names = sorted(Path(p).name for p in made)
    assert names == sorted(["compose.svg", "concat.svg", "remove_epsilon.svg", "viterbi_path.svg",
                            "intersect_dense.svg", "lexicon.svg", "frame_graph.svg"])
    compose = (tmp_path / "compose.svg").read_text()
    assert compose.startswith("<?xml") and "compose(a, b)" in compose and "a (transducer)" in compose
    # the result's arcs are there: 1:5 with score 0.5 + 0.25
    assert "1:5/0.75" in compose
    assert "blank" in (tmp_path / "frame_graph.svg").read_text()
