"""Training, checkpoints, ``lenet.load`` and ``lenet.classify``."""
import numpy as np
import pytest
import torch

import lenet
from lenet import checkpoint
from lenet.data import load_digits
from lenet.train import confusion_matrix, main, train

torch.set_num_threads(1)

QUIET = dict(progress=False, log=lambda *args: None)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """500 steps of the default recipe (AdamW, distorted digits, cosine decay) on 4,000 digits in batches of 8:
    (model, history, path). Seed 0 ends near 18 % test error."""
    out = tmp_path_factory.mktemp("run") / "lenet5.pt"
    model, history = train(out=out, epochs=1, limit=4000, batch_size=8, seed=0, **QUIET)
    return model, history, out


def test_short_training_lowers_the_loss_and_beats_chance(short_run):
    model, history, _ = short_run
    x, y = load_digits("train")
    x, y = x[:1000], y[:1000]
    with torch.no_grad():
        untrained = lenet.LeNet5()
        before = untrained.loss(untrained(x), y).item()
        after = model.loss(model(x), y).item()
    assert before > 60  # all F6 states near 0: every penalty near 84, minus j
    assert after < 0.25 * before
    # Chance is 90 % error; 500 steps get far below it on the held-out digits.
    assert history[-1]["test_error"] < 0.35
    xt, yt = load_digits("test")
    assert (model(xt).argmin(1) != yt).double().mean().item() == pytest.approx(history[-1]["test_error"])


@pytest.mark.parametrize("optimizer", ["sdlm", "sgd"])
def test_other_optimizers_lower_the_loss(optimizer):
    # SDLM: the paper's recipe (its 250-step warm-up at a tenth of the rate, then the paper's rate);
    # 400 steps on 3,200 undistorted digits. SGD: Nesterov momentum, the same cosine schedule as Adam.
    model, history = train(epochs=1, limit=3200, batch_size=8, optimizer=optimizer, distort=False, seed=0, **QUIET)
    x, y = load_digits("train")
    with torch.no_grad():
        after = model.loss(model(x[:1000]), y[:1000]).item()
    assert after < 0.4 * 74  # the untrained loss is about 74 (every penalty near 84, minus j)
    assert history[-1]["test_error"] < 0.5  # chance is 90 %


def test_validation_split_and_recipe_defaults():
    from lenet.train import RECIPES, cosine_rate
    model, history = train(epochs=2, limit=200, validation=100, warmup_steps=2, **QUIET)
    assert 0 <= history[0]["val_error"] <= 1 and len(history) == 2
    # 100 training digits in batches of 32: 4 steps a pass; the rate at the last step is near zero.
    assert history[1]["lr"] == pytest.approx(cosine_rate(7, 8, RECIPES["adam"]["lr"], 2))
    assert history[1]["lr"] < RECIPES["adam"]["lr"] * 0.05
    with pytest.raises(ValueError, match="validation"):
        train(epochs=1, limit=100, validation=100, **QUIET)
    with pytest.raises(ValueError, match="optimizer"):
        train(epochs=1, limit=100, optimizer="rmsprop", **QUIET)
    with pytest.raises(ValueError, match="weight decay"):
        train(epochs=1, limit=100, optimizer="sdlm", weight_decay=0.1, **QUIET)


def test_cosine_rate():
    from lenet.train import cosine_rate
    assert cosine_rate(0, 100, 1.0, 10) == pytest.approx(0.1 * 1.0)  # warm-up: (0 + 1) / 10 of the peak
    assert cosine_rate(10, 100, 1.0, 10) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.1)))
    assert cosine_rate(50, 100, 2.0, 0) == pytest.approx(1.0)
    assert cosine_rate(99, 100, 1.0, 0) < 1e-3


def test_training_is_deterministic():
    for optimizer in ("adam", "sdlm"):
        tiny = dict(epochs=1, limit=160, batch_size=8, warmup_steps=5, curvature_samples=64, distort=True,
                    optimizer=optimizer, **QUIET)
        a, ha = train(seed=3, **tiny)
        b, hb = train(seed=3, **tiny)
        c, _ = train(seed=4, **tiny)
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
        assert ha[0]["train_loss"] == hb[0]["train_loss"]
        assert not torch.equal(a.c1.weight, c.c1.weight)


def test_elastic_distortions_in_training_are_deterministic_and_recorded(tmp_path):
    tiny = dict(epochs=1, limit=160, batch_size=8, warmup_steps=5, seed=2, **QUIET)
    a, _ = train(elastic=30, elastic_sigma=5, **tiny)
    b, _ = train(elastic=30, elastic_sigma=5, **tiny)
    c, _ = train(**tiny)                                   # affine distortions only
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.c1.weight, c.c1.weight)
    out = tmp_path / "e.pt"
    _, history = train(out=out, elastic=30, elastic_sigma=5, validation=40, plots=False, **tiny)
    config = checkpoint.read(out)["train_config"]
    assert config["elastic"] == 30 and config["elastic_sigma"] == 5
    assert history[0]["val_loss"] > 0 and 0 <= history[0]["val_error"] <= 1
    for bad in (dict(elastic=-1), dict(elastic=30, elastic_sigma=0)):
        with pytest.raises(ValueError):
            train(epochs=1, limit=100, **bad, **QUIET)


