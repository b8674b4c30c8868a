"""Tests of lenet.global_train: the global training loop of the string readers, as the library holds it."""
import importlib.util
from pathlib import Path

import pytest
import torch

from lenet.global_train import (GlobalRecipe, IsolatedDigits, PassBatches, batches, evaluate, mean_loss,
                                train_globally)
from lenet.data import load_digits, prepare
from lenet.model import LeNet5
from lenet.recognizer import StringReader, prepare_batch
from lenet.strings import make_strings

ROOT = Path(__file__).resolve().parents[1]


def test_pass_batches_are_the_same_in_worker_processes():
    strings = make_strings(40, "train", seed=3)
    render = lambda k: make_strings(40, "train", seed=50 + k)  # noqa: E731
    for k in (0, 1):
        here = list(PassBatches(k, strings, render, 8, 5, prepare_batch))
        loader = torch.utils.data.DataLoader(PassBatches(k, strings, render, 8, 5, prepare_batch),
                                             batch_size=None, num_workers=2)
        there = list(loader)
        assert [lab for _, lab in here] == [lab for _, lab in there] and len(here) == 5
        for (a, _), (b, _) in zip(here, there):
            assert torch.equal(a.crops, b.crops) and torch.equal(a.graphs.arcs, b.graphs.arcs)
    # pass 0 uses the given strings, later passes new ones
    labels0 = sorted(lab for _, labs in PassBatches(0, strings, render, 8, 5, prepare_batch) for lab in labs)
    labels1 = sorted(lab for _, labs in PassBatches(1, strings, render, 8, 5, prepare_batch) for lab in labs)
    assert labels0 == sorted(s.label for s in strings) and labels1 != labels0


