"""The compat `Graph`: facebookresearch/gtn's mutable graph, its weights a torch tensor.

A `Graph` holds its structure in Python lists (nodes with start/accept flags, arcs with src, dst, ilabel,
olabel, each node's in/out arc lists, in insertion order as facebookresearch/gtn keeps them) and its weights
in one float32 tensor. A graph built by the user with ``calc_grad=True`` owns a leaf tensor that requires
grad; the result of an operation owns a tensor computed from its inputs' tensors (so ``torch.autograd``
carries the gradients) on which ``retain_grad()`` is called, so that every graph of a computation gets its
``grad()`` like in facebookresearch/gtn. Computations go through `_bridge`, which translates a graph into this
library's `gtn.Fsa` (k2's model).
"""
import ctypes
from typing import List, Optional

import numpy as np
import torch

epsilon = -1  # facebookresearch/gtn's epsilon label (our core's epsilon is 0: _bridge shifts labels)


class Graph:
    """facebookresearch/gtn's ``Graph(calc_grad=True)``: nodes may be start and/or accept (several of each),
    arcs carry an input label, an output label and a float32 weight."""

    def __init__(self, calc_grad: bool = True):
        self._calc_grad = bool(calc_grad)
        self._is_start: List[bool] = []
        self._is_accept: List[bool] = []
        self._starts: List[int] = []
        self._accepts: List[int] = []
        self._src: List[int] = []
        self._dst: List[int] = []
        self._il: List[int] = []
        self._ol: List[int] = []
        self._in: List[List[int]] = []
        self._out: List[List[int]] = []
        self._pending: List[float] = []  # weights added since the tensor was last built
        self._w = torch.zeros(0, dtype=torch.float32).requires_grad_(self._calc_grad)
        self._leaf = True  # False for the result of an operation (its tensor has a history)
        self._freed = False  # backward ran on it without retain_graph
        self._ilabel_sorted = False
        self._olabel_sorted = False
        self._device = torch.device("cpu")
        self._cache = {}  # structure-derived data (bridge), dropped on any structural change

    # ---- construction -------------------------------------------------------------------------------
    def add_node(self, start: bool = False, accept: bool = False) -> int:
        """Add a node; returns its index."""
        idx = len(self._is_start)
        self._is_start.append(bool(start))
        self._is_accept.append(bool(accept))
        if start:
            self._starts.append(idx)
        if accept:
            self._accepts.append(idx)
        self._in.append([])
        self._out.append([])
        self._touch()
        return idx

    def add_arc(self, src_node: int, dst_node: int, ilabel: Optional[int] = None, olabel: Optional[int] = None,
                weight: float = 0.0, *, label: Optional[int] = None) -> int:
        """``add_arc(src_node, dst_node, label)`` (an acceptor arc, weight 0) or
        ``add_arc(src_node, dst_node, ilabel, olabel, weight=0.0)``; returns the arc's index."""
        if label is not None:
            if ilabel is not None:
                raise ValueError("add_arc: give label, or ilabel (and olabel), not both")
            ilabel = olabel = label
        elif ilabel is None:
            raise ValueError("add_arc: a label is needed: add_arc(src, dst, label) or add_arc(src, dst, ilabel, olabel)")
        elif olabel is None:
            olabel = ilabel
        n = len(self._is_start)
        for what, v in (("src_node", src_node), ("dst_node", dst_node)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v < n:
                raise ValueError(f"add_arc: {what}={v!r} is not a node of this graph (it has {n} nodes)")
        for what, v in (("ilabel", ilabel), ("olabel", olabel)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < epsilon:
                raise ValueError(f"add_arc: {what}={v!r} must be an integer >= gtn.epsilon ({epsilon})")
        idx = len(self._src)
        self._src.append(int(src_node))
        self._dst.append(int(dst_node))
        self._il.append(int(ilabel))
        self._ol.append(int(olabel))
        self._pending.append(float(weight))
        self._out[src_node].append(idx)
        self._in[dst_node].append(idx)
        self._touch()
        return idx

    @classmethod
    def _from_lists(cls, is_start, is_accept, src, dst, il, ol, weights: torch.Tensor, calc_grad: bool) -> "Graph":
        """Build an operation's result in one go (not in facebookresearch/gtn's API): node flags, arc lists
        and the weights tensor (with its autograd history)."""
        g = cls(calc_grad)
        n = len(is_start)
        g._is_start, g._is_accept = [bool(x) for x in is_start], [bool(x) for x in is_accept]
        g._starts = [i for i in range(n) if g._is_start[i]]
        g._accepts = [i for i in range(n) if g._is_accept[i]]
        g._src, g._dst, g._il, g._ol = list(src), list(dst), list(il), list(ol)
        g._in, g._out = [[] for _ in range(n)], [[] for _ in range(n)]
        for a, (s, d) in enumerate(zip(g._src, g._dst)):
            g._out[s].append(a)
            g._in[d].append(a)
        g._device = weights.device
        g._set_tensor(weights.to(torch.float32))
        return g

    def make_accept(self, i: int) -> None:
        """Mark node ``i`` accepting."""
        self._node(i)
        if not self._is_accept[i]:
            self._is_accept[i] = True
            self._accepts.append(i)
            self._touch()

    def _touch(self):
        self._cache = {}
        self._ilabel_sorted = self._olabel_sorted = False

    def _node(self, i):
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self._is_start):
            raise ValueError(f"node {i!r} is not a node of this graph (it has {len(self._is_start)} nodes)")
        return int(i)

    def _arc(self, a):
        if not isinstance(a, (int, np.integer)) or not 0 <= a < len(self._src):
            raise ValueError(f"arc {a!r} is not an arc of this graph (it has {len(self._src)} arcs)")
        return int(a)

    # ---- weights as a tensor ------------------------------------------------------------------------
    def _weights(self) -> torch.Tensor:
        """The weights tensor ``[num_arcs]`` (float32), building it from arcs added since."""
        if self._pending:
            new = torch.tensor(self._pending, dtype=torch.float32, device=self._device)
            self._pending = []
            w = torch.cat([self._w.detach(), new])
            self._w = w.requires_grad_(self._calc_grad)
            self._leaf = True
        return self._w

    def _set_tensor(self, w: torch.Tensor) -> None:
        """Install the weights of an operation's result (a tensor with a history)."""
        if not self._calc_grad or not w.requires_grad:
            w = w.detach()
            self._leaf = True
            w.requires_grad_(self._calc_grad)
        else:
            self._leaf = False
            w.retain_grad()
        self._w = w
        self._pending = []

    # ---- counts and queries -------------------------------------------------------------------------
    def num_nodes(self) -> int:
        return len(self._is_start)

    def num_arcs(self) -> int:
        return len(self._src)

    def num_start(self) -> int:
        return len(self._starts)

    def num_accept(self) -> int:
        return len(self._accepts)

    def start(self, i: Optional[int] = None):
        """``start()``: the start nodes (in the order they were marked); ``start(i)``: is node ``i`` a start."""
        return list(self._starts) if i is None else self._is_start[self._node(i)]

    def accept(self, i: Optional[int] = None):
        """``accept()``: the accept nodes; ``accept(i)``: is node ``i`` accepting."""
        return list(self._accepts) if i is None else self._is_accept[self._node(i)]

    def is_start(self, i: int) -> bool:
        return self._is_start[self._node(i)]

    def is_accept(self, i: int) -> bool:
        return self._is_accept[self._node(i)]

    def num_in(self, i: int) -> int:
        return len(self._in[self._node(i)])

    def num_out(self, i: int) -> int:
        return len(self._out[self._node(i)])

    def in_(self, i: int, k: Optional[int] = None):
        """The arcs entering node ``i`` (or the ``k``-th of them)."""
        arcs = self._in[self._node(i)]
        return list(arcs) if k is None else arcs[k]

    def out(self, i: int, k: Optional[int] = None):
        """The arcs leaving node ``i`` (or the ``k``-th of them)."""
        arcs = self._out[self._node(i)]
        return list(arcs) if k is None else arcs[k]

    in_arcs, out_arcs = in_, out

    def src_node(self, a: int) -> int:
        return self._src[self._arc(a)]

    def dst_node(self, a: int) -> int:
        return self._dst[self._arc(a)]

    up_node, down_node = src_node, dst_node

    def ilabel(self, a: int) -> int:
        return self._il[self._arc(a)]

    def olabel(self, a: int) -> int:
        return self._ol[self._arc(a)]

    def label(self, a: int) -> int:
        return self._il[self._arc(a)]

    def weight(self, a: int) -> float:
        return float(self._weights().detach()[self._arc(a)])

    def set_weight(self, a: int, weight: float) -> None:
        w = self.weights_to_list()
        w[self._arc(a)] = float(weight)
        self.set_weights(w)

    def ilabel_sorted(self) -> bool:
        return self._ilabel_sorted

    def olabel_sorted(self) -> bool:
        return self._olabel_sorted

    def arc_sort(self, olabel: bool = False) -> None:
        """Sort each node's in and out arc lists by input (or output) label, stably. Arc indices (and so
        weights, gradients) do not change, as in facebookresearch/gtn."""
        labels = self._ol if olabel else self._il
        for lst in self._in + self._out:
            lst.sort(key=labels.__getitem__)
        self._olabel_sorted, self._ilabel_sorted = bool(olabel), not olabel

    def mark_arc_sorted(self, olabel: bool = False) -> None:
        if olabel:
            self._olabel_sorted = True
        else:
            self._ilabel_sorted = True

    # ---- weights ------------------------------------------------------------------------------------
    def item(self) -> float:
        """The weight of a one-arc graph."""
        if self.num_arcs() != 1:
            raise ValueError(f"Graph.item: the graph has {self.num_arcs()} arcs; item() needs exactly one")
        return float(self._weights().detach()[0])

    def weights(self) -> int:
        """The address of the float32 weights (as facebookresearch/gtn returns it: an integer for ctypes)."""
        return self._weights().data_ptr()

    def weights_to_list(self) -> List[float]:
        return self._weights().detach().cpu().tolist()

    def weights_to_numpy(self) -> np.ndarray:
        return self._weights().detach().cpu().numpy()

    def weights_to_tensor(self) -> torch.Tensor:
        """The weights as a torch tensor, with its autograd history (not in facebookresearch/gtn's API)."""
        return self._weights()

    def set_weights(self, weights) -> None:
        """Set every arc weight from a list, a numpy array, a torch tensor or an address (an ``int``, as
        ``data_ptr()`` gives, of ``num_arcs`` float32 values)."""
        n = self.num_arcs()
        if isinstance(weights, (int, np.integer)) and not isinstance(weights, bool):
            if self._device.type != "cpu":
                raise ValueError("Graph.set_weights: an address can only be read for a graph on the CPU")
            if n and not weights:
                raise ValueError("Graph.set_weights: null address")
            buf = (ctypes.c_float * n).from_address(int(weights)) if n else []
            vals = torch.tensor(np.ctypeslib.as_array(buf) if n else [], dtype=torch.float32)
        elif isinstance(weights, torch.Tensor):
            vals = weights.detach().to(torch.float32).flatten()
        else:
            vals = torch.as_tensor(np.asarray(weights, dtype=np.float32)).flatten()
        if vals.numel() != n:
            raise ValueError(f"Graph.set_weights: got {vals.numel()} weights for {n} arcs")
        vals = vals.to(self._device)
        w = self._weights()
        if self._leaf and w.numel() == n:
            # in place, as facebookresearch/gtn does: the address from weights() stays valid, grad is kept
            with torch.no_grad():
                w.copy_(vals)
            return
        self._w = vals.clone().requires_grad_(self._calc_grad)
        self._leaf = True

    def labels_to_list(self, ilabel: bool = True) -> List[int]:
        return list(self._il if ilabel else self._ol)

    # ---- gradients ----------------------------------------------------------------------------------
    @property
    def calc_grad(self) -> bool:
        return self._calc_grad

    @calc_grad.setter
    def calc_grad(self, flag: bool) -> None:
        flag = bool(flag)
        w = self._weights()
        self._calc_grad = flag
        if not flag:
            self._w = w.detach()
            self._leaf = True
        elif self._leaf:
            self._w = w.detach().requires_grad_(True)

    def set_calc_grad(self, flag: bool) -> None:
        self.calc_grad = flag

    def _grad_tensor(self) -> Optional[torch.Tensor]:
        w = self._w
        if self._pending or not w.requires_grad:
            return None
        return w.grad

    def is_grad_available(self) -> bool:
        return self._calc_grad and self._grad_tensor() is not None

    def grad(self) -> "Graph":
        """The gradient: a graph of the same structure whose weights are d(output)/d(weight)."""
        if not self._calc_grad:
            raise RuntimeError("[Graph::grad] Gradient calculation disabled.")
        g = self._grad_tensor()
        if g is None:
            raise RuntimeError("[Graph::grad] Gradient not calculated yet.")
        out = self._structure_copy(calc_grad=False)
        out._w = g.detach().clone()
        return out

    def zero_grad(self) -> None:
        if self._w.requires_grad:
            self._w.grad = None

    # ---- copies, devices ------------------------------------------------------------------------------
    def _structure_copy(self, calc_grad: bool) -> "Graph":
        out = Graph(calc_grad)
        out._is_start, out._is_accept = list(self._is_start), list(self._is_accept)
        out._starts, out._accepts = list(self._starts), list(self._accepts)
        out._src, out._dst, out._il, out._ol = list(self._src), list(self._dst), list(self._il), list(self._ol)
        out._in, out._out = [list(x) for x in self._in], [list(x) for x in self._out]
        out._ilabel_sorted, out._olabel_sorted = self._ilabel_sorted, self._olabel_sorted
        out._device = self._device
        out._cache = self._cache  # same structure
        return out

    def device(self):
        from .device import Device
        return Device._from_torch(self._device)

    def is_cuda(self) -> bool:
        return self._device.type == "cuda"

    def to(self, device) -> "Graph":
        """A copy on ``device`` (a `Device`, a ``torch.device`` or a string); gradients flow back."""
        from .device import as_torch_device
        dev = as_torch_device(device)
        out = self._structure_copy(self._calc_grad)
        out._device = dev
        out._cache = {}
        with torch.enable_grad():
            out._set_tensor(self._weights().to(dev))
        return out

    def cpu(self) -> "Graph":
        return self.to(torch.device("cpu"))

    def cuda(self, device=None) -> "Graph":
        from .device import Device, CUDA
        return self.to(Device(CUDA, 0 if device is None else int(device)))

    def __repr__(self) -> str:
        from .utils import _text
        return _text(self)

    __str__ = __repr__
