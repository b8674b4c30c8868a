"""Tests of lenet.segment: heuristic over-segmentation and the segmentation graph."""
import numpy as np
import pytest
import torch

import gtn
from lenet.segment import (INK_THRESHOLD, SegmentParams, as_float_image, find_cuts, plot_segmentation,
                           segment, segment_batch)
from lenet.strings import make_strings


@pytest.fixture(scope="module")
def strings():
    return make_strings(60, "test", seed=11, lengths=(2, 4))


def all_paths(fsa):
    """Brute force (test oracle): every complete path as a list of arc indices."""
    arcs = fsa.arcs.tolist()
    final = fsa.num_states - 1
    out = {}
    for i, (s, d, l) in enumerate(arcs):
        out.setdefault(s, []).append(i)
    paths = []

    def walk(state, acc):
        if state == final:
            paths.append(acc)
            return
        for i in out.get(state, []):
            walk(arcs[i][1], acc + [i])

    walk(0, [])
    return paths


def test_every_path_covers_the_ink_exactly_once(strings):
    checked = 0
    for s in strings[:40]:
        x = as_float_image(s.image)
        seg = segment(s.image)
        ink_cols = torch.nonzero((x > INK_THRESHOLD).any(0)).flatten().tolist()
        left, right = ink_cols[0], ink_cols[-1] + 1
        labels, segattr, boxes = seg.graph.labels.tolist(), seg.graph.segment.tolist(), seg.boxes.tolist()
        paths = all_paths(seg.graph)
        assert paths, "the segmentation graph must have a path"
        for p in paths:
            assert labels[p[-1]] == -1
            bx = [boxes[segattr[a]] for a in p[:-1]]
            # consecutive, non-overlapping, from the left edge of the ink to the right edge
            assert bx[0][0] == left and bx[-1][1] == right
            assert all(a[1] == b[0] for a, b in zip(bx[:-1], bx[1:]))
            counts = np.zeros(x.shape[1], dtype=np.int64)
            for x0, x1 in bx:
                counts[x0:x1] += 1
            assert (counts[ink_cols] == 1).all()
            checked += 1
    assert checked > 500, checked


def test_graph_structure(strings):
    p = SegmentParams()
    for s in strings[:20]:
        seg = segment(s.image, p)
        g = seg.graph
        C = len(seg.cuts)
        assert g.num_states == C + 1
        assert bool((seg.cuts[1:] > seg.cuts[:-1]).all())
        assert g.is_top_sorted
        body = g.labels != -1
        assert int((~body).sum()) == 1
        assert g.segment[body].tolist() == list(range(seg.num_segments))
        assert torch.equal(g.arcs[body, 0], seg.segments[:, 0])
        assert torch.equal(g.arcs[body, 1], seg.segments[:, 1])
        npieces = seg.segments[:, 1] - seg.segments[:, 0]
        assert int(npieces.max()) <= p.max_pieces
        # every single piece is a segment (so a path always exists)
        assert int((npieces == 1).sum()) == C - 1
        assert torch.equal(seg.boxes, seg.cuts[seg.segments])
        assert seg.features.shape[0] == seg.num_segments


def test_true_segmentation_is_usually_in_the_graph():
    """The quality check: for most strings some path cuts within a pixel of every true digit boundary."""
    strings = make_strings(100, "test", seed=5)
    found = 0
    for s in strings:
        seg = segment(s.image)
        idx, ok = [0], True
        for i in range(len(s.extents) - 1):
            lo = min(int(s.extents[i, 1]), int(s.extents[i + 1, 0]))
            hi = max(int(s.extents[i, 1]), int(s.extents[i + 1, 0]))
            near = torch.nonzero((seg.cuts >= lo - 1) & (seg.cuts <= hi + 1)).flatten()
            if near.numel() == 0:
                ok = False
                break
            idx.append(int(near[(seg.cuts[near].float() - (lo + hi) / 2).abs().argmin()]))
        idx.append(len(seg.cuts) - 1)
        pairs = set(map(tuple, seg.segments.tolist()))
        found += ok and all((a, b) in pairs for a, b in zip(idx[:-1], idx[1:]))
    assert found >= 90, found


def test_gap_gives_a_cut_and_single_blob_respects_max_piece():
    img = torch.zeros(20, 40, dtype=torch.uint8)
    img[4:16, 3:8] = 255
    img[4:16, 20:36] = 255      # a wide solid block: regular cuts inside
    cuts, gap, unit = find_cuts(as_float_image(img))
    assert cuts[0] == 3 and cuts[-1] == 36
    assert 20 in cuts.tolist() and bool(gap[cuts.tolist().index(20)])
    pieces = cuts[1:] - cuts[:-1]
    assert int(pieces[1:].max()) <= round(SegmentParams().max_piece * unit)


def test_batch_offsets(strings):
    segs, vec = segment_batch([s.image for s in strings[:4]])
    assert isinstance(vec, gtn.FsaVec) and len(vec) == 4
    offs = np.cumsum([0] + [s.num_segments for s in segs])
    for i in range(4):
        m = vec[i]
        body = m.labels != -1
        assert m.segment[body].tolist() == list(range(offs[i], offs[i + 1]))


@pytest.mark.parametrize("bad, err", [
    (np.zeros((20, 30), np.uint8), ValueError),             # all black
    (np.zeros((0, 30), np.uint8), ValueError),              # empty
    (np.ones((2, 20, 30), np.uint8), ValueError),           # wrong shape
    (np.full((20, 30), 2.0), ValueError),                    # float out of 0..1
    ("not an image", TypeError),
    ([[0, 1], [1, 0]], TypeError),
])
def test_bad_images(bad, err):
    with pytest.raises(err):
        segment(bad)


def test_float_and_uint8_agree(strings):
    s = strings[0]
    a = segment(s.image)
    b = segment(s.image.float() / 255)
    assert torch.equal(a.cuts, b.cuts) and torch.equal(a.segments, b.segments)


def test_plot(tmp_path, strings):
    out = tmp_path / "cuts.png"
    seg = segment(strings[0].image)
    plot_segmentation(strings[0].image, seg, path_segments=[0], labels=["1"], title="t", out=str(out))
    assert out.stat().st_size > 1000