def test_recipe_from_the_example_configs():
    """The example's run configurations map onto GlobalRecipe; its defaults are the default run's recipe."""
    spec = importlib.util.spec_from_file_location("multi_digit_example", ROOT / "examples" / "multi_digit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # the script's module level only (configurations, imports)
    default = mod.CONFIGS["default"]
    assert GlobalRecipe.of(default) == GlobalRecipe()
    quick = GlobalRecipe.of(mod.CONFIGS["quick"])
    assert (quick.global_epochs, quick.fresh, quick.workers, quick.batch_size) == (1, False, 1, 16)
    assert GlobalRecipe.of(quick) is quick
    # a bare mapping: fresh and workers default to off
    bare = GlobalRecipe.of(dict(global_epochs=2, batch_size=4, lr=1e-3, seg_lr=1e-2, iso_epochs=9))
    assert (bare.fresh, bare.workers) == (False, 0)
    with pytest.raises(ValueError, match="lacks global_epochs, seg_lr"):
        GlobalRecipe.of(dict(batch_size=4, lr=1e-3))
    with pytest.raises(TypeError, match="GlobalRecipe or a mapping"):
        GlobalRecipe.of([1, 2])


def test_batches_cover_the_items_in_order():
    assert list(batches(list(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches([], 3)) == []


def test_train_globally_is_deterministic_and_lowers_the_monitor_loss():
    """Two runs from the same network and seed give the same history (in-process and with a worker), and a
    few steps lower the loss on the training strings themselves."""
    torch.manual_seed(0)
    net = LeNet5()
    strings = make_strings(24, "train", seed=11)
    recipe = GlobalRecipe(global_epochs=2, batch_size=8, lr=1e-3, seg_lr=1e-2, fresh=True, workers=0)
    render = lambda k: make_strings(24, "train", seed=70 + k)  # noqa: E731
    hists = []
    for workers in (0, 1):
        reader = StringReader(LeNet5(), lengths=(3, 6))
        reader.model.load_state_dict(net.state_dict())
        reader.calibrate(load_digits("train", raw=True)[0][:200])
        hist = train_globally(reader, strings, GlobalRecipe(**{**recipe.asdict(), "workers": workers}), seed=3,
                              progress=False, monitor=strings[:8], render=render)
        hists.append(hist)
        assert 1 <= len(hist["step_loss"]) <= 6 and len(hist["monitor_loss"]) == 3
        assert not reader.training
    assert hists[0]["step_loss"] == hists[1]["step_loss"]
    assert hists[0]["monitor_loss"] == hists[1]["monitor_loss"]
    assert hists[0]["monitor_loss"][-1] < hists[0]["monitor_loss"][0]
    m, preds, conf = evaluate(reader, strings[:6], progress=False, desc="eval")
    assert len(preds) == 6 == len(conf) and 0 <= m["string_accuracy"] <= 1 and m["seconds"] >= 0
    assert abs(mean_loss(reader, strings[:8]) - hists[1]["monitor_loss"][-1]) < 1e-4


def test_without_monitor_strings_no_monitor_loss_is_claimed(capsys):
    """No monitor: the per-pass line says nothing of a monitor loss (it used to print 0.0000 on 0 strings),
    and the history holds nan, not a made-up zero."""
    torch.manual_seed(0)
    reader = StringReader(LeNet5(), lengths=(3, 6))
    reader.calibrate(load_digits("train", raw=True)[0][:200])
    strings = make_strings(8, "train", seed=12)
    hist = train_globally(reader, strings, GlobalRecipe(global_epochs=1, batch_size=8, lr=1e-3, seg_lr=1e-2),
                          seed=3, progress=True, monitor=[])
    out = capsys.readouterr().out
    assert "pass 1/1: mean training loss" in out and "monitor" not in out
    assert len(hist["monitor_loss"]) == 2 and all(v != v for v in hist["monitor_loss"])
    assert mean_loss(reader, []) != mean_loss(reader, [])  # nan


def test_isolated_digits_are_drawn_by_the_step_alone():
    """The isolated-digit term's batches: the same (seed, step) gives the same batch whichever object draws it
    and in whatever order (a resumed run, another rank), raw and prepared digits give the same batch, the
    digits are distorted (not the prepared originals) and keep their labels."""
    x, y = load_digits("train", raw=True)
    x, y = x[:500], y[:500]
    a, b = IsolatedDigits((x, y), 16, seed=4), IsolatedDigits((prepare(x), y), 16, seed=4)
    later = b.batch(7)
    first = a.batch(0)
    assert torch.equal(first[0], b.batch(0)[0]) and torch.equal(first[1], b.batch(0)[1])
    assert torch.equal(a.batch(7)[0], later[0])
    assert first[0].shape == (16, 1, 32, 32) and first[1].shape == (16,)
    assert not torch.equal(first[1], a.batch(1)[1]) or not torch.equal(first[0], a.batch(1)[0])
    assert not torch.equal(first[1], IsolatedDigits((x, y), 16, seed=5).batch(0)[1])
    # distorted copies of the drawn digits: the labels are theirs, the pixels are not the originals'
    rows = [int(torch.nonzero(torch.all(prepare(x).flatten(1) == im.flatten(), 1)).numel()) for im in first[0]]
    assert sum(rows) == 0
    with pytest.raises(ValueError, match="500 images and 499 labels"):
        IsolatedDigits((x, y[:-1]), 16, seed=0)


def test_the_isolated_term_adds_its_weighted_gradient():
    """Law: the first step of global training with the isolated-digit term descends the gradient of
    (mean string loss + isolated_weight × the network's loss on step 0's isolated batch). Adam's first step
    moves every parameter by the peak rate against the sign of its gradient, so the step taken shows the sign
    of the gradient that was used; it is compared with the gradient computed here, apart."""
    torch.manual_seed(0)
    net = LeNet5()
    digits = load_digits("train", raw=True)
    digits = (digits[0][:400], digits[1][:400])
    strings = make_strings(6, "train", seed=13)
    for weight in (0.0, 3.0):
        reader = StringReader(LeNet5(), lengths=(3, 6))
        reader.model.load_state_dict(net.state_dict())
        reader.calibrate(digits[0][:200])
        ref = StringReader(LeNet5(), lengths=(3, 6))
        ref.load_state_dict(reader.state_dict())
        before = [p.detach().clone() for p in reader.parameters()]
        recipe = GlobalRecipe(global_epochs=1, batch_size=6, lr=1e-3, seg_lr=1e-2, fresh=False, workers=0,
                              isolated_weight=weight, isolated_batch=8)
        hist = train_globally(reader, strings, recipe, seed=9, progress=False, monitor=[], digits=digits)
        assert len(hist["isolated_loss"]) == (1 if weight else 0)
        # the gradient, apart: the finite string losses' mean plus the weighted isolated term
        ref.train()
        losses = ref.loss([s.image for s in strings], [s.label for s in strings], reduction="none")
        loss = losses[torch.isfinite(losses)].mean()
        if weight:
            xb, yb = IsolatedDigits(digits, 8, seed=9).batch(0)
            iso = ref.model.loss(ref.model(xb), yb)
            assert abs(hist["isolated_loss"][0] - float(iso.detach())) < 1e-4 * max(1.0, float(iso.detach()))
            loss = loss + weight * iso
        grads = torch.autograd.grad(loss, list(ref.parameters()), allow_unused=True, retain_graph=True)
        checked = 0
        for p0, p1, g in zip(before, reader.parameters(), grads):
            if g is None:
                continue
            big = g.abs() > 1e-4  # Adam's eps (1e-8) shrinks the steps of tiny gradients only
            step = (p1.detach() - p0)[big]
            assert torch.equal(torch.sign(step), -torch.sign(g[big])), "a parameter moved against the gradient"
            checked += int(big.sum())
        assert checked > 1000
        if weight:  # and the term changed the step: without it some parameters would have moved the other way
            plain = torch.autograd.grad(losses[torch.isfinite(losses)].mean(), list(ref.model.parameters()),
                                        retain_graph=True)
            full = torch.autograd.grad(loss, list(ref.model.parameters()))
            flips = sum(int((torch.sign(a) != torch.sign(b))[(a.abs() > 1e-4) & (b.abs() > 1e-4)].sum())
                        for a, b in zip(plain, full))
            assert flips > 10


def test_the_isolated_term_needs_digits_and_a_sane_recipe():
    strings = make_strings(4, "train", seed=12)
    reader = StringReader(LeNet5(), lengths=(3, 6))
    with pytest.raises(ValueError, match="needs digits"):
        train_globally(reader, strings, GlobalRecipe(global_epochs=1, isolated_weight=1.0), seed=0,
                       progress=False, monitor=[])
    with pytest.raises(ValueError, match="isolated_weight must be >= 0"):
        GlobalRecipe(isolated_weight=-1.0)
    with pytest.raises(ValueError, match="isolated_batch >= 1"):
        GlobalRecipe(isolated_weight=1.0, isolated_batch=0)
