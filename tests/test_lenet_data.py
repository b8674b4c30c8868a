"""The bundled digits, IDX reading, input preparation and distortions."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import lenet
from lenet.data import (BACKGROUND, INK, ElasticDistortion, RandomAffine, gaussian_kernel, load_digits,
                        load_idx_dataset, prepare, read_idx)

torch.set_num_threads(1)

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_bundled_split_sizes_types_and_disjointness():
    x, y = load_digits("train")
    xt, yt = load_digits("test")
    assert x.shape == (8000, 1, 32, 32) and x.dtype == torch.float32
    assert xt.shape == (1000, 1, 32, 32)
    assert y.dtype == torch.int64 and y.shape == (8000,) and yt.shape == (1000,)
    assert set(y.unique().tolist()) == set(range(10)) == set(yt.unique().tolist())
    raw, ry = load_digits("train", raw=True)
    rawt, _ = load_digits("test", raw=True)
    assert raw.shape == (8000, 28, 28) and raw.dtype == torch.uint8 and torch.equal(ry, y)
    # No test digit is also a training digit.
    train_rows = {bytes(r.numpy()) for r in raw}
    assert not any(bytes(r.numpy()) in train_rows for r in rawt)
    # Fixed: the same call gives the same digits.
    assert torch.equal(load_digits("test", raw=True)[0], rawt)
    all_x, all_y = load_digits("all", raw=True)
    assert torch.equal(all_x[:8000], raw) and torch.equal(all_x[-1000:], rawt)
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")


def test_normalisation_is_the_papers():
    raw, _ = load_digits("test", raw=True)
    x, _ = load_digits("test")
    assert x.min().item() == pytest.approx(BACKGROUND) and x.max().item() == pytest.approx(INK)
    assert (BACKGROUND, INK) == (-0.1, 1.175)
    # 2-pixel background border, the 28x28 digit centred inside.
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert bool((x[:, 0][:, border] == torch.tensor(BACKGROUND)).all())
    torch.testing.assert_close(x[:, 0, 2:30, 2:30], BACKGROUND + (INK - BACKGROUND) * raw.float() / 255)


def test_prepare_accepts_numpy_torch_single_and_float():
    raw, _ = load_digits("test", raw=True)
    ref = prepare(raw[:3])
    torch.testing.assert_close(prepare(raw[:3].numpy()), ref)
    torch.testing.assert_close(prepare(raw[0]), ref[:1])
    torch.testing.assert_close(prepare(raw[:3].float() / 255), ref)
    torch.testing.assert_close(prepare(raw[:3].unsqueeze(1)), ref)
    assert prepare(raw[:2], dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="28x28"):
        prepare(torch.zeros(2, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="0..1"):
        prepare(torch.full((1, 28, 28), 255.0))
    with pytest.raises(ValueError, match="uint8"):
        prepare(torch.zeros(1, 28, 28, dtype=torch.int32))


def write_idx(path, array, code=0x08, compress=False, magic_zero=b"\0\0"):
    header = magic_zero + bytes([code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    data = header + array.astype(dtype).tobytes()
    Path(path).write_bytes(gzip.compress(data) if compress else data)
    return data


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    write_idx(tmp_path / "a", images, compress=compress)
    write_idx(tmp_path / "b", labels, compress=compress)
    got = read_idx(tmp_path / "a")
    assert got.dtype == torch.uint8 and torch.equal(got, torch.from_numpy(images))
    assert torch.equal(read_idx(str(tmp_path / "b")), torch.from_numpy(labels))
    # Other element types, big-endian on disk.
    floats = rng.standard_normal((3, 4)).astype(np.float32)
    write_idx(tmp_path / "f", floats, code=0x0D, compress=compress)
    assert torch.equal(read_idx(tmp_path / "f"), torch.from_numpy(floats))
    ints = rng.integers(-30000, 30000, size=(5,)).astype(np.int16)
    write_idx(tmp_path / "i", ints, code=0x0B)
    assert torch.equal(read_idx(tmp_path / "i"), torch.from_numpy(ints))


def test_read_idx_rejects_bad_files(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    good = write_idx(tmp_path / "good", images)
    cases = {
        "truncated data": (good[:-10], "truncated"),
        "truncated header": (good[:9], "truncated header"),
        "too short": (good[:2], "too short"),
        "trailing bytes": (good + b"\0\0", "unexpected bytes"),
        "wrong magic": (b"\x08\x03" + good[2:], "not an IDX file"),
        "unknown type": (good[:2] + b"\x07" + good[3:], "type code"),
        "zero dims": (b"\0\0\x08\0", "0 dimensions"),
        "a PNG": (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an IDX file"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message):
            read_idx(path)
        gz = path.with_suffix(".gz")
        gz.write_bytes(gzip.compress(data))
        with pytest.raises(ValueError, match=message):
            read_idx(gz)
    # A gzip stream cut short or damaged.
    compressed = gzip.compress(good)
    (tmp_path / "cut.gz").write_bytes(compressed[:len(compressed) // 2])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "cut.gz")
    damaged = bytearray(compressed)
    damaged[-6] ^= 0xFF  # the CRC no longer matches
    (tmp_path / "bad.gz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")


def test_load_idx_dataset_pairs_and_checks(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 9], dtype=np.uint8))
    x, y = load_idx_dataset(tmp_path, "test")
    assert torch.equal(x, torch.from_numpy(images)) and y.tolist() == [0, 1, 2, 3, 9] and y.dtype == torch.int64
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_idx_dataset(tmp_path, "train")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2], dtype=np.uint8))
    with pytest.raises(ValueError, match="expected 5 labels"):
        load_idx_dataset(tmp_path, "test")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 12], dtype=np.uint8))
    with pytest.raises(ValueError, match="0..9"):
        load_idx_dataset(tmp_path, "test")


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
                           "which puts the full 60,000-image IDX files in /usr/share/datasets/fashion-mnist")
def test_read_full_fashion_mnist():
    images = read_idx(FASHION / "train-images-idx3-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert images.max() == 255 and images.float().mean().item() == pytest.approx(72.94, abs=0.1)
    x, y = load_idx_dataset(FASHION, "test")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert torch.bincount(y).tolist() == [1000] * 10
    assert prepare(x[:10]).shape == (10, 1, 32, 32)


def test_random_affine_shapes_determinism_and_background():
    x, _ = load_digits("test")
    x = x[:16]
    d1 = RandomAffine()(x, generator=torch.Generator().manual_seed(0))
    d2 = RandomAffine(generator=torch.Generator().manual_seed(0))(x)
    assert d1.shape == x.shape and torch.equal(d1, d2)
    assert not torch.allclose(d1, x)
    # Values stay within the input range (bilinear interpolation) and the corners stay background.
    assert d1.min() >= BACKGROUND - 1e-6 and d1.max() <= INK + 1e-6
    torch.testing.assert_close(d1[:, 0, 0, 0], torch.full((16,), BACKGROUND))
    # Still the same digit: most of the ink overlaps the original.
    ink, dink = x > 0.5, d1 > 0.5
    assert (ink & dink).sum() > 0.3 * ink.sum()
    # Zero ranges are the identity; one image without a batch dimension works.
    identity = RandomAffine(translate=0, scale=(1, 1), squeeze=(1, 1), shear=0)
    torch.testing.assert_close(identity(x), x)
    assert RandomAffine()(x[0]).shape == (1, 32, 32)
    with pytest.raises(ValueError):
        RandomAffine(scale=(1.2, 0.8))


def test_random_affine_pure_translation_moves_by_whole_pixels():
    x, _ = load_digits("test")
    shift = RandomAffine(translate=0, scale=(1, 1), squeeze=(1, 1), shear=0)
    # Force a translation of exactly (+2, -1) pixels by overriding the draw.
    m = torch.zeros(1, 2, 3, dtype=torch.float64)
    m[0, 0, 0] = m[0, 1, 1] = 1
    m[0, 0, 2], m[0, 1, 2] = 2, -1
    shift.matrices = lambda n, generator=None: m.expand(n, 2, 3)
    moved = shift(x[:1])
    torch.testing.assert_close(moved[0, 0, 1:31, 2:30], x[0, 0, 2:32, 0:28])


def test_elastic_distortion_determinism_range_and_identity():
    x, _ = load_digits("test")
    x = x[:16]
    d1 = ElasticDistortion()(x, generator=torch.Generator().manual_seed(0))
    d2 = ElasticDistortion(generator=torch.Generator().manual_seed(0))(x)
    d3 = ElasticDistortion()(x, generator=torch.Generator().manual_seed(1))
    assert d1.shape == x.shape and torch.equal(d1, d2) and not torch.allclose(d1, d3)
    assert not torch.allclose(d1, x)
    assert d1.min() >= BACKGROUND - 1e-6 and d1.max() <= INK + 1e-6
    torch.testing.assert_close(d1[:, 0, 0, 0], torch.full((16,), BACKGROUND))
    ink, dink = x > 0.5, d1 > 0.5
    assert (ink & dink).sum() > 0.5 * ink.sum()  # a local warp of about a pixel: still the same digit
    # alpha = 0 is the identity, alone and composed with an affine draw (which then acts alone).
    torch.testing.assert_close(ElasticDistortion(alpha=0)(x), x, rtol=0, atol=1e-6)
    affine = RandomAffine(rotate=10)
    composed = ElasticDistortion(alpha=0, affine=affine)(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(composed, affine(x, generator=torch.Generator().manual_seed(3)), rtol=0, atol=1e-5)
    assert ElasticDistortion()(x[0]).shape == (1, 32, 32)
    for bad in (dict(alpha=-1), dict(sigma=0)):
        with pytest.raises(ValueError):
            ElasticDistortion(**bad)
    with pytest.raises(ValueError):
        ElasticDistortion()(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


def test_elastic_distortion_reads_the_input_at_p_plus_displacement():
    # forward's output at pixel p is the input read bilinearly at p + displacements(p) (same draw).
    x, _ = load_digits("test")
    x = x[:4].double()
    elastic = ElasticDistortion(alpha=30, sigma=5)
    d = elastic.displacements(4, 32, 32, torch.Generator().manual_seed(7)).double()
    out = elastic(x, generator=torch.Generator().manual_seed(7))
    rows, cols = torch.meshgrid(torch.arange(32.0, dtype=torch.double), torch.arange(32.0, dtype=torch.double),
                                indexing="ij")
    sx, sy = cols + d[:, 0], rows + d[:, 1]                       # where each output pixel reads, [4, 32, 32]
    padded = torch.nn.functional.pad(x[:, 0] - BACKGROUND, (1, 1, 1, 1))  # outside = background
    x0, y0 = sx.floor(), sy.floor()
    expected = torch.zeros_like(sx)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1 - (sx - xi).abs()) * (1 - (sy - yi).abs())
            ok = (xi >= -1) & (xi <= 32) & (yi >= -1) & (yi <= 32)
            vals = padded[torch.arange(4).view(4, 1, 1), (yi.clamp(-1, 32) + 1).long(), (xi.clamp(-1, 32) + 1).long()]
            expected += torch.where(ok, w * vals, torch.zeros(()).double())
    torch.testing.assert_close(out[:, 0], expected + BACKGROUND, rtol=0, atol=1e-5)


def test_elastic_displacements_are_smooth_and_scale_with_alpha():
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    d = ElasticDistortion(alpha=34, sigma=4).displacements(400, 32, 32, g())
    assert d.shape == (400, 2, 32, 32)
    torch.testing.assert_close(ElasticDistortion(alpha=17, sigma=4).displacements(400, 32, 32, g()), d / 2)
    # The smoothing is a normalised Gaussian; uniform noise in +-1 has variance 1/3, and the smoothed field
    # has sum_k k^2 of it (separable: the product of the 1-D sums), times alpha^2, away from the border.
    k = gaussian_kernel(4.0)
    inner = d[:, :, 12:20, 12:20]
    expected_std = 34 * (1 / 3) ** 0.5 * float((k ** 2).sum())
    assert inner.std().item() == pytest.approx(expected_std, rel=0.1)
    assert inner.mean().abs().item() < 0.1 * expected_std
    # Smooth: neighbouring pixels move almost together; uncorrelated far apart.
    a, b = d[:, 0, 16, 16], d[:, 0, 16, 17]
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    assert torch.corrcoef(torch.stack([a, d[:, 0, 16, 2]]))[0, 1].abs() < 0.3
    assert gaussian_kernel(4.0).sum().item() == pytest.approx(1.0) and len(gaussian_kernel(4.0)) == 25


def test_package_exports():
    for name in ["LeNet5", "LeNet5FullC3", "LeNet5Modern", "load_digits", "read_idx", "load", "classify",
                 "prepare", "RandomAffine", "map_loss", "SDLM"]:
        assert hasattr(lenet, name), name
