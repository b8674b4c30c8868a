"""Tests of lenet.robustness: the robustness grid of a reader."""
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
    out = subprocess.run([sys.executable, str(script), str(ckpt), "--strings", "1", "--json", str(tmp_path / "g.json")],
                         capture_output=True, text=True, check=True).stdout
    assert out.count("\n| ") == 35       # header, rule and 33 cells
    import json
    assert len(json.loads((tmp_path / "g.json").read_text())) == 33
    from lenet.checkpoint import save_model
    lenet_ckpt = save_model(build("paper"), tmp_path / "l.pt")
    r = subprocess.run([sys.executable, str(script), str(lenet_ckpt)], capture_output=True, text=True)
    assert r.returncode != 0
