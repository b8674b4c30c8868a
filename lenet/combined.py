"""Reading with several string readers at once: the product of their posteriors.

The two readers fail on different strings. The segmentation reader cannot read a string whose true
segmentation is not a path of its graph (digits whose strokes cross); the SDNN has no segmentation to miss
but reads clean, separate digits less well. `CombinedReader` reads every image with each of its **members**
and keeps, among their readings, the one the members find most probable together::

    both = CombinedReader([lenet.load("reader.pt"), lenet.load("sdnn.pt")])
    both.decode(images)                          # or lenet.recognize(images, both)
    save_combined(both, "both.pt")               # lenet.load / lenet.recognize read it back

Each member ``m`` gives a candidate string ``y`` its **energy** ``E_m(y)``: its discriminative forward loss
(``m.loss``), minus the log of the posterior of ``y`` among all the readings of its graph (``+inf`` where no
path of its graph spells ``y``). The combined reading of an image is the member reading of least total
energy ``Σ_m w_m E_m(y)`` — the product of the members' posteriors raised to the ``weights`` (a product of
experts; weights 1 by default, nothing tuned). Where the members agree nothing more is computed. Ties go to
the earlier member's reading; an empty reading (no digit) has infinite energy, and an image none of whose
candidates has a finite total keeps the reading of the first member with a positive weight.

With a ``lexicon`` every member reads with it, and a word's own score in a weighted lexicon counts once per
unit of weight (so the choice is the one the members' lexicon-constrained posteriors make; an unweighted
lexicon changes nothing there); a candidate that is not a word has infinite energy.

The isolated-digit view of the combination (``CombinedReader.model``, used by `lenet.robustness` for the
ceiling) is the same product on one digit: the members' networks' penalties for the ten digits, weighted
and summed (a network's penalties are its negative log-scores; the SDNN's blank output is left out).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .grammars import as_lexicon
from .labels import digits_to_labels

__all__ = ["CombinedReader", "PenaltySum", "save_combined", "CHECKPOINT_KIND"]

#: Checkpoint kind of a `CombinedReader` (``lenet.load`` dispatches on it).
CHECKPOINT_KIND = "combined_reader"


class PenaltySum(nn.Module):
    """``Σ_m w_m · net_m(x)[:, :10]``: several digit networks read as one (their product of experts on one
    digit). Each network gets the input in its own dtype; the sum is in the first network's dtype."""

    num_classes = 10

    def __init__(self, networks: Sequence[nn.Module], weights: Sequence[float]):
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.weights = [float(w) for w in weights]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for w, net in zip(self.weights, self.networks):
            dtype = next(net.parameters()).dtype
            pen = w * net(x.to(dtype))[:, :10]
            out = pen if out is None else out + pen.to(out.dtype)
        return out


