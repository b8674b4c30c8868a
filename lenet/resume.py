"""Resumable training: atomic resume states written after every pass, and the one to start from.

A trainer given a `States` (``lenet.global_train.train_globally``, ``lenet.train.train``) writes, after each
pass ``k``, ``<stem>_<phase>_pass<k>.state.pt`` beside its output ``<stem>.pt``: the model's and the
optimiser's state dicts, the pass and step counters (the learning-rate schedule is a function of the step),
the history so far, and the random states (torch's, Python's, NumPy's, and the trainer's own generators).
The file is written to a temporary name, flushed to disk and renamed over the target (``os.replace``), so a
crash at any moment leaves either the previous state or the new one, never half a file; the older states of
the phase are removed afterwards.

``resume``: ``None`` starts afresh; ``"auto"`` starts from the latest state of the phase (afresh when there is
none: the same command line can be rerun after a crash, which is what ``torchrun --max-restarts`` does); a
path starts from that file. A resumed run redoes nothing it had finished and ends with the same parameters as
an uninterrupted run with the same seed (bit for bit on the same machine and thread count).
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["atomic_save", "rng_states", "set_rng_states", "States"]

PathLike = Union[str, os.PathLike]


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def rng_states() -> Dict[str, Any]:
    """torch's, Python's and NumPy's global random states, as tensors and plain values (``weights_only``
    loadable)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(), "python": (version, list(internal), gauss),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}


def set_rng_states(state: Dict[str, Any]) -> None:
    """Restore what `rng_states` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class States:
    """The resume states of one training phase of one run: ``<stem>_<phase>_pass<k>.state.pt`` beside
    ``out`` (see the module docstring for ``resume``). ``writer``: whether this process writes them (rank 0
    of a distributed job; the others only read)."""

    def __init__(self, out: PathLike, phase: str, resume: Optional[PathLike] = None, writer: bool = True):
        if not re.fullmatch(r"[A-Za-z0-9-]+", phase):
            raise ValueError(f"phase must be letters, digits and '-', got {phase!r}")
        out = Path(out)
        self.folder, self.stem, self.phase = out.parent, out.with_suffix("").name, phase
        self.resume, self.writer = resume, writer
        self.resumed_from: Optional[Path] = None

    def path(self, k: int) -> Path:
        return self.folder / f"{self.stem}_{self.phase}_pass{k:04d}.state.pt"

    def existing(self) -> List[Tuple[int, Path]]:
        """``(pass, path)`` of the phase's states in the folder, oldest first."""
        pattern = re.compile(re.escape(f"{self.stem}_{self.phase}_pass") + r"(\d+)\.state\.pt")
        found = []
        if self.folder.is_dir():
            for p in self.folder.iterdir():
                m = pattern.fullmatch(p.name)
                if m:
                    found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Optional[Path]:
        found = self.existing()
        return found[-1][1] if found else None

    def start(self, ctx=None) -> Optional[Dict[str, Any]]:
        """The state to resume from (``None``: start afresh); remembers its path in ``resumed_from``.

        Starting afresh (``resume=None``), the writer removes the phase's states of an earlier run with the
        same output, so that a later ``"auto"`` cannot pick them up. ``ctx`` (`lenet.distributed.Context`):
        rank 0 reads the file and sends it to the others (no shared file system needed)."""
        if ctx is not None and ctx.distributed:
            box = ctx.broadcast_object(self._start() if ctx.is_main else None)
            return box
        return self._start()

    def _start(self) -> Optional[Dict[str, Any]]:
        if self.resume is None:
            if self.writer:
                for _, old in self.existing():
                    old.unlink(missing_ok=True)
            return None
        path = self.latest() if str(self.resume) == "auto" else Path(self.resume)
        if path is None:
            return None
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such resume state")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file: say which
            raise ValueError(f"{path}: not a readable resume state ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict) or state.get("phase") != self.phase:
            got = state.get("phase") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{path}: a resume state of phase {got!r}, not {self.phase!r}")
        self.resumed_from = path
        return state

    def save(self, k: int, state: Dict[str, Any]) -> Optional[Path]:
        """Write the state after pass ``k`` (writer only) and remove the phase's older states."""
        if not self.writer:
            return None
        path = atomic_save({"phase": self.phase, "pass": k, **state}, self.path(k))
        for j, old in self.existing():
            if j < k:
                old.unlink(missing_ok=True)
        return path