def test_validation_fold_holds_out_the_requested_digits():
    from lenet.train import evaluate
    model, history = train(epochs=1, limit=200, validation=50, validation_offset=50, warmup_steps=2, **QUIET)
    x, y = load_digits("train")
    # Rows 100..149 (the 50 that end 50 before the last of the first 200) are the validation digits.
    assert history[0]["val_error"] == evaluate(model, x[100:150], y[100:150])[0]
    with torch.no_grad():
        assert history[0]["val_loss"] == pytest.approx(model.loss(model(x[100:150]), y[100:150]).item())
    for bad in (dict(validation=50, validation_offset=-1), dict(validation_offset=10),
                dict(validation=100, validation_offset=100)):
        with pytest.raises(ValueError, match="validation"):
            train(epochs=1, limit=200, **bad, **QUIET)


def test_distort_fraction():
    from lenet.train import mix_distorted
    tiny = dict(epochs=1, limit=160, batch_size=16, warmup_steps=2, seed=6, **QUIET)
    # 1 (the default) is the recipe without the option, exactly (no extra random draws).
    a, _ = train(**tiny)
    b, _ = train(distort_fraction=1.0, **tiny)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c, _ = train(distort_fraction=0.5, **tiny)
    assert not torch.equal(a.c1.weight, c.c1.weight)
    # Every row is either the original or the distorted one, distorted with the given probability.
    x = torch.randn(4000, 1, 2, 2)
    d = x + 10
    for fraction in (0.0, 0.3, 1.0):
        mixed = mix_distorted(x, d, fraction, torch.Generator().manual_seed(0))
        from_d = (mixed == d).flatten(1).all(1)
        assert bool((from_d | (mixed == x).flatten(1).all(1)).all())
        assert abs(from_d.double().mean().item() - fraction) < 0.03
    with pytest.raises(ValueError, match="distort_fraction"):
        train(distort_fraction=1.5, **tiny)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pass_distortions_are_the_rows_of_the_whole_pass(dtype):
    """PassDistortions (data-parallel lenet.train): the pass's draws made at once, any rows resampled later
    are bit for bit those rows of distorter(x) (then mix_distorted), and the generator ends where it ends."""
    from lenet.data import RandomAffine
    from lenet.train import PassDistortions, mix_distorted
    x = load_digits("train")[0][:300].to(dtype)
    t = RandomAffine(rotate=10.0)
    assert t.draws_apart()
    for fraction in (1.0, 0.6):
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        whole = t(x, generator=g1)
        if fraction < 1:
            whole = mix_distorted(x, whole, fraction, g1)
        lazy = PassDistortions(x, t, fraction, g2)
        assert torch.equal(g1.get_state(), g2.get_state()) and len(lazy) == len(x)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        for rows in (order[:16], order[16:23], order[290:]):
            assert torch.equal(lazy[rows], whole[rows])
        assert not torch.equal(whole, x)


def test_weight_average():
    tiny = dict(epochs=2, limit=160, batch_size=16, warmup_steps=2, seed=5, **QUIET)
    # With a zero rate the weights never move, so their average is the initial weights again.
    still, _ = train(lr=0.0, ema=0.9, **tiny)
    fresh, _ = train(lr=0.0, **tiny)
    assert all(torch.allclose(p, q, rtol=0, atol=1e-7) for p, q in zip(still.parameters(), fresh.parameters()))
    averaged, history = train(ema=0.9, **tiny)
    again, _ = train(ema=0.9, **tiny)
    plain, _ = train(**tiny)
    assert all(torch.equal(p, q) for p, q in zip(averaged.parameters(), again.parameters()))
    assert not torch.equal(averaged.c1.weight, plain.c1.weight)
    # The history and the returned model are the averaged weights'.
    xt, yt = load_digits("test")
    assert (averaged(xt).argmin(1) != yt).double().mean().item() == pytest.approx(history[-1]["test_error"])
    with pytest.raises(ValueError, match="ema"):
        train(ema=1.0, **tiny)


def test_checkpoint_round_trip_is_exact(short_run):
    model, history, out = short_run
    assert out.exists()
    for suffix in ("_curve.png", "_confusion.png"):
        png = out.with_name(out.stem + suffix)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = lenet.load(out)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config() == model.config()
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    x, _ = load_digits("test")
    assert torch.equal(loaded(x[:50]), model(x[:50]))
    raw = checkpoint.read(out)
    assert raw["kind"] == "lenet5" and raw["history"] == history
    assert raw["confusion"].sum() == 1000


