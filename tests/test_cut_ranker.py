"""Tests of lenet.cut_ranker: the learned order of candidate cut paths (SegmentParams(cut_rank="learned"))."""
import numpy as np
import pytest
import torch

import lenet.cut_ranker as cut_ranker
from lenet.cut_ranker import STRIP_COLS, STRIP_ROWS, cut_examples, path_strips, train_cut_ranker
from lenet.segment import SegmentParams, segment, true_path
from lenet.strings import make_strings

EVERY = SegmentParams(cut_paths=0.3, max_pieces=10, cut_starts="every")
LEARNED = SegmentParams(cut_paths=0.3, max_pieces=10, cut_starts="every", cut_rank="learned")


def test_path_strips_straighten_the_image_along_the_path():
    """A stroke one pixel wide, vertical or slanted, seen along a path that runs just left of it: the strip's
    column right of the middle holds the stroke in every row, the one left of it holds none, and the strip is the
    same for both strokes; the numbers are the cost per unit, the spread per unit and the place in the
    component."""
    H, W = 16, 30
    straight = np.zeros((H, W))
    straight[:, 12] = 1.0
    slanted = np.zeros((H, W))
    slanted[np.arange(H), 8 + np.arange(H) // 2] = 1.0
    p_straight = np.full((1, H), 12)
    p_slanted = (8 + np.arange(H) // 2)[None, :]
    a, na = path_strips(straight, straight, p_straight, np.array([3.0]), 4, 24, 16.0)
    b, nb = path_strips(slanted, slanted, p_slanted, np.array([3.0]), 4, 24, 16.0)
    assert a.shape == (1, 2, STRIP_ROWS, STRIP_COLS) and na.shape == (1, 3)
    mid = STRIP_COLS // 2
    assert torch.allclose(a[0, :, :, mid], torch.ones(2, STRIP_ROWS))
    assert torch.allclose(a[0, :, :, mid - 1], torch.zeros(2, STRIP_ROWS))
    assert torch.allclose(a, b)
    assert torch.allclose(na[0], torch.tensor([3.0 / 16, 0.0, (12 - 4) / 20]))
    assert torch.allclose(nb[0, 1], torch.tensor(7 / 16))


@pytest.fixture(scope="module")
def examples():
    return cut_examples(make_strings(40, "train", seed=5, touch=0.6, max_overlap=3), EVERY)


def test_cut_examples_pair_the_nearer_path_first(examples):
    """Every pair's first path lies nearer a true boundary than its second; every component's paths are there."""
    pr, apart = examples["pairs"], examples["apart"]
    assert len(pr) > 100 and len(apart) == len(examples["strips"]) == len(examples["numbers"])
    assert bool((pr >= 0).all()) and bool((pr < len(apart)).all())
    assert bool((apart[pr[:, 0]] < apart[pr[:, 1]]).all())
    assert bool((apart >= 0).all()) and bool(torch.isfinite(apart).all())


def test_training_lowers_the_loss_orders_pairs_and_repeats(examples):
    """Training lowers the pairwise loss, orders most near pairs right afterwards, and gives the same weights
    twice for one seed."""
    losses = []
    a = train_cut_ranker(examples, epochs=3, width=4, seed=3, progress=lambda e, loss: losses.append(loss))
    b = train_cut_ranker(examples, epochs=3, width=4, seed=3)
    assert losses[-1] < losses[0]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    pr = examples["pairs"]
    pr = pr[examples["apart"][pr[:, 0]] <= cut_ranker.NEAR]
    with torch.no_grad():
        z = a(examples["strips"], examples["numbers"])
    assert float((z[pr[:, 0]] > z[pr[:, 1]]).float().mean()) > 0.7


def test_saved_ranker_loads_and_bad_files_are_refused(tmp_path, examples):
    model = train_cut_ranker(examples, epochs=1, width=4, seed=0)
    cut_ranker.save_ranker(model, tmp_path / "r.pt")
    again = cut_ranker.default_ranker(str(tmp_path / "r.pt"))
    assert again.width == 4
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a cut ranker"):
        cut_ranker.default_ranker(str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError, match="train_cut_ranker"):
        cut_ranker.default_ranker(str(tmp_path / "missing.pt"))


def test_learned_rank_keeps_the_graph_form_and_is_validated():
    """With the shipped ranker the segmentation graph keeps its form (same candidates, other order: every path
    covers every piece once) and differs from cheapest first on some strings; bad settings are refused."""
    from test_segment import _check_paths_cover_the_ink
    rng = np.random.default_rng(0)
    differ = 0
    for s in make_strings(8, "test", seed=31, touch=1.0, max_overlap=3, lengths=(2, 4)):
        seg = segment(s.image, LEARNED)
        assert _check_paths_cover_the_ink(seg, s.image, LEARNED, rng) > 0
        differ += not torch.equal(seg.piece_map, segment(s.image, EVERY).piece_map)
    assert differ > 0
    with pytest.raises(ValueError, match="cut_rank"):
        SegmentParams(cut_paths=0.3, cut_rank="best")
    with pytest.raises(ValueError, match="cut_paths > 0"):
        SegmentParams(cut_rank="learned")


def test_shipped_ranker_covers_more_touching_strings():
    """On 150 strings of test digits (the ranker saw training digits only) whose neighbours all touch and overlap
    by up to 3 columns, the candidates kept in the shipped ranker's order make the true segmentation a path of
    the graph for more strings than cheapest first (measured: 115 against 100), with at most 1.1 times the
    segment arcs."""
    strings = make_strings(150, "test", seed=41, touch=1.0, max_overlap=3)
    ink = [segment(s.image, EVERY) for s in strings]
    learned = [segment(s.image, LEARNED) for s in strings]
    covered_ink = sum(true_path(g, s.image, s.owner) is not None for g, s in zip(ink, strings))
    covered_learned = sum(true_path(g, s.image, s.owner) is not None for g, s in zip(learned, strings))
    assert covered_learned >= covered_ink + 8, (covered_learned, covered_ink)
    assert sum(g.num_segments for g in learned) <= 1.1 * sum(g.num_segments for g in ink)


def test_train_cut_ranker_example(tmp_path):
    """`examples/train_cut_ranker.py` on a few strings writes weights `default_ranker` loads, after printing the
    validation coverage both ways; bad settings are refused in one line."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = str(root / "examples" / "train_cut_ranker.py")
    out = tmp_path / "ranker.pt"
    r = subprocess.run([sys.executable, script, "--strings", "30", "--epochs", "1", "--width", "2", "--val-strings",
                        "1", "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "candidate cut paths" in r.stdout and "cheapest first" in r.stdout and "ranked" in r.stdout
    assert cut_ranker.default_ranker(str(out)).width == 2
    r = subprocess.run([sys.executable, script, "--epochs", "0"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "--epochs" in r.stderr
