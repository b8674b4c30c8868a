"""gtn: differentiable weighted finite-state automata on PyTorch (k2's data model, gtn's verbs).

This file only re-exports the public verbs; each lives in the module for its concern.
"""
from .fsa import Fsa, FsaVec, FsaError, index_arcs
from .io import from_str, to_str

__version__ = "0.1.0"
from .topology import top_sort, arc_sort, connect, state_batches, find_cycle
from .dense import DenseFsaVec, intersect_dense, dense_forward_score
from .ctc import ctc_topo, ctc_graph, ctc_loss
from .scoring import forward_score, viterbi_score, forward_scores, backward_scores, arc_posteriors, viterbi_path, linear_fsa
from .losses import viterbi_loss, discriminative_viterbi_loss, forward_loss, discriminative_forward_loss, rejection_confidence
from .compose import compose, intersect, constrained_forward_score, compose_score
from .structure import union, concat, closure, remove_epsilon, invert, project
from .io import to_dot, draw, to_networkx, from_networkx, to_k2, from_k2
from .transformer import Transformer
