"""How well a reader reads strings drawn in other ways than its training strings: the robustness grid.

`robustness(reader, digits)` renders strings of the given digits (the test split by default) at every cell of
`lenet.strings.GRID` — image heights 24, 32 and 40 (the digits scale with the height), no touching pairs, or
30 % / 60 % of neighbouring pairs touching with ink boxes overlapping by up to 0–4 columns — reads them, and
reports per cell the string accuracy, the digit error and the **ceiling**: the share of those strings whose
digits the reader's own network reads right when it sees each of them alone (the string accuracy of a perfect
segmenter that reads every digit as it is read in isolation; `lenet.recognizer.error_budget`). The gap
between the two is what segmentation and context cost in that cell.

    rows = robustness(reader)                # list of dicts, one per cell
    print(robustness_table(rows))

Each cell's strings come from their own seed (``seed + cell index``), so two readers evaluated with the same
arguments read the very same images.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .strings import GRID, make_strings

__all__ = ["robustness", "robustness_table", "isolated_misread"]


@torch.no_grad()
def isolated_misread(reader, digits) -> torch.Tensor:
    """``bool [N]``: which of ``digits`` (``(uint8 [N, 28, 28], labels [N])``) the reader's network misreads
    when it sees each alone (a 32×32 isolated digit, as in isolated training). For a network with an 11th
    (blank) output, the SDNN's, only the ten digit outputs compete."""
    from .data import prepare
    net = getattr(reader, "model", reader)
    if not isinstance(net, torch.nn.Module) or not hasattr(net, "num_classes"):
        raise TypeError(f"need a reader or a LeNet-5, got {type(reader).__name__}")
    images, labels = digits
    was = net.training
    net.eval()
    try:
        dtype = next(net.parameters()).dtype
        x = prepare(images, dtype)
        pen = torch.cat([net(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    finally:
        net.train(was)
    return pen[:, :10].argmin(-1) != torch.as_tensor(labels)


def robustness(reader, digits=None, grid: Sequence[dict] = GRID, strings_per_cell: int = 200, seed: int = 20_000,
               lengths: Tuple[int, int] = (3, 6), batch_size: int = 50, progress: bool = False) -> List[Dict]:
    """Read ``strings_per_cell`` strings of ``lengths`` digits at every cell of ``grid`` (dicts of
    `lenet.strings.render_string` keywords). ``digits``: ``(uint8 [N, 28, 28], labels [N])``, default the test
    split. Returns one dict per cell: its settings, ``string_accuracy``, ``digit_error``, ``ceiling`` (see the
    module docstring), ``strings`` and ``seconds`` (decoding time)."""
    from .data import load_digits
    from .metrics import string_metrics
    from .progress import progress_bar

    if strings_per_cell < 1:
        raise ValueError(f"strings_per_cell must be at least 1, got {strings_per_cell}")
    if digits is None:
        digits = load_digits("test", raw=True)
    bad = isolated_misread(reader, digits)
    was = reader.training
    reader.eval()
    rows = []
    try:
        with progress_bar(len(grid) * strings_per_cell, "robustness grid", "str", enabled=progress) as bar:
            for i, cell in enumerate(grid):
                strings = make_strings(strings_per_cell, "test", lengths, seed=seed + i, digits=digits, **cell)
                t = time.perf_counter()
                preds = []
                for k in range(0, len(strings), batch_size):
                    preds.extend(reader.decode([s.image for s in strings[k:k + batch_size]]))
                    bar.update(min(batch_size, len(strings) - k))
                seconds = time.perf_counter() - t
                m = string_metrics(preds, [s.label for s in strings])
                ceiling = sum(not bool(bad[s.sources].any()) for s in strings) / len(strings)
                rows.append({**cell, "string_accuracy": m["string_accuracy"], "digit_error": m["digit_error"],
                             "ceiling": ceiling, "strings": len(strings), "seconds": seconds})
    finally:
        reader.train(was)
    return rows


def robustness_table(rows: Sequence[dict], goal_gap: float = 0.03, goal_floor: float = 0.88,
                     goal_overlap: int = 3) -> str:
    """The grid as a text table (one line per cell: height, share touching, overlap, string accuracy,
    digit error, ceiling, gap to the ceiling), then a summary line: the cells with overlap ≤ ``goal_overlap``
    whose accuracy is more than ``goal_gap`` below their ceiling or below ``goal_floor``."""
    lines = ["| height | touching | overlap ≤ | string accuracy | digit error | ceiling | gap |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    miss = []
    for r in rows:
        gap = r["ceiling"] - r["string_accuracy"]
        lines.append(f"| {r.get('height', 32)} | {100 * r.get('touch', 0.3):.0f} % | {r.get('max_overlap', 2)} | "
                     f"{100 * r['string_accuracy']:.1f} % | {100 * r['digit_error']:.2f} % | "
                     f"{100 * r['ceiling']:.1f} % | {100 * gap:+.1f} |")
        if r.get("max_overlap", 2) <= goal_overlap and (gap > goal_gap or r["string_accuracy"] < goal_floor):
            miss.append(r)
    acc = [r["string_accuracy"] for r in rows]
    lines.append(f"mean string accuracy over the {len(rows)} cells {100 * sum(acc) / max(len(acc), 1):.1f} % "
                 f"(worst {100 * min(acc):.1f} %); cells with overlap ≤ {goal_overlap} more than "
                 f"{100 * goal_gap:.0f} points below their ceiling or under {100 * goal_floor:.0f} %: {len(miss)} of "
                 f"{sum(r.get('max_overlap', 2) <= goal_overlap for r in rows)}")
    return "\n".join(lines)
