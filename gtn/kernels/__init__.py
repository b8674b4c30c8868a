"""Optional compiled loops (numba, CPU), and the library's one kernel-dispatch policy.

Each kernel has a pure-torch twin in the module that uses it; that twin is the reference (tests check that both
agree), the path on every non-CPU device and the fallback when numba is missing or disabled.

The policy (`select`, used by every operation that has a kernel):

* ``backend="auto"`` (the default everywhere): the numba kernel when the tensors are on the CPU, numba imports
  and kernels are enabled; otherwise the torch path. ``GTN_NO_NUMBA=1`` in the environment (read at import) or
  `use_numba(False)` disables kernels for ``"auto"``.
* ``backend="torch"``: the torch path, on any device.
* ``backend="numba"``: the kernel, even when kernels are disabled for ``"auto"``; an impossible request raises
  `gtn.FsaError` (a ``ValueError``) with the same words everywhere: ``"<op>: backend='numba' needs CPU tensors,
  got cuda:0"`` or ``"... needs numba, which does not import (...)"``.

The dtype decides the arithmetic, not the route: float32 and float64 run as they are; half precision
(float16, bfloat16) is computed in float32 on every path (see `compute_dtype`) and the results are cast back.

numba compiles each kernel on first use and caches the machine code next to the package (``cache=True``). Where
no cache folder is writable (a read-only install without a writable ``~/.cache``), the kernels are compiled
without the cache (each new process compiles again) and a `RuntimeWarning` says so once; they are never
dropped silently. If numba itself does not import, ``"auto"`` runs the torch path and warns once.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Optional

import torch

_STATE = {"enabled": os.environ.get("GTN_NO_NUMBA", "") in ("", "0")}
_WARNED = set()
BACKENDS = ("auto", "numba", "torch")
#: dtypes that the kernels (and the torch DPs) compute in directly; other floating dtypes are computed in float32
NATIVE_DTYPES = (torch.float32, torch.float64)


def use_numba(flag: Optional[bool] = None) -> bool:
    """Get (no argument) or set whether ``backend="auto"`` may use the numba kernels (when numba imports)."""
    if flag is not None:
        _STATE["enabled"] = bool(flag)
    return _STATE["enabled"]


def _warn_once(key: str, msg: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def njit(*args, **kwargs):
    """``numba.njit`` for the kernel modules: with ``cache=True``, when numba finds no writable cache folder
    (it raises while decorating), compile without the cache and warn once instead of failing the import."""
    import numba
    if args and callable(args[0]):  # bare @njit
        return njit(**kwargs)(args[0])

    def deco(fn):
        if kwargs.get("cache"):
            try:
                return numba.njit(**kwargs)(fn)
            except RuntimeError as e:  # "cannot cache function ...: no locator available for file ..."
                _warn_once("cache", f"gtn: numba cannot write its cache ({e}); the kernels are compiled without "
                                    "a cache, in every new process (set NUMBA_CACHE_DIR to a writable folder)")
                return numba.njit(**dict(kwargs, cache=False))(fn)
        return numba.njit(**kwargs)(fn)
    return deco


_MODULES = {}


def _import(name: str):
    """``gtn.kernels.<name>``, or the exception that stopped it from importing (remembered: every operation asks
    on every call, and importlib's lookup costs more than a small graph's kernel)."""
    if name in _MODULES:
        return _MODULES[name], None
    try:
        mod = importlib.import_module(f"{__name__}.{name}")
    except Exception as e:  # numba missing or broken
        return None, e
    if not mod.available():
        return None, ImportError("numba does not import")
    _MODULES[name] = mod
    return mod, None


def check_backend(backend, what: str) -> str:
    """``backend`` if it is one of `BACKENDS` (``None`` means ``"auto"``), else `gtn.FsaError`."""
    if backend is None:
        return "auto"
    if backend not in BACKENDS:
        from ..fsa import FsaError
        raise FsaError(f"{what}: backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    return backend


def select(name: str, device=None, dtype=None, backend: str = "auto", what: str = "gtn"):
    """The one dispatch decision: the kernel module ``gtn.kernels.<name>`` or None (run the torch twin).

    Decided by ``backend`` (see the module docstring), the ``device`` (kernels run on the CPU only) and the
    ``dtype`` (any floating dtype: half precision is computed in float32, `compute_dtype`). ``what`` names the
    operation in errors."""
    backend = check_backend(backend, what)
    if backend == "torch":
        return None
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dtype is not None and not dtype.is_floating_point:
        from ..fsa import FsaError
        raise FsaError(f"{what}: scores must be floating point, got {dtype}")
    if dev.type != "cpu":
        if backend == "numba":
            from ..fsa import FsaError
            raise FsaError(f"{what}: backend='numba' needs CPU tensors, got {dev}")
        return None
    if backend == "auto" and not _STATE["enabled"]:
        return None
    mod, err = _import(name)
    if mod is None:
        if backend == "numba":
            from ..fsa import FsaError
            raise FsaError(f"{what}: backend='numba' needs numba, which does not import ({err})")
        _warn_once("import", f"gtn: numba does not import ({err}); running the pure-PyTorch path (slower)")
    return mod


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the DPs accumulate in: ``dtype`` itself for float32 / float64, float32 for half precision."""
    return dtype if dtype in NATIVE_DTYPES else torch.float32


def load(name: str, device=None):
    """``select(name, device)``: the kernel for ``backend="auto"`` (kept for callers of the old helper)."""
    return select(name, device)
