"""Tests of lenet.crops: clean_image, standardize and crop_segments (segments as LeNet-5 input)."""
import numpy as np
import torch

import pytest
from scipy import ndimage

from lenet.crops import SPECK_AREA, clean_image, crop_segments, standardize
from lenet.segment import INK_THRESHOLD
from lenet.segment import WholeImage, segment
from lenet.strings import RenderRanges, make_strings


def test_standardize_rescales_tall_images_and_keeps_rendered_ones():
    s = make_strings(1, "test", seed=0)[0]
    x = standardize(s.image)
    assert x.shape[1] == s.image.shape[1]          # no rescaling of rendered strings, only the row crop
    big = torch.nn.functional.interpolate(s.image[None, None].float(), scale_factor=3, mode="bilinear")[0, 0]
    y = standardize(big.clamp(0, 255).to(torch.uint8))
    rows = torch.nonzero((y > 0.1).any(1)).flatten()
    assert 20 <= int(rows[-1] - rows[0]) + 1 <= 28


def test_crops_do_not_depend_on_the_batch():
    # a long strip of many images once lost the crops' centres to float32 prefix sums (a 4x error rate)
    strings = make_strings(400, "train", seed=4)
    xs = [standardize(s.image) for s in strings]
    segs = [segment(x) for x in xs]
    together = crop_segments(xs, segs)
    offs = np.cumsum([0] + [s.num_segments for s in segs])
    for i in range(0, 400, 57):
        alone = crop_segments(xs[i:i + 1], segs[i:i + 1])
        assert torch.allclose(alone, together[offs[i]:offs[i + 1]], atol=5e-3)


def test_crops_hold_only_their_pieces_ink():
    # a "1" inside an "0": the columns overlap completely, the ink does not touch
    img = torch.zeros(28, 40)
    img[4:24, 10:12] = 1.0
    img[4:24, 24:26] = 1.0
    img[4:6, 10:26] = 1.0
    img[22:24, 10:26] = 1.0
    img[8:20, 15:17] = 1.0
    seg = segment(img)
    comp = seg.piece_component
    assert len(comp.unique()) == 2
    checked = 0
    for k in range(seg.num_segments):
        a, b = seg.segments[k].tolist()
        if len(comp[a:b].unique()) == 1 and (comp == comp[a]).sum() == b - a:   # exactly one whole component
            # law: the crop of a segment = the crop of the image with every other piece's ink erased
            own = (seg.piece_map >= a) & (seg.piece_map < b)
            alone = torch.where(own, img, torch.zeros_like(img))
            mine = crop_segments([img], [seg])[k]
            ref = crop_segments([alone], [WholeImage.of(alone)])[0]
            assert torch.allclose(mine, ref, atol=1e-5)
            checked += 1
    assert checked == 2


def _without_specks(x: torch.Tensor) -> torch.Tensor:
    """Oracle: ``x`` with every 8-connected ink component under max(3, SPECK_AREA × the largest) erased, one
    component at a time."""
    lab, n = ndimage.label(x.numpy() > INK_THRESHOLD, structure=np.ones((3, 3)))
    areas = [int((lab == c).sum()) for c in range(1, n + 1)]
    out = x.clone()
    for c, a in enumerate(areas, 1):
        if a < max(3, SPECK_AREA * max(areas)):
            out[torch.from_numpy(lab == c)] = 0
    return out


def test_clean_image_leaves_rendered_strings_as_they_are_but_for_specks():
    """The renderer's strings have a black background and full-contrast ink: cleaning only erases specks (bit for
    bit), so the readers' own figures (read without cleaning) hold for `lenet.recognize` too. Varied strings
    nearly all: bold strings packed tight can fill a whole neighbourhood of background blocks, thin ones are
    faint ink."""
    erased = 0
    for s in make_strings(200, "test", seed=6):
        x = s.image.float() / 255
        ref = _without_specks(x)
        assert torch.equal(clean_image(s.image), ref)
        erased += not torch.equal(ref, x)
    assert erased < 40
    varied = make_strings(200, "test", seed=7, vary=RenderRanges())
    same = sum(torch.equal(clean_image(s.image), _without_specks(s.image.float() / 255)) for s in varied
               if s.style["thickness"] >= 0)
    assert same >= 0.95 * sum(s.style["thickness"] >= 0 for s in varied)


