"""Tests of lenet.boundary_net: the learned cost of severing ink (SegmentParams(cut_cost="learned"))."""
import numpy as np
import pytest
import torch

import lenet.boundary_net as boundary_net
import lenet.segment as segment_module
from lenet.boundary_net import BoundaryNet, apart_targets, train_boundary_net
from lenet.segment import (INK_THRESHOLD, SegmentParams, as_float_image, owner_apart, owner_cost_segment, segment,
                           true_path)
from lenet.strings import make_strings

EVERY = SegmentParams(cut_paths=0.3, max_pieces=10, cut_starts="every")
PRICED = SegmentParams(cut_paths=0.3, max_pieces=10, cut_starts="every", cut_cost="learned")


@pytest.fixture(scope="module")
def touching():
    return list(make_strings(24, "train", seed=7, touch=1.0, max_overlap=3, lengths=(2, 4)))


def test_targets_and_owner_apart_against_every_pair_of_pixels(touching):
    """`apart_targets` and `owner_apart` against a loop over every pair of neighbouring pixels: the target is 1
    exactly where the two pixels' owners differ, the mask keeps the pairs of two owned inked pixels, and
    `owner_apart` is the target on those pairs and 0 elsewhere."""
    positives = 0
    for s in touching[:6]:
        x = as_float_image(s.image).numpy()
        own = np.asarray(s.owner)
        target, mask = apart_targets(s.image, s.owner)
        across, under = owner_apart(s.owner)
        H, W = x.shape
        assert target.shape == mask.shape == (2, H, W) and across.shape == (H, W) and under.shape == (H - 1, W)
        for y in range(H):
            for c in range(W):
                for ch, (yy, cc) in enumerate(((y, c - 1), (y + 1, c))):
                    if yy >= H or cc < 0:
                        assert not mask[ch, y, c]
                        continue
                    both = x[y, c] > INK_THRESHOLD and x[yy, cc] > INK_THRESHOLD and own[y, c] >= 0 and own[yy, cc] >= 0
                    differ = own[y, c] != own[yy, cc]
                    assert bool(mask[ch, y, c]) == both
                    assert float(target[ch, y, c]) == float(differ)
                    q = across[y, c] if ch == 0 else under[y, c]
                    assert q == float(differ and own[y, c] >= 0 and own[yy, cc] >= 0)
                    positives += both and differ
    assert positives > 10
    with pytest.raises(ValueError, match="does not match"):
        apart_targets(touching[0].image, touching[0].owner[:, :-1])


def test_severed_prices_the_fainter_pixel_discounted_by_apart():
    """`_severed`: the fainter of two neighbouring pixels, left/right and above/below, times one minus ``apart``."""
    rng = np.random.default_rng(1)
    x = rng.random((7, 9))
    across, under = segment_module._severed(x)
    for y in range(7):
        for c in range(1, 9):
            assert across[y, c] == min(x[y, c - 1], x[y, c])
        for c in range(9):
            if y < 6:
                assert under[y, c] == min(x[y, c], x[y + 1, c])
    assert np.array_equal(across[:, 0], across[:, 1])
    qa, qu = rng.random((7, 9)), rng.random((6, 9))
    a2, u2 = segment_module._severed(x, (qa, qu))
    assert np.allclose(a2, across * (1 - qa)) and np.allclose(u2, under * (1 - qu))


def test_owner_priced_cut_paths_keep_the_form_and_cover_more(touching):
    """Priced with the owner map's knowledge (`owner_cost_segment`, what a perfect network would give), the graph
    keeps its contract (every path covers the ink once) and covers more of 60 all-touching test strings than the
    ink cost (measured: 56 against 42)."""
    from test_segment import _check_paths_cover_the_ink
    rng = np.random.default_rng(0)
    for s in touching[:8]:
        assert _check_paths_cover_the_ink(owner_cost_segment(s.image, s.owner), s.image, EVERY, rng) > 0
    strings = make_strings(60, "test", seed=43, touch=1.0, max_overlap=3)
    ink = sum(true_path(segment(s.image, EVERY), s.image, s.owner) is not None for s in strings)
    owner = sum(segment_module.owner_cost_bound(s.image, s.owner) for s in strings)
    assert owner >= ink + 8, (owner, ink)
    with pytest.raises(ValueError, match="cut_paths > 0"):
        owner_cost_segment(strings[0].image, strings[0].owner, SegmentParams())


def test_network_shapes_and_apart_range():
    net = BoundaryNet(width=4, fine=2).eval()
    for H, W in ((24, 57), (33, 101)):   # odd sizes: the half-resolution body comes back to the full size
        x = np.random.default_rng(H).random((H, W)).astype(np.float32)
        assert net(torch.from_numpy(x)[None, None]).shape == (1, 2, H, W)
        across, under = net.apart(x)
        assert across.shape == (H, W) and under.shape == (H - 1, W)
        assert (across[:, 0] == 0).all() and 0 <= across.min() and across.max() <= 1 and 0 <= under.min() <= 1


