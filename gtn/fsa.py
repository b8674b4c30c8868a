"""The data model every module shares: `Fsa` and `FsaVec` (k2's FSA model).

An FSA has states ``0 .. num_states-1``; state 0 is the start state and the last state the single final
state. Only arcs labelled ``-1`` enter the final state, and every ``-1`` arc enters it. Arcs are sorted by
source state. Arc scores are a float tensor, log-domain, higher is better.

A batch (`FsaVec`) keeps the arcs of all its members in one ``[num_arcs, 3]`` tensor whose state ids are
*local* to each member (as in k2), plus two ragged row splits: ``arc_splits`` (member i owns arcs
``arc_splits[i]:arc_splits[i+1]``) and ``state_splits`` (member i owns global states
``state_splits[i]:state_splits[i+1]``). An `Fsa` is the same structure with one member, so every algorithm
is written once over the batched layout and returns the kind it was given.

Per-arc tensors other than ``scores`` (``aux_labels`` and any user attribute, e.g. the image segment an arc
scores) follow every operation through its *arc map*: output arc ``j`` came from input arc ``arc_map[j]``
(``-1``: from no input arc), so ``out.x = in.x[arc_map]``. Scores follow the same way with
``index_select``, which is why structural operations need no custom autograd code.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch

__all__ = ["Fsa", "FsaVec", "FsaError", "index_arcs"]


class FsaError(ValueError):
    """Bad input to a gtn function: the message says what is wrong and where (arc, state, FSA of a batch)."""


# Names that are real attributes of the object, never per-arc tensor attributes.
_OWN = frozenset({"arcs", "scores", "aux_labels", "arc_splits", "state_splits", "_attrs", "_cache", "_prop"})


def index_arcs(values: torch.Tensor, arc_map: torch.Tensor, fill=0) -> torch.Tensor:
    """``values[arc_map]`` along dim 0, with ``fill`` where ``arc_map == -1``. Differentiable in ``values``."""
    if values.shape[0] == 0 or arc_map.numel() == 0:
        shape = (arc_map.shape[0],) + tuple(values.shape[1:])
        return torch.full(shape, fill, dtype=values.dtype, device=values.device) + values.sum() * 0
    missing = arc_map < 0
    out = values.index_select(0, arc_map.clamp(min=0))
    if bool(missing.any()):
        m = missing.view((-1,) + (1,) * (values.dim() - 1))
        out = torch.where(m, torch.full_like(out, fill), out)
    return out


def _as_long(x, what: str, device=None) -> torch.Tensor:
    t = torch.as_tensor(x, device=device)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise FsaError(f"{what} must be an integer tensor, got dtype {t.dtype}")
    return t.to(torch.int64)


class _Graphs:
    """Storage and shared behaviour of `Fsa` and `FsaVec` (one or several FSAs in one arc tensor)."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def _from_parts(cls, arcs, scores, arc_splits, state_splits, aux_labels=None, attrs=None, props=None):
        """Internal constructor: no validation, no sorting (algorithms guarantee both)."""
        self = object.__new__(cls)
        object.__setattr__(self, "arcs", arcs)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "aux_labels", aux_labels)
        object.__setattr__(self, "arc_splits", arc_splits)
        object.__setattr__(self, "state_splits", state_splits)
        object.__setattr__(self, "_attrs", dict(attrs or {}))
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_prop", dict(props or {}))
        if cls is Fsa and arc_splits.numel() != 2:
            raise FsaError("an Fsa holds exactly one FSA; use FsaVec for a batch")
        return self

    def _derive(self, arcs, arc_map, arc_splits, state_splits, scores=None, props=None, kind=None):
        """A new graph whose arc j came from this graph's arc ``arc_map[j]`` (-1: none, score 0).

        ``scores`` overrides the gathered scores (e.g. compose adds two gathered scores)."""
        if scores is None:
            scores = index_arcs(self.scores, arc_map, 0.0)
        aux = None if self.aux_labels is None else index_arcs(self.aux_labels, arc_map, 0)
        attrs = {k: index_arcs(v, arc_map, 0) for k, v in self._attrs.items()}
        cls = kind or type(self)
        return cls._from_parts(arcs, scores, arc_splits, state_splits, aux, attrs, props)

    # ------------------------------------------------------------------ per-arc attributes
    def __setattr__(self, name, value):
        if name in _OWN or name.startswith("_"):
            if name in ("arcs", "arc_splits", "state_splits"):
                raise AttributeError(f"{name} is structural; build a new FSA instead")
            if name in ("scores", "aux_labels") and value is not None:
                value = self._check_per_arc(name, value)
                if name == "scores" and not value.dtype.is_floating_point:
                    raise FsaError(f"scores must be a floating tensor, got dtype {value.dtype}")
                if name == "aux_labels":
                    value = _as_long(value, "aux_labels", self.arcs.device)
            object.__setattr__(self, name, value)
        elif isinstance(value, torch.Tensor):
            self._attrs[name] = self._check_per_arc(name, value)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only called when normal lookup fails
        attrs = self.__dict__.get("_attrs")
        if attrs is not None and name in attrs:
            return attrs[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name):
        if name in self._attrs:
            del self._attrs[name]
        else:
            object.__delattr__(self, name)

    def _check_per_arc(self, name, value):
        value = torch.as_tensor(value, device=self.arcs.device)
        if value.dim() == 0 or value.shape[0] != self.arcs.shape[0]:
            raise FsaError(f"per-arc attribute {name!r} must have first dimension num_arcs="
                           f"{self.arcs.shape[0]}, got shape {tuple(value.shape)}")
        return value

    @property
    def attrs(self) -> Dict[str, torch.Tensor]:
        """The extra per-arc tensor attributes (name -> tensor with first dim ``num_arcs``)."""
        return self._attrs

    def set_attr(self, name: str, value) -> None:
        """Attach a per-arc tensor attribute; it follows every operation through the arc map."""
        if name in _OWN or name in ("labels",):
            raise FsaError(f"{name!r} is reserved")
        self._attrs[name] = self._check_per_arc(name, value)

    # ------------------------------------------------------------------ basic facts
    @property
    def labels(self) -> torch.Tensor:
        """The (input) label of each arc, ``[num_arcs]``; ``-1`` marks arcs into the final state."""
        return self.arcs[:, 2]

    @property
    def num_arcs(self) -> int:
        return int(self.arcs.shape[0])

    @property
    def device(self) -> torch.device:
        return self.arcs.device

    @property
    def dtype(self) -> torch.dtype:
        return self.scores.dtype

    @property
    def is_acceptor(self) -> bool:
        return self.aux_labels is None

    @property
    def num_fsas(self) -> int:
        return int(self.arc_splits.numel() - 1)

    @property
    def requires_grad(self) -> bool:
        return self.scores.requires_grad

    def _cached(self, key, fn):
        c = self._cache
        if key not in c:
            c[key] = fn()
        return c[key]

    @property
    def states_per_fsa(self) -> torch.Tensor:
        """``[num_fsas]`` number of states of each member."""
        return self._cached("nstates", lambda: self.state_splits[1:] - self.state_splits[:-1])

    @property
    def arcs_per_fsa(self) -> torch.Tensor:
        return self._cached("narcs", lambda: self.arc_splits[1:] - self.arc_splits[:-1])

    @property
    def arc_fsa(self) -> torch.Tensor:
        """``[num_arcs]`` the member each arc belongs to."""
        return self._cached("arc_fsa", lambda: torch.repeat_interleave(
            torch.arange(self.num_fsas, device=self.device), self.arcs_per_fsa, output_size=self.num_arcs))

    @property
    def total_states(self) -> int:
        return int(self.state_splits[-1])

    @property
    def src_global(self) -> torch.Tensor:
        """``[num_arcs]`` source state of each arc in the batch-wide (global) numbering."""
        return self._cached("src_g", lambda: self.arcs[:, 0] + self.state_splits[:-1][self.arc_fsa])

    @property
    def dst_global(self) -> torch.Tensor:
        return self._cached("dst_g", lambda: self.arcs[:, 1] + self.state_splits[:-1][self.arc_fsa])

    @property
    def start_states(self) -> torch.Tensor:
        """Global id of each member's start state (``-1`` for an empty member)."""
        ns = self.states_per_fsa
        return torch.where(ns > 0, self.state_splits[:-1], torch.full_like(ns, -1))

    @property
    def final_states(self) -> torch.Tensor:
        """Global id of each member's final state (``-1`` for an empty member)."""
        ns = self.states_per_fsa
        return torch.where(ns > 0, self.state_splits[1:] - 1, torch.full_like(ns, -1))

    @property
    def state_arc_splits(self) -> torch.Tensor:
        """``[total_states+1]``: the leaving arcs of global state s are ``state_arc_splits[s]:[s+1]``."""
        def build():
            counts = torch.bincount(self.src_global, minlength=self.total_states)
            out = torch.zeros(self.total_states + 1, dtype=torch.int64, device=self.device)
            out[1:] = torch.cumsum(counts, 0)
            return out
        return self._cached("state_arc_splits", build)

    # ------------------------------------------------------------------ properties (k2's flags)
    @property
    def is_top_sorted(self) -> bool:
        """Every arc goes from a lower to a higher state number (so state order is a topological order)."""
        return self._cached("top_sorted", lambda: bool((self.arcs[:, 0] < self.arcs[:, 1]).all()))

    @property
    def is_acyclic(self) -> bool:
        if self.is_top_sorted:
            return True
        from .topology import find_cycle
        return self._cached("acyclic", lambda: find_cycle(self) is None)

    @property
    def is_arc_sorted(self) -> bool:
        """Arcs of each state are sorted by (label, dst) in k2's order, as `gtn.arc_sort` (and k2's) leaves them:
        labels compared as unsigned 32-bit integers, so ``-1`` arcs come last."""
        def check():
            if self.num_arcs < 2:
                return True
            s, lab, d = self.src_global, self.labels & 0xFFFFFFFF, self.arcs[:, 1]
            same = s[1:] == s[:-1]
            ok = (lab[1:] > lab[:-1]) | ((lab[1:] == lab[:-1]) & (d[1:] >= d[:-1]))
            return bool((~same | ok).all())
        return self._cached("arc_sorted", check)

    @property
    def properties(self) -> Dict[str, bool]:
        return {"acyclic": self.is_acyclic, "top_sorted": self.is_top_sorted,
                "arc_sorted": self.is_arc_sorted, "acceptor": self.is_acceptor}

    # ------------------------------------------------------------------ tensors: device, dtype, grad
    def _map_tensors(self, arcs_fn, float_fn, keep_cache=False):
        attrs = {k: (float_fn(v) if v.dtype.is_floating_point else arcs_fn(v)) for k, v in self._attrs.items()}
        aux = None if self.aux_labels is None else arcs_fn(self.aux_labels)
        out = type(self)._from_parts(arcs_fn(self.arcs), float_fn(self.scores), arcs_fn(self.arc_splits),
                                     arcs_fn(self.state_splits), aux, attrs, self._prop)
        if keep_cache:  # the cache holds structure only (levels, plans), valid while arcs stay put
            out._cache.update(self._cache)
        return out

    def to(self, *args, **kwargs):
        """Like `torch.Tensor.to`: a device moves everything; a floating dtype changes ``scores`` (and
        floating attributes). Scores stay connected to the original for autograd."""
        device, dtype = None, None
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, torch.dtype):
                dtype = a
            elif isinstance(a, (str, torch.device)):
                device = torch.device(a)
        if dtype is not None and not dtype.is_floating_point:
            raise FsaError(f"scores must stay floating point; cannot convert to {dtype}")
        same_device = device is None or device == self.device or (
            device.type == self.device.type and device.index is None)
        return self._map_tensors(lambda t: t if device is None else t.to(device),
                                 lambda t: t.to(device=device, dtype=dtype), keep_cache=same_device)

    def float(self):
        return self.to(torch.float32)

    def double(self):
        return self.to(torch.float64)

    def cpu(self):
        return self.to("cpu")

    def detach(self):
        return self._map_tensors(lambda t: t, lambda t: t.detach(), keep_cache=True)

    def clone(self):
        """A deep copy; the scores are a new leaf-like tensor (``clone`` keeps them in the autograd graph)."""
        return self._map_tensors(lambda t: t.clone(), lambda t: t.clone())

    def requires_grad_(self, requires_grad: bool = True):
        """Make ``scores`` require grad (in place), so ``loss.backward()`` fills ``scores.grad``."""
        self.scores.requires_grad_(requires_grad)
        return self

    @property
    def grad(self) -> Optional[torch.Tensor]:
        return self.scores.grad

    # ------------------------------------------------------------------ comparisons
    def __eq__(self, other):
        """Same kind, structure, labels, aux_labels, attributes and exactly equal scores."""
        if type(other) is not type(self):
            return NotImplemented
        return self.equal(other, exact=True)

    __hash__ = object.__hash__

    def equal(self, other, exact: bool = False, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
        if (self.arcs.shape != other.arcs.shape or not torch.equal(self.arcs, other.arcs.to(self.device))
                or not torch.equal(self.state_splits, other.state_splits.to(self.device))
                or not torch.equal(self.arc_splits, other.arc_splits.to(self.device))):
            return False
        if (self.aux_labels is None) != (other.aux_labels is None):
            return False
        if self.aux_labels is not None and not torch.equal(self.aux_labels, other.aux_labels.to(self.device)):
            return False
        if set(self._attrs) != set(other._attrs):
            return False
        for k, v in self._attrs.items():
            if not torch.equal(v, other._attrs[k].to(v.device)):
                return False
        a, b = self.scores.detach(), other.scores.detach().to(self.device, self.dtype)
        if exact:
            return bool(torch.equal(a, b))
        return bool(torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=False))

    # ------------------------------------------------------------------ text and pictures (gtn.io)
    def to_str(self, openfst: bool = False) -> str:
        from . import io
        return io.to_str(self, openfst=openfst)

    def to_openfst(self) -> str:
        from . import io
        return io.to_str(self, openfst=True)

    def to_dot(self, **kwargs) -> str:
        from . import io
        return io.to_dot(self, **kwargs)

    def draw(self, path, **kwargs):
        from . import io
        return io.draw(self, path, **kwargs)

    def __str__(self):
        return self.to_str() if isinstance(self, Fsa) else repr(self)


