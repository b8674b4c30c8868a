"""lenet.combined: several string readers read together (the product of their posteriors)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gtn
import lenet
from lenet.checkpoint import describe
from lenet.combined import CombinedReader, PenaltySum, save_combined
from lenet.metrics import error_budget
from lenet.model import LeNet5
from lenet.recognizer import StringReader, save_reader
from lenet.robustness import isolated_misread, robustness
from lenet.sdnn import SDNNReader, save_sdnn, sdnn_network
from lenet.segment import SegmentParams
from lenet.strings import make_strings

ROOT = Path(__file__).resolve().parents[1]
INF = float("inf")


class Scripted(nn.Module):
    """A reader whose readings and energies are given: image ``i`` (an int) is read ``reads[i]``, and the
    energy of text ``t`` for it is ``energy[(i, t)]`` (``+inf`` when absent). Counts its ``loss`` calls."""

    def __init__(self, reads, energy):
        super().__init__()
        self.reads, self.energy, self.loss_calls = reads, energy, 0
        self.w = nn.Parameter(torch.zeros(()))

    def decode(self, images, lexicon=None, return_confidence=False):
        return [self.reads[i] for i in images]

    def loss(self, images, labels, reduction="none"):
        self.loss_calls += 1
        return torch.tensor([self.energy.get((i, t), INF) for i, t in zip(images, labels)], dtype=torch.float64)


def brute_force(members, weights, i):
    """The reading the module docstring promises for image ``i``: the member reading of least total energy,
    ties to the earlier member; an empty reading has infinite energy; with no finite total, the first
    positively weighted member's reading."""
    best, best_e = None, INF
    for m in members:
        t = m.reads[i]
        e = sum(w * other.energy.get((i, t), INF) for w, other in zip(weights, members) if w > 0) if t else INF
        if e < best_e:
            best, best_e = t, e
    if best is None:
        best = members[next(k for k, w in enumerate(weights) if w > 0)].reads[i]
    return best, best_e


def test_reads_the_member_reading_of_least_total_energy():
    """The law, over 600 random images and three members: with random readings (often shared), random
    integer energies (ties), missing energies (+inf), empty readings and random weights (some 0), the
    combined reading is the brute-force argmin of Σ w_m E_m over the members' readings, ties to the earlier
    member, and the confidence is exp(−that total)."""
    rng = np.random.default_rng(0)
    texts = ["12", "13", "7", "", "905"]
    for trial in range(6):
        n = 100
        reads = [[texts[rng.integers(len(texts))] for _ in range(n)] for _ in range(3)]
        members = []
        for r in reads:
            energy = {}
            for i in range(n):
                for t in texts:
                    if t and rng.random() < 0.85:
                        energy[(i, t)] = float(rng.integers(0, 4))
            members.append(Scripted(r, energy))
        weights = [float(rng.choice([0.0, 0.5, 1.0, 2.0])) for _ in range(3)]
        if not any(weights):
            weights[1] = 1.0
        both = CombinedReader(members, weights)
        got, conf = both.decode(list(range(n)), return_confidence=True)
        for i in range(n):
            want, e = brute_force(members, weights, i)
            assert got[i] == want, (trial, i, weights, [m.reads[i] for m in members])
            assert math.isclose(float(conf[i]), math.exp(-e), rel_tol=1e-12, abs_tol=0.0) or (e == INF and conf[i] == 0)


def test_agreeing_members_cost_no_scoring():
    a = Scripted(["12", "34"], {(0, "12"): 1.0, (1, "34"): 1.0})
    b = Scripted(["12", "34"], {(0, "12"): 2.0, (1, "34"): 2.0})
    assert CombinedReader([a, b]).decode([0, 1]) == ["12", "34"]
    assert a.loss_calls == b.loss_calls == 0
    b.reads[1] = "35"
    assert CombinedReader([a, b]).decode([0, 1]) == ["12", "34"]   # "35" has no energy under a: +inf
    assert a.loss_calls == b.loss_calls == 1


