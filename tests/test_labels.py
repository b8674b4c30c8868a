"""Tests of lenet.labels: digit strings <-> arc labels."""
import pytest

from lenet.labels import SYMBOLS, digits_to_labels, labels_to_string


def test_symbols():
    assert digits_to_labels("0913") == [1, 10, 2, 4]
    assert labels_to_string([1, 10, 2, 4, -1]) == "0913"
    assert SYMBOLS == "0123456789"
    for bad in ["", "12a", 12, None]:
        with pytest.raises(ValueError):
            digits_to_labels(bad)
