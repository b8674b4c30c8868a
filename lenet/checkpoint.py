"""Checkpoints: one format for every model the project trains, and ``load`` that dispatches on its kind.

A checkpoint is a ``torch.save``\\ d dict::

    {"kind": "lenet5",          # which loader rebuilds it (see ``register``)
     "format": 1,
     "config": {...},           # constructor arguments: plain Python values
     "state_dict": {...},       # tensors
     ...}                       # anything else the writer wants to keep (history, metrics, seed)

``lenet.load(path)`` reads it with ``weights_only=True`` (no code runs from the file) and hands it to the
loader registered for its kind. This module registers ``"lenet5"`` (every variant of ``lenet.model``);
another module adds its own kind with ``register("name", loader)``, where ``loader`` is a function taking the
checkpoint dict and returning the ready model, or a ``"module:function"`` string imported on first use (so
registering costs no import and creates no import cycle).
"""
from __future__ import annotations

import importlib
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Tuple, Union

import torch

__all__ = ["FORMAT", "register", "save", "save_model", "read", "load", "from_checkpoint", "describe"]

FORMAT = 1

Loader = Union[Callable[[Dict[str, Any]], Any], str]
_LOADERS: Dict[str, Loader] = {}


def register(kind: str, loader: Loader, replace: bool = False) -> None:
    """Make ``load`` rebuild checkpoints whose ``"kind"`` is ``kind`` with ``loader(checkpoint_dict)``."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string")
    if not (callable(loader) or (isinstance(loader, str) and ":" in loader)):
        raise ValueError("loader must be a callable or a 'module:function' string")
    if kind in _LOADERS and not replace and _LOADERS[kind] != loader:
        raise ValueError(f"a loader for kind {kind!r} is already registered (pass replace=True to change it)")
    _LOADERS[kind] = loader


def save(path: Union[str, os.PathLike], kind: str, config: Dict[str, Any], state_dict: Dict[str, torch.Tensor],
         **extra: Any) -> Path:
    """Write a checkpoint (through a temporary file, so a crash never leaves half a checkpoint)."""
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"kind": kind, "format": FORMAT, "config": dict(config),
               "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()}, **extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def save_model(model: torch.nn.Module, path: Union[str, os.PathLike], **extra: Any) -> Path:
    """Save one of ``lenet.model``'s networks as a ``"lenet5"`` checkpoint."""
    return save(path, "lenet5", model.config(), model.state_dict(), **extra)


#: What each built-in kind holds and which function reads it (for the errors of functions given another kind).
_ABOUT: Dict[str, Tuple[str, str]] = {
    "lenet5": ("a LeNet-5 digit classifier (written by python -m lenet.train)", "lenet.classify"),
    "string_reader": ("a segmentation string reader (written by examples/multi_digit.py)", "lenet.recognize"),
    "sdnn_reader": ("an SDNN string reader (written by examples/multi_digit.py --system sdnn)", "lenet.recognize"),
    "combined_reader": ("several string readers read together (written by examples/combine_readers.py)",
                        "lenet.recognize"),
}


def describe(kind: str) -> str:
    """One phrase naming a checkpoint kind, what it holds and the function that reads it."""
    what, reader = _ABOUT.get(kind, (None, None))
    if what is None:
        return f"a {kind!r} checkpoint"
    return f"a {kind!r} checkpoint, {what}, which {reader} reads"


def _where(path) -> str:
    return str(path) if isinstance(path, (str, os.PathLike)) else type(path).__name__


def read(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The checkpoint dict itself, checked to have a kind, a config and a state dict.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (one line naming the file and what it
    is) for anything that is not a checkpoint: a directory, a file torch did not write, a torch file that holds
    Python objects other than tensors and plain values (read with ``weights_only=True``, so no code from the
    file runs), a damaged file, or a torch file of something else (a tensor, a bare ``state_dict``)."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    where = _where(path)
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{where}: no such file (expected a checkpoint)")
        if p.is_dir():
            raise ValueError(f"{where}: a directory, not a checkpoint file")
        with open(p, "rb") as f:
            head = f.read(4)
        # torch.save writes a zip archive; the legacy format starts with a pickle protocol mark (protocol 2..5)
        if not (head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03",
                                                                                        b"\x04", b"\x05"))):
            raise ValueError(f"{where}: not a readable checkpoint (not a file written by torch.save)")
    try:
        with warnings.catch_warnings():  # torch warns before failing on a file of odd bytes: the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:  # torch's weights_only refusal: a long text, which we do not repeat
        if "weights only" in str(e).lower():
            raise ValueError(f"{where}: not a readable checkpoint (a torch file holding Python objects other than "
                             f"tensors and plain values; lenet.load runs no code from a file)") from None
        raise ValueError(f"{where}: not a readable checkpoint (a damaged torch file)") from None
    except Exception as e:  # torch raises several types for a damaged or truncated file
        raise ValueError(f"{where}: not a readable checkpoint (a damaged or truncated torch file: "
                         f"{type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not {"kind", "config", "state_dict"} <= ckpt.keys():
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            held = f"a bare state_dict of {len(ckpt)} tensors; load it with model.load_state_dict(torch.load(path))"
        elif isinstance(ckpt, dict):
            held = f"a dict with keys {sorted(map(str, ckpt))[:6]}"
        else:
            held = f"a {type(ckpt).__name__}"
        raise ValueError(f"{where}: not a torch-gtn checkpoint ({held}; a checkpoint is a dict with 'kind', "
                         f"'config', 'state_dict')")
    if ckpt.get("format", FORMAT) > FORMAT:
        raise ValueError(f"{where}: checkpoint format {ckpt['format']} is newer than this library's {FORMAT}")
    return ckpt


def load(path: Union[str, os.PathLike]) -> Any:
    """The model stored in a checkpoint, ready to use (in eval mode, on the CPU). Errors: see `read`."""
    return from_checkpoint(read(path), path)


def from_checkpoint(ckpt: Dict[str, Any], path: Union[str, os.PathLike, None] = None) -> Any:
    """The model of a checkpoint dict from `read` (``path`` only names it in errors)."""
    kind = ckpt["kind"]
    loader = _LOADERS.get(kind)
    if loader is None:
        raise ValueError(f"{_where(path) if path is not None else 'checkpoint'}: no loader for checkpoint kind "
                         f"{kind!r} (known: {sorted(_LOADERS)})")
    if isinstance(loader, str):
        module, _, name = loader.partition(":")
        loader = getattr(importlib.import_module(module), name)
    return loader(ckpt)


def restore(module: torch.nn.Module, state: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load ``state`` into ``module`` exactly and return it in eval mode.

    When all floating tensors of the checkpoint share one dtype, the module is moved to it first, so float64
    weights land in float64 parameters bit for bit."""
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        module.to(dtypes.pop())
    module.load_state_dict(state)
    return module.eval()


def _load_lenet5(ckpt: Dict[str, Any]) -> torch.nn.Module:
    from .model import build

    return restore(build(**ckpt["config"]), ckpt["state_dict"])


register("lenet5", _load_lenet5)
# the readers' kinds, by name: registering them here imports nothing until such a checkpoint is loaded
register("string_reader", "lenet.recognizer:_load_reader")
register("sdnn_reader", "lenet.sdnn:_load_sdnn")
register("combined_reader", "lenet.combined:_load_combined")
