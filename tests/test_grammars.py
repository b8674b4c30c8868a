"""Tests of lenet.grammars: length grammars and lexicons."""
import itertools

import pytest
import torch

import gtn
from lenet.grammars import as_lexicon, length_grammar, lexicon_fsa
from lenet.labels import labels_to_string
from strategies import enumerate_paths


def test_length_grammar():
    gr = length_grammar(2, 3, num_symbols=3)
    labs = sorted(tuple(gr.labels[arcs].tolist())[:-1] for arcs, _ in enumerate_paths(gr))
    assert labs == sorted(p for n in (2, 3) for p in itertools.product([1, 2, 3], repeat=n))
    assert all(score == 0.0 for _, score in enumerate_paths(gr))
    with pytest.raises(ValueError):
        length_grammar(3, 2)


def test_lexicon_fsa_accepts_exactly_its_words_and_is_deterministic():
    g = torch.Generator().manual_seed(1)
    for trial in range(60):
        n = int(torch.randint(1, 12, (), generator=g))
        words = ["".join(str(int(d)) for d in torch.randint(0, 4, (int(torch.randint(1, 5, (), generator=g)),),
                                                            generator=g)) for _ in range(n)]
        f = lexicon_fsa(words)
        spelled = set()
        for arcs, score in enumerate_paths(f):
            lab = f.labels[arcs].tolist()
            assert lab[-1] == -1 and score == 0.0
            spelled.add(labels_to_string(lab[:-1]))
        assert spelled == set(words)
        assert len(enumerate_paths(f)) == len(set(words))     # one path per word
        # deterministic: no state has two arcs with the same label
        key = f.arcs[:, 0] * 20 + f.labels
        assert key.unique().numel() == f.num_arcs


@pytest.mark.parametrize("bad, err", [
    ("123", TypeError), ([], ValueError), (["12", "1a"], ValueError), ([""], ValueError), ([12], ValueError),
    (["٣"], ValueError),                                          # a non-ASCII digit
])
def test_lexicon_errors(bad, err):
    with pytest.raises(err):
        lexicon_fsa(bad)


def test_as_lexicon_checks_graphs():
    f = lexicon_fsa(["12", "3"])
    assert as_lexicon(f) is f and as_lexicon(f, torch.float64).dtype == torch.float64
    assert as_lexicon(["12", "3"]).equal(f)
    with pytest.raises(ValueError, match="epsilon"):
        as_lexicon(gtn.Fsa([(0, 1, 0), (1, 2, 2), (2, 3, -1)], num_states=4))
    with pytest.raises(ValueError, match="acceptor"):
        as_lexicon(gtn.Fsa.from_str("0 1 1 2 0\n1 2 -1 -1 0\n2\n", acceptor=False))
    with pytest.raises(TypeError, match="FsaVec"):
        as_lexicon(gtn.FsaVec([f, f]))
