"""ctc_topo, ctc_graph and ctc_loss (against torch.nn.functional.ctc_loss)."""
import itertools
import re

import pytest
import torch
import torch.nn.functional as F

import gtn

BACKENDS = ["numba", "torch"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run a test with the numba kernels and with the pure-torch frame loop (``backend="auto"`` either way)."""
    from gtn import kernels
    old = kernels.use_numba()
    kernels.use_numba(request.param == "numba")
    yield request.param
    kernels.use_numba(old)


# ------------------------------------------------------------------------------------------------ graphs
def accepts_all(graph, seqs, C):
    """Whether ``graph`` accepts each token sequence (all of one length): its dense score against one-hot
    emissions is finite. One batched call."""
    seqs = torch.tensor(seqs, dtype=torch.int64).reshape(len(seqs), -1)
    lp = torch.full(tuple(seqs.shape) + (C,), float("-inf"), dtype=torch.float64)
    lp.scatter_(2, seqs[:, :, None], 0.0)
    return torch.isfinite(gtn.dense_forward_score(graph.double(), gtn.DenseFsaVec(lp))).tolist()


def accepts(graph, tokens, C):
    return accepts_all(graph, [list(tokens)], C)[0]


def ctc_regex(target, modified):
    """The language of a CTC graph as a regular expression over token characters (blank = '0')."""
    parts = ["0*"]
    for i, y in enumerate(target):
        if i and target[i - 1] == y and not modified:
            parts[-1] = "0+"
        parts += [f"{y}+", "0*"]
    return re.compile("".join(parts) + r"\Z")


@pytest.mark.parametrize("modified", [False, True])
def test_ctc_graph_language(modified):
    """Law: the CTC graph accepts exactly the token sequences that collapse to the target (all sequences up to
    length 5 over 3 tokens, every target up to length 3)."""
    C = 3
    for U in range(4):
        for target in itertools.product(range(1, C), repeat=U):
            g = gtn.ctc_graph(list(target), modified=modified)
            assert isinstance(g, gtn.Fsa) and g.num_states == 2 * U + 2
            rx = ctc_regex(target, modified)
            for T in range(6):
                seqs = list(itertools.product(range(C), repeat=T))
                got = accepts_all(g, seqs, C)
                for toks, ok in zip(seqs, got):
                    assert ok == bool(rx.match("".join(map(str, toks)))), (target, toks)


def test_ctc_graph_batch_and_forms():
    v = gtn.ctc_graph([[1, 2], [3, 3, 1], []])
    assert isinstance(v, gtn.FsaVec) and len(v) == 3
    for i, t in enumerate([[1, 2], [3, 3, 1], []]):
        assert v[i].equal(gtn.ctc_graph(t), exact=True)
    padded = gtn.ctc_graph(torch.tensor([[1, 2, 0], [3, 3, 1], [0, 0, 0]]), lengths=[2, 3, 0])
    assert padded.equal(v, exact=True)
    # k2's layout: blank states loop then advance; label states go to the blank, loop, then skip
    g = gtn.ctc_graph([1, 1])
    assert g.arcs.tolist() == [[0, 0, 0], [0, 1, 1], [1, 2, 0], [1, 1, 1], [2, 2, 0], [2, 3, 1],
                               [3, 4, 0], [3, 3, 1], [3, 5, -1], [4, 4, 0], [4, 5, -1]]
    assert g.aux_labels.tolist() == [0, 1, 0, 0, 0, 1, 0, 0, -1, 0, -1]
    with pytest.raises(gtn.FsaError, match="blank"):
        gtn.ctc_graph([1, 0, 2])
    gb = gtn.ctc_graph([0, 1], blank=2)
    assert accepts(gb, [2, 0, 0, 2, 1], 3) and not accepts(gb, [0, 1, 1, 2, 0], 3)


def collapse(tokens):
    out, prev = [], None
    for t in tokens:
        if t != prev and t != 0:
            out.append(t)
        prev = t
    return out


@pytest.mark.parametrize("modified", [False, True])
def test_ctc_topo(modified):
    C = 3
    topo = gtn.ctc_topo(C, modified=modified)
    assert topo.num_arcs == (C * (C + 1) if not modified else 4 * C - 2)
    assert topo.num_states == C + 1 and topo.aux_labels is not None
    # every token sequence is accepted; walking the standard topology outputs the CTC collapse
    arcs, aux = topo.arcs.tolist(), topo.aux_labels.tolist()
    for T in range(5):
        seqs = list(itertools.product(range(C), repeat=T))
        assert all(accepts_all(topo, seqs, C))
        for toks in seqs:
            if not modified:
                state, out = 0, []
                for t in toks:
                    (i,) = [i for i, a in enumerate(arcs) if a[0] == state and a[2] == t]
                    state = arcs[i][1]
                    out += [aux[i]] if aux[i] > 0 else []
                assert out == collapse(toks)
    # the standard topology is deterministic: the forward score against normalised emissions is log 1
    lp = torch.randn(2, 5, C, dtype=torch.float64).log_softmax(-1)
    z = gtn.dense_forward_score(topo.double(), gtn.DenseFsaVec(lp, [5, 3]))
    if not modified:
        assert torch.allclose(z, torch.zeros(2, dtype=torch.float64), atol=1e-12)
    else:
        assert bool((z > 1e-6).all())  # several paths per token sequence


# ------------------------------------------------------------------------------------------------ ctc_loss
def compare(logits, targets, il, tl, rtol, atol, **kw):
    x1 = logits.detach().clone().requires_grad_(True)
    x2 = logits.detach().clone().requires_grad_(True)
    ours = gtn.ctc_loss(x1.log_softmax(-1), targets, il, tl, **kw)
    ref = F.ctc_loss(x2.log_softmax(-1), targets, il, tl, **kw)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert torch.allclose(ours, ref, rtol=rtol, atol=atol), (ours, ref)
    fin = torch.isfinite(ref)
    if bool(fin.all()):
        w = torch.linspace(0.5, 1.5, ours.numel(), dtype=ours.dtype).reshape(ours.shape)
        (ours * w).sum().backward()
        (ref * w).sum().backward()
        assert torch.allclose(x1.grad, x2.grad, rtol=rtol, atol=atol), (x1.grad - x2.grad).abs().max()
    return ours


CASES = [
    # (T, N, C, target lengths, input lengths, blank)
    (12, 4, 5, [3, 5, 1, 0], [12, 10, 1, 7], 0),
    (30, 3, 4, [8, 12, 2], [30, 25, 6], 0),
    (10, 3, 6, [3, 4, 9], [10, 8, 5], 5),   # blank = last, third target longer than its input
    (8, 2, 4, [2, 3], [8, 8], 2),            # blank in the middle
    (1, 3, 3, [1, 0, 2], [1, 1, 1], 0),      # length-1 inputs (the last one impossible)
]


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-9, 1e-12), (torch.float32, 1e-4, 1e-6)])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_ctc_loss_matches_torch(backend, case, reduction, dtype, rtol, atol):
    T, N, C, tl, il, blank = CASES[case]
    g = torch.Generator().manual_seed(case)
    logits = torch.randn(T, N, C, generator=g, dtype=dtype) * 2
    labels = [c for c in range(C) if c != blank]
    S = max(tl) + 2
    targets = torch.tensor(labels)[torch.randint(0, len(labels), (N, S), generator=g)]
    if case == 0:
        targets[0, :3] = targets[0, 0]  # repeated labels
    il, tl = torch.tensor(il), torch.tensor(tl)
    for zero_infinity in (False, True):
        compare(logits, targets, il, tl, rtol, atol, blank=blank, reduction=reduction, zero_infinity=zero_infinity)
        # the same targets concatenated
        cat = torch.cat([targets[i, :tl[i]] for i in range(N)])
        compare(logits, cat, il, tl, rtol, atol, blank=blank, reduction=reduction, zero_infinity=zero_infinity)


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-9, 1e-12), (torch.float32, 1e-4, 1e-6)])
def test_ctc_loss_large_vocabulary(backend, dtype, rtol, atol):
    """A speech-sized vocabulary (C = 3000, each sequence reads at most U + 1 of its columns, so the frame loops
    run on the gathered columns): loss and gradient through log_softmax equal torch's, with random lengths,
    repeated labels and a blank that is not 0; the gradient is laid out like the input ([T, N, C])."""
    T, N, C = 40, 3, 3000
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(T, N, C, generator=g, dtype=dtype) * 2
    blank = 17
    targets = torch.randint(0, C - 1, (N, 15), generator=g)
    targets = targets + (targets >= blank).to(targets.dtype)  # never the blank
    targets[0, 3:6] = targets[0, 3]
    il, tl = torch.tensor([40, 33, 21]), torch.tensor([15, 9, 0])
    for reduction in ("none", "mean"):
        compare(logits, targets, il, tl, rtol, atol, blank=blank, reduction=reduction)
    lp = logits.log_softmax(-1).requires_grad_(True)
    gtn.ctc_loss(lp, targets, il, tl, blank=blank).backward()
    assert lp.grad.is_contiguous() and int((lp.grad != 0).sum(-1).max()) <= 16


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_ctc_loss_impossible_is_inf_with_zero_grad(backend):
    lp = torch.randn(3, 2, 4, dtype=torch.float64).log_softmax(-1).requires_grad_(True)
    targets = torch.tensor([[1, 1, 2], [1, 2, 3]])
    loss = gtn.ctc_loss(lp, targets, [3, 3], [3, 3], reduction="none")
    ref = F.ctc_loss(lp, targets, torch.tensor([3, 3]), torch.tensor([3, 3]), reduction="none")
    assert loss[0] == float("inf") == ref[0] and torch.allclose(loss[1], ref[1])
    loss[0].backward()
    assert (lp.grad == 0).all()
    z = gtn.ctc_loss(lp, targets, [3, 3], [3, 3], reduction="sum", zero_infinity=True)
    assert torch.allclose(z, ref[1])


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_ctc_loss_unbatched(backend):
    logits = torch.randn(9, 5, dtype=torch.float64)
    t = torch.tensor([1, 2, 2])
    for red in ("none", "sum", "mean"):
        ours = gtn.ctc_loss(logits.log_softmax(-1), t, 9, 3, reduction=red)
        ref = F.ctc_loss(logits.log_softmax(-1), t, torch.tensor(9), torch.tensor(3), reduction=red)
        assert ours.shape == ref.shape == torch.Size([]) and torch.allclose(ours, ref)


@pytest.mark.both_backends  # runs the numba and the torch path itself: once in CI
def test_ctc_loss_true_gradient_gradcheck(backend):
    """Unnormalised inputs: ours is the true derivative (gradcheck passes); torch's is not."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 2, 4, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    targets = torch.tensor([[1, 2], [3, 3]])
    il, tl = torch.tensor([6, 5]), torch.tensor([2, 2])
    for red in ("none", "sum", "mean"):
        assert torch.autograd.gradcheck(lambda y: gtn.ctc_loss(y, targets, il, tl, reduction=red), (x,))
    ours = torch.autograd.grad(gtn.ctc_loss(x, targets, il, tl, reduction="sum"), x)[0]
    theirs = torch.autograd.grad(F.ctc_loss(x, targets, il, tl, reduction="sum"), x)[0]
    assert not torch.allclose(ours, theirs, atol=1e-3)


def test_ctc_loss_bad_input():
    lp = torch.randn(5, 2, 4).log_softmax(-1)
    with pytest.raises(gtn.FsaError, match="blank"):
        gtn.ctc_loss(lp, torch.tensor([[1, 0], [1, 2]]), [5, 5], [2, 2])
    with pytest.raises(gtn.FsaError, match="outside"):
        gtn.ctc_loss(lp, torch.tensor([[1, 4], [1, 2]]), [5, 5], [2, 2])
    with pytest.raises(gtn.FsaError, match="length 6"):
        gtn.ctc_loss(lp, torch.tensor([[1, 3], [1, 2]]), [6, 5], [2, 2])
    with pytest.raises(ValueError):
        gtn.ctc_loss(lp, torch.tensor([[1, 3], [1, 2]]), [5, 5], [2, 2], reduction="avg")


def test_ctc_loss_generic_route_equals_fused():
    """CTC through the lattice (intersect_dense + forward_score) equals ctc_loss."""
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(15, 3, 5, generator=g, dtype=torch.float64).log_softmax(-1)
    targets = [[1, 2, 2], [4], [3, 1, 3, 1]]
    il = torch.tensor([15, 9, 12])
    lat = gtn.intersect_dense(gtn.ctc_graph(targets, dtype=torch.float64),
                              gtn.DenseFsaVec(lp.transpose(0, 1), il))
    cat = torch.tensor([t for q in targets for t in q])
    ref = gtn.ctc_loss(lp, cat, il, torch.tensor([3, 1, 4]), reduction="none")
    assert torch.allclose(-gtn.forward_score(lat), ref)
