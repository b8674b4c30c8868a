"""Tests of lenet.progress: progress bars are live on a terminal and a few plain lines in a log."""
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lenet.progress import LOG_INTERVAL, LogLines, progress_bar

ROOT = Path(__file__).resolve().parents[1]


def records(text):
    """What a log viewer shows as lines: records ended by a newline or a carriage return (tqdm's redraw)."""
    return [r for r in re.split(r"[\r\n]", text) if r.strip()]


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_tqdm_and_a_log_gets_lines():
    from tqdm.std import tqdm
    with progress_bar(10, "x", file=FakeTerminal()) as bar:
        assert isinstance(bar, tqdm)
    log = io.StringIO()
    with progress_bar(10, "x", file=log) as bar:
        assert isinstance(bar, LogLines) and bar.interval == LOG_INTERVAL
    quiet = io.StringIO()
    with progress_bar(10, "x", enabled=False, file=quiet) as bar:
        for _ in range(10):
            bar.update(1)
    assert quiet.getvalue() == ""


def test_log_lines_are_sparse_and_say_where_the_loop_is():
    log = io.StringIO()
    with progress_bar(500, "training", "step", file=log, interval=3600) as bar:
        for k in range(500):
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (k + 1):.3f}", refresh=False)
            if k == 250:
                bar.set_description("pass 2/2", refresh=False)
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and log.getvalue().endswith("\n") and "\r" not in log.getvalue()
    assert re.match(r"pass 2/2: 500/500 step \(100 %\), \d+ s, [\d.]+ step/s, loss=0\.002$", lines[0]), lines[0]
    # interval 0: a line per step (what the count above would be without the interval)
    log = io.StringIO()
    with progress_bar(None, "n", file=log, interval=0) as bar:
        for _ in range(7):
            bar.update(1)
    assert len(log.getvalue().splitlines()) == 8 and log.getvalue().splitlines()[-1].startswith("n: 7 it, ")


def test_write_prints_messages_on_stdout(capsys):
    with progress_bar(3, file=io.StringIO()) as bar:
        bar.write("pass 1/1: done")
    assert capsys.readouterr().out == "pass 1/1: done\n"


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("LENET_PROGRESS_INTERVAL", "5")
    assert progress_bar(3, file=io.StringIO()).interval == 5.0
    monkeypatch.setenv("LENET_PROGRESS_INTERVAL", "often")
    with pytest.raises(ValueError, match="LENET_PROGRESS_INTERVAL"):
        progress_bar(3, file=io.StringIO())


def run_training(tmp_path, interval=None):
    """A short isolated training (2 passes of 20 steps) with standard error piped: not a terminal."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LENET_PROGRESS_INTERVAL", None)
    if interval is not None:
        env["LENET_PROGRESS_INTERVAL"] = str(interval)
    p = subprocess.run([sys.executable, "-m", "lenet.train", "--epochs", "2", "--limit", "640", "--no-plots",
                        "--out", str(tmp_path / "m.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def test_a_redirected_training_run_writes_one_progress_line(tmp_path):
    p = run_training(tmp_path)
    lines = records(p.stderr)
    assert len(lines) == 1 and re.match(r"pass 2/2: 40/40 step \(100 %\)", lines[0]), p.stderr
    assert len(records(p.stdout)) == 4  # the header, a line per pass, the checkpoint written
    # the same run with a line per step, to show what is counted: 40 steps + the closing line
    assert len(records(run_training(tmp_path, interval=0).stderr)) == 41


def test_global_training_and_evaluation_stay_quiet_in_a_log(capsys):
    """train_globally and evaluate with progress=True, standard error captured (not a terminal)."""
    from lenet.global_train import GlobalRecipe, evaluate, train_globally
    from lenet.recognizer import StringReader
    from lenet.strings import make_strings
    torch.manual_seed(0)
    reader = StringReader(lengths=(3, 6))
    strings = make_strings(12, "train", seed=4)
    train_globally(reader, strings, GlobalRecipe(global_epochs=2, batch_size=4, workers=0, fresh=False), 0, True,
                   strings[:4])
    evaluate(reader, strings[:6], True, "evaluate")
    out = capsys.readouterr()
    err = records(out.err)
    assert len(err) == 2 and err[0].startswith("global training: 6/6 step (100 %)") and \
        err[1].startswith("evaluate: 6/6 str (100 %)"), out.err
    assert sum(line.startswith("pass ") for line in records(out.out)) == 2


def test_a_resumed_bar_starts_at_its_initial_steps_and_rates_only_the_new_ones(monkeypatch):
    import lenet.progress as P
    clock = iter([100.0, 110.0, 110.0])  # start, then close after 10 s
    monkeypatch.setattr(P.time, "monotonic", lambda: next(clock))
    log = io.StringIO()
    with progress_bar(1000, "training", "step", file=log, interval=3600, initial=900) as bar:
        bar.update(50)
    assert log.getvalue() == "training: 950/1000 step (95 %), 10 s, 5.00 step/s\n"
    # a resumed phase with nothing left to do reports no rate (it made no step)
    clock = iter([0.0, 1.0])
    log = io.StringIO()
    with progress_bar(1000, "training", "step", file=log, initial=1000):
        pass
    assert log.getvalue() == "training: 1000/1000 step (100 %), 1 s\n"
    from tqdm.std import tqdm
    with progress_bar(10, "x", file=FakeTerminal(), initial=4) as bar:
        assert isinstance(bar, tqdm) and bar.n == 4
