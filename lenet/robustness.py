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

For a segmentation reader (`lenet.recognizer.StringReader`) each cell also says **why** its wrong strings are
wrong (`CAUSES`, counted by `error_causes`, each wrong string under the first that applies):

* ``recognizer``: a digit of the string is one the network misreads alone (the ceiling's share);
* ``coverage``: the true segmentation is not a path of the segmentation graph (`lenet.segment.true_path`, at
  ``tolerance``), so no scoring could read the string;
* ``context``: the best path has the true segments, yet reads a digit otherwise than the network reads it
  alone (the crop cut out of the string differs from the isolated digit);
* ``merge`` / ``split`` / ``shifted``: the best path has fewer segments than digits, more, or as many but
  cut elsewhere, though the true segmentation was a path of the graph: the scores preferred a wrong
  segmentation.

**Other looks of the same strings.** `other_looks(reader, strings)` reads the same strings after each of
`LOOKS` — what scanners, cameras and other renderers do to an image (a grey or uneven background, faint ink,
salt or sensor noise, blur, another size, a stretch, a slight rotation) — both as they are and through
`lenet.recognize`'s cleaning (`lenet.crops.clean_image`); `looks_table` prints it.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .strings import GRID, make_strings

__all__ = ["robustness", "robustness_table", "isolated_misread", "error_causes", "CAUSES", "LOOKS", "other_looks",
           "looks_table"]

#: The causes of a wrong string, in the order they are tested (see the module docstring).
CAUSES = ("recognizer", "coverage", "context", "merge", "split", "shifted")


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


@torch.no_grad()
def error_causes(reader, strings, misread: torch.Tensor, tolerance: float = 0.1, batch_size: int = 50,
                 covered: Optional[List[bool]] = None) -> Tuple[List[str], Dict[str, int]]:
    """Read ``strings`` (`lenet.strings.DigitString` with owner maps) with a segmentation reader and sort the
    wrong readings by cause. ``misread``: ``bool [N]`` over the digits the strings were drawn from (their
    ``sources``), e.g. `isolated_misread`. Returns the readings and ``{cause: count}`` over `CAUSES` (see the
    module docstring); right readings are not counted. ``covered``: a list to which, for every string (right
    ones too), whether its true segmentation is a path of its graph is appended."""
    from .crops import standardize, standardize_owner
    from .segment import true_path

    if not hasattr(reader, "interpret"):
        raise TypeError(f"error_causes needs a segmentation reader (StringReader), got {type(reader).__name__}")
    counts = dict.fromkeys(CAUSES, 0)
    texts = []
    for k in range(0, len(strings), batch_size):
        chunk = strings[k:k + batch_size]
        g, segs = reader.interpret([s.image for s in chunk])
        read, segs, paths = reader._read(g, segs, return_paths=True)
        texts += read
        for s, text, seg, path in zip(chunk, read, segs, paths):
            if text == s.label and covered is None:
                continue
            if s.owner is None:
                raise ValueError("error_causes needs strings with owner maps (lenet.strings.make_strings)")
            misread_here = bool(misread[s.sources].any())
            truth = None
            if covered is not None or not misread_here:  # the true path, only where it is needed
                truth = true_path(seg, standardize(s.image), standardize_owner(s.image, s.owner), tolerance)
            if covered is not None:
                covered.append(truth is not None)
            if text == s.label:
                continue
            if misread_here:
                cause = "recognizer"
            elif truth is None:
                cause = "coverage"
            elif list(path) == list(truth):
                cause = "context"
            else:
                cause = "merge" if len(path) < len(truth) else "split" if len(path) > len(truth) else "shifted"
            counts[cause] += 1
    return texts, counts


def robustness(reader, digits=None, grid: Sequence[dict] = GRID, strings_per_cell: int = 200, seed: int = 20_000,
               lengths: Tuple[int, int] = (3, 6), batch_size: int = 50, progress: bool = False,
               causes: Optional[bool] = None, tolerance: float = 0.1, split_coverage: bool = False) -> List[Dict]:
    """Read ``strings_per_cell`` strings of ``lengths`` digits at every cell of ``grid`` (dicts of
    `lenet.strings.render_string` keywords). ``digits``: ``(uint8 [N, 28, 28], labels [N])``, default the test
    split. Returns one dict per cell: its settings, ``string_accuracy``, ``digit_error``, ``ceiling`` (see the
    module docstring), ``strings`` and ``seconds`` (decoding time, causes included when counted); with
    ``causes`` (default: for segmentation readers) also ``causes``, the wrong strings by cause
    (`error_causes`, the true segmentation at ``tolerance``). With ``split_coverage`` (segmentation readers;
    it looks for the true path of every string, right ones too) also ``uncovered``, the strings whose true
    segmentation is not a path of their graph, and ``uncovered_right``, how many of those the reader reads
    right all the same (through other segments)."""
    from .data import load_digits
    from .metrics import string_metrics
    from .progress import progress_bar

    if strings_per_cell < 1:
        raise ValueError(f"strings_per_cell must be at least 1, got {strings_per_cell}")
    if digits is None:
        digits = load_digits("test", raw=True)
    bad = isolated_misread(reader, digits)
    if causes is None:
        causes = hasattr(reader, "interpret")
    if split_coverage and not causes:
        raise ValueError("split_coverage needs a segmentation reader and causes on")
    was = reader.training
    reader.eval()
    rows = []
    try:
        with progress_bar(len(grid) * strings_per_cell, "robustness grid", "str", enabled=progress) as bar:
            for i, cell in enumerate(grid):
                strings = make_strings(strings_per_cell, "test", lengths, seed=seed + i, digits=digits, **cell)
                t = time.perf_counter()
                preds, why = [], None
                cov = [] if split_coverage else None
                if causes:
                    preds, why = error_causes(reader, strings, bad, tolerance, batch_size, covered=cov)
                    bar.update(len(strings))
                else:
                    for k in range(0, len(strings), batch_size):
                        preds.extend(reader.decode([s.image for s in strings[k:k + batch_size]]))
                        bar.update(min(batch_size, len(strings) - k))
                seconds = time.perf_counter() - t
                m = string_metrics(preds, [s.label for s in strings])
                ceiling = sum(not bool(bad[s.sources].any()) for s in strings) / len(strings)
                rows.append({**cell, "string_accuracy": m["string_accuracy"], "digit_error": m["digit_error"],
                             "ceiling": ceiling, "strings": len(strings), "seconds": seconds})
                if why is not None:
                    rows[-1]["causes"] = why
                if cov is not None:
                    rows[-1]["uncovered"] = sum(not c for c in cov)
                    rows[-1]["uncovered_right"] = sum(not c and p == s.label for c, p, s in zip(cov, preds, strings))
    finally:
        reader.train(was)
    return rows


def robustness_table(rows: Sequence[dict], goal_gap: float = 0.03, goal_floor: float = 0.88,
                     goal_overlap: int = 3) -> str:
    """The grid as a text table (one line per cell: height, share touching, overlap, string accuracy,
    digit error, ceiling, gap to the ceiling, and the wrong strings by cause when the rows have them), then a
    summary line: the cells with overlap ≤ ``goal_overlap`` whose accuracy is more than ``goal_gap`` below
    their ceiling or below ``goal_floor``; and the causes summed over those cells."""
    with_causes = bool(rows) and all("causes" in r for r in rows)
    head = "| height | touching | overlap ≤ | string accuracy | digit error | ceiling | gap |"
    rule = "| --- | --- | --- | --- | --- | --- | --- |"
    if with_causes:
        head += " wrong: " + " / ".join(CAUSES) + " |"
        rule += " --- |"
    lines = [head, rule]
    miss = []
    for r in rows:
        gap = r["ceiling"] - r["string_accuracy"]
        line = (f"| {r.get('height', 32)} | {100 * r.get('touch', 0.3):.0f} % | {r.get('max_overlap', 2)} | "
                f"{100 * r['string_accuracy']:.1f} % | {100 * r['digit_error']:.2f} % | "
                f"{100 * r['ceiling']:.1f} % | {100 * gap:+.1f} |")
        if with_causes:
            line += " " + " / ".join(_count(r["causes"].get(c, 0)) for c in CAUSES) + " |"
        lines.append(line)
        if r.get("max_overlap", 2) <= goal_overlap and (gap > goal_gap or r["string_accuracy"] < goal_floor):
            miss.append(r)
    acc = [r["string_accuracy"] for r in rows]
    lines.append(f"mean string accuracy over the {len(rows)} cells {100 * sum(acc) / max(len(acc), 1):.1f} % "
                 f"(worst {100 * min(acc):.1f} %); cells with overlap ≤ {goal_overlap} more than "
                 f"{100 * goal_gap:.0f} points below their ceiling or under {100 * goal_floor:.0f} %: {len(miss)} of "
                 f"{sum(r.get('max_overlap', 2) <= goal_overlap for r in rows)}")
    if with_causes and miss:
        total = {c: sum(r["causes"].get(c, 0) for r in miss) for c in CAUSES}
        n = max(sum(total.values()), 1e-9)
        lines.append("wrong strings of those cells by cause: " +
                     ", ".join(f"{c} {_count(v)} ({100 * v / n:.0f} %)" for c, v in total.items()))
    return "\n".join(lines)


def _count(v) -> str:
    """A count, or a mean count over seeds (`examples/summarize_runs.py` averages them)."""
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def _resize(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    down = rows < x.shape[0] or cols < x.shape[1]
    return F.interpolate(x[None, None], size=(rows, cols), mode="bilinear", align_corners=False,
                         antialias=down)[0, 0].clamp(0, 1)


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    from scipy import ndimage
    return torch.from_numpy(ndimage.rotate(x.numpy(), degrees, reshape=True, order=1)).clamp(0, 1)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from scipy import ndimage
    return torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma)).clamp(0, 1)