class CombinedReader(nn.Module):
    """Several string readers read together (see the module docstring).

    Args:
        members: two or more readers with ``decode(images, lexicon=...)`` and ``loss(images, labels,
            reduction="none")`` (`lenet.recognizer.StringReader`, `lenet.sdnn.SDNNReader`, or another
            `CombinedReader`).
        weights: one non-negative exponent per member (default all 1), not all zero.
    """

    def __init__(self, members: Sequence[nn.Module], weights: Optional[Sequence[float]] = None):
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"a combined reader needs at least two readers, got {len(members)}")
        for i, m in enumerate(members):
            if not (isinstance(m, nn.Module) and hasattr(m, "decode") and hasattr(m, "loss")):
                raise TypeError(f"member {i} is a {type(m).__name__}, not a string reader (a StringReader, "
                                f"SDNNReader or CombinedReader)")
        if weights is None:
            weights = [1.0] * len(members)
        weights = [float(w) for w in weights]
        if len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} readers")
        if any(not w >= 0 or w == float("inf") for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"weights must be finite, non-negative and not all zero, got {weights}")
        self.members = nn.ModuleList(members)
        self.weights = weights

    @property
    def model(self) -> PenaltySum:
        """The members' networks as one digit classifier (`PenaltySum`): the combination's reading of one
        isolated digit, from which `lenet.robustness` computes the ceiling."""
        return PenaltySum([m.model for m in self.members], self.weights)

    # ---- scoring
    def energies(self, images, texts: Sequence[str], lexicon=None) -> torch.Tensor:
        """``float64 [N]``: the total energy ``Σ_m w_m E_m(texts[i])`` of each image's text (``+inf`` where a
        member with a positive weight cannot spell it, or, with a ``lexicon``, where it is not a word)."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        return self.candidate_energies(list(images), [[t] for t in texts], lexicon)

    def candidate_energies(self, images, candidates: Sequence[Sequence[str]], lexicon=None) -> torch.Tensor:
        """The total energy of every candidate text of every image (``candidates[i]``: image ``i``'s texts), one
        flat ``float64`` tensor in that order; each member reads each image once (its ``candidate_losses``)."""
        if len(images) != len(candidates):
            raise ValueError(f"{len(images)} images but {len(candidates)} candidate lists")
        texts = [t for c in candidates for t in c]
        total = torch.full((len(texts),), float("inf"), dtype=torch.float64)
        # an empty reading (no digit) has no energy (+inf): only the images with a non-empty candidate are read
        keep = [[t for t in c if t] for c in candidates]
        rows = [i for i, c in enumerate(keep) if c]
        if not rows:
            return total
        ims, cands = [images[i] for i in rows], [keep[i] for i in rows]
        part = torch.zeros(len(texts) - texts.count(""), dtype=torch.float64)
        for w, m in zip(self.weights, self.members):
            if w == 0:
                continue
            with torch.no_grad():
                part = part + w * _candidate_losses(m, ims, cands).detach().double()
        if lexicon is not None:
            import gtn
            lex = as_lexicon(lexicon, torch.float64)
            words = gtn.linear_fsa([digits_to_labels(t) for c in cands for t in c], dtype=torch.float64)
            part = part - sum(self.weights) * gtn.compose_score(words, lex)
        # the non-empty candidates, flattened, are in the order of the whole flat list with the empty ones left out
        total[torch.tensor([bool(t) for t in texts])] = torch.where(torch.isnan(part), torch.inf, part)
        return total

    def candidate_losses(self, images, candidates: Sequence[Sequence[str]]) -> torch.Tensor:
        """``Σ_m w_m`` × each member's loss of every candidate text of every image (as the members'
        ``candidate_losses``), so that a combination can itself be a member of another."""
        if len(images) != len(candidates):
            raise ValueError(f"{len(images)} images but {len(candidates)} candidate lists")
        return sum(w * _candidate_losses(m, images, candidates) for w, m in zip(self.weights, self.members)
                   if w != 0)

    def loss(self, images, labels: Sequence[str], reduction: str = "mean") -> torch.Tensor:
        """``Σ_m w_m · m.loss(images, labels)`` (the combination's energy of the labels; differentiable, so the
        members can be trained together through it). ``reduction``: "mean", "sum" or "none"."""
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        per = sum(w * m.loss(images, labels, reduction="none") for w, m in zip(self.weights, self.members)
                  if w != 0)
        if reduction == "none":
            return per
        from .model import _reduce
        return _reduce(per, reduction)

    # ---- reading
    @torch.no_grad()
    def decode(self, images, lexicon=None, return_confidence: bool = False):
        """The combined reading of each image (a list of str; see the module docstring). ``lexicon``: as for
        the members' ``decode``. ``return_confidence`` also returns (last) a tensor ``[N]`` in ``[0, 1]``: the
        product of the members' posteriors of the string read, each raised to its weight (``exp`` of minus the
        total energy; 0 where a member cannot spell it)."""
        images = list(images)
        readings = [m.decode(images, lexicon=lexicon) for m in self.members]
        # each image's distinct readings, in member order
        candidates = [list(dict.fromkeys(r[i] for r in readings)) for i in range(len(images))]
        first = next(k for k, w in enumerate(self.weights) if w > 0)
        texts = list(readings[first])      # the fallback: the first weighted member's reading
        # the images to score: those the members disagree on (all of them for the confidence)
        rows = [i for i, c in enumerate(candidates) if return_confidence or len(c) > 1]
        energy = {}
        if rows:
            e = self.candidate_energies([images[i] for i in rows], [candidates[i] for i in rows], lexicon).tolist()
            k = 0
            for i in rows:
                best, best_e = None, float("inf")
                for t in candidates[i]:
                    energy[(i, t)] = e[k]
                    if e[k] < best_e:      # strictly less: ties keep the earlier member's reading
                        best, best_e = t, e[k]
                    k += 1
                if best is not None:
                    texts[i] = best
        if not return_confidence:
            return texts
        conf = torch.tensor([energy.get((i, t), float("inf")) for i, t in enumerate(texts)], dtype=torch.float64)
        return texts, torch.exp(-conf)

    def config(self):
        return {"members": [list(_member_record(m)) for m in self.members], "weights": list(self.weights)}


def _candidate_losses(member: nn.Module, images, candidates: Sequence[Sequence[str]]) -> torch.Tensor:
    """A member's loss of every candidate of every image: its ``candidate_losses`` (each image read once) when
    it has one, else its ``loss`` on each image repeated once per candidate."""
    if hasattr(member, "candidate_losses"):
        return member.candidate_losses(images, candidates)
    return member.loss([im for im, c in zip(images, candidates) for _ in c], [t for c in candidates for t in c],
                       reduction="none")


# ---------------------------------------------------------------------------------------------- checkpoints
def _member_record(reader: nn.Module):
    """``(kind, config)`` of a member, as its own checkpoint would hold them."""
    from .recognizer import CHECKPOINT_KIND as READER_KIND, StringReader
    from .sdnn import CHECKPOINT_KIND as SDNN_KIND, SDNNReader
    if isinstance(reader, CombinedReader):
        return CHECKPOINT_KIND, reader.config()
    if isinstance(reader, (StringReader, SDNNReader)):
        kind = READER_KIND if isinstance(reader, StringReader) else SDNN_KIND
        return kind, {"reader": reader.config(), "model": reader.model.config()}
    raise TypeError(f"cannot save a {type(reader).__name__} as a member of a combined reader")


def save_combined(reader: CombinedReader, path, **extra):
    """Write ``reader`` as a ``"combined_reader"`` checkpoint: each member's own checkpoint config, the
    weights, and all the members' tensors (``lenet.load`` / ``lenet.recognize`` read it back)."""
    from .checkpoint import save
    if not isinstance(reader, CombinedReader):
        raise TypeError(f"save_combined saves a CombinedReader, got {type(reader).__name__}")
    return save(path, CHECKPOINT_KIND, reader.config(), reader.state_dict(), **extra)


def _load_combined(ckpt) -> CombinedReader:
    from .checkpoint import from_checkpoint
    cfg = ckpt["config"]
    state = ckpt["state_dict"]
    members = []
    for i, (kind, config) in enumerate(cfg["members"]):
        prefix = f"members.{i}."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        members.append(from_checkpoint({"kind": kind, "config": config, "state_dict": sub}))
    return CombinedReader(members, cfg["weights"]).eval()
