"""The reference (pure-PyTorch) path on a CUDA device, compared with the CPU: scoring, compose, dense/CTC, and one
loss step of the LeNet-5 string reader. Every test skips cleanly without CUDA.

``GTN_TEST_DEVICE=cpu`` runs the same comparisons on the CPU (a smoke run of the tests themselves where there is
no GPU; CPU against CPU proves nothing about CUDA)."""
import os

import pytest
import torch

import gtn
from strategies import fsa_vecs

DEVICE = os.environ.get("GTN_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")


def _graphs(seed, dtype=torch.float64, **kw):
    """A few seeded random FsaVecs (hypothesis' strategy, drawn with a fixed seed)."""
    from hypothesis import HealthCheck, given, seed as hseed, settings
    out = []

    @hseed(seed)
    @settings(max_examples=20, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(fsa_vecs(max_fsas=4, max_states=10, max_paths=60, top_sorted=None, transducer=None, dtype=dtype, **kw))
    def draw(v):
        out.append(v)
    draw()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_scoring_on_device_matches_cpu(dtype):
    tol = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2}[dtype]
    for v in _graphs(1, dtype=dtype, integer_scores=dtype == torch.bfloat16):
        res = []
        for dev in ("cpu", DEVICE):
            x = v.to(dev).detach().requires_grad_()
            fwd = gtn.forward_score(x)
            fwd.sum().backward()
            g1 = x.scores.grad.clone()
            x.scores.grad = None
            vit = gtn.viterbi_score(x)
            vit.sum().backward()
            res.append([fwd.detach(), g1, vit.detach(), x.scores.grad, gtn.viterbi_path(x).arcs,
                        gtn.arc_posteriors(x), gtn.forward_scores(x), gtn.backward_scores(x, log_semiring=False)])
            assert fwd.device.type == torch.device(dev).type and fwd.dtype == dtype
        for a, b in zip(*res):
            a, b = a.double(), b.cpu().double()
            fin = torch.isfinite(a)
            assert torch.equal(fin, torch.isfinite(b)) and torch.allclose(a[fin], b[fin], atol=tol, rtol=tol)


def test_compose_on_device_matches_cpu():
    for a, b in zip(_graphs(2), _graphs(3)):
        b = b[0]
        for backend in ("auto", "torch"):
            c_cpu = gtn.compose(a, b, backend="torch")
            c_dev = gtn.compose(a.to(DEVICE), b.to(DEVICE), backend=backend)
            assert c_dev.device.type == torch.device(DEVICE).type
            assert torch.equal(c_dev.arcs.cpu(), c_cpu.arcs) and torch.equal(c_dev.arc_splits.cpu(), c_cpu.arc_splits)
            assert torch.allclose(c_dev.scores.cpu(), c_cpu.scores, equal_nan=False)
    lin = gtn.linear_fsa([[1, 2], [2, 1]], dtype=torch.float64)
    lex = gtn.Fsa.from_str("0 1 1 0.5\n1 2 2 0.25\n0 3 2 0.1\n3 2 1 0.2\n2 4 -1 0\n4\n", dtype=torch.float64)
    for log in (True, False):
        z_cpu = gtn.compose_score(lin, lex, log_semiring=log)
        z_dev = gtn.compose_score(lin.to(DEVICE), lex.to(DEVICE), log_semiring=log)
        assert torch.allclose(z_dev.cpu(), z_cpu, atol=1e-12)


def test_dense_and_ctc_on_device_match_cpu():
    g = torch.Generator().manual_seed(0)
    T, N, C = 12, 3, 5
    logits = torch.randn(T, N, C, generator=g, dtype=torch.float64)
    targets = torch.tensor([[1, 2, 2], [3, 4, 0], [1, 1, 1]])
    il, tl = torch.tensor([12, 9, 10]), torch.tensor([3, 2, 3])
    res = []
    for dev in ("cpu", DEVICE):
        x = logits.to(dev).requires_grad_()
        lp = x.log_softmax(-1)
        loss = gtn.ctc_loss(lp, targets.to(dev), il, tl, reduction="none")
        loss.sum().backward()
        ref = torch.nn.functional.ctc_loss(lp.detach(), targets.to(dev), il, tl, reduction="none")
        assert torch.allclose(loss.detach(), ref, atol=1e-9)
        graphs = gtn.ctc_graph([[1, 2], [3]], device=dev, dtype=torch.float64)
        d = gtn.DenseFsaVec(lp.detach().transpose(0, 1)[:2], [7, 5])
        vit = gtn.dense_forward_score(graphs, d, log_semiring=False)
        lat = gtn.forward_score(gtn.intersect_dense(graphs, d))
        res.append([loss.detach(), x.grad, vit, lat])
    for a, b in zip(*res):
        assert torch.allclose(b.cpu(), a, atol=1e-9)


def test_lenet_reader_loss_step_on_device_matches_cpu():
    """One loss step of the paper's reader: LeNet-5 scores the segments of two rendered strings, the
    interpretation graph gets those scores, and the discriminative forward loss runs on the device; loss and
    LeNet-5's gradients equal the CPU reader's."""
    from lenet.model import LeNet5
    from lenet.recognizer import StringReader, digits_to_labels, interpretation_graph
    from lenet.strings import make_strings
    torch.manual_seed(1)
    strings = make_strings(2, "test", seed=9, lengths=(2, 3))
    images, labels = [s.image for s in strings], [s.label for s in strings]
    reader = StringReader(LeNet5(), lengths=None, seg_bias=20.0).double()
    loss_cpu = reader.loss(images, labels, reduction="none")
    loss_cpu.sum().backward()
    grad_cpu = reader.model.c5.weight.grad.clone()
    reader.zero_grad()
    # the same step with the network and the graphs on the device (the graph structure is built on the CPU)
    p = reader.prepare(images)
    S = p.crops.shape[0]
    flat_idx = interpretation_graph(p.graphs, torch.arange(1, S * 10 + 1, dtype=torch.float64).view(S, 10)).scores
    t = reader.transformer.to(DEVICE)
    arc_scores = -t.model(p.crops.to(DEVICE, torch.float64)) + t.segment_scores(p.features.to(DEVICE))[:, None]
    idx = flat_idx.to(torch.int64).to(DEVICE)
    scores = torch.where(idx > 0, arc_scores.reshape(-1).index_select(0, (idx - 1).clamp(min=0)),
                         torch.zeros((), dtype=torch.float64, device=DEVICE))
    G = interpretation_graph(p.graphs, torch.zeros(S, 10, dtype=torch.float64)).to(DEVICE)
    G.scores = scores
    targets = gtn.linear_fsa([digits_to_labels(s) for s in labels], dtype=torch.float64, device=DEVICE)
    loss_dev = gtn.discriminative_forward_loss(G, targets, reduction="none")
    loss_dev.sum().backward()
    assert loss_dev.device.type == torch.device(DEVICE).type
    assert torch.allclose(loss_dev.detach().cpu(), loss_cpu.detach(), atol=1e-9)
    assert torch.allclose(t.model.c5.weight.grad.cpu(), grad_cpu, atol=1e-8)
