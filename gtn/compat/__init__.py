"""``gtn.compat``: facebookresearch/gtn's Python API on this library's core.

``import gtn.compat as gtn`` and code written for facebookresearch/gtn runs unchanged: mutable `Graph`s with
several start and accept nodes and labels where ``gtn.epsilon == -1``; its functions, `backward` (carried by
``torch.autograd``), comparisons, creations, I/O, `criterion.ctc_loss` and device names. See docs/compat.md.
"""
from . import criterion, cuda
from .autograd import backward
from .device import CPU, CUDA, Device, DeviceType
from .functions import (add, clone, closure, compose, concat, forward_score, intersect, negate, project_input,
                        project_output, remove, subtract, union, viterbi_path, viterbi_score)
from .graph import Graph, epsilon
from .rand import rand_equivalent, sample
from .utils import (draw, equal, isomorphic, linear_graph, load, loadtxt, parallel_for, parallel_map, save,
                    savetxt, scalar_graph, write_dot)

__version__ = "0.1.0"

__all__ = ["Graph", "epsilon", "negate", "add", "subtract", "clone", "project_input", "project_output",
           "concat", "closure", "union", "intersect", "compose", "remove", "forward_score", "viterbi_score",
           "viterbi_path", "backward", "equal", "isomorphic", "rand_equivalent", "sample", "scalar_graph",
           "linear_graph", "parallel_for", "parallel_map", "savetxt", "loadtxt", "save", "load", "draw",
           "write_dot", "criterion", "cuda", "Device", "DeviceType", "CPU", "CUDA"]