def test_a_weighted_lexicon_counts_once_per_unit_of_weight_and_non_words_lose():
    # the acceptor of "12" (score 0) and "13" (score 2): labels are digit + 1
    lex = gtn.Fsa(torch.tensor([[0, 1, 2], [1, 2, 3], [1, 2, 4], [2, 3, -1]]),
                  torch.tensor([0.0, 0.0, 2.0, 0.0]), num_states=4)
    a = Scripted(["12"], {(0, "12"): 1.0, (0, "13"): 1.0, (0, "14"): 0.0})
    b = Scripted(["13"], {(0, "12"): 1.0, (0, "13"): 1.0, (0, "14"): 0.0})
    both = CombinedReader([a, b], [0.5, 1.0])
    assert both.decode([0]) == ["12"]                  # a tie without the lexicon: the first member's
    assert both.decode([0], lexicon=lex) == ["13"]     # "13" earns its word score 2
    e = both.energies([0, 0], ["12", "13"], lexicon=lex)
    assert torch.allclose(e, torch.tensor([1.5, 1.5 - 1.5 * 2.0], dtype=torch.float64))
    b.reads[0] = "14"                                  # cheaper for both members, but not a word
    assert both.decode([0], lexicon=lex) == ["12"]


def test_bad_members_and_weights_are_refused():
    a = Scripted(["1"], {})
    with pytest.raises(ValueError, match="at least two"):
        CombinedReader([a])
    with pytest.raises(TypeError, match="member 1 is a Linear"):
        CombinedReader([a, nn.Linear(2, 2)])
    for w in ([1.0], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")], [1.0, INF]):
        with pytest.raises(ValueError):
            CombinedReader([a, Scripted(["1"], {})], w)
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        CombinedReader([a, Scripted(["1"], {})]).energies([0, 1], ["1"])


# ------------------------------------------------------------------------------------ with real readers
@pytest.fixture(scope="module")
def readers():
    """A segmentation reader and an SDNN with fixed random networks, and four short test strings."""
    torch.manual_seed(0)
    seg = StringReader(LeNet5(), SegmentParams(), lengths=(1, 4), seg_bias=1.5).eval()
    sdnn = SDNNReader(sdnn_network(), blank=0.5, stride=2, lengths=(1, 4)).eval()
    strings = make_strings(4, "test", seed=5, lengths=(2, 3))
    return seg, sdnn, strings


def test_energies_are_the_members_weighted_losses_and_the_reading_minimises_them(readers):
    seg, sdnn, strings = readers
    images = [s.image for s in strings]
    both = CombinedReader([seg, sdnn], [1.0, 0.5])
    texts = [s.label for s in strings] + ["7" * 3] * len(strings)
    e = both.energies(images + images, texts)
    want = (seg.loss(images + images, texts, reduction="none").double()
            + 0.5 * sdnn.loss(images + images, texts, reduction="none").double())
    assert torch.allclose(e, want.detach())
    assert torch.allclose(both.loss(images + images, texts, reduction="none").double(), want)
    with pytest.raises(ValueError):
        seg.loss(images[:1], [""])                     # the members refuse an empty label...
    assert both.energies(images[:2], ["", texts[1]]).tolist() == [INF, float(e[1])]   # ...it has no energy
    a, b = seg.decode(images), sdnn.decode(images)
    got, conf = both.decode(images, return_confidence=True)
    assert a != b   # random networks: the members disagree, so the choice is exercised
    for i, t in enumerate(got):
        cands = [c for c in (a[i], b[i]) if c]
        assert t in (a[i], b[i])
        ce = both.energies([images[i]] * len(cands), cands)
        # float32 networks: a loss differs in its last bits with the batch it is computed in
        assert math.isclose(float(both.energies([images[i]], [t])[0]), float(ce.min()), rel_tol=1e-5)
        assert math.isclose(float(conf[i]), math.exp(-float(ce.min())), rel_tol=1e-3)
    assert bool(((conf >= 0) & (conf <= 1)).all())


def test_candidate_losses_read_each_image_once_and_equal_the_losses(readers):
    seg, sdnn, strings = readers
    images = [s.image for s in strings]
    cands = [[strings[0].label, "12"], [], ["7"], [strings[3].label, "905", "1"]]
    rep_images = [images[i] for i, c in enumerate(cands) for _ in c]
    flat = [t for c in cands for t in c]
    both = CombinedReader([seg, sdnn], [1.0, 0.5])
    for reader in (seg, sdnn, both):
        got = reader.candidate_losses(images, cands)
        want = reader.loss(rep_images, flat, reduction="none")
        assert got.shape == (len(flat),)
        assert torch.allclose(got, want, rtol=1e-5), (type(reader).__name__, got, want)
    with_empty = [c + [""] for c in cands]
    e = both.candidate_energies(images, with_empty)   # an empty candidate: +inf, in its place
    texts = [t for c in with_empty for t in c]
    assert e.shape == (len(texts),)
    assert all(v == INF for v, t in zip(e.tolist(), texts) if not t)
    nonempty = torch.tensor([bool(t) for t in texts])
    assert torch.allclose(e[nonempty], both.energies(rep_images, flat), rtol=1e-5)
    with pytest.raises(ValueError, match="candidate lists"):
        seg.candidate_losses(images, cands[:2])


def test_checkpoint_round_trip_recognize_and_kind_errors(readers, tmp_path):
    seg, sdnn, strings = readers
    images = [s.image for s in strings]
    both = CombinedReader([seg, sdnn], [1.0, 2.0])
    path = save_combined(both, tmp_path / "both.pt")
    back = lenet.load(path)
    assert isinstance(back, CombinedReader) and back.weights == [1.0, 2.0]
    assert isinstance(back.members[0], StringReader) and isinstance(back.members[1], SDNNReader)
    for x, y in zip(both.state_dict().values(), back.state_dict().values()):
        assert torch.equal(x, y)
    assert back.decode(images) == both.decode(images)
    assert lenet.recognize(images, str(path)) == both.decode(images)
    assert lenet.recognize(images[0], back, length=2) == both.decode([images[0]], lexicon=lenet.recognizer.length_constraint(2, 2))[0]
    nested = CombinedReader([back, seg])
    again = lenet.load(save_combined(nested, tmp_path / "nested.pt"))
    assert again.decode(images) == nested.decode(images)
    assert "lenet.recognize" in describe("combined_reader")
    with pytest.raises(ValueError, match="combined_reader"):
        lenet.classify(np.zeros((28, 28), np.uint8), str(path))
    with pytest.raises(TypeError, match="CombinedReader"):
        save_combined(seg, tmp_path / "x.pt")


def test_the_isolated_view_sums_the_networks_penalties(readers):
    seg, sdnn, _ = readers
    both = CombinedReader([seg, sdnn], [1.0, 0.5])
    digits = lenet.load_digits("test", raw=True)
    d = (digits[0][:200], digits[1][:200])
    net = both.model
    assert isinstance(net, PenaltySum) and net.num_classes == 10
    x = lenet.prepare(d[0])
    want = seg.model(x) + 0.5 * sdnn.model(x)[:, :10]
    assert torch.allclose(net(x), want)
    assert torch.equal(isolated_misread(both, d), want.argmin(1) != d[1])
    strings = make_strings(5, "test", seed=1, lengths=(2, 3), digits=d)
    budget = error_budget(both, strings, both.decode([s.image for s in strings]), d)
    bad = want.argmin(1) != d[1]
    assert budget["ceiling"] == np.mean([not bool(bad[s.sources].any()) for s in strings])


def test_robustness_reads_a_combined_reader(readers):
    seg, sdnn, _ = readers
    both = CombinedReader([seg, sdnn])
    rows = robustness(both, grid=[dict(touch=0.3, max_overlap=1, height=32)], strings_per_cell=3, lengths=(2, 3))
    assert len(rows) == 1 and rows[0]["strings"] == 3 and "causes" not in rows[0]
    assert 0 <= rows[0]["string_accuracy"] <= 1 and 0 <= rows[0]["ceiling"] <= 1


def test_combine_readers_script(readers, tmp_path):
    seg, sdnn, _ = readers
    a = save_reader(seg, tmp_path / "seg.pt")
    b = save_sdnn(sdnn, tmp_path / "sdnn.pt")
    script = str(ROOT / "examples" / "combine_readers.py")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, script, str(a), str(b), "--out", str(tmp_path / "both.pt"), "--test-strings", "6",
           "--grid-strings", "0", "--varied-strings", "4"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode != 0 and "pass --seed" in r.stderr        # these checkpoints record no seed
    r = subprocess.run(cmd + ["--seed", "0", "--picture", str(tmp_path / "p.png")], capture_output=True, text=True,
                       cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert "| **combined** |" in r.stdout and "the readers agree on" in r.stdout
    assert "rejecting the least confident strings" in r.stdout
    assert "4 strings of test digits in varied styles" in r.stdout
    m = json.loads((tmp_path / "both_metrics.json").read_text())
    assert m["system"] == "combined" and m["seed"] == 0 and m["after"]["strings"] == 6
    assert [p["error"] for p in m["after"]["reject"]] == [0.005, 0.01, 0.02]
    assert set(m["varied"]) == {str(a), str(b), "combined"} and m["varied"]["combined"]["strings"] == 4
    assert all(0 <= p["accepted"] <= 1 for p in m["after"]["reject"])
    assert isinstance(lenet.load(tmp_path / "both.pt"), CombinedReader)
    r = subprocess.run([sys.executable, script, str(a), "--out", str(tmp_path / "x.pt")], capture_output=True,
                       text=True, cwd=ROOT, env=env)
    assert r.returncode == 2 and "at least two" in r.stderr
