"""Progress bars that do not flood a log: a live `tqdm` bar on a terminal, a few plain lines otherwise.

Every long loop of the package (isolated training, SDNN window training, global training, evaluation) draws
its bar with `progress_bar`. On a terminal that is an ordinary ``tqdm.auto`` bar (a widget in a notebook).
When the bar's stream (standard error) is not a terminal (output redirected to a file, a pipe, a CI log), a
redrawn bar would leave one record per redraw in the file (thousands for a training run), so the bar becomes
`LogLines`: one newline-terminated line at most every ``interval`` seconds (default `LOG_INTERVAL`, or the
environment variable ``LENET_PROGRESS_INTERVAL``), and one when it closes.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

__all__ = ["progress_bar", "LogLines", "LOG_INTERVAL"]

#: Seconds between two progress lines when standard error is not a terminal.
LOG_INTERVAL = 60.0


def _interval() -> float:
    v = os.environ.get("LENET_PROGRESS_INTERVAL")
    if v is None:
        return LOG_INTERVAL
    try:
        return max(0.0, float(v))
    except ValueError:
        raise ValueError(f"LENET_PROGRESS_INTERVAL must be a number of seconds, got {v!r}") from None


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(total: Optional[int] = None, desc: Optional[str] = None, unit: str = "it", enabled: bool = True,
                 file=None, interval: Optional[float] = None, initial: int = 0):
    """A progress bar over ``total`` steps, used like ``tqdm`` (``update``, ``set_postfix``,
    ``set_description``, ``write``, ``close``, a context manager).

    ``enabled=False``: a disabled bar (prints nothing; ``write`` still prints). ``file``: the bar's stream
    (default ``sys.stderr``). A terminal, or a notebook, gets a live ``tqdm.auto`` bar; any other stream a
    `LogLines` that writes a line at most every ``interval`` seconds (default: ``LENET_PROGRESS_INTERVAL`` or
    `LOG_INTERVAL`) and one at the end. ``initial``: steps already done (a resumed run): the bar starts there,
    and its rate counts only the steps made since."""
    from tqdm.auto import tqdm
    from tqdm.autonotebook import tqdm as notebook_tqdm
    from tqdm.std import tqdm as plain_tqdm
    stream = sys.stderr if file is None else file
    if not enabled:
        return tqdm(total=total, desc=desc, unit=unit, disable=True, initial=initial)
    if notebook_tqdm is not plain_tqdm or _is_terminal(stream):  # a notebook widget redraws in place too
        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, initial=initial)
    return LogLines(total, desc, unit, stream, _interval() if interval is None else interval, initial)


class LogLines:
    """The part of tqdm's interface the package uses, writing plain lines (``desc: n/total unit (p %),
    elapsed, rate, postfix``) at most every ``interval`` seconds and once on `close`. ``initial``: steps done
    before (not counted in the rate)."""

    def __init__(self, total: Optional[int], desc: Optional[str], unit: str, file, interval: float,
                 initial: int = 0):
        self.total, self.desc, self.unit, self.file, self.interval = total, desc, unit, file, float(interval)
        self.n = self.initial = int(initial)
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self._line(now)

    def set_postfix(self, refresh: bool = True, **kw) -> None:  # shown on the next line (never forces one)
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        self.desc = desc

    @staticmethod
    def write(s: str, file=None, end: str = "\n") -> None:
        """Print a message (to standard output by default, like ``tqdm.write``)."""
        fp = sys.stdout if file is None else file
        fp.write(s + end)
        fp.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        self.last = now
        elapsed = now - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        made = self.n - self.initial
        rate = f", {made / elapsed:.2f} {self.unit}/s" if elapsed > 0 and made > 0 else ""
        text = (f"{self.desc}: " if self.desc else "") + f"{done} {self.unit}{pct}, {elapsed:.0f} s{rate}"
        self.file.write(text + (f", {self.postfix}" if self.postfix else "") + "\n")
        self.file.flush()
