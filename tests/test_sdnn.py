"""Tests of lenet.sdnn: the space-displacement reader (LeNet-5 swept over the string, character model)."""
import itertools

import pytest
import torch

import gtn
import lenet
from lenet.model import LeNet5
from lenet.recognizer import recognize
from lenet.sdnn import SDNNReader, character_model, save_sdnn, sweep_input, target_graphs
from lenet.strings import make_strings


def accepts(graph, seqs, num_symbols):
    """Which of the equal-length frame sequences ``seqs`` does ``graph`` accept? (one batched dense
    intersection with one-hot frames)"""
    idx = torch.tensor(seqs)
    lp = torch.full(idx.shape + (num_symbols,), -1e4, dtype=torch.float64)
    lp.scatter_(2, idx[..., None], 0.0)
    score = gtn.dense_forward_score(graph.double(), gtn.DenseFsaVec(lp))
    return (score > -1.0).tolist()


def reads(seq):
    """The paper's reading rule: runs of a digit are one digit; different digits need a blank between."""
    ok = all(not (a > 0 and b > 0 and a != b) for a, b in zip(seq[:-1], seq[1:]))
    runs = [k for k, _ in itertools.groupby(seq) if k > 0]
    return ok, runs


def test_character_model_accepts_exactly_the_separated_sequences():
    g = character_model(num_digits=2)
    n = 0
    for T in range(1, 7):
        seqs = list(itertools.product(range(3), repeat=T))
        for seq, acc in zip(seqs, accepts(g, seqs, 3)):
            assert acc == reads(seq)[0], seq
            n += 1
    assert n == 1092


@pytest.mark.parametrize("target", [[1], [2, 2], [1, 2, 1]])
def test_target_graph_accepts_exactly_the_sequences_reading_the_target(target):
    g = target_graphs([target])[0]
    for T in range(1, 7):
        seqs = list(itertools.product(range(3), repeat=T))
        for seq, acc in zip(seqs, accepts(g, seqs, 3)):
            ok, runs = reads(seq)
            assert acc == (ok and runs == target), (target, seq)


def test_loss_nonnegative_gradient_and_decode():
    torch.manual_seed(0)
    strings = make_strings(3, "test", seed=1, lengths=(2, 3))
    reader = SDNNReader(LeNet5(), blank=15.0).double()
    images, labels = [s.image for s in strings], [s.label for s in strings]
    loss = reader.loss(images, labels, reduction="none")
    assert bool((loss >= -1e-9).all()) and bool(torch.isfinite(loss).all())
    loss.sum().backward()
    assert float(reader.model.c1.weight.grad.abs().sum()) > 0 and reader.blank.grad is not None
    # decoding = the reading rule applied to the Viterbi frame labels
    texts, frames = reader.decode(images, return_frames=True)
    for t, f in zip(texts, frames):
        ok, runs = reads(f)
        assert ok and t == "".join(str(r - 1) for r in runs)
    x, positions = sweep_input(images)
    assert x.shape[:3] == (3, 1, 32) and (x.shape[-1] - 32) % 4 == 0
    assert (x.shape[-1] - 32) // 4 + 1 - 1 <= int(positions.max()) <= (x.shape[-1] - 32) // 4 + 1
    assert [len(f) for f in frames] == positions.tolist()


def test_checkpoint_and_recognize(tmp_path):
    reader = SDNNReader(LeNet5(), blank=12.0)
    path = save_sdnn(reader, tmp_path / "s.pt")
    back = lenet.load(path)
    assert isinstance(back, SDNNReader) and float(back.blank.detach()) == 12.0
    s = make_strings(2, "test", seed=3)
    assert recognize([x.image for x in s], path) == reader.decode([x.image for x in s])
    assert isinstance(recognize(s[0].image, back), str)
