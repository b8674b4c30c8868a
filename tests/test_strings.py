"""Tests of lenet.strings: rendering digit strings from isolated digits."""
import pytest
import torch

import lenet.data
from lenet.strings import DigitString, make_strings, render_string, touching_fraction


@pytest.fixture(scope="module")
def strings():
    return make_strings(300, "test", seed=7)


def test_shapes_labels_and_extents(strings):
    for s in strings:
        assert isinstance(s, DigitString)
        assert s.image.dtype == torch.uint8 and s.image.dim() == 2 and s.image.shape[0] == 32
        assert 3 <= len(s.label) <= 6 and s.label.isdigit()
        assert s.extents.shape == (len(s.label), 2)
        W = s.image.shape[1]
        assert bool((s.extents[:, 0] >= 0).all() and (s.extents[:, 1] <= W).all())
        assert bool((s.extents[:, 1] > s.extents[:, 0]).all())
        # digits are left to right, and every ink column lies in some digit's extent
        assert bool((s.extents[1:, 0] > s.extents[:-1, 0]).all())
        ink_cols = torch.nonzero(s.image.amax(0) > 0).flatten()
        covered = torch.zeros(W, dtype=torch.bool)
        for x0, x1 in s.extents.tolist():
            covered[x0:x1] = True
        assert bool(covered[ink_cols].all())


def test_lengths_cover_the_range(strings):
    assert {len(s.label) for s in strings} == {3, 4, 5, 6}


def test_at_least_a_fifth_of_neighbours_touch_or_overlap(strings):
    frac = touching_fraction(strings)
    assert frac >= 0.2, frac
    # and not all of them: most pairs still have a gap
    assert frac <= 0.6, frac


def test_deterministic_with_seed():
    a = make_strings(5, "test", seed=3)
    b = make_strings(5, "test", seed=3)
    c = make_strings(5, "test", seed=4)
    assert all(torch.equal(x.image, y.image) and x.label == y.label for x, y in zip(a, b))
    assert any(x.label != y.label or not torch.equal(x.image, y.image) for x, y in zip(a, c))


def test_uses_only_the_requested_split(monkeypatch):
    asked = []
    real = lenet.data.load_digits

    def spy(split="train", raw=False):
        asked.append((split, raw))
        return real(split, raw=raw)

    monkeypatch.setattr(lenet.data, "load_digits", spy)
    make_strings(2, "test", seed=0)
    make_strings(2, "train", seed=0)
    assert asked == [("test", True), ("train", True)]


def test_digits_come_from_the_given_set():
    # a digit set of a single all-white square: every string is made of scaled copies of it
    sq = torch.zeros(1, 28, 28, dtype=torch.uint8)
    sq[0, 4:24, 10:18] = 255
    out = make_strings(3, digits=(sq, torch.tensor([7])), lengths=(2, 2), seed=1, touch=0.0, scale=(1.0, 1.0))
    for s in out:
        assert s.label == "77"
        w = (s.extents[:, 1] - s.extents[:, 0]).tolist()
        assert w == [8, 8]
        assert int(s.image.max()) == 255


def test_touch_zero_keeps_gaps_and_noise_adds_pixels():
    imgs, labels = lenet.data.load_digits("test", raw=True)
    g = torch.Generator().manual_seed(0)
    img, ext = render_string(imgs[:5], g, touch=0.0, gap=(2, 4))
    gaps = ext[1:, 0] - ext[:-1, 1]
    assert bool(((gaps >= 2) & (gaps <= 4)).all())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    clean, _ = render_string(imgs[:3], g1)
    noisy, _ = render_string(imgs[:3], g2, noise=0.1)
    changed = (clean != noisy).float().mean()
    assert 0.02 < float(changed) < 0.15


