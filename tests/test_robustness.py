"""Tests of lenet.robustness: the robustness grid of a reader, and the same strings in other looks."""
import pytest
import torch

import lenet
from lenet.model import build
from lenet.robustness import isolated_misread, robustness, robustness_table
from lenet.strings import make_strings


class OracleReader(torch.nn.Module):
    """Reads every string right (it looks the image up among the strings it was shown): the grid's accuracy
    is then 1 and its digit error 0, whatever the cell."""

    def __init__(self, strings):
        super().__init__()
        self.model = build("paper")
        self.truth = {s.image.numpy().tobytes(): s.label for s in strings}

    def decode(self, images):
        return [self.truth[im.numpy().tobytes()] for im in images]


def test_grid_rows_accuracy_and_ceiling():
    digits = lenet.load_digits("test", raw=True)
    grid = [dict(max_overlap=0, touch=0.0, height=24), dict(max_overlap=3, touch=0.6, height=40)]
    seen = [s for i, c in enumerate(grid) for s in make_strings(6, "test", (3, 6), seed=7 + i, digits=digits, **c)]
    reader = OracleReader(seen)
    rows = robustness(reader, digits, grid=grid, strings_per_cell=6, seed=7)
    assert [(r["height"], r["max_overlap"]) for r in rows] == [(24, 0), (40, 3)]
    bad = isolated_misread(reader, digits)
    assert 0.5 < float(bad.double().mean()) <= 1.0          # an untrained network misreads most digits
    for r, cell in zip(rows, grid):
        assert r["string_accuracy"] == 1.0 and r["digit_error"] == 0.0 and r["strings"] == 6
        strings = make_strings(6, "test", (3, 6), seed=7 + grid.index(cell), digits=digits, **cell)
        expect = sum(not bool(bad[s.sources].any()) for s in strings) / 6
        assert r["ceiling"] == pytest.approx(expect)
    text = robustness_table(rows)
    assert text.count("\n| ") == 3 and "0 of 2" in text      # read right: no cell below its ceiling
    with pytest.raises(ValueError):
        robustness(reader, digits, grid=grid, strings_per_cell=0)


class BlankFirst(torch.nn.Module):
    """An SDNN-like network (11 outputs) whose blank output always has the lowest penalty, and digit 3 the
    lowest of the ten digits."""
    num_classes = 11

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        pen = torch.ones(x.shape[0], 11) + self.w
        pen[:, 3] = 0.0
        pen[:, 10] = -100.0
        return pen


def test_isolated_misread_uses_only_the_digit_outputs():
    images, labels = lenet.load_digits("test", raw=True)
    bad = isolated_misread(BlankFirst(), (images[:200], labels[:200]))
    assert torch.equal(bad, torch.as_tensor(labels[:200]) != 3)
    with pytest.raises(TypeError):
        isolated_misread(object(), (images[:2], labels[:2]))


def test_table_counts_cells_off_their_ceiling():
    rows = [dict(height=32, touch=0.3, max_overlap=1, string_accuracy=0.95, digit_error=0.01, ceiling=0.96),
            dict(height=32, touch=0.3, max_overlap=2, string_accuracy=0.85, digit_error=0.04, ceiling=0.90),
            dict(height=32, touch=0.6, max_overlap=4, string_accuracy=0.50, digit_error=0.2, ceiling=0.95)]
    text = robustness_table(rows)
    assert "1 of 2" in text               # the overlap-4 cell is outside the goal; the second misses
    assert "| 32 | 30 % | 2 | 85.0 % | 4.00 % | 90.0 % | +5.0 |" in text