def _noise(x: torch.Tensor, rng: np.random.Generator, sigma: float) -> torch.Tensor:
    return (x + torch.from_numpy((sigma * rng.standard_normal(x.shape)).astype(np.float32))).clamp(0, 1)


#: Other looks of a string image (``float32 [H, W]`` in 0..1, light ink on black → the same string drawn
#: otherwise; ``rng``: a `numpy.random.Generator` for the random ones), in the order `looks_table` prints them.
LOOKS: Dict[str, Callable[[torch.Tensor, np.random.Generator], torch.Tensor]] = {
    "as drawn": lambda x, rng: x,
    "grey background (+0.08)": lambda x, rng: (x + 0.08).clamp(0, 1),
    "uneven lighting (0 to +0.2 across)": lambda x, rng: (x + torch.linspace(0, 0.2, x.shape[1])[None, :]).clamp(0, 1),
    "faint ink (x0.6)": lambda x, rng: x * 0.6,
    "salt noise (0.3 % of pixels)": lambda x, rng: x.maximum(torch.from_numpy(rng.random(x.shape) < 0.003).float()),
    "sensor noise (sigma 0.05)": lambda x, rng: _noise(x, rng, 0.05),
    "grey noisy background (+0.1, sigma 0.03)": lambda x, rng: _noise((x + 0.1).clamp(0, 1), rng, 0.03),
    "blurred (sigma 0.7 px)": lambda x, rng: _blur(x, 0.7),
    "twice the size": lambda x, rng: _resize(x, 2 * x.shape[0], 2 * x.shape[1]),
    "three quarters the size": lambda x, rng: _resize(x, round(0.75 * x.shape[0]), round(0.75 * x.shape[1])),
    "stretched (width x1.3)": lambda x, rng: _resize(x, x.shape[0], round(1.3 * x.shape[1])),
    "rotated 4 degrees": lambda x, rng: _rotate(x, 4.0),
}