def _concat_arc_data(parts, names):
    """``(arcs, scores, aux_labels, attributes)`` of Fsa/FsaVec ``parts`` concatenated in order on the first
    part's device, scores promoted to a common dtype (autograd stays connected). All parts are acceptors or
    all transducers, and all have the attributes ``names``."""
    dev = parts[0].device
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    arcs = torch.cat([p.arcs.to(dev) for p in parts])
    scores = torch.cat([p.scores.to(dev, dtype) for p in parts])
    aux = None if parts[0].aux_labels is None else torch.cat([p.aux_labels.to(dev) for p in parts])
    attrs = {k: torch.cat([p._attrs[k].to(dev) for p in parts]) for k in names}
    return arcs, scores, aux, attrs


def _validate(arcs, scores, num_states, aux_labels, where: str) -> None:
    """Check k2's FSA rules for one FSA; raise FsaError naming the offending arc or state."""
    n = num_states
    if n < 0:
        raise FsaError(f"{where}num_states must be >= 0, got {n}")
    if arcs.numel() == 0:
        return
    src, dst, lab = arcs[:, 0], arcs[:, 1], arcs[:, 2]

    def first(mask):
        return int(torch.nonzero(mask)[0, 0])

    bad = (src < 0) | (src >= n) | (dst < 0) | (dst >= n)
    if bool(bad.any()):
        i = first(bad)
        raise FsaError(f"{where}arc {i} ({int(src[i])} -> {int(dst[i])}) refers to a state that does not exist "
                       f"(the FSA has {n} states, 0..{n - 1})")
    if n == 1:
        raise FsaError(f"{where}an FSA with arcs needs at least 2 states (start and final)")
    final = n - 1
    bad = (lab == -1) & (dst != final)
    if bool(bad.any()):
        i = first(bad)
        raise FsaError(f"{where}arc {i} ({int(src[i])} -> {int(dst[i])}) has label -1 but does not enter the "
                       f"final state {final}")
    bad = (dst == final) & (lab != -1)
    if bool(bad.any()):
        i = first(bad)
        raise FsaError(f"{where}arc {i} ({int(src[i])} -> {int(dst[i])}) enters the final state {final} with label "
                       f"{int(lab[i])}; only label -1 may enter the final state")
    bad = src == final
    if bool(bad.any()):
        i = first(bad)
        raise FsaError(f"{where}arc {i} leaves the final state {final}; the final state has no leaving arcs")
    bad = lab < -1
    if bool(bad.any()):
        i = first(bad)
        raise FsaError(f"{where}arc {i} has label {int(lab[i])}; labels are >= 0, or -1 for arcs into the final state")
    bad = torch.isnan(scores.detach())
    if bool(bad.any()):
        i = first(bad)
        raise FsaError(f"{where}arc {i} ({int(src[i])} -> {int(dst[i])}) has a NaN score")
    bad = scores.detach() == float("inf")
    if bool(bad.any()):
        i = first(bad)
        raise FsaError(f"{where}arc {i} ({int(src[i])} -> {int(dst[i])}) has score +inf")
    if aux_labels is not None:
        bad = (lab == -1) & (aux_labels != -1)
        if bool(bad.any()):
            i = first(bad)
            raise FsaError(f"{where}arc {i} enters the final state with aux_label {int(aux_labels[i])}; "
                           f"it must be -1 (as in k2)")
        bad = (lab != -1) & (aux_labels < 0)
        if bool(bad.any()):
            i = first(bad)
            raise FsaError(f"{where}arc {i} has aux_label {int(aux_labels[i])}; only arcs into the final state "
                           f"carry -1")