def test_grid_script_reads_a_checkpoint(tmp_path):
    """examples/robustness_grid.py on a saved (untrained) reader: one row per grid cell, and a clear refusal of
    a checkpoint that is not a reader."""
    import subprocess
    import sys
    from pathlib import Path
    from lenet.recognizer import StringReader, save_reader
    script = Path(__file__).resolve().parents[1] / "examples" / "robustness_grid.py"
    ckpt = save_reader(StringReader(build("paper")), tmp_path / "r.pt")
    out = subprocess.run([sys.executable, str(script), str(ckpt), "--strings", "1", "--json", str(tmp_path / "g.json"),
                          "--cut-paths", "0.3", "--max-pieces", "10", "--cut-starts", "every", "--cut-rank", "learned",
                          "--cut-cost", "learned", "--split-coverage"],
                         capture_output=True, text=True, check=True).stdout
    assert out.count("\n| ") == 35       # header, rule and 33 cells
    assert "(segmentation: cut_paths 0.3, max_pieces 10, cut_starts every, cut_rank learned, cut_cost learned)" in out
    assert "true segmentation not a path of the graph (tolerance 0.1): " in out and " of 33 strings; read right" in out
    import json
    assert len(json.loads((tmp_path / "g.json").read_text())) == 33
    from lenet.checkpoint import save_model
    lenet_ckpt = save_model(build("paper"), tmp_path / "l.pt")
    r = subprocess.run([sys.executable, str(script), str(lenet_ckpt)], capture_output=True, text=True)
    assert r.returncode != 0
    r = subprocess.run([sys.executable, str(script), str(lenet_ckpt), "--cut-paths", "0.3"], capture_output=True,
                       text=True)
    assert r.returncode != 0
    # cut paths from every column need cut paths: refused in one line on a straight-cut reader
    for option in ("--cut-starts", "every"), ("--cut-rank", "learned"), ("--cut-cost", "learned"):
        r = subprocess.run([sys.executable, str(script), str(ckpt), *option], capture_output=True, text=True)
        assert r.returncode != 0 and "cut_paths > 0" in r.stderr and "Traceback" not in r.stderr


class ScriptedReader(torch.nn.Module):
    """Segments for real, then 'reads' each string as scripted: ``script[i]`` maps the true path of string i
    (its segments) to the path and text the reader returns, so every cause of `error_causes` can be forced."""

    def __init__(self, strings, script):
        super().__init__()
        from lenet.segment import SegmentParams
        self.params = SegmentParams()
        self.strings, self.script, self.calls = strings, script, 0

    def interpret(self, images):
        from lenet.recognizer import prepare_batch
        return None, prepare_batch(images, self.params, crops=False).segmentations

    def _read(self, g, segs, return_paths=False):
        from lenet.crops import standardize, standardize_owner
        from lenet.segment import true_path
        texts, paths = [], []
        for seg in segs:
            s = self.strings[self.calls]
            truth = true_path(seg, standardize(s.image), standardize_owner(s.image, s.owner))
            text, path = self.script[self.calls](s.label, truth)
            texts.append(text)
            paths.append(path)
            self.calls += 1
        return texts, segs, paths


def test_error_causes_sorts_each_wrong_string_under_its_cause():
    from lenet.robustness import CAUSES, error_causes
    digits = lenet.load_digits("test", raw=True)
    strings = make_strings(8, "test", (3, 5), seed=3, digits=digits, touch=0.0, max_overlap=0)
    wrong = lambda t: ("1" if t[0] != "1" else "2") + t[1:]  # noqa: E731
    script = [lambda t, p: (t, p),                          # right: not counted
              lambda t, p: (wrong(t), p),                   # true segments, another digit: context
              lambda t, p: (t[:-1], p[:-1]),                # fewer segments: merge
              lambda t, p: (t + t[-1], p + p[-1:]),         # more segments: split
              lambda t, p: (wrong(t), p[:-1] + [p[-1] + 1]),  # as many, cut elsewhere: shifted
              lambda t, p: (wrong(t), p),                   # a digit misread alone: recognizer (forced below)
              lambda t, p: (wrong(t), p),                   # no true path (owner map reversed): coverage
              lambda t, p: (t, p)]
    strings[6].owner = torch.where(strings[6].owner >= 0, len(strings[6].label) - 1 - strings[6].owner, -1)
    misread = torch.zeros(len(digits[1]), dtype=torch.bool)
    misread[strings[5].sources[0]] = True
    assert not any(bool(misread[s.sources].any()) for k, s in enumerate(strings) if k != 5)
    texts, counts = error_causes(ScriptedReader(strings, script), strings, misread, batch_size=3)
    assert len(texts) == 8 and texts[0] == strings[0].label and texts[7] == strings[7].label
    assert counts == dict(recognizer=1, coverage=1, context=1, merge=1, split=1, shifted=1)
    assert tuple(counts) == CAUSES
    # covered=: every string's coverage, right ones too; string 7, read right, loses its true path the same way
    strings[7].owner = torch.where(strings[7].owner >= 0, len(strings[7].label) - 1 - strings[7].owner, -1)
    covered = []
    texts_b, counts_b = error_causes(ScriptedReader(strings, script), strings, misread, batch_size=3,
                                     covered=covered)
    assert covered == [True] * 6 + [False, False]
    assert texts_b[7] == strings[7].label and counts_b == counts  # the causes do not change
    with pytest.raises(TypeError):
        error_causes(object(), strings, misread)


