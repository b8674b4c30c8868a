"""Tests of lenet.metrics: string metrics, error-reject operating points, the error budget."""
import pytest
import torch

import lenet
from lenet.metrics import edit_distance, error_budget, error_reject, string_metrics
from lenet.recognizer import StringReader
from lenet.strings import make_strings


def test_metrics():
    assert edit_distance("1234", "1234") == 0
    assert edit_distance("1234", "124") == 1
    assert edit_distance("", "12") == 2
    assert edit_distance("1234", "2143") == 3                  # delete 1, keep 2, insert 1, keep 4, substitute 3
    m = string_metrics(["123", "45"], ["123", "456"])
    assert m["string_accuracy"] == 0.5 and abs(m["digit_error"] - 1 / 6) < 1e-12


def test_error_budget_counts_strings_with_a_digit_the_network_misreads_alone():
    from lenet.train import train
    torch.manual_seed(0)
    model, _ = train(out=None, epochs=2, limit=1500, seed=0, warmup_steps=10, distort=False, progress=False,
                     plots=False, log=lambda *a: None)  # a weak network: a few per cent of errors
    digits = lenet.load_digits("test", raw=True)
    strings = make_strings(80, "test", seed=9, digits=digits)
    # predicted texts: the truth for even strings, one digit changed for odd ones
    predicted = [s.label if i % 2 == 0 else str((int(s.label[0]) + 1) % 10) + s.label[1:]
                 for i, s in enumerate(strings)]
    b = error_budget(StringReader(model), strings, predicted, digits)
    # the oracle: read every digit of every string on its own, one string at a time
    alone_right = [bool((lenet.classify(digits[0][s.sources], model) == digits[1][s.sources]).all())
                   for s in strings]
    iso_err = float((lenet.classify(digits[0], model) != digits[1]).double().mean())
    assert abs(b["isolated_error"] - iso_err) < 1e-12 and 0.02 < iso_err < 0.5
    assert abs(b["ceiling"] - sum(alone_right) / len(strings)) < 1e-12 and 0 < b["ceiling"] < 1
    wrong = [i % 2 == 1 for i in range(len(strings))]
    assert b["wrong"] == sum(wrong) == b["wrong_with_misread_digit"] + b["wrong_without"]
    assert b["wrong_without"] == sum(w and a for w, a in zip(wrong, alone_right))
    assert b["strings"] == 80
    with pytest.raises(ValueError, match="sources"):
        error_budget(model, [lenet.strings.DigitString(s.image, s.label, s.extents) for s in strings[:2]],
                     predicted[:2], digits)
    with pytest.raises(ValueError, match="predicted"):
        error_budget(model, strings, predicted[:3], digits)
    from lenet.sdnn import SDNNReader, sdnn_network
    with pytest.raises(TypeError, match="error_budget needs"):   # the SDNN's network has a blank output too
        error_budget(SDNNReader(sdnn_network(model)), strings, predicted, digits)
    with pytest.raises(TypeError, match="11 outputs"):
        error_budget(sdnn_network(model), strings, predicted, digits)


def test_error_reject_operating_points():
    """Accepting the most confident readings first: the error among the accepted, and the largest acceptance
    at each target error, against a direct count."""
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        n = int(torch.randint(1, 60, (), generator=g))
        conf = torch.rand(n, generator=g).tolist()
        right = (torch.rand(n, generator=g) < 0.9).tolist()
        r = error_reject(conf, right, errors=(0.0, 0.05, 0.1))
        order = sorted(range(n), key=lambda i: -conf[i])
        for k in range(1, n + 1):
            wrong = sum(not right[i] for i in order[:k])
            assert abs(r["curve"]["error"][k - 1] - wrong / k) < 1e-12
            assert abs(r["curve"]["rejected"][k - 1] - (1 - k / n)) < 1e-12
        for pt in r["points"]:
            best = max([k for k in range(1, n + 1) if sum(not right[i] for i in order[:k]) <= pt["error"] * k + 1e-12],
                       default=0)
            assert pt["accepted"] == best / n and pt["rejected"] == 1 - best / n
            assert pt["read_right"] == sum(right[i] for i in order[:best]) / n
    assert error_reject([0.5, 0.4], [True, False])["points"][1] == {"error": 0.01, "accepted": 0.5, "read_right": 0.5,
                                                                     "rejected": 0.5}
    with pytest.raises(ValueError, match="as many"):
        error_reject([0.5], [True, False])
    with pytest.raises(ValueError, match="finite"):
        error_reject([float("nan")], [True])
