"""Tests of lenet.crops: standardize and crop_segments (segments as LeNet-5 input)."""
import numpy as np
import torch

from lenet.crops import crop_segments, standardize
from lenet.segment import WholeImage, segment
from lenet.strings import make_strings


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