def test_grid_causes_add_up_to_the_wrong_strings():
    """With a real (untrained) network: per cell, the causes count exactly the strings read wrong, and the
    table prints them."""
    from lenet.recognizer import StringReader
    digits = lenet.load_digits("test", raw=True)
    torch.manual_seed(0)
    reader = StringReader(build("paper"))
    grid = [dict(max_overlap=1, touch=0.3, height=32)]
    rows = robustness(reader, digits, grid=grid, strings_per_cell=8, seed=11)
    r = rows[0]
    wrong = round((1 - r["string_accuracy"]) * r["strings"])
    assert sum(r["causes"].values()) == wrong > 0
    assert "wrong: recognizer / coverage" in robustness_table(rows)
    assert "causes" not in robustness(reader, digits, grid=grid, strings_per_cell=2, seed=11, causes=False)[0]


def test_split_coverage_counts_the_uncovered_strings_and_those_read_right():
    """robustness(split_coverage=True): per cell, the uncovered strings are those lenet.segment.coverage finds
    without a true path (the same graphs, counted by another route), the uncovered strings read wrong are at
    least those the causes put under coverage, and the right ones are at most the uncovered ones."""
    from lenet.recognizer import StringReader
    from lenet.segment import coverage
    from lenet.crops import standardize, standardize_owner
    import dataclasses
    digits = lenet.load_digits("test", raw=True)
    torch.manual_seed(0)
    reader = StringReader(build("paper"))
    grid = [dict(max_overlap=4, touch=0.6, height=24), dict(max_overlap=0, touch=0.0, height=32)]
    rows = robustness(reader, digits, grid=grid, strings_per_cell=12, seed=11, split_coverage=True)
    for i, (cell, r) in enumerate(zip(grid, rows)):
        strings = make_strings(12, "test", (3, 6), seed=11 + i, digits=digits, **cell)
        # the reader segments the standardized image: count coverage on that one
        std = [dataclasses.replace(s, image=standardize(s.image), owner=standardize_owner(s.image, s.owner))
               for s in strings]
        assert r["uncovered"] == 12 - coverage(std, reader.params)["covered"]
        assert 0 <= r["uncovered_right"] <= r["uncovered"]
        assert r["uncovered"] - r["uncovered_right"] >= r["causes"]["coverage"]
    assert rows[0]["uncovered"] > 0 and rows[1]["uncovered"] == 0
    with pytest.raises(ValueError, match="split_coverage"):
        robustness(reader, digits, grid=grid, strings_per_cell=1, causes=False, split_coverage=True)

    class Oracle(StringReader):  # reads every string right, whatever its graph holds
        def _read(self, g, segs, return_paths=False):
            return [self.labels.pop(0) for _ in segs], segs, [[] for _ in segs]

    oracle = Oracle(build("paper"))
    oracle.labels = [s.label for i, cell in enumerate(grid)
                     for s in make_strings(12, "test", (3, 6), seed=11 + i, digits=digits, **cell)]
    rows_o = robustness(oracle, digits, grid=grid, strings_per_cell=12, seed=11, split_coverage=True)
    assert [r["string_accuracy"] for r in rows_o] == [1.0, 1.0] and not oracle.labels
    assert [(r["uncovered"], r["uncovered_right"]) for r in rows_o] == [(r["uncovered"],) * 2 for r in rows]