@pytest.mark.parametrize("kind", ["constant", "across", "down", "plane"])
def test_clean_image_removes_a_smooth_background(kind):
    """Law: a rendered string on a smooth background (a constant grey, a ramp across or down the image, a tilted
    plane) cleans to the same ink as the string itself."""
    rng = np.random.default_rng(["constant", "across", "down", "plane"].index(kind))
    ious = []
    for s in make_strings(60, "test", seed=8):
        x = s.image.float() / 255
        H, W = x.shape
        yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
        a, b, c = (float(v) for v in rng.uniform(0, 1, 3))
        back = {"constant": 0.3 * a + 0 * xx, "across": 0.25 * a * xx, "down": 0.2 * a * yy,
                "plane": 0.15 * a * yy + 0.15 * b * xx + 0.1 * c}[kind]
        y = clean_image((x + back).clamp(0, 1))
        ref = clean_image(x)
        ink, ink_ref = y > INK_THRESHOLD, ref > INK_THRESHOLD
        ious.append(float((ink & ink_ref).sum() / (ink | ink_ref).sum()))
        assert float((y - ref).abs().mean()) < 0.05
        assert float(y[~ink_ref].median()) < 0.01             # the background is black again (was up to 0.3)
    assert min(ious) > 0.93 and sum(ious) / len(ious) > 0.97


def test_clean_image_erases_specks_away_from_the_ink():
    rng = np.random.default_rng(3)
    for s in make_strings(40, "test", seed=9):
        x = s.image.float() / 255
        far = ndimage.distance_transform_edt(x.numpy() <= INK_THRESHOLD) > 3
        ys, xs = np.nonzero(far)
        pick = rng.choice(len(ys), size=min(12, len(ys)), replace=False)
        y = x.clone()
        for i in pick:                                           # lone pixels of salt, and a few pairs
            y[ys[i], xs[i]] = 1.0
        assert torch.equal(clean_image(y), clean_image(x)) or _touching(pick, ys, xs)


def _touching(pick, ys, xs) -> bool:
    """Whether two of the salt pixels are neighbours (then they form one component of 2, still a speck)."""
    pts = [(int(ys[i]), int(xs[i])) for i in pick]
    return any(abs(a[0] - b[0]) <= 1 and abs(a[1] - b[1]) <= 1 for k, a in enumerate(pts) for b in pts[k + 1:])


def test_clean_image_stretches_faint_ink_to_full_contrast():
    for s in make_strings(40, "test", seed=10):
        x = s.image.float() / 255
        for c in (0.85, 0.6):
            y = clean_image(c * x)
            assert float(torch.quantile(y[y > INK_THRESHOLD], 0.99)) >= 0.99
            ref = clean_image(x)
            ink, ink_ref = y > INK_THRESHOLD, ref > INK_THRESHOLD
            assert float((ink & ink_ref).sum() / (ink | ink_ref).sum()) > 0.9
            if c == 0.85:                                        # hardly any ink faded under the ink threshold
                assert float((y - ref).abs().mean()) < 0.005


def test_clean_image_errors():
    with pytest.raises(ValueError, match="no ink once its background is removed"):
        clean_image(torch.full((32, 80), 0.5))                   # a grey page and nothing on it
    with pytest.raises(ValueError, match="no ink"):
        clean_image(torch.zeros(32, 80))
    with pytest.raises(TypeError):
        clean_image("not an image")
    dark = 255 - make_strings(1, "test", seed=0)[0].image       # dark ink on light paper
    assert torch.allclose(clean_image(dark, invert=True), clean_image(255 - dark), atol=1e-6)
