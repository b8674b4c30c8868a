"""examples/hard_digits.py: per-network and committee errors, the digits every network misreads."""
import importlib.util
import json
from pathlib import Path

import torch

import lenet
from lenet.train import train

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "hard_digits.py"
spec = importlib.util.spec_from_file_location("hard_digits", SCRIPT)
hard_digits = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hard_digits)


def test_hard_digits_against_classify(tmp_path):
    paths = []
    for seed in (0, 1, 2):  # three weak networks (two short passes each) so that they disagree
        p = tmp_path / f"n{seed}.pt"
        train(out=p, epochs=2, seed=seed, limit=2000, progress=False, plots=False, log=lambda *a: None)
        paths.append(str(p))
    images, labels = lenet.load_digits("test")
    preds = [lenet.classify(images, p) for p in paths]
    r = hard_digits.analyse(paths)
    assert r["errors"] == [float((q != labels).double().mean()) for q in preds]
    wrong = [{i for i in range(len(labels)) if q[i] != labels[i]} for q in preds]
    assert r["all_wrong"] == sorted(set.intersection(*wrong)) and r["any_wrong"] == sorted(set.union(*wrong))
    assert 0 < len(r["all_wrong"]) < len(r["any_wrong"])  # weak networks: some shared, some not
    assert r["readings"] == [[int(q[i]) for q in preds] for i in r["all_wrong"]]
    # the committee, one digit at a time: the class with the highest summed softmax(-penalties)
    models = [lenet.load(p).eval() for p in paths]
    with torch.no_grad():
        sums = sum(torch.softmax(-m(images).double(), -1) for m in models)
    committee = sum(int(sums[i].argmax()) != int(labels[i]) for i in range(len(labels))) / len(labels)
    assert abs(r["committee_error"] - committee) < 1e-12
    # the command: a picture and the figures as JSON
    assert hard_digits.main([*paths, "--out", str(tmp_path / "h.png"), "--json", str(tmp_path / "h.json")]) == 0
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert json.loads((tmp_path / "h.json").read_text()) == r