@torch.no_grad()
def other_looks(reader, strings, looks: Optional[Dict[str, Callable]] = None, seed: int = 0, batch_size: int = 50,
                progress: bool = False) -> List[Dict]:
    """Read ``strings`` (`lenet.strings.make_strings`' strings) in every look of ``looks`` (default `LOOKS`), each
    look's random draws from ``seed`` and the string's index, so that two readers read the same images. Returns
    one dict per look: ``look``, ``strings``, ``as_is`` and ``cleaned`` (each a `lenet.metrics.string_metrics`
    dict: `lenet.recognize` with ``clean=False`` and with ``clean=True``) and ``seconds``."""
    from .metrics import string_metrics
    from .progress import progress_bar
    from .reading import recognize
    from .segment import as_float_image

    looks = LOOKS if looks is None else looks
    if not strings:
        raise ValueError("other_looks needs at least one string")
    truth = [s.label for s in strings]
    base = [as_float_image(s.image) for s in strings]
    rows = []
    with progress_bar(2 * len(looks) * len(strings), "other looks", "str", enabled=progress) as bar:
        for j, (name, look) in enumerate(looks.items()):
            images = [look(x, np.random.default_rng([seed, j, i])) for i, x in enumerate(base)]
            t = time.perf_counter()
            row = {"look": name, "strings": len(strings)}
            for key, clean in (("as_is", False), ("cleaned", True)):
                preds = []
                for k in range(0, len(images), batch_size):
                    preds.extend(recognize(images[k:k + batch_size], reader, batch_size=batch_size, ink="light",
                                           clean=clean))
                    bar.update(min(batch_size, len(images) - k))
                row[key] = string_metrics(preds, truth)
            row["seconds"] = time.perf_counter() - t
            rows.append(row)
    return rows


def looks_table(rows: Sequence[dict]) -> str:
    """`other_looks`' rows as a text table: string accuracy and digit error of each look, as is and cleaned."""
    lines = ["| look | as is: string accuracy | digit error | cleaned: string accuracy | digit error |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        a, c = r["as_is"], r["cleaned"]
        lines.append(f"| {r['look']} | {100 * a['string_accuracy']:.1f} % | {100 * a['digit_error']:.2f} % | "
                     f"{100 * c['string_accuracy']:.1f} % | {100 * c['digit_error']:.2f} % |")
    mean = {k: sum(r[k]["string_accuracy"] for r in rows) / max(len(rows), 1) for k in ("as_is", "cleaned")}
    worst = {k: min((r[k]["string_accuracy"] for r in rows), default=0.0) for k in ("as_is", "cleaned")}
    lines.append(f"mean string accuracy over the {len(rows)} looks: as is {100 * mean['as_is']:.1f} % (worst "
                 f"{100 * worst['as_is']:.1f} %), cleaned {100 * mean['cleaned']:.1f} % (worst "
                 f"{100 * worst['cleaned']:.1f} %)")
    return "\n".join(lines)