def _auc(net, strings) -> float:
    """The share of (different digits, same digit) pairs of neighbouring inked pixels that ``net`` scores in that
    order."""
    pos, neg = [], []
    for s in strings:
        target, mask = apart_targets(s.image, s.owner)
        with torch.no_grad():
            z = net(as_float_image(s.image)[None, None])[0]
        pos.append(z[mask & (target > 0)])
        neg.append(z[mask & (target == 0)])
    p, n = torch.cat(pos), torch.cat(neg)
    return float((p[:, None] > n[None, :]).float().mean())


def test_training_lowers_the_loss_finds_boundaries_and_repeats(touching):
    """Training lowers the loss, scores the pairs of pixels of different digits above the others more often than
    the untrained network does, and gives the same weights twice for one seed."""
    losses = []
    a = train_boundary_net(touching, epochs=20, width=8, fine=4, pos_weight=5.0, batch_size=4, lr=1e-2, seed=3,
                           progress=lambda e, loss: losses.append(loss))
    assert losses[-1] < losses[0]
    torch.manual_seed(3)
    untrained = BoundaryNet(8, 4).eval()
    assert _auc(a, touching) > _auc(untrained, touching) + 0.1     # measured: 0.88 against 0.65
    b, c = (train_boundary_net(touching[:8], epochs=2, width=4, fine=2, seed=5) for _ in range(2))
    for p, q in zip(b.parameters(), c.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="owner maps"):
        train_boundary_net([touching[0].__class__(**{**touching[0].__dict__, "owner": None})], epochs=1)
    with pytest.raises(ValueError, match="no strings"):
        train_boundary_net([], epochs=1)


def test_saved_network_loads_and_bad_files_are_refused(tmp_path, touching):
    model = train_boundary_net(touching[:4], epochs=1, width=3, fine=2, seed=0)
    boundary_net.save_boundary_net(model, tmp_path / "b.pt")
    again = boundary_net.default_boundary_net(str(tmp_path / "b.pt"))
    assert (again.width, again.fine) == (3, 2)
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a boundary network"):
        boundary_net.default_boundary_net(str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError, match="train_boundary_net"):
        boundary_net.default_boundary_net(str(tmp_path / "missing.pt"))


def test_learned_cost_is_validated():
    with pytest.raises(ValueError, match="cut_cost"):
        SegmentParams(cut_paths=0.3, cut_cost="best")
    with pytest.raises(ValueError, match="cut_paths > 0"):
        SegmentParams(cut_cost="learned")


def test_shipped_network_tells_digits_apart():
    """On strings of test digits, the shipped network scores a pair of neighbouring inked pixels of different
    digits above a pair of one digit's almost always (measured: 0.983 of such comparisons)."""
    strings = list(make_strings(20, "test", seed=47, touch=1.0, max_overlap=3))
    assert _auc(boundary_net.default_boundary_net(), strings) > 0.95


def test_shipped_network_covers_more_touching_strings():
    """On 150 strings of test digits (the network saw training digits only) whose neighbours all touch and
    overlap by up to 3 columns, cut paths priced by the shipped network make the true segmentation a path of the
    graph for more strings than priced by their ink (measured: 132 against 100; the learned order of
    `lenet.cut_ranker`: 115), with at most 1.1 times the segment arcs."""
    strings = make_strings(150, "test", seed=41, touch=1.0, max_overlap=3)
    ink = [segment(s.image, EVERY) for s in strings]
    priced = [segment(s.image, PRICED) for s in strings]
    covered_ink = sum(true_path(g, s.image, s.owner) is not None for g, s in zip(ink, strings))
    covered = sum(true_path(g, s.image, s.owner) is not None for g, s in zip(priced, strings))
    assert covered >= covered_ink + 20, (covered, covered_ink)
    assert sum(g.num_segments for g in priced) <= 1.1 * sum(g.num_segments for g in ink)


def test_train_boundary_net_example(tmp_path):
    """`examples/train_boundary_net.py` on a few strings writes weights `default_boundary_net` loads, after
    printing the validation coverage both ways; bad settings are refused in one line."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = str(root / "examples" / "train_boundary_net.py")
    out = tmp_path / "net.pt"
    r = subprocess.run([sys.executable, script, "--strings", "12", "--epochs", "1", "--width", "2", "--fine", "2",
                        "--val-strings", "1", "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training strings" in r.stdout and "priced by ink" in r.stdout and "learned cost" in r.stdout
    assert boundary_net.default_boundary_net(str(out)).width == 2
    r = subprocess.run([sys.executable, script, "--epochs", "0"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "--epochs" in r.stderr
