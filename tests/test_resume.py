"""Tests of lenet.resume: atomic resume states, and runs of both trainers that crash mid-way and resume to the
very result of an uninterrupted run."""
import random

import numpy as np
import pytest
import torch

from lenet.data import load_digits
from lenet.global_train import GlobalRecipe, train_globally
from lenet.model import LeNet5
from lenet.recognizer import StringReader
from lenet.resume import States, atomic_save, rng_states, set_rng_states
from lenet.strings import make_strings
from lenet.train import train


class Crash(Exception):
    pass


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    atomic_save({"a": torch.arange(3)}, path)
    real_save = torch.save

    def half_then_crash(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise Crash

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(Crash):
        atomic_save({"a": torch.arange(5)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind
    atomic_save({"a": torch.arange(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(5))


def test_random_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    atomic_save({"rng": rng_states()}, tmp_path / "r.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    set_rng_states(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_states_naming_latest_pruning_and_errors(tmp_path):
    out = tmp_path / "run.pt"
    s = States(out, "global", resume="auto")
    assert s.start() is None  # auto with nothing yet: afresh
    s.save(1, {"x": 1})
    s.save(2, {"x": 2})
    assert [p.name for _, p in s.existing()] == ["run_global_pass0002.state.pt"]  # older ones removed
    assert s.start()["x"] == 2 and s.resumed_from == s.path(2)
    assert States(out, "isolated", "auto").start() is None  # another phase's states are not its own
    with pytest.raises(ValueError, match="phase 'global', not 'isolated'"):
        States(out, "isolated", s.path(2)).start()
    with pytest.raises(FileNotFoundError, match="no such resume state"):
        States(out, "global", tmp_path / "none.pt").start()
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable resume state"):
        States(out, "global", tmp_path / "bad.pt").start()
    assert States(out, "global", writer=False).start() is None and s.latest() is not None  # readers delete nothing
    assert States(out, "global").start() is None and s.latest() is None  # a fresh run forgets the old states
    with pytest.raises(ValueError, match="phase must be"):
        States(out, "a/b")


def _reader(net):
    reader = StringReader(LeNet5(), lengths=(3, 6))
    reader.model.load_state_dict(net.state_dict())
    reader.calibrate(load_digits("train", raw=True)[0][:200])
    return reader


@pytest.mark.parametrize("isolated_weight", [0.0, 0.5])
def test_a_crashed_global_training_resumes_to_the_uninterrupted_result(tmp_path, isolated_weight):
    """Three passes of fresh strings; the crashed run dies while rendering pass 3's strings, after the state of
    pass 2 was written; resumed with "auto", it ends with the same parameters, optimiser state and history,
    bit for bit. Also with the isolated-digit term, whose batches are drawn by step."""
    torch.manual_seed(0)
    net = LeNet5()
    strings = make_strings(12, "train", seed=11)
    recipe = GlobalRecipe(global_epochs=3, batch_size=6, lr=1e-3, seg_lr=1e-2, fresh=True, workers=0,
                          isolated_weight=isolated_weight, isolated_batch=4)
    digits = load_digits("train", raw=True)
    digits = (digits[0][:300], digits[1][:300])
    monitor = strings[:4]

    def render(k):
        return make_strings(12, "train", seed=70 + k)

    def crashing(k):
        if k == 2:
            raise Crash
        return render(k)

    whole = _reader(net)
    hist = train_globally(whole, strings, recipe, 3, False, monitor, render, states=States(tmp_path / "a.pt", "global"),
                          digits=digits)
    crashed = _reader(net)
    with pytest.raises(Crash):
        train_globally(crashed, strings, recipe, 3, False, monitor, crashing,
                       states=States(tmp_path / "b.pt", "global"), digits=digits)
    states = States(tmp_path / "b.pt", "global", resume="auto")
    assert states.latest() == states.path(2)
    resumed = _reader(net)  # a new process: the network as at the start; the state brings back the rest
    hist_b = train_globally(resumed, strings, recipe, 3, False, monitor, render, states=states, digits=digits)
    assert states.resumed_from == states.path(2)
    assert hist_b == hist and len(hist["epoch_loss"]) == 3
    assert len(hist["isolated_loss"]) == (3 if isolated_weight else 0)
    for k, v in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    a = torch.load(States(tmp_path / "a.pt", "global").path(3), weights_only=True)
    b = torch.load(states.path(3), weights_only=True)
    assert a["step"] == b["step"] == 6
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("extra", [dict(), dict(ema=0.9, optimizer="sgd")])
def test_a_crashed_isolated_training_resumes_to_the_uninterrupted_result(tmp_path, extra):
    """lenet.train.train with distortions (its generator's state is part of the resume state), optionally a
    weight average: crashed after pass 2 of 4 and resumed, the same weights, history and checkpoint."""
    kw = dict(epochs=4, limit=200, batch_size=32, seed=2, progress=False, plots=False, **extra)
    whole, hist = train(out=tmp_path / "a.pt", log=lambda *a: None, states=States(tmp_path / "a.pt", "isolated"),
                        **kw)

    def crash_after_pass_2(message):
        if message.startswith("pass  2/"):
            raise Crash

    with pytest.raises(Crash):
        train(out=tmp_path / "b.pt", log=crash_after_pass_2, states=States(tmp_path / "b.pt", "isolated"), **kw)
    messages = []
    states = States(tmp_path / "b.pt", "isolated", resume="auto")
    resumed, hist_b = train(out=tmp_path / "b.pt", log=messages.append, states=states, **kw)
    assert any(m.startswith("resumed from") and "(after pass 2/4)" in m for m in messages)
    assert not any(m.startswith("pass  1/") or m.startswith("pass  2/") for m in messages)  # not redone
    for k, v in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in hist_b] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in hist]
    # resuming a finished run redoes nothing and writes the same checkpoint
    again, hist_c = train(out=tmp_path / "c.pt", log=lambda *a: None,
                          states=States(tmp_path / "b.pt", "isolated", resume=states.path(4)), **kw)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in whole.state_dict().items())
    assert torch.load(tmp_path / "c.pt", weights_only=True)["test_error"] == hist[-1]["test_error"]


@pytest.mark.slow
def test_the_example_killed_mid_training_resumes_to_the_uninterrupted_result(tmp_path):
    """examples/multi_digit.py --quick with 2 global passes, killed (SIGKILL) once the state of pass 1 exists,
    rerun with --resume auto: the same checkpoint and figures as a run that was never interrupted."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(root / "examples" / "multi_digit.py"), "--quick", "--global-epochs", "2",
            "--grid-strings", "0", "--no-progress"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    whole = subprocess.run(args + ["--out", str(tmp_path / "a" / "r.pt")], env=env, capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "b" / "r.pt")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and not (tmp_path / "b" / "r_global_pass0001.state.pt").exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "r.pt").exists()
    resumed = subprocess.run(args + ["--out", str(tmp_path / "b" / "r.pt"), "--resume", "auto"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr + resumed.stdout and "(after pass 1/2)" in resumed.stderr + resumed.stdout
    a = torch.load(tmp_path / "a" / "r.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "r.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((tmp_path / d / "r_metrics.json").read_text()) for d in "ab")
    for k in ("monitor_loss_before", "monitor_loss_after"):
        assert ma[k] == mb[k]
    for k in ("string_accuracy", "digit_error"):
        assert ma["after"][k] == mb["after"][k] and ma["before"][k] == mb["before"][k]