class Fsa(_Graphs):
    """One finite-state acceptor (or transducer, when ``aux_labels`` is given).

    Args:
        arcs: ``[num_arcs, 3]`` integers ``(src, dst, label)``, or a list of ``(src, dst, label)`` /
            ``(src, dst, label, score)`` tuples (then ``scores`` may be omitted).
        scores: ``[num_arcs]`` floating scores (log domain, higher is better). Default zeros (float32).
        aux_labels: ``[num_arcs]`` output labels; makes the FSA a transducer.
        num_states: default ``1 + max(dst)`` (the final state is the last state).
        **attrs: extra per-arc tensors (first dimension ``num_arcs``) that follow every operation.

    Arcs are stable-sorted by source state if they are not already (scores and attributes follow).
    Raises `FsaError` when the arcs break the FSA rules.
    """

    def __init__(self, arcs, scores=None, aux_labels=None, num_states: Optional[int] = None,
                 dtype: Optional[torch.dtype] = None, **attrs):
        if isinstance(arcs, torch.Tensor):
            if arcs.dtype.is_floating_point:
                raise FsaError(f"arcs must be an integer tensor [num_arcs, 3], got dtype {arcs.dtype}")
            arcs_t = arcs.to(torch.int64)
        else:
            rows = [tuple(r) for r in arcs]
            widths = {len(r) for r in rows}
            if widths - {3, 4}:
                raise FsaError(f"each arc is (src, dst, label) or (src, dst, label, score); got lengths {sorted(widths)}")
            if len(widths) > 1:
                raise FsaError("mixed arc tuple lengths: give a score for every arc or for none")
            for i, r in enumerate(rows):
                for x in r[:3]:
                    if isinstance(x, float) and not float(x).is_integer() or isinstance(x, bool):
                        raise FsaError(f"arc {i}: state ids and labels must be integers, got {r[:3]}")
            arcs_t = torch.tensor([r[:3] for r in rows], dtype=torch.int64).view(-1, 3)
            if widths == {4}:
                if scores is not None:
                    raise FsaError("scores given twice: in the arc tuples and as `scores`")
                scores = torch.tensor([float(r[3]) for r in rows], dtype=dtype or torch.float32)
        if arcs_t.dim() != 2 or arcs_t.shape[1] != 3:
            raise FsaError(f"arcs must have shape [num_arcs, 3], got {tuple(arcs_t.shape)}")
        A = arcs_t.shape[0]
        if scores is None:
            scores = torch.zeros(A, dtype=dtype or torch.float32, device=arcs_t.device)
        else:
            scores = torch.as_tensor(scores, device=arcs_t.device)
            if not scores.dtype.is_floating_point:
                raise FsaError(f"scores must be a floating tensor, got dtype {scores.dtype}")
            if dtype is not None:
                scores = scores.to(dtype)
        if scores.shape != (A,):
            raise FsaError(f"scores must have shape [num_arcs]=[{A}], got {tuple(scores.shape)}")
        if aux_labels is not None:
            aux_labels = _as_long(aux_labels, "aux_labels", arcs_t.device)
            if aux_labels.shape != (A,):
                raise FsaError(f"aux_labels must have shape [{A}], got {tuple(aux_labels.shape)}")
        if num_states is None:
            num_states = int(arcs_t[:, :2].max()) + 1 if A else 0
        _validate(arcs_t, scores, num_states, aux_labels, "")
        # stable sort by source state, as k2 requires (and as from_str promises)
        if A > 1 and bool((arcs_t[1:, 0] < arcs_t[:-1, 0]).any()):
            order = torch.sort(arcs_t[:, 0], stable=True).indices
            arcs_t, scores = arcs_t[order], scores[order]
            aux_labels = None if aux_labels is None else aux_labels[order]
            attrs = {k: torch.as_tensor(v)[order] for k, v in attrs.items()}
        dev = arcs_t.device
        object.__setattr__(self, "arcs", arcs_t)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "aux_labels", aux_labels)
        object.__setattr__(self, "arc_splits", torch.tensor([0, A], dtype=torch.int64, device=dev))
        object.__setattr__(self, "state_splits", torch.tensor([0, num_states], dtype=torch.int64, device=dev))
        object.__setattr__(self, "_attrs", {})
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_prop", {})
        for k, v in attrs.items():
            self.set_attr(k, v)

    @property
    def num_states(self) -> int:
        return int(self.state_splits[1])

    @classmethod
    def from_str(cls, text: str, acceptor: bool = True, openfst: bool = False,
                 dtype: torch.dtype = torch.float32) -> "Fsa":
        """Parse k2's text format (or OpenFst's with ``openfst=True``); see `gtn.io.from_str`."""
        from . import io
        return io.from_str(text, acceptor=acceptor, openfst=openfst, dtype=dtype)

    @classmethod
    def from_openfst(cls, text: str, acceptor: bool = True, dtype: torch.dtype = torch.float32) -> "Fsa":
        from . import io
        return io.from_str(text, acceptor=acceptor, openfst=True, dtype=dtype)

    @classmethod
    def from_networkx(cls, graph, **kwargs) -> "Fsa":
        from . import io
        return io.from_networkx(graph, **kwargs)

    def to_networkx(self):
        from . import io
        return io.to_networkx(self)

    def __repr__(self):
        kind = "transducer" if self.aux_labels is not None else "acceptor"
        extra = f", attrs={sorted(self._attrs)}" if self._attrs else ""
        return (f"Fsa({kind}, num_states={self.num_states}, num_arcs={self.num_arcs}, "
                f"dtype={self.dtype}, device={self.device}{extra})")


