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


# --------------------------------------------------------------------------- lazy strings: the same draws, in order
# The oracle: make_strings and render_string as they were before the draws were split from the drawing (commit
# 81c2c94), one string after the other from one generator. The published figures were made with these strings.
from lenet.data import RandomAffine  # noqa: E402
from lenet.strings import StringSet, _randint, _shear, _thicken, _uniform  # noqa: E402
import hashlib  # noqa: E402

import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _old_render_string(digits, g, *, height=32, touch=0.3, max_overlap=2, gap=(1, 5), scale=(0.85, 1.1), shift=2,
                       margin=(2, 5), noise=0.0, slant=0.0, thickness=0.0):
    from lenet.strings import _ink_crop
    k = height / 32.0
    shift_px = int(round(shift * k))
    pieces, ys = [], []
    for d in digits:
        crop = _ink_crop(d).float()
        s = _uniform(scale[0], scale[1], g) * k
        h = max(1, round(crop.shape[0] * s))
        w = max(1, round(crop.shape[1] * s))
        h = max(1, min(h, height - 2 * shift_px))
        img = F.interpolate(crop[None, None], size=(h, w), mode="bilinear", align_corners=False,
                            antialias=True)[0, 0]
        if thickness != 0.0:
            img = _thicken(img, thickness)
        if slant != 0.0:
            img = _shear(img, slant)
        pieces.append(img)
        ys.append((height - img.shape[0]) // 2 + _randint(-shift_px, shift_px, g))
    xs, x = [], _randint(round(margin[0] * k), round(margin[1] * k), g)
    for i, p in enumerate(pieces):
        if i > 0:
            if float(torch.rand((), generator=g)) < touch:
                x += _randint(-int(round(max_overlap * k)), 0, g)
            else:
                x += _randint(round(gap[0] * k), round(gap[1] * k), g)
        xs.append(x)
        x += p.shape[1]
    width = x + _randint(round(margin[0] * k), round(margin[1] * k), g)
    canvas = np.zeros((height, width), dtype=np.float32)
    extents = np.zeros((len(pieces), 2), dtype=np.int64)
    owner = np.full((height, width), -1, dtype=np.int8)
    for i, (p, x0, y0) in enumerate(zip(pieces, xs, ys)):
        p = p.numpy()
        y0 = min(max(y0, 0), height - p.shape[0])
        region = canvas[y0:y0 + p.shape[0], x0:x0 + p.shape[1]]
        mine = (p > region) & (p > OWNER_THRESHOLD * 255)
        owner[y0:y0 + p.shape[0], x0:x0 + p.shape[1]][mine] = i
        np.maximum(region, p, out=region)
        cols = np.flatnonzero(p.max(0) > 0)
        extents[i] = (x0 + cols[0], x0 + cols[-1] + 1) if cols.size else (x0, x0 + p.shape[1])
    if noise > 0:
        u = torch.rand((height, width), generator=g).numpy()
        canvas[u < noise / 2] = 255.0
        canvas[(u >= noise / 2) & (u < noise)] = 0.0
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    owner[image <= OWNER_THRESHOLD * 255] = -1
    return torch.from_numpy(image), torch.from_numpy(extents), torch.from_numpy(owner)


def _old_make_strings(n, split="test", lengths=(3, 6), seed=0, distort=None, vary=None, **render_kw):
    images, labels = lenet.data.load_digits(split, raw=True)
    g = torch.Generator().manual_seed(seed)
    images_np, labels_np = images.numpy(), labels.numpy()
    out = []
    for _ in range(n):
        L = _randint(*lengths, g)
        idx = torch.randint(0, len(images_np), (L,), generator=g).numpy()
        picked = torch.from_numpy(images_np[idx])
        if distort is not None:
            t = RandomAffine(rotate=10.0, fill=0.0) if distort is True else distort
            y = t(picked.float()[:, None] / 255, generator=g)
            picked = (y[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)
        kw = dict(render_kw)
        if vary is not None:
            kw = {**vary.draw(g), **render_kw}
        img, ext, owner = _old_render_string(picked, g, **kw)
        out.append(DigitString(img, "".join(str(int(d)) for d in labels_np[idx]), ext, torch.from_numpy(idx),
                               owner, kw))
    return out


def _digest(s):
    h = hashlib.sha256()
    for t in (s.image, s.extents, s.sources, s.owner):
        h.update(repr((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    h.update(repr((s.label, sorted(s.style.items()))).encode())
    return h.hexdigest()


# default, varied, distorted (the example's training strings and its options), a grid cell, and the noise whose
# draws depend on the image's width, with slant and thickness changing the pieces' sizes
SETTINGS = [dict(split="train", seed=1), dict(split="train", seed=101, vary=RenderRanges()),
            dict(split="train", seed=7, distort=True), dict(split="test", seed=30_000, touch=0.6, max_overlap=3,
                                                            height=40, lengths=(2, 7)),
            dict(split="test", seed=9, noise=0.05, slant=10.0, thickness=0.5),
            dict(split="train", seed=10, noise=0.05, distort=RandomAffine(fill=0.0), vary=RenderRanges())]


@pytest.mark.parametrize("kw", SETTINGS, ids=["default", "vary", "distort", "cell", "noise", "noise-distort-vary"])
def test_strings_are_those_of_the_sequential_renderer(kw):
    """make_strings (eager and lazy, read in any order) gives bit for bit the strings of the sequential
    renderer: images, extents, sources, owner maps, labels and styles."""
    n = 30
    want = [_digest(s) for s in _old_make_strings(n, **kw)]
    assert len(set(want)) == n
    assert [_digest(s) for s in make_strings(n, **kw)] == want
    lazy = make_strings(n, lazy=True, **kw)
    assert isinstance(lazy, StringSet) and len(lazy) == n and lazy.drawn == []
    assert lazy.labels == [s.label for s in _old_make_strings(n, **kw)] and lazy.drawn == []
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    mine = order[:n // 3]  # a share: the others are never drawn
    assert {i: _digest(lazy[i]) for i in mine} == {i: want[i] for i in mine}
    assert lazy.drawn == sorted(mine)
    assert lazy[mine[0]] is lazy[mine[0]]  # kept once drawn
    assert [_digest(s) for s in lazy[-3:]] == want[-3:]


def test_render_string_makes_the_draws_it_made_before():
    """render_string (now: draw the layout, compose, noise) against the sequential oracle, over random
    settings: the same image, extents and owner map, and the generator left in the same state."""
    imgs = lenet.data.load_digits("test", raw=True)[0]
    pick = torch.Generator().manual_seed(3)
    for case in range(40):
        digits = imgs[torch.randint(0, len(imgs), (int(torch.randint(1, 7, (), generator=pick)),), generator=pick)]
        style = RenderRanges().draw(pick)
        style["noise"] = [0.0, 0.1][case % 2]
        a, b = torch.Generator().manual_seed(case), torch.Generator().manual_seed(case)
        got = render_string(digits, a, return_owner=True, **style)
        want = _old_render_string(digits, b, **style)
        assert all(torch.equal(x, y) for x, y in zip(got, want)), case
        assert torch.equal(a.get_state(), b.get_state())


def test_string_set_indexing_and_errors():
    lazy = make_strings(5, "test", seed=2, lazy=True)
    assert [s.label for s in lazy] == lazy.labels and lazy.drawn == [0, 1, 2, 3, 4]
    assert lazy[-1] is lazy[4] and lazy[1:3] == [lazy[1], lazy[2]]
    with pytest.raises(IndexError):
        lazy[5]
    with pytest.raises(TypeError):
        make_strings(2, "test", lazy=True, colour=3)  # a keyword render_string does not take
    with pytest.raises(ValueError):
        make_strings(2, "test", lazy=True, height=4)  # bad settings fail at once, not when drawn
