"""How well a reader reads: `string_metrics` (string accuracy, digit error by edit distance), `error_reject`
(what rejecting the least confident readings buys) and `error_budget` (how much of the string error the
recognizer alone explains)."""
from __future__ import annotations

from typing import Sequence

import torch

from .model import _LeNetBase as LeNetBase

__all__ = ["edit_distance", "string_metrics", "error_reject", "error_budget"]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def string_metrics(predicted: Sequence[str], truth: Sequence[str]) -> dict:
    """``string_accuracy`` (exact matches) and ``digit_error`` (total edit distance / total true digits)."""
    n = len(truth)
    correct = sum(p == t for p, t in zip(predicted, truth))
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth))
    return {"string_accuracy": correct / max(n, 1), "digit_error": errors / max(sum(map(len, truth)), 1),
            "strings": n}


def error_reject(confidence, correct, errors: Sequence[float] = (0.005, 0.01, 0.02)) -> dict:
    """What rejecting the least confident readings buys, the paper's way of reporting a reader ("82 % read
    correctly at 1 % error, 17 % rejected"). ``confidence``: one value per reading (higher = surer, e.g.
    ``decode(..., return_confidence=True)``); ``correct``: whether each reading is right. Accepting the ``k``
    most confident readings (ties: the order given), returns ``curve`` (``rejected`` and ``error`` among the
    accepted, for every ``k``), and for each target in ``errors`` the largest acceptance whose error is at
    most the target: ``points`` = ``[{"error", "accepted", "read_right", "rejected"}]`` (fractions of all
    readings). With no rejection the error is ``1 − accuracy``."""
    conf = torch.as_tensor(confidence, dtype=torch.float64).flatten()
    ok = torch.as_tensor(correct, dtype=torch.bool).flatten()
    if conf.numel() != ok.numel() or conf.numel() == 0:
        raise ValueError(f"need as many confidences as readings (got {conf.numel()} and {ok.numel()}), at least one")
    if not bool(torch.isfinite(conf).all()):
        raise ValueError("confidences must be finite")
    n = conf.numel()
    order = torch.sort(-conf, stable=True).indices   # most confident first
    wrong = torch.cumsum((~ok[order]).to(torch.float64), 0)
    k = torch.arange(1, n + 1, dtype=torch.float64)
    err = wrong / k
    points = []
    for e in errors:
        fine = torch.nonzero(err <= e + 1e-12).flatten()
        kk = int(fine.max()) + 1 if fine.numel() else 0
        right = kk - int(wrong[kk - 1]) if kk else 0
        points.append({"error": float(e), "accepted": kk / n, "read_right": right / n, "rejected": 1 - kk / n})
    return {"curve": {"rejected": (1 - k / n).tolist(), "error": err.tolist()}, "points": points}


def error_budget(model, strings, predicted: Sequence[str], digits) -> dict:
    """How much of a reader's string error its recognizer explains on its own.

    ``model``: the reader's 10-class LeNet-5 (or a `StringReader`, whose network is used, or a
    `lenet.combined.CombinedReader`, whose members' networks read each digit together; anything else, e.g.
    an SDNN reader, whose network also has a blank output, raises ``TypeError``); ``strings``: the
    `lenet.strings.DigitString` s that were read (from `make_strings`, so they carry ``sources``, and not
    distorted); ``predicted``: the texts read for them; ``digits``: ``(uint8 images [N, 28, 28], labels [N])``,
    the set the strings' digits were drawn from. The network reads every digit of that set on its own (a 32×32
    isolated digit, as in isolated training); a string that contains one it misreads would be misread by a
    reader with a perfect segmenter that reads each digit as it does alone. Returns ``isolated_error`` (over the
    digit set), ``ceiling`` (the share of strings with no such digit: that perfect segmenter's string
    accuracy, context aside), and, of the ``wrong`` strings, how many contain such a digit
    (``wrong_with_misread_digit``) and how many do not (``wrong_without``: errors of segmentation, or of reading
    a digit in its string that the network reads right alone)."""
    from .combined import CombinedReader, PenaltySum
    from .recognizer import StringReader
    net = model.model if isinstance(model, (StringReader, CombinedReader)) else model
    if not isinstance(net, (LeNetBase, PenaltySum)) or net.num_classes != 10:
        raise TypeError(f"error_budget needs a StringReader or a 10-class LeNet-5 that reads isolated digits, got "
                        f"{type(model).__name__}" + (f" with {net.num_classes} outputs" if isinstance(net, LeNetBase)
                                                     else ""))
    images, labels = digits
    if len(strings) != len(predicted):
        raise ValueError(f"{len(strings)} strings but {len(predicted)} predicted texts")
    if any(s.sources is None for s in strings):
        raise ValueError("error_budget needs strings from lenet.strings.make_strings (they carry `sources`)")
    from .robustness import isolated_misread
    misread = isolated_misread(net, (images, labels))
    rows = torch.cat([s.sources for s in strings]) if strings else torch.zeros(0, dtype=torch.long)
    owner = torch.repeat_interleave(torch.tensor([len(s.sources) for s in strings], dtype=torch.long))
    has_bad = torch.zeros(len(strings), dtype=torch.long).index_add_(0, owner, misread[rows].long()) > 0
    wrong = torch.tensor([p != s.label for p, s in zip(predicted, strings)], dtype=torch.bool)
    return {"isolated_error": misread.double().mean().item(), "ceiling": 1 - has_bad.double().mean().item(),
            "wrong": int(wrong.sum()), "wrong_with_misread_digit": int((wrong & has_bad).sum()),
            "wrong_without": int((wrong & ~has_bad).sum()), "strings": len(strings)}
