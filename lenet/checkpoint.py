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
from pathlib import Path
from typing import Any, Callable, Dict, Union

import torch

__all__ = ["FORMAT", "register", "save", "save_model", "read", "load"]

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


def read(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The checkpoint dict itself, checked to have a kind, a config and a state dict."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or not {"kind", "config", "state_dict"} <= ckpt.keys():
        raise ValueError(f"{path}: not a torch-gtn checkpoint (need a dict with 'kind', 'config', 'state_dict')")
    if ckpt.get("format", FORMAT) > FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt['format']} is newer than this library's {FORMAT}")
    return ckpt


def load(path: Union[str, os.PathLike]) -> Any:
    """The model stored in a checkpoint, ready to use (in eval mode, on the CPU)."""
    ckpt = read(path)
    kind = ckpt["kind"]
    loader = _LOADERS.get(kind)
    if loader is None:
        raise ValueError(f"{path}: no loader for checkpoint kind {kind!r} (known: {sorted(_LOADERS)})")
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
