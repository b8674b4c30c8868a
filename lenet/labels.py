"""Digit strings ↔ arc labels: digit ``d`` is the symbol ``d + 1`` on every graph of the readers (label 0 is
epsilon in ``gtn.compose``, ``-1`` the final arc); `SYMBOLS` maps back."""
from __future__ import annotations

from typing import List

import torch

__all__ = ["SYMBOLS", "digits_to_labels", "labels_to_string"]

#: ``SYMBOLS[label - 1]`` is the character of arc label ``label`` (label 0 is epsilon, -1 the final arc).
SYMBOLS = "0123456789"
_DIGITS = set(SYMBOLS)


def digits_to_labels(text: str) -> List[int]:
    """``"307"`` → ``[4, 1, 8]`` (digit d is symbol d + 1)."""
    if not isinstance(text, str) or not text or any(c not in SYMBOLS for c in text):
        raise ValueError(f"a label must be a non-empty string of digits, got {text!r}")
    return [SYMBOLS.index(c) + 1 for c in text]


def labels_to_string(labels) -> str:
    """Arc labels → text (epsilon 0 and the final -1 are skipped)."""
    return "".join(SYMBOLS[int(l) - 1] for l in torch.as_tensor(labels).tolist() if l > 0)