def test_bad_input():
    with pytest.raises(ValueError):
        render_string(torch.zeros(0, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError):
        render_string(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError):
        make_strings(1, lengths=(4, 2))


def test_distorted_strings_are_deterministic_and_new_shapes():
    a = make_strings(20, "train", seed=7, distort=True)
    b = make_strings(20, "train", seed=7, distort=True)
    assert [s.label for s in a] == [s.label for s in b]
    assert all(torch.equal(x.image, y.image) for x, y in zip(a, b))
    d = make_strings(1, "train", seed=7)[0]
    # the first string has the same digits (drawn before any distortion) in new shapes
    assert a[0].label == d.label
    assert a[0].image.shape != d.image.shape or not torch.equal(a[0].image, d.image)
    with pytest.raises(TypeError):
        make_strings(1, "train", seed=7, distort="yes")


def test_sources_name_the_rows_of_the_drawn_digits():
    imgs, labels = lenet.data.load_digits("test", raw=True)
    for s in make_strings(40, "test", seed=5):
        assert s.sources.dtype == torch.int64 and s.sources.shape == (len(s.label),)
        assert "".join(str(int(d)) for d in labels[s.sources]) == s.label
    # with a set of two different shapes, the width of each rendered digit tells which row it came from
    two = torch.zeros(2, 28, 28, dtype=torch.uint8)
    two[0, 4:24, 10:14] = 255   # 4 columns wide
    two[1, 4:24, 8:20] = 255    # 12 columns wide
    for s in make_strings(10, digits=(two, torch.tensor([1, 2])), lengths=(3, 3), seed=2, touch=0.0,
                          scale=(1.0, 1.0)):
        widths = (s.extents[:, 1] - s.extents[:, 0]).tolist()
        assert widths == [4 if int(r) == 0 else 12 for r in s.sources]
        assert s.label == "".join("12"[int(r)] for r in s.sources)


# ---------------------------------------------------------------------------------------------- varied rendering
from lenet.strings import GRID, OWNER_THRESHOLD, RenderRanges  # noqa: E402


def _digits(n=4):
    return lenet.data.load_digits("test", raw=True)[0][:n]


def test_owner_map_is_the_true_segmentation():
    for s in make_strings(40, "test", seed=2, touch=0.6, max_overlap=4):
        own = s.owner.long()
        assert own.shape == s.image.shape and own.dtype == torch.long
        assert int(own.min()) >= -1 and int(own.max()) == len(s.label) - 1
        ink = s.image > OWNER_THRESHOLD * 255
        assert bool((own[ink] >= 0).all()) and bool((own[~ink] == -1).all())
        for k, (x0, x1) in enumerate(s.extents.tolist()):   # each digit's pixels lie in its own columns
            cols = torch.nonzero((own == k).any(0)).flatten()
            assert cols.numel() > 0 and int(cols.min()) >= x0 and int(cols.max()) < x1


def test_slant_leans_the_tops_and_thickness_changes_the_ink():
    bar = torch.zeros(1, 28, 28, dtype=torch.uint8)
    bar[0, 4:24, 12:15] = 255
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kw = dict(shift=0, scale=(1.0, 1.0))

    def centre(img, rows):
        x = img[rows].float()
        return float((x * torch.arange(x.shape[1])).sum() / x.sum())

    for slant, sign in ((15.0, 1), (-15.0, -1)):
        img, ext = render_string(bar, g(), slant=slant, **kw)
        rows = torch.nonzero(img.amax(1) > 0).flatten()
        top, bottom = rows[:4], rows[-4:]
        assert sign * (centre(img, top) - centre(img, bottom)) > 3     # tan 15° × 20 rows ≈ 5 columns
    plain, _ = render_string(bar, g(), **kw)
    bold, _ = render_string(bar, g(), thickness=1.0, **kw)
    thin, _ = render_string(bar, g(), thickness=-1.0, **kw)
    mass = lambda im: float(im.float().sum())  # noqa: E731
    assert mass(bold) > 1.3 * mass(plain) > 1.3 * mass(thin) > 0
    for bad in (dict(thickness=1.5), dict(slant=50.0), dict(height=4)):
        with pytest.raises(ValueError):
            render_string(bar, g(), **bad)


def test_height_scales_the_whole_string():
    d = _digits()
    small, es = render_string(d, torch.Generator().manual_seed(1), height=24)
    big, eb = render_string(d, torch.Generator().manual_seed(1), height=40)
    assert small.shape[0] == 24 and big.shape[0] == 40
    ink_h = lambda im: int((im.amax(1) > 0).sum())  # noqa: E731
    assert 1.4 < ink_h(big) / ink_h(small) < 1.9      # 40 / 24 = 1.67
    assert 1.4 < big.shape[1] / small.shape[1] < 1.9


def test_render_ranges_draw_within_their_ranges_and_are_recorded():
    r = RenderRanges()
    g = torch.Generator().manual_seed(0)
    styles = [r.draw(g) for _ in range(300)]
    for k in ("max_overlap", "touch", "height", "slant", "thickness", "shift"):
        lo, hi = getattr(r, k)
        vals = [s[k] for s in styles]
        assert min(vals) >= lo and max(vals) <= hi
        assert max(vals) - min(vals) > 0.8 * (hi - lo)          # the draws span the range
    assert all(r.scale[0] <= s["scale"][0] <= s["scale"][1] <= r.scale[1] for s in styles)
    a = make_strings(30, "test", seed=4, vary=r)
    b = make_strings(30, "test", seed=4, vary=r)
    assert all(torch.equal(x.image, y.image) and x.style == y.style for x, y in zip(a, b))
    assert len({s.image.shape[0] for s in a}) > 5              # several heights
    fixed = make_strings(5, "test", seed=4, vary=r, height=28)  # an explicit keyword wins over the draw
    assert all(s.image.shape[0] == 28 and s.style["height"] == 28 for s in fixed)


def test_grid_spans_the_settings():
    assert len(GRID) == 33
    assert {c["height"] for c in GRID} == {24, 32, 40}
    assert {c["touch"] for c in GRID} == {0.0, 0.3, 0.6}
    assert {c["max_overlap"] for c in GRID} == {0, 1, 2, 3, 4}
    assert len({tuple(sorted(c.items())) for c in GRID}) == 33
    for c in GRID:   # every cell renders
        s = make_strings(2, "test", seed=1, **c)
        assert s[0].image.shape[0] == c["height"]