@pytest.mark.parametrize("variant", ["fullc3", "modern"])
def test_variants_round_trip_in_float64(tmp_path, variant):
    torch.manual_seed(0)
    model = lenet.model.build(variant).double()
    path = checkpoint.save_model(model, tmp_path / "m.pt")
    loaded = lenet.load(path)
    assert type(loaded) is type(model)
    assert all(torch.equal(p, q) and q.dtype == torch.float64
               for p, q in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_classify_from_path_and_model(short_run):
    model, _, out = short_run
    raw, labels = load_digits("test", raw=True)
    prepared, _ = load_digits("test")
    from_path = lenet.classify(raw[:100], out)
    assert from_path.dtype == torch.int64 and from_path.shape == (100,)
    assert torch.equal(from_path, model(prepared[:100]).argmin(1))
    assert torch.equal(lenet.classify(raw[:100].numpy(), model), from_path)
    assert torch.equal(lenet.classify(prepared[:100], model), from_path)
    assert lenet.classify(raw[0], model).shape == (1,)
    assert (from_path == labels[:100]).double().mean() > 0.75
    with pytest.raises(TypeError):
        lenet.classify(raw[:2], 42)


def test_confusion_matrix():
    c = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert c.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_command_line(tmp_path):
    out = tmp_path / "cli" / "m.pt"
    main(["--out", str(out), "--epochs", "1", "--limit", "80", "--variant", "modern", "--no-progress",
          "--no-plots", "--seed", "1"])
    model = lenet.load(out)
    assert isinstance(model, lenet.LeNet5Modern)
    config = checkpoint.read(out)["train_config"]
    assert config["limit"] == 80 and config["optimizer"] == "adam" and config["distort"]
    assert not list(out.parent.glob("*.png"))
    main(["--out", str(out), "--epochs", "1", "--limit", "80", "--optimizer", "sdlm", "--no-distort",
          "--no-progress", "--no-plots", "--warmup-steps", "3"])
    config = checkpoint.read(out)["train_config"]
    assert config["optimizer"] == "sdlm" and not config["distort"] and config["batch_size"] == 8
    assert config["warmup_steps"] == 3 and config["mu"] == 0.02


def test_load_dispatches_on_kind(tmp_path):
    checkpoint.register("test-kind", lambda ckpt: ("rebuilt", ckpt["config"]["size"]), replace=True)
    path = checkpoint.save(tmp_path / "other.pt", "test-kind", {"size": 3}, {"w": torch.zeros(2)})
    assert lenet.load(path) == ("rebuilt", 3)
    checkpoint.register("test-kind-lazy", "numpy:asarray", replace=True)
    path = checkpoint.save(tmp_path / "lazy.pt", "test-kind-lazy", {}, {})
    assert isinstance(lenet.load(path), np.ndarray)
    with pytest.raises(ValueError, match="already registered"):
        checkpoint.register("lenet5", lambda c: None)
    unknown = checkpoint.save(tmp_path / "unknown.pt", "no-such-kind", {}, {})
    with pytest.raises(ValueError, match="no loader"):
        lenet.load(unknown)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        lenet.load(junk)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a torch-gtn checkpoint"):
        lenet.load(tmp_path / "plain.pt")


def test_custom_prototypes_round_trip(tmp_path):
    # An extra class (e.g. "no digit here" for the SDNN reader) is an extra +-1 code.
    codes = torch.cat([lenet.digit_prototypes(), -torch.ones(1, 84)])
    model = lenet.LeNet5(prototypes=codes)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 11)
    loaded = lenet.load(checkpoint.save_model(model, tmp_path / "m.pt"))
    assert loaded.num_classes == 11 and torch.equal(loaded.rbf.prototypes, codes)
    with pytest.raises(ValueError, match="prototypes"):
        lenet.LeNet5(prototypes=torch.zeros(10, 84))


def test_random_affine_rotation():
    # The training recipe's distortions add a rotation to RandomAffine (applied after the paper's
    # distortions; rotate=0 draws no angle, so the other draws are unchanged).
    from lenet.data import RandomAffine
    base = RandomAffine().matrices(500, torch.Generator().manual_seed(5))
    rotated = RandomAffine(rotate=10).matrices(500, torch.Generator().manual_seed(5))
    assert torch.equal(RandomAffine(rotate=0).matrices(500, torch.Generator().manual_seed(5)), base)
    # rotated = R(theta) @ base: R is orthogonal with det 1 and |theta| <= 10 degrees; shifts untouched.
    r = rotated[:, :, :2] @ torch.linalg.inv(base[:, :, :2])
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(2, dtype=torch.float64).expand(500, 2, 2), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(500, dtype=torch.float64))
    theta = torch.atan2(r[:, 1, 0], r[:, 0, 0]) * 180 / np.pi
    assert theta.abs().max() <= 10 and theta.abs().max() > 9 and (theta > 0).any() and (theta < 0).any()
    assert torch.equal(rotated[:, :, 2], base[:, :, 2])
    # A pure rotation by 90 degrees about the centre moves pixels exactly (no interpolation).
    x, _ = load_digits("test")
    quarter = RandomAffine(translate=0, scale=(1, 1), squeeze=(1, 1), shear=0, rotate=90)
    quarter.matrices = lambda n, generator=None: torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]],
                                                              dtype=torch.float64).expand(n, 2, 3)
    out = quarter(x[:3].double())
    assert any(torch.allclose(out, torch.rot90(x[:3].double(), k, (2, 3)), atol=1e-9) for k in (1, 3))
    with pytest.raises(ValueError):
        RandomAffine(rotate=-1)