class FsaVec(_Graphs):
    """A batch of FSAs in one arc tensor (ragged ``arc_splits`` / ``state_splits``).

    ``FsaVec([fsa0, fsa1, ...])`` stacks members (all acceptors or all transducers, with the same attribute
    names; scores are promoted to a common dtype and stay connected for autograd). ``len(v)``, ``v[i]``
    (an `Fsa` whose scores are a differentiable slice), iteration and ``v[a:b]`` work as for a list.
    """

    def __init__(self, fsas: Sequence[Fsa]):
        fsas = list(fsas)
        if not fsas:
            raise FsaError("FsaVec needs at least one FSA (got an empty list)")
        for i, f in enumerate(fsas):
            if not isinstance(f, Fsa):
                raise FsaError(f"FsaVec members must be Fsa objects; member {i} is {type(f).__name__}")
        acc = {f.aux_labels is None for f in fsas}
        if len(acc) > 1:
            i = next(i for i, f in enumerate(fsas) if (f.aux_labels is None) != (fsas[0].aux_labels is None))
            raise FsaError(f"FsaVec members must all be acceptors or all transducers; member {i} differs from member 0")
        names = set(fsas[0]._attrs)
        for i, f in enumerate(fsas):
            if set(f._attrs) != names:
                raise FsaError(f"member {i} has attributes {sorted(f._attrs)}, member 0 has {sorted(names)}")
        dev = fsas[0].device
        arcs, scores, aux, attrs = _concat_arc_data(fsas, names)
        na = torch.tensor([0] + [f.num_arcs for f in fsas], dtype=torch.int64)
        ns = torch.tensor([0] + [f.num_states for f in fsas], dtype=torch.int64)
        for k, v in (("arcs", arcs), ("scores", scores), ("aux_labels", aux),
                     ("arc_splits", torch.cumsum(na, 0).to(dev)), ("state_splits", torch.cumsum(ns, 0).to(dev)),
                     ("_attrs", attrs), ("_cache", {}), ("_prop", {})):
            object.__setattr__(self, k, v)

    def __len__(self):
        return self.num_fsas

    @property
    def num_states(self) -> torch.Tensor:
        """``[num_fsas]`` states of each member (k2's FsaVec has the same per-member view)."""
        return self.states_per_fsa

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            idx = list(range(n))[i]
            if not idx:
                raise FsaError("an FsaVec slice must select at least one FSA")
            return select(self, torch.tensor(idx, dtype=torch.int64, device=self.device))
        if isinstance(i, torch.Tensor) and i.dim() == 1:
            return select(self, i.to(self.device, torch.int64))
        i = int(i)
        if i < -n or i >= n:
            raise IndexError(f"FsaVec index {i} out of range for {n} FSAs")
        i %= n
        a0, a1 = int(self.arc_splits[i]), int(self.arc_splits[i + 1])
        s0, s1 = int(self.state_splits[i]), int(self.state_splits[i + 1])
        dev = self.device
        return Fsa._from_parts(
            self.arcs[a0:a1], self.scores[a0:a1],
            torch.tensor([0, a1 - a0], dtype=torch.int64, device=dev),
            torch.tensor([0, s1 - s0], dtype=torch.int64, device=dev),
            None if self.aux_labels is None else self.aux_labels[a0:a1],
            {k: v[a0:a1] for k, v in self._attrs.items()})

    def __iter__(self) -> Iterator[Fsa]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self):
        kind = "transducers" if self.aux_labels is not None else "acceptors"
        extra = f", attrs={sorted(self._attrs)}" if self._attrs else ""
        return (f"FsaVec({len(self)} {kind}, total_states={self.total_states}, num_arcs={self.num_arcs}, "
                f"dtype={self.dtype}, device={self.device}{extra})")


