"""gtn: differentiable weighted finite-state automata on PyTorch (k2's data model, gtn's verbs).

This file only re-exports the public verbs; each lives in the module for its concern.
"""
from .fsa import Fsa, FsaVec, FsaError, index_arcs
from .io import from_str, to_str

__version__ = "0.1.0"
