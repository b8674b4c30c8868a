"""`gtn.Transformer`: the base class of graph transformers (LeCun et al. 1998, section IV).

A graph transformer is a module whose ``forward`` takes graphs (and tensors) and returns graphs. Because
every gtn operation is differentiable through ordinary ``torch.autograd``, a graph transformer is simply a
``torch.nn.Module``: its trainable numbers are ``nn.Parameter``s (network weights, or the arc scores of a graph
it owns), the graphs it outputs carry scores computed from them, and ``loss.backward()`` reaches them through
the arc maps of compose/union/... and the scoring functions.

The pattern::

    class Lexicon(gtn.Transformer):
        "Maps digit strings to words; its arc scores are learned."
        def __init__(self, lexicon: gtn.Fsa):
            super().__init__()
            self.register_graph("lexicon", lexicon, trainable=True)   # scores become a Parameter

        def forward(self, lattice):                 # an Fsa or FsaVec of digit hypotheses
            return gtn.compose(lattice, self.lexicon)   # self.lexicon is an Fsa built from the Parameter

    reader = torch.nn.Sequential(recognizer, Lexicon(lex), grammar)   # transformers chain like layers
    loss = -gtn.forward_score(gtn.compose(reader(images), target)) + gtn.forward_score(reader(images))
    loss.backward()

``register_graph`` keeps the structure of an FSA (arcs, splits, aux_labels, integer attributes) as buffers, so
``.to(device)``, ``.double()``, ``state_dict()`` and ``load_state_dict()`` handle it like any other module
state; the scores (and floating attributes) are a Parameter when ``trainable`` else a buffer.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

import torch

from .fsa import Fsa, FsaError, FsaVec

__all__ = ["Transformer"]

_SEP = "__"


class Transformer(torch.nn.Module):
    """Base class for graph transformers: a ``torch.nn.Module`` whose ``forward`` maps graphs (``Fsa`` /
    ``FsaVec``, possibly with tensors) to graphs. Subclasses implement ``forward``; graphs the transformer
    owns are registered with `register_graph` and read back as attributes (``self.<name>``)."""

    def __init__(self):
        super().__init__()
        # name -> (kind, transducer, attribute names); the tensors themselves are buffers/parameters
        self._gtn_graphs: Dict[str, Tuple[type, bool, Tuple[str, ...]]] = {}

    def register_graph(self, name: str, fsa: Union[Fsa, FsaVec], trainable: bool = False) -> None:
        """Make ``fsa`` part of this module under ``name`` (then ``self.<name>`` returns it).

        The structure is stored as buffers; the scores as an ``nn.Parameter`` when ``trainable`` (so an
        optimizer over ``self.parameters()`` learns the arc scores) or as a buffer otherwise. The scores are
        copied (detached): the module owns them."""
        if not isinstance(fsa, (Fsa, FsaVec)):
            raise FsaError(f"register_graph: {name!r} must be an Fsa or FsaVec, got {type(fsa).__name__}")
        if "_gtn_graphs" not in self.__dict__:
            raise FsaError("register_graph: call super().__init__() in your Transformer's __init__ first")
        if not name.isidentifier() or _SEP in name:
            raise FsaError(f"register_graph: {name!r} must be an identifier without {_SEP!r}")
        if name in self._gtn_graphs or hasattr(self, name):
            raise FsaError(f"register_graph: {name!r} is already an attribute of this module")
        p = name + _SEP
        self.register_buffer(p + "arcs", fsa.arcs.clone())
        self.register_buffer(p + "arc_splits", fsa.arc_splits.clone())
        self.register_buffer(p + "state_splits", fsa.state_splits.clone())
        if fsa.aux_labels is not None:
            self.register_buffer(p + "aux_labels", fsa.aux_labels.clone())
        scores = fsa.scores.detach().clone()
        if trainable:
            self.register_parameter(p + "scores", torch.nn.Parameter(scores))
        else:
            self.register_buffer(p + "scores", scores)
        for k, v in fsa.attrs.items():
            v = v.detach().clone()
            if trainable and v.dtype.is_floating_point:
                self.register_parameter(p + "attr" + _SEP + k, torch.nn.Parameter(v))
            else:
                self.register_buffer(p + "attr" + _SEP + k, v)
        self._gtn_graphs[name] = (type(fsa), fsa.aux_labels is not None, tuple(fsa.attrs))

    def graph(self, name: str) -> Union[Fsa, FsaVec]:
        """The registered graph ``name``, built from the module's current tensors (scores connected to the
        Parameter, so gradients reach it)."""
        if name not in self._gtn_graphs:
            raise FsaError(f"no graph {name!r} registered (have {sorted(self._gtn_graphs)})")
        kind, transducer, attrs = self._gtn_graphs[name]
        p = name + _SEP
        get = lambda k: getattr(self, p + k)  # noqa: E731
        return kind._from_parts(get("arcs"), get("scores"), get("arc_splits"), get("state_splits"),
                                get("aux_labels") if transducer else None,
                                {k: get("attr" + _SEP + k) for k in attrs})

    def graphs(self) -> Dict[str, Union[Fsa, FsaVec]]:
        """All registered graphs by name."""
        return {n: self.graph(n) for n in self._gtn_graphs}

    def __getattr__(self, name):
        graphs = self.__dict__.get("_gtn_graphs")
        if graphs is not None and name in graphs:
            return self.graph(name)
        return super().__getattr__(name)

    def extra_repr(self) -> str:
        parts = []
        for n in self._gtn_graphs:
            g = self.graph(n)
            parts.append(f"{n}={g!r}")
        return ", ".join(parts)
