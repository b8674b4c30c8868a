"""End-to-end tests of examples/multi_digit.py (the GTN reader trained from string labels)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lenet
from lenet.recognizer import StringReader, error_reject, recognize, string_metrics
from lenet.strings import make_strings

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "multi_digit.py"


def run(tmp_path, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "reader.pt"
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--no-progress", *args], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=timeout)
    return p, out


@pytest.mark.parametrize("option", [("--cut-starts", "every"), ("--cut-rank", "learned"), ("--cut-cost", "learned")])
def test_bad_segmentation_settings_are_refused_before_training(tmp_path, option):
    """Cut paths from every column, or in a learned order, without cut paths: one line, before any training, and
    nothing written."""
    p, out = run(tmp_path, "--quick", *option, timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "segmentation settings" in p.stderr and "cut_paths > 0" in p.stderr
    assert "isolated" not in p.stdout and not out.exists()


def test_quick_run_trains_and_lowers_the_loss(tmp_path):
    p, out = run(tmp_path, "--quick", "--seed", "1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "global training lowered the loss" in p.stdout
    for suffix in ("_curves.png", "_example.png", "_reject.png", "_metrics.json"):
        f = tmp_path / ("reader" + suffix)
        assert f.exists() and f.stat().st_size > 500, f
    m = json.loads((tmp_path / "reader_metrics.json").read_text())
    assert m["monitor_loss_after"] < m["monitor_loss_before"]
    assert "| hos | (a) isolated digits only |" in p.stdout and "| hos | (b) + global training |" in p.stdout
    for regime in ("before", "after"):  # the error budget of each regime is reported and adds up
        b = m[regime]["budget"]
        assert 0 <= b["isolated_error"] <= 1 and 0 <= b["ceiling"] <= 1
        assert b["wrong"] == b["wrong_with_misread_digit"] + b["wrong_without"]
        assert b["wrong"] == round((1 - m[regime]["string_accuracy"]) * m[regime]["strings"])
    assert "a perfect segmenter reading each digit as alone would read" in p.stdout
    reader = lenet.load(out)
    assert isinstance(reader, StringReader)
    s = make_strings(3, "test", seed=0)
    texts = recognize([x.image for x in s], out)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    # the "each length known" row is what the saved reader reads when told the lengths of the test strings
    assert "| hos | (b), each length known |" in p.stdout
    test = make_strings(m["after"]["strings"], "test", (3, 6), seed=1 + 3, digits=lenet.load_digits("test", raw=True))
    known = recognize([x.image for x in test], reader, length=[len(x.label) for x in test], confidence=True)
    texts, conf = [k[0] for k in known], [k[1] for k in known]
    right = [t == x.label for t, x in zip(texts, test)]
    assert m["known_length"] == {**string_metrics(texts, [x.label for x in test]),
                                 "seconds": m["known_length"]["seconds"], "system": "hos",
                                 "training": "(b), each length known",
                                 "reject": error_reject(conf, right)["points"]}
    # the rejection figures of (b): the saved reader's confidences give the same operating points
    texts, conf = reader.decode([x.image for x in test], return_confidence=True)
    assert m["after"]["reject"] == error_reject(conf, [t == x.label for t, x in zip(texts, test)])["points"]
    assert (tmp_path / "reader_reject.png").stat().st_size > 1000
    assert "rejecting the least confident strings" in p.stdout


def test_quick_sdnn_run_trains_and_lowers_the_loss(tmp_path):
    from lenet.sdnn import SDNNReader
    p, out = run(tmp_path, "--quick", "--system", "sdnn")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "global training lowered the loss" in p.stdout
    m = json.loads((tmp_path / "reader_metrics.json").read_text())
    assert m["monitor_loss_after"] < m["monitor_loss_before"]
    assert "| sdnn | (a) isolated digits + SDNN windows |" in p.stdout and "| sdnn | (b) + global training |" in p.stdout
    reader = lenet.load(out)
    assert isinstance(reader, SDNNReader) and reader.stride == 2
    texts = recognize([x.image for x in make_strings(3, "test", seed=0)], out)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_quick_both_run_trains_both_readers_and_reads_them_together(tmp_path):
    import torch
    from lenet.combined import CombinedReader
    from lenet.sdnn import SDNNReader
    p, out = run(tmp_path, "--quick", "--system", "both")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("global training lowered the loss") == 2
    hos, sdnn = lenet.load(tmp_path / "reader_hos.pt"), lenet.load(tmp_path / "reader_sdnn.pt")
    assert isinstance(hos, StringReader) and isinstance(sdnn, SDNNReader)
    both = lenet.load(out)
    assert isinstance(both, CombinedReader) and both.weights == [1.0, 1.0]
    for member, saved in zip(both.members, (hos, sdnn)):   # the members are the two runs' readers
        for x, y in zip(member.state_dict().values(), saved.state_dict().values()):
            assert torch.equal(x, y)
    m = json.loads((tmp_path / "reader_metrics.json").read_text())
    assert m["system"] == "combined" and m["seed"] == 0 and len(m["grid"]) == 33
    # the printed figure is what the saved combination reads on the run's test strings
    test = make_strings(m["after"]["strings"], "test", (3, 6), seed=3, digits=lenet.load_digits("test", raw=True))
    texts = recognize([x.image for x in test], out)
    assert m["after"]["string_accuracy"] == string_metrics(texts, [x.label for x in test])["string_accuracy"]
    assert "| **combined** |" in p.stdout


@pytest.mark.slow
def test_trained_checkpoint_reads_back_rendered_strings(tmp_path):
    """A mid-sized run (a few minutes): the trained reader reads most rendered test strings exactly."""
    p, out = run(tmp_path, "--iso-epochs", "8", "--train-strings", "1200", "--global-epochs", "1",
                 "--test-strings", "100", timeout=3000)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    strings = make_strings(50, "test", seed=123)
    texts = recognize([s.image for s in strings], str(out))
    right = sum(t == s.label for t, s in zip(texts, strings))
    assert right >= 30, (right, list(zip(texts, [s.label for s in strings]))[:10])
    # a single image, given as float numpy, reads as a str
    one = recognize(strings[0].image.numpy().astype("float32") / 255, out)
    assert isinstance(one, str)