def select(vec: FsaVec, index: torch.Tensor) -> FsaVec:
    """The members ``index`` of ``vec`` (in that order, repeats allowed) as a new `FsaVec`; differentiable."""
    n = len(vec)
    if bool(((index < -n) | (index >= n)).any()):
        raise FsaError(f"FsaVec index out of range for {n} FSAs: {index.tolist()}")
    index = index % n
    na, ns = vec.arcs_per_fsa[index], vec.states_per_fsa[index]
    arc_map = _ragged_range(vec.arc_splits[:-1][index], na)
    dev = vec.device
    arc_splits = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), torch.cumsum(na, 0)])
    state_splits = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), torch.cumsum(ns, 0)])
    return vec._derive(vec.arcs[arc_map], arc_map, arc_splits, state_splits, kind=FsaVec)


def _ragged_range(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Concatenation of ``arange(starts[i], starts[i] + counts[i])`` over i, without a Python loop."""
    total = int(counts.sum()) if counts.numel() else 0
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=starts.device)
    offs = torch.cumsum(counts, 0) - counts
    rep_start = torch.repeat_interleave(starts - offs, counts, output_size=total)
    return rep_start + torch.arange(total, device=starts.device)


ragged_range = _ragged_range


def as_vec(x: Union[Fsa, FsaVec]) -> FsaVec:
    """View any graph as an `FsaVec` (an `Fsa` becomes a batch of one, sharing tensors)."""
    if isinstance(x, FsaVec):
        return x
    if not isinstance(x, Fsa):
        raise FsaError(f"expected an Fsa or FsaVec, got {type(x).__name__}")
    return FsaVec._from_parts(x.arcs, x.scores, x.arc_splits, x.state_splits, x.aux_labels, x._attrs, x._prop)


def like(result: FsaVec, template: Union[Fsa, FsaVec]) -> Union[Fsa, FsaVec]:
    """Return ``result`` as the same kind as ``template`` (an `Fsa` template needs a one-member result)."""
    if isinstance(template, FsaVec):
        return result
    if result.num_fsas != 1:
        raise FsaError("internal: an Fsa input must give a one-member result")
    return Fsa._from_parts(result.arcs, result.scores, result.arc_splits, result.state_splits,
                           result.aux_labels, result._attrs, result._prop)


def per_fsa(values: torch.Tensor, template: Union[Fsa, FsaVec]) -> torch.Tensor:
    """A ``[num_fsas]`` result shaped as the API promises: ``[]`` for an `Fsa`, ``[num_fsas]`` for an `FsaVec`."""
    return values.reshape(()) if isinstance(template, Fsa) else values


def from_arcs(arcs: torch.Tensor, scores: torch.Tensor, arc_splits: torch.Tensor, state_splits: torch.Tensor,
              aux_labels=None, attrs=None) -> FsaVec:
    """Internal constructor for algorithms that build arcs already sorted by (member, src) with local ids."""
    return FsaVec._from_parts(arcs, scores, arc_splits, state_splits, aux_labels, attrs)


def validate(x: Union[Fsa, FsaVec]) -> None:
    """Check every member of ``x`` against the FSA rules (raises `FsaError` naming member and arc)."""
    v = as_vec(x)
    for i in range(len(v)):
        m = FsaVec.__getitem__(v, i)
        where = f"FSA {i} of the batch: " if isinstance(x, FsaVec) else ""
        _validate(m.arcs, m.scores, m.num_states, m.aux_labels, where)