def test_every_look_is_an_image_of_the_same_string_and_repeats_with_its_seed():
    import numpy as np
    from lenet.robustness import LOOKS
    from lenet.segment import INK_THRESHOLD
    x = make_strings(1, "test", seed=4)[0].image.float() / 255
    assert list(LOOKS)[0] == "as drawn" and len(LOOKS) == 12
    for name, look in LOOKS.items():
        y = look(x, np.random.default_rng([1, 2]))
        assert y.dtype == torch.float32 and y.dim() == 2 and float(y.min()) >= 0 and float(y.max()) <= 1, name
        assert bool((y > INK_THRESHOLD).any()), name
        assert torch.equal(y, look(x, np.random.default_rng([1, 2]))), name          # its seed repeats it
        assert not torch.equal(x, y) or name == "as drawn", name
    assert LOOKS["twice the size"](x, None).shape == (2 * x.shape[0], 2 * x.shape[1])
    noisy = LOOKS["sensor noise (sigma 0.05)"]
    assert not torch.equal(noisy(x, np.random.default_rng(0)), noisy(x, np.random.default_rng(1)))


def test_other_looks_reads_each_look_as_is_and_cleaned():
    """Each row's two figures are `string_metrics` of `lenet.recognize` on that look's images, without and with
    cleaning, the looks' draws made from the seed and each string's index."""
    import numpy as np
    from lenet.metrics import string_metrics
    from lenet.recognizer import StringReader
    from lenet.robustness import LOOKS, looks_table, other_looks
    torch.manual_seed(0)
    reader = StringReader(build("paper"), lengths=(1, 8))
    strings = make_strings(4, "test", seed=5)
    looks = {k: LOOKS[k] for k in ("as drawn", "grey background (+0.08)", "salt noise (0.3 % of pixels)")}
    rows = other_looks(reader, strings, looks=looks, seed=7)
    assert [r["look"] for r in rows] == list(looks)
    truth = [s.label for s in strings]
    for j, (name, look) in enumerate(looks.items()):
        images = [look(s.image.float() / 255, np.random.default_rng([7, j, i])) for i, s in enumerate(strings)]
        with torch.no_grad():
            assert rows[j]["as_is"] == string_metrics(reader.decode(images), truth)
        assert rows[j]["cleaned"] == string_metrics(lenet.recognize(images, reader), truth)
        assert rows[j]["strings"] == 4
    table = looks_table(rows)
    assert table.count("\n| ") == 4 and "mean string accuracy over the 3 looks: as is " in table
    with pytest.raises(ValueError, match="at least one string"):
        other_looks(reader, [])


def test_looks_script_reads_a_checkpoint(tmp_path):
    """examples/other_looks.py on a saved (untrained) reader: a row per look, the JSON and the picture; a LeNet-5
    checkpoint and no strings are refused."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    from lenet.checkpoint import save_model
    from lenet.recognizer import StringReader, save_reader
    script = Path(__file__).resolve().parents[1] / "examples" / "other_looks.py"
    ckpt = save_reader(StringReader(build("paper")), tmp_path / "r.pt")
    out = subprocess.run([sys.executable, str(script), str(ckpt), str(ckpt), "--strings", "2", "--json",
                          str(tmp_path / "l.json"), "--picture", str(tmp_path / "l.png"), "--max-width", "1.6"],
                         capture_output=True, text=True, check=True).stdout
    assert out.count("r.pt (segments up to 1.6 × the ink height wide): 2 strings of 3-6 test digits (seed 3) in 12 "
                     "looks") == 2
    assert out.count("\n| ") == 2 * 14 + 14 and "mean ± half the spread over the 2 readers" in out
    assert " ± 0.0 |" in out                             # the same reader twice: no spread
    rows = json.loads((tmp_path / "l.json").read_text())
    assert len(rows) == 2 and [r["look"] for r in rows[1]][:2] == ["as drawn", "grey background (+0.08)"]
    assert (tmp_path / "l.png").stat().st_size > 10_000
    lenet_ckpt = save_model(build("paper"), tmp_path / "m.pt")
    from lenet.sdnn import SDNNReader, save_sdnn
    sdnn_ckpt = save_sdnn(SDNNReader(), tmp_path / "s.pt")
    for args in ([str(lenet_ckpt)], [str(ckpt), "--strings", "0"], [str(sdnn_ckpt), "--max-width", "1.6"]):
        r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
        assert r.returncode != 0 and "Traceback" not in r.stderr
