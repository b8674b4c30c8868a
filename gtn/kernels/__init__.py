"""Optional compiled loops (numba, CPU). Each kernel has a pure-torch twin in the module that uses it; that twin
is the reference (tests check that both agree) and the fallback when numba is missing or disabled.

`use_numba(False)` (or the environment variable ``GTN_NO_NUMBA=1``) forces the torch code everywhere."""
from __future__ import annotations

import importlib
import os
from typing import Optional

_STATE = {"enabled": os.environ.get("GTN_NO_NUMBA", "") in ("", "0")}


def use_numba(flag: Optional[bool] = None) -> bool:
    """Get (no argument) or set whether CPU algorithms may use the numba kernels (when numba imports)."""
    if flag is not None:
        _STATE["enabled"] = bool(flag)
    return _STATE["enabled"]


def load(name: str, device=None):
    """The kernel module ``gtn.kernels.<name>`` if kernels are enabled, numba imports and ``device`` is the CPU
    (or None); otherwise None (the caller runs its torch twin)."""
    if not _STATE["enabled"] or (device is not None and getattr(device, "type", device) != "cpu"):
        return None
    try:
        mod = importlib.import_module(f"{__name__}.{name}")
    except Exception:  # numba missing or broken: the torch path is always there
        return None
    return mod if mod.available() else None
