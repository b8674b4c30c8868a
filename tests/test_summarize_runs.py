"""Tests of examples/summarize_runs.py: mean ± spread over seeds of the example's metrics files."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "summarize_runs.py"


def _run(tmp_path, seed, acc, grid_acc):
    cell = lambda ov, a: dict(height=32, touch=0.3, max_overlap=ov, string_accuracy=a, digit_error=0.01,  # noqa: E731
                              ceiling=0.93, strings=200, seconds=1.0)
    m = {"seed": seed, "system": "hos", "machine": {"torch": "2.13.0", "threads": 1, "cpu": "X", "cpu_capability": "AVX2"},
         "before": {"string_accuracy": 0.7, "digit_error": 0.1},
         "after": {"string_accuracy": acc, "digit_error": 0.03,
                   "budget": {"isolated_error": 0.015, "ceiling": 0.93}},
         "timings": {"total": 600.0 + seed}, "grid": [cell(2, grid_acc), cell(4, 0.5)]}
    p = tmp_path / f"r{seed}_metrics.json"
    p.write_text(json.dumps(m))
    return p


def test_mean_and_spread(tmp_path):
    files = [_run(tmp_path, 0, 0.88, 0.92), _run(tmp_path, 1, 0.90, 0.86), _run(tmp_path, 2, 0.92, 0.86)]
    out = subprocess.run([sys.executable, str(SCRIPT), *map(str, files)], capture_output=True, text=True, check=True).stdout
    assert "3 runs (hos), seeds [0, 1, 2]" in out
    assert "(b) after global training: string accuracy 90.0 % ± 2.0 (88.0–92.0)" in out
    assert "| 32 | 30 % | 2 | 88.0 ± 3.0 % |" in out
    assert "cells with overlap ≤ 3 more than 3 points below their ceiling or under 88 % (means): 1 of 1" in out   # 88 % is 5 points under 93 %


def test_refuses_mixed_systems_and_bad_files(tmp_path):
    a = _run(tmp_path, 0, 0.9, 0.9)
    b = tmp_path / "sdnn_metrics.json"
    b.write_text(json.dumps({**json.loads(a.read_text()), "system": "sdnn"}))
    r = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)
    assert r.returncode != 0 and "mix systems" in r.stderr
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing.json")], capture_output=True, text=True)
    assert r.returncode != 0 and "cannot read" in r.stderr


def test_grids_alone(tmp_path):
    """The rows examples/robustness_grid.py --json writes are summarised as grids (mean ± spread per cell), and
    may not be mixed with a training run's metrics."""
    files = []
    for seed, acc in ((0, 0.92), (1, 0.86), (2, 0.86)):
        grid = json.loads(_run(tmp_path, seed, 0.9, acc).read_text())["grid"]
        p = tmp_path / f"g{seed}.json"
        p.write_text(json.dumps(grid))
        files.append(p)
    out = subprocess.run([sys.executable, str(SCRIPT), *map(str, files)], capture_output=True, text=True,
                         check=True).stdout
    assert "3 runs (robustness grid)" in out and "| 32 | 30 % | 2 | 88.0 ± 3.0 % |" in out
    assert "(means): 1 of 1" in out and "after global training" not in out
    r = subprocess.run([sys.executable, str(SCRIPT), str(files[0]), str(_run(tmp_path, 5, 0.9, 0.9))],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "mix systems" in r.stderr
