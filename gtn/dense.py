"""Dense emissions as an implicit graph, their intersection with graphs, and the fused frame loop.

`DenseFsaVec` holds per-frame log-probabilities ``[batch, frames, symbols]`` of ``batch`` sequences (each with
its own length). As a graph it would be a chain of ``frames`` steps with one arc per symbol; it is never built.

`intersect_dense` pairs a graph (one `Fsa` shared by the batch, or an `FsaVec` with one graph per sequence)
with the frames, as k2's ``intersect_dense`` does: every arc with label ``l >= 0`` consumes one frame and adds
``log_probs[b, t, l]`` to the arc's score (label 0 is an ordinary symbol, the CTC blank; there are no
epsilons); arcs labelled ``-1`` are taken after the last frame, on an extra "final" frame with emission 0. A
path therefore takes exactly ``lengths[b]`` labelled arcs and then one ``-1`` arc. Cycles are allowed: the
frames bound the path length. The result is the lattice, an `FsaVec` whose states are the (frame, graph
state) pairs lying on a successful path; its scores are gathered (``index_select``) from the graph scores and
from ``log_probs``, so autograd reaches both with no custom code.

`dense_forward_score` gives the lattice's forward (log-sum-exp) or Viterbi (max) score without building it:
one frame loop over all graph arcs of the whole batch, alpha kept per frame, and a custom backward (beta run
backwards, arc posteriors scattered onto graph arcs and emissions; for Viterbi the best path traced back).
On CPU it runs a numba kernel (`gtn.kernels.dense_numba`) when numba imports; the pure-torch frame loop here
is the reference, the GPU path and the fallback; the choice is the library's one policy (`gtn.kernels.select`):
pass ``backend="torch"``, or disable every kernel of the library with ``GTN_NO_NUMBA=1`` /
`gtn.kernels.use_numba(False)`, to force it (the old ``GTN_DENSE_BACKEND=torch`` still works and warns).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Union

import numpy as np
import torch

from .fsa import Fsa, FsaError, FsaVec, as_vec, index_arcs, ragged_range

__all__ = ["DenseFsaVec", "intersect_dense", "dense_forward_score"]

_NEG_INF = float("-inf")
def _select(backend: str, device, dtype):
    """The dense kernels or None (the torch frame loop), by the library's one policy (`gtn.kernels.select`).

    The old variable ``GTN_DENSE_BACKEND=torch`` is deprecated (it warns once): it still makes ``"auto"`` mean
    torch here; use ``GTN_NO_NUMBA=1`` (every kernel) or ``backend="torch"`` instead."""
    from . import kernels
    backend = kernels.check_backend(backend, "dense_forward_score")
    if backend == "auto" and os.environ.get("GTN_DENSE_BACKEND", "").lower() == "torch":
        if "dense_env" not in kernels._WARNED:
            kernels._WARNED.add("dense_env")
            warnings.warn("GTN_DENSE_BACKEND is deprecated: use GTN_NO_NUMBA=1 or backend='torch'",
                          DeprecationWarning, stacklevel=4)
        return None
    return kernels.select("dense_numba", device, dtype, backend, "dense_forward_score")


class DenseFsaVec:
    """Per-frame emission scores of a batch of sequences, seen as an implicit graph.

    Args:
        log_probs: ``[batch, frames, symbols]`` floating tensor (usually ``log_softmax`` outputs, but any
            log-domain scores work); sequence ``b`` uses frames ``0 .. lengths[b]-1`` of row ``b``.
        lengths: ``[batch]`` integers in ``0 .. frames`` (default: every sequence uses all frames).

    Symbol ``c`` at frame ``t`` of sequence ``b`` scores ``log_probs[b, t, c]``. Nothing of size
    ``frames x symbols`` is materialised beyond ``log_probs`` itself.

    Raises `FsaError` on a wrong shape or dtype, lengths out of range, or a NaN / ``+inf`` in a used frame.
    """

    def __init__(self, log_probs: torch.Tensor, lengths=None):
        if not isinstance(log_probs, torch.Tensor):
            raise FsaError(f"log_probs must be a tensor [batch, frames, symbols], got {type(log_probs).__name__}")
        if log_probs.dim() != 3:
            raise FsaError(f"log_probs must have shape [batch, frames, symbols], got {tuple(log_probs.shape)}")
        if not log_probs.dtype.is_floating_point:
            raise FsaError(f"log_probs must be a floating tensor, got dtype {log_probs.dtype}")
        B, T, C = log_probs.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.int64)
        lengths = torch.as_tensor(lengths)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise FsaError(f"lengths must be integers, got dtype {lengths.dtype}")
        lengths = lengths.to(torch.int64).reshape(-1).cpu()
        if lengths.numel() != B:
            raise FsaError(f"lengths must have one entry per sequence ({B}), got {lengths.numel()}")
        bad = (lengths < 0) | (lengths > T)
        if bool(bad.any()):
            b = int(bad.nonzero()[0])
            raise FsaError(f"sequence {b} of the batch has length {int(lengths[b])}, outside 0..{T} (frames)")
        lp = log_probs.detach()
        # one pass, no [B, T, C] temporaries: the maximum is NaN or +inf exactly when some entry is
        if lp.numel() == 0:
            suspicious = False
        elif lp.device.type == "cpu" and lp.dtype in (torch.float32, torch.float64):  # numpy: no thread latency
            suspicious = not bool(lp.numpy().max() < np.inf)
        else:
            suspicious = not bool(lp.max() < float("inf"))
        if suspicious:
            used = torch.arange(T, device=lp.device)[None, :] < lengths.to(lp.device)[:, None]
            badv = (torch.isnan(lp) | (lp == float("inf"))) & used[:, :, None]
            if bool(badv.any()):
                b, t, c = (int(x) for x in badv.nonzero()[0])
                raise FsaError(f"sequence {b} of the batch has log_probs[{b}, {t}, {c}] = {float(lp[b, t, c])} "
                               f"(NaN and +inf are not valid scores)")
        self.log_probs = log_probs
        self.lengths = lengths

    @property
    def scores(self) -> torch.Tensor:
        """The emission scores ``[batch, frames, symbols]`` (k2's name)."""
        return self.log_probs

    @property
    def batch_size(self) -> int:
        return int(self.log_probs.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.log_probs.shape[1])

    @property
    def num_symbols(self) -> int:
        return int(self.log_probs.shape[2])

    @property
    def device(self) -> torch.device:
        return self.log_probs.device

    @property
    def dtype(self) -> torch.dtype:
        return self.log_probs.dtype

    def __len__(self) -> int:
        return self.batch_size

    def __repr__(self):
        return (f"DenseFsaVec(batch={self.batch_size}, frames={self.num_frames}, symbols={self.num_symbols}, "
                f"dtype={self.dtype}, device={self.device})")


# ---------------------------------------------------------------------------------------------- planning
class _Plan:
    """Which graph each sequence uses, plus index arrays for the torch and numba frame loops (built lazily)."""

    def __init__(self, graphs, dense: DenseFsaVec):
        if not isinstance(dense, DenseFsaVec):
            raise FsaError(f"expected a DenseFsaVec, got {type(dense).__name__}")
        gvec = as_vec(graphs)
        B = dense.batch_size
        if isinstance(graphs, FsaVec) and len(gvec) == B:
            gidx = torch.arange(B)
        elif isinstance(graphs, Fsa) or len(gvec) == 1:
            gidx = torch.zeros(B, dtype=torch.int64)
        else:
            raise FsaError(f"graphs has {len(gvec)} FSAs but the dense batch has {B} sequences "
                           f"(give one graph per sequence, or one Fsa for all)")
        if gvec.device != dense.device:
            raise FsaError(f"graphs are on {gvec.device} but log_probs on {dense.device}")
        C = dense.num_symbols
        if gvec.num_arcs:
            lab = gvec.labels
            bad = lab >= C
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                f = int(gvec.arc_fsa[i])
                where = f"FSA {f} of the batch: " if isinstance(graphs, FsaVec) else ""
                raise FsaError(f"{where}arc {i - int(gvec.arc_splits[f])} has label {int(lab[i])} but the "
                               f"emissions have only {C} symbols (0..{C - 1})")
        self.gvec, self.dense = gvec, dense
        self.gidx = gidx
        self.B, self.T, self.C = B, dense.num_frames, C
        self.lengths = dense.lengths  # cpu int64
        self.lab = gvec.labels  # the emission column each arc reads (relabelled by `narrow_columns`)
        self._ex = None
        self._nb = None

    def narrow_columns(self):
        """The emission columns the graphs read, when that is at most half of them; else None.

        Returns ``cols [B, K]``: sequence b reads only columns ``cols[b]`` (the distinct labels of its graph,
        ascending, padded with column 0), and relabels the plan's arcs ``0..K-1`` (``-1`` stays) so that the
        frame loops run on ``log_probs.gather(2, cols)`` (``[B, T, K]``) instead of every symbol. With a large
        vocabulary (CTC: at most U + 1 of C symbols per sequence) this keeps every per-frame pass, the
        kernels' float64 copy and the gradient they write at K columns; the gather's backward scatters the
        gradient into the full ``[B, T, C]`` once."""
        gv, C = self.gvec, self.C
        if self._ex is not None or self._nb is not None:
            raise RuntimeError("narrow_columns must come before the frame loops' index arrays are built")
        if gv.num_arcs == 0 or C < 2:
            return None
        lab = gv.labels.cpu().numpy()
        asplit = gv.arc_splits.cpu().numpy()
        nf = asplit.shape[0] - 1
        arc_fsa = np.repeat(np.arange(nf), np.diff(asplit))
        m = lab >= 0
        key = arc_fsa[m] * C + lab[m]
        uniq = np.unique(key)  # (graph, label) pairs, sorted: each graph's labels ascending
        f = uniq // C
        cnt = np.bincount(f, minlength=nf)
        K = max(int(cnt.max()) if uniq.size else 0, 1)
        if 2 * K > C:
            return None
        start = np.cumsum(cnt) - cnt
        table = np.zeros((nf, K), dtype=np.int64)
        table[f, np.arange(uniq.size) - start[f]] = uniq % C
        local = lab.copy()
        local[m] = np.searchsorted(uniq, key) - start[arc_fsa[m]]
        self.lab = torch.from_numpy(local).to(gv.device)
        self.C = K
        return torch.from_numpy(table[self.gidx.numpy()]).to(gv.device)

    def release(self):
        """Drop the frame loops' index arrays (they are rebuilt on demand)."""
        self._ex = self._nb = None

    # -------------------------------------------------------------- torch layout: one graph copy per sequence
    def expanded(self):
        if self._ex is None:
            gv, dev = self.gvec, self.gvec.device
            gidx = self.gidx.to(dev)
            na = gv.arcs_per_fsa[gidx]
            nst = gv.states_per_fsa[gidx]
            ex = {}
            ex["arc"] = ragged_range(gv.arc_splits[:-1][gidx], na)
            ex["seq"] = torch.repeat_interleave(torch.arange(self.B, device=dev), na)
            soff = torch.cumsum(nst, 0) - nst
            arcs = gv.arcs[ex["arc"]]
            ex["src"] = arcs[:, 0] + soff[ex["seq"]]
            ex["dst"] = arcs[:, 1] + soff[ex["seq"]]
            ex["lab"] = self.lab[ex["arc"]]
            ex["N"] = int(nst.sum())
            ex["has"] = nst > 0
            ex["start"] = soff
            ex["final"] = soff + nst - 1
            ex["arc_start"] = torch.cumsum(na, 0) - na
            ex["amax"] = int(na.max()) if na.numel() else 0
            self._ex = ex
        return self._ex

    def emission_matrix(self, scores, lp, Tn):
        """``W[t, a]`` for frames ``0..Tn-1`` and expanded arcs: score + emission where the arc may be taken at
        frame t (label >= 0 and t < length, or label -1 and t == length), else -inf."""
        ex = self.expanded()
        dev = lp.device
        dtype = torch.promote_types(lp.dtype, scores.dtype)
        lab, seq = ex["lab"], ex["seq"]
        t = torch.arange(Tn, device=dev)[:, None]
        L = self.lengths.to(dev)[seq]
        if self.T > 0:
            em = lp[seq[None, :], t.clamp(max=self.T - 1), lab.clamp(min=0)[None, :]].to(dtype)
            em = torch.where((lab >= 0)[None, :], em, torch.zeros((), dtype=dtype, device=dev))
        else:
            em = torch.zeros((Tn, lab.numel()), dtype=dtype, device=dev)
        valid = torch.where((lab >= 0)[None, :], t < L[None, :], t == L[None, :])
        W = em + scores.to(dtype)[ex["arc"]][None, :]
        return torch.where(valid, W, torch.full((), _NEG_INF, dtype=dtype, device=dev))

    # -------------------------------------------------------------- numba layout: graph-local, per sequence offsets
    def numba_arrays(self):
        """Graph-local index arrays for the numba kernels, built with numpy (small integer tables: no point in
        paying torch's dispatch and thread-pool latency for them)."""
        if self._nb is None:
            gv = self.gvec
            arcs = gv.arcs.cpu().numpy()
            labs = self.lab.cpu().numpy()
            asplit = gv.arc_splits.cpu().numpy()
            ssplit = gv.state_splits.cpu().numpy()
            nf = asplit.shape[0] - 1
            naf = np.diff(asplit)
            ns = np.diff(ssplit)
            N = int(ssplit[-1])
            arc_fsa = np.repeat(np.arange(nf), naf)
            soff = ssplit[:-1]
            srcg = arcs[:, 0] + soff[arc_fsa]
            dstg = arcs[:, 1] + soff[arc_fsa]
            in_order = np.argsort(dstg, kind="stable")
            in_splits = np.zeros(N + 1, dtype=np.int64)
            in_splits[1:] = np.cumsum(np.bincount(dstg, minlength=N))
            out_splits = np.zeros(N + 1, dtype=np.int64)
            out_splits[1:] = np.cumsum(np.bincount(srcg, minlength=N))
            gidx = self.gidx.numpy()
            L = self.lengths.numpy()
            sizes = (L + 1) * ns[gidx]
            self._nb = dict(
                gidx=gidx, lens=L, soff=np.ascontiguousarray(soff), ns=ns, aoff=np.ascontiguousarray(asplit[:-1]),
                naf=naf, arc_fsa=arc_fsa, in_splits=in_splits, in_arc=in_order,
                in_src=arcs[in_order, 0].copy(), in_lab=labs[in_order].copy(), out_splits=out_splits,
                src=arcs[:, 0].copy(), dst=arcs[:, 1].copy(), lab=labs.copy(),
                alpha_off=np.cumsum(sizes) - sizes, alpha_size=int(sizes.sum()),
                max_states=int(ns.max()) if nf else 0, max_arcs=int(naf.max()) if nf else 0,
            )
        return self._nb


def _seg_reduce(v, index, n, log_semiring):
    """Per-segment log-sum-exp (or max) of ``v`` grouped by ``index`` into ``n`` slots; empty slots -inf."""
    m = torch.full((n,), _NEG_INF, dtype=v.dtype, device=v.device)
    m = m.scatter_reduce(0, index, v, "amax", include_self=True)
    if not log_semiring:
        return m
    ms = torch.where(m == _NEG_INF, torch.zeros_like(m), m)
    s = torch.zeros_like(m).index_add_(0, index, (v - ms[index]).exp())
    return s.log() + ms


# ---------------------------------------------------------------------------------------------- torch frame loop
def _torch_forward(plan, scores, lp, log_semiring):
    ex = plan.expanded()
    Tn = int(plan.lengths.max()) + 1 if plan.B else 1
    W = plan.emission_matrix(scores, lp, Tn)
    N = ex["N"]
    alpha = torch.full((Tn + 1, N), _NEG_INF, dtype=W.dtype, device=W.device)
    alpha[0, ex["start"][ex["has"]]] = 0.0
    for t in range(Tn):
        alpha[t + 1] = _seg_reduce(alpha[t][ex["src"]] + W[t], ex["dst"], N, log_semiring)
    L = plan.lengths.to(W.device)
    Z = torch.full((plan.B,), _NEG_INF, dtype=W.dtype, device=W.device)
    has = ex["has"]
    Z[has] = alpha[(L + 1)[has], ex["final"][has]]
    return Z, (W, alpha)


def _torch_backward(plan, saved, Z, gz, log_semiring, scores, lp):
    ex = plan.expanded()
    W, alpha = saved
    Tn, N = W.shape[0], ex["N"]
    src, dst, seq, lab = ex["src"], ex["dst"], ex["seq"], ex["lab"]
    dev, dtype = W.device, W.dtype
    fin = ex["final"][ex["has"]]
    zf = torch.isfinite(Z)
    if log_semiring:
        beta = torch.full((Tn + 1, N), _NEG_INF, dtype=dtype, device=dev)
        beta[:, fin] = 0.0  # only valid -1 arcs (frame == length) reach the final state
        for t in range(Tn - 1, -1, -1):
            b = _seg_reduce(W[t] + beta[t + 1][dst], src, N, True)
            b[fin] = 0.0
            beta[t] = b
        Zs = torch.where(zf, Z, torch.zeros_like(Z))[seq]
        post = (alpha[:-1][:, src] + W + beta[1:][:, dst] - Zs).exp()
        post = torch.where(zf[seq][None, :], post, torch.zeros_like(post)) * gz.to(dtype)[seq][None, :]
    else:
        # trace one best path per sequence back from the final state (ties: lowest arc index)
        L = plan.lengths.to(dev)
        post = torch.zeros((Tn, src.numel()), dtype=dtype, device=dev)
        cur = ex["final"].clone()
        local = torch.arange(src.numel(), device=dev) - ex["arc_start"][seq]
        gzd = gz.to(dtype)
        for t in range(Tn - 1, -1, -1):
            v = alpha[t][src] + W[t]
            ok = (dst == cur[seq]) & (t <= L[seq]) & zf[seq]
            v = torch.where(ok, v, torch.full_like(v, _NEG_INF))
            pad = torch.full((plan.B, max(ex["amax"], 1)), _NEG_INF, dtype=dtype, device=dev)
            pad[seq, local] = v
            arg = torch.argmax(pad, 1)  # the first maximum: the lowest arc index (the library's tie rule)
            best = pad.gather(1, arg[:, None]).squeeze(1)
            hit = best > _NEG_INF
            chosen = (ex["arc_start"] + arg)[hit]
            post[t, chosen] = gzd[hit]
            cur[hit] = src[chosen]
    gsc = torch.zeros(plan.gvec.num_arcs, dtype=dtype, device=dev).index_add_(0, ex["arc"], post.sum(0))
    B, T, C = plan.B, plan.T, plan.C
    glp = torch.zeros(B * T * C, dtype=dtype, device=dev)
    if T > 0:
        t = torch.arange(Tn, device=dev)[:, None]
        keep = (lab >= 0)[None, :] & (t < T)
        idx = (seq[None, :] * T + t.clamp(max=T - 1)) * C + lab.clamp(min=0)[None, :]
        glp.index_add_(0, idx.reshape(-1), torch.where(keep, post, torch.zeros_like(post)).reshape(-1))
    return gsc.to(scores.dtype), glp.view(B, T, C).to(lp.dtype)


# ---------------------------------------------------------------------------------------------- numba kernels
_UNDERFLOW = 700.0  # exp(-700) is still a normal float64; wider score ranges go to the log kernels
# products below these mark a possible underflow in the scaled kernels (forward / backward); tests raise them
# to force the log-domain fallbacks
_TINY = {"forward": 1e-290, "backward": 1e-290}


def _score_weights(plan, scores):
    """``w = exp(score - max score of its graph)`` for the scaled kernels, the log offset that removes from each
    sequence's total, and the graphs whose scores span more than exp(-700) (sent to the log kernels)."""
    nb = plan.numba_arrays()
    sc = scores.detach().to(torch.float64).numpy()
    nf = nb["ns"].shape[0]
    msc = np.full(nf, -np.inf)
    np.maximum.at(msc, nb["arc_fsa"], sc)
    fin = np.isfinite(msc)
    mscf = np.where(fin, msc, 0.0)
    with np.errstate(invalid="ignore"):
        ds = sc - mscf[nb["arc_fsa"]]
    w = np.exp(ds)
    far = (np.isfinite(ds) & (ds < -_UNDERFLOW)).astype(np.int64)
    gbad = ~fin
    if far.any():
        cnt = np.zeros(nf, dtype=np.int64)
        np.add.at(cnt, nb["arc_fsa"], far)
        gbad |= cnt > 0
    gidx = nb["gidx"]
    ok = ~gbad[gidx]
    offset = (nb["lens"] + 1) * mscf[gidx]
    return w, ok, offset


def _checkpoint_layout(plan):
    """Checkpoint interval ``S`` (about sqrt(frames)) and per-sequence offsets / total size of the scaled
    kernels' alpha checkpoints (frames 0, S, 2S, ... <= length)."""
    nb = plan.numba_arrays()
    L = nb["lens"]
    S = max(4, int(np.sqrt(max(int(L.max()) if L.size else 1, 1))))
    sizes = (L // S + 1) * nb["ns"][nb["gidx"]]
    return S, np.cumsum(sizes) - sizes, int(sizes.sum())


def _lp64(lp):
    """The emissions as one float64, C-contiguous array: the kernels read this one layout (fewer numba
    signatures to compile), and numpy converts without torch's intra-op thread latency."""
    return np.ascontiguousarray(lp.detach().numpy(), dtype=np.float64)


def _out_dtype(lp):
    return np.float64 if lp.dtype == torch.float64 else np.float32


def _numba_forward(k, plan, scores, lp, log_semiring, eager):
    """Scores ``[B]`` and what the backward needs (a dict). ``eager``: the caller will differentiate with
    respect to ``lp`` (and, if at all, to the scores of graphs used by one sequence each): the scaled kernels
    then run their backward pass here, with unit output gradient, and keep the posteriors instead of ``P``
    (which a marked sequence needs run anyway, to certify its total); the backward only scales them."""
    nb = plan.numba_arrays()
    B = plan.B
    sc = scores.detach().to(torch.float64).numpy()
    in_sc = sc[nb["in_arc"]]
    Z = np.full(B, -np.inf)
    lin_mode = np.zeros(B, dtype=np.bool_)
    saved = dict(Z=Z, sc=sc, in_sc=in_sc, lin_mode=lin_mode, eager=None, alpha=None)
    lpn = _lp64(lp)  # not saved: the backward converts again if a log-domain kernel needs it
    if log_semiring:
        wn, lin_mode, offset = _score_weights(plan, scores)
        in_w = wn[nb["in_arc"]]
        S, ck_off, ck_size = _checkpoint_layout(plan)
        alpha_ck = np.empty(ck_size, dtype=np.float64)
        m = max(nb["max_states"], 1)
        logz = np.full(B, -np.inf)
        P = np.empty(lpn.shape, dtype=np.float64)
        flag = np.zeros(B, dtype=np.bool_)
        _split_batch(plan, lin_mode, lambda part, i: k.dense_forward_lin(
            lpn, nb["lens"], nb["gidx"], nb["soff"], nb["ns"], nb["in_splits"], nb["in_src"], nb["in_lab"], in_w,
            ck_off, S, alpha_ck, np.empty(m), np.empty(m), P, logz, part, flag, _TINY["forward"]))
        lin = dict(P=P, wn=wn, in_w=in_w, S=S, ck_off=ck_off, alpha_ck=alpha_ck)
        if eager and lin_mode.any():
            post = np.zeros(lpn.shape, dtype=_out_dtype(lp))
            gpost = np.zeros(sc.shape[0], dtype=np.float64)
            ok = lin_mode.copy()
            _lin_backward(k, plan, lin, logz, np.ones(B), ok, post, gpost, max(_TINY.values()), True)
            post[lin_mode & ~ok] = 0  # failed part-way: the log-domain kernels redo these sequences
            lin_mode = ok
            saved.update(eager=ok.copy(), post=post, gpost=gpost)
        else:
            chk = lin_mode & flag
            if chk.any():  # some product fell below TINY: certify with the backward's check (dense_numba's header)
                _lin_backward(k, plan, lin, logz, np.ones(B), chk, np.empty((1, 1, 1), dtype=_out_dtype(lp)),
                              np.empty(1), _TINY["forward"], False)  # (glp's dtype: the backward's signature)
                lin_mode &= ~flag | chk
            saved.update(lin)
        Z[lin_mode] = logz[lin_mode] + offset[lin_mode]
    rest = ~lin_mode
    if rest.any():
        saved["alpha"] = np.empty(nb["alpha_size"], dtype=np.float64)
        k.dense_forward(lpn, nb["lens"], nb["gidx"], nb["soff"], nb["ns"], nb["in_splits"],
                        nb["in_src"], nb["in_lab"], in_sc, nb["alpha_off"], saved["alpha"], Z, log_semiring, rest)
    saved["lin_mode"] = lin_mode
    dtype = torch.promote_types(lp.dtype, scores.dtype)
    return torch.from_numpy(Z).to(dtype), saved


def _lin_backward(k, plan, lin, logz, gzn, ok, glp, gsc, tiny, write):
    nb = plan.numba_arrays()
    S = lin["S"]
    m = max(nb["max_states"], 1)
    na = max(nb["max_arcs"], 1) if write else 1
    parts = {}

    def run(part, i):
        # each thread its own scratch and its own graph-score gradient (graphs may be shared by sequences)
        g = parts[i] = np.zeros_like(gsc) if i else gsc
        k.dense_backward_lin(lin["P"], nb["lens"], nb["gidx"], nb["soff"], nb["ns"], nb["aoff"], nb["naf"],
                             nb["out_splits"], nb["dst"], nb["lab"], lin["wn"], nb["in_splits"], nb["in_src"],
                             nb["in_lab"], lin["in_w"], lin["ck_off"], S, lin["alpha_ck"], np.empty((S + 1) * m),
                             logz, gzn, part, glp, g, np.empty(m), np.empty(m), np.empty(na), np.empty(na),
                             np.empty(max(plan.C, 1)), tiny, write)

    _split_batch(plan, ok, run)
    for i, g in parts.items():
        if i:
            gsc += g


_POOL = {}
_PARALLEL_WORK = 100_000  # (frames x arcs) below which one thread is faster than waking another


def _split_batch(plan, mask, run):
    """``run(part, i)`` for the sequences of ``mask``, split over torch's thread count when the work is large
    enough (the kernels release the GIL): each part is a copy of ``mask`` restricted to a contiguous, equally loaded
    share of the batch, which the kernel may clear; ``mask`` becomes the union of the results."""
    nb = plan.numba_arrays()
    nt = min(torch.get_num_threads(), int(mask.sum()))
    work = (nb["lens"] + 1) * nb["naf"][nb["gidx"]] * mask
    if nt < 2 or work.sum() < _PARALLEL_WORK:
        run(mask, 0)
        return
    cut = np.searchsorted(np.cumsum(work), work.sum() * np.arange(1, nt) / nt)
    bounds = np.maximum.accumulate(np.concatenate([[0], np.minimum(cut + 1, mask.size), [mask.size]]))
    parts = []
    for i in range(nt):
        p = np.zeros_like(mask)
        p[bounds[i]:bounds[i + 1]] = mask[bounds[i]:bounds[i + 1]]
        parts.append(p)
    if nt not in _POOL:
        from concurrent.futures import ThreadPoolExecutor
        _POOL[nt] = ThreadPoolExecutor(nt, thread_name_prefix="gtn-dense")
    futures = [_POOL[nt].submit(run, p, i) for i, p in enumerate(parts) if i]
    run(parts[0], 0)
    for f in futures:
        f.result()
    mask[:] = np.logical_or.reduce(parts)


def _numba_backward(k, plan, saved, gz, log_semiring, scores, lp, want_scores=True):
    nb = plan.numba_arrays()
    Z, sc, in_sc, lin_mode, alpha = saved["Z"], saved["sc"], saved["in_sc"], saved["lin_mode"], saved["alpha"]
    shape = tuple(lp.shape)
    glpn = np.zeros(shape, dtype=_out_dtype(lp))  # the scaled kernel writes the gradient in the output dtype
    gsc = np.zeros(sc.shape[0], dtype=np.float64)
    gzn = gz.detach().to(torch.float64).contiguous().numpy()
    if log_semiring:
        m = max(nb["max_states"], 1)
        redo = ~lin_mode
        Zk = Z
        eager = saved["eager"]
        if eager is not None:  # posteriors from the forward: scale them by the output gradient
            post = saved["post"]
            np.multiply(post, gzn.astype(post.dtype)[:, None, None], out=glpn, where=eager[:, None, None])
            if want_scores:  # then each graph serves one sequence (see dense_forward_score)
                seq_of = np.full(nb["ns"].shape[0], -1)
                seq_of[nb["gidx"]] = np.arange(plan.B)
                arc_seq = seq_of[nb["arc_fsa"]]
                gsc += saved["gpost"] * np.where(arc_seq >= 0, gzn[np.maximum(arc_seq, 0)], 0.0)
        elif lin_mode.any():
            ok = lin_mode.copy()
            _lin_backward(k, plan, saved, Z, gzn, ok, glpn, gsc, _TINY["backward"], True)
            failed = lin_mode & ~ok
            if failed.any():  # rare: recompute those sequences in the log domain
                glpn[failed] = 0
                Zk = Z.copy()
                if alpha is None:
                    alpha = np.empty(nb["alpha_size"], dtype=np.float64)
                k.dense_forward(_lp64(lp), nb["lens"], nb["gidx"], nb["soff"], nb["ns"], nb["in_splits"],
                                nb["in_src"], nb["in_lab"], in_sc, nb["alpha_off"], alpha, Zk, True, failed)
                redo = redo | failed
        if redo.any():
            g64 = np.zeros(shape, dtype=np.float64)
            k.dense_backward_log(_lp64(lp), nb["lens"], nb["gidx"], nb["soff"], nb["ns"], nb["aoff"],
                                 nb["out_splits"], nb["src"], nb["dst"], nb["lab"], sc, nb["alpha_off"], alpha, Zk,
                                 gzn, g64, gsc, np.empty(m), np.empty(m), redo)
            glpn[redo] = g64[redo]
    else:
        g64 = np.zeros(shape, dtype=np.float64)
        k.dense_backward_viterbi(_lp64(lp), nb["lens"], nb["gidx"], nb["soff"], nb["ns"], nb["in_splits"],
                                 nb["in_arc"], nb["in_src"], nb["in_lab"], in_sc, nb["alpha_off"], alpha, Z, gzn,
                                 g64, gsc)
        glpn[...] = g64
    return torch.from_numpy(gsc).to(scores.dtype), torch.from_numpy(glpn)


class _GatherColumns(torch.autograd.Function):
    """``log_probs.gather(2, cols[:, None, :])``: ``[B, T, K]`` from ``[B, T, C]``. The backward scatters into
    zeros laid out like ``log_probs`` (a ``[T, B, C]`` tensor seen as ``[B, T, C]`` gets a gradient that is
    contiguous as ``[T, B, C]``, so `log_softmax`'s backward needs no copy), keeping no reference to it. On CPU
    (float32/64, numba) both directions are single-threaded kernels and the zeros come from ``np.zeros``
    (calloc: pages the scatter does not touch are never written); elsewhere torch's gather / scatter_add_."""

    @staticmethod
    def forward(ctx, lp, cols, k):
        B, T, _ = lp.shape
        ctx.k = k = k if lp.device.type == "cpu" and lp.dtype in (torch.float32, torch.float64) else None
        ctx.layout = (lp.shape, torch.empty_like(lp, device="meta").stride(), lp.device)
        if k is not None:
            colsn = np.ascontiguousarray(cols.numpy())
            ctx.cols = colsn
            out = np.empty((B, T, colsn.shape[1]), dtype=_out_dtype(lp))
            k.gather_columns(lp.detach().numpy(), colsn, out)
            return torch.from_numpy(out)
        idx = cols[:, None, :].expand(B, T, cols.shape[1])
        ctx.save_for_backward(idx)
        return lp.gather(2, idx)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        shape, stride, dev = ctx.layout
        if ctx.k is not None:
            perm = sorted(range(3), key=lambda d: -stride[d])  # allocate in the memory order of log_probs
            buf = np.zeros([shape[d] for d in perm], dtype=_out_dtype(g))
            out = buf.transpose(np.argsort(perm))
            ctx.k.scatter_columns(g.detach().contiguous().numpy(), ctx.cols, out)
            return torch.from_numpy(out), None, None
        (idx,) = ctx.saved_tensors
        out = torch.empty_strided(shape, stride, dtype=g.dtype, device=dev).zero_()
        return out.scatter_add_(2, idx, g), None, None


class _DenseScore(torch.autograd.Function):
    """Total scores ``[batch]`` of the (implicit) lattice; backward = arc/emission posteriors (or best path)."""

    @staticmethod
    def forward(ctx, scores, lp, plan, log_semiring, k, eager):
        if k is None:
            Z, (W, alpha) = _torch_forward(plan, scores.detach(), lp.detach(), log_semiring)
            saved = dict(W=W, alpha=alpha)
            ctx.kernel = None
        else:
            Z, saved = _numba_forward(k, plan, scores, lp, log_semiring, eager)
            ctx.kernel = k
        ctx.plan, ctx.log_semiring = plan, log_semiring
        # arrays go through save_for_backward, so autograd drops them once the backward has run (unless the
        # graph is retained) instead of keeping them as long as the graph lives
        tensors, ctx.slots = [scores, lp, Z], {}
        for name, x in saved.items():
            if isinstance(x, (np.ndarray, torch.Tensor)):
                ctx.slots[name] = (isinstance(x, np.ndarray), len(tensors))
                tensors.append(torch.from_numpy(x) if isinstance(x, np.ndarray) else x)
            else:
                ctx.slots[name] = (None, x)
        ctx.save_for_backward(*tensors)
        return Z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gz):
        tensors = ctx.saved_tensors
        scores, lp, Z = tensors[:3]
        saved = {name: v if kind is None else (tensors[v].numpy() if kind else tensors[v])
                 for name, (kind, v) in ctx.slots.items()}
        if ctx.kernel is None:
            gsc, glp = _torch_backward(ctx.plan, (saved["W"], saved["alpha"]), Z, gz, ctx.log_semiring, scores, lp)
        else:
            gsc, glp = _numba_backward(ctx.kernel, ctx.plan, saved, gz, ctx.log_semiring, scores, lp,
                                       ctx.needs_input_grad[0])
        ctx.plan.release()  # its index arrays, rebuilt if the graph is retained and differentiated again
        return (gsc if ctx.needs_input_grad[0] else None, glp if ctx.needs_input_grad[1] else None,
                None, None, None, None)


def dense_forward_score(graphs: Union[Fsa, FsaVec], dense: DenseFsaVec, log_semiring: bool = True,
                        backend: Optional[str] = "auto") -> torch.Tensor:
    """Total score of ``intersect_dense(graphs, dense)`` per sequence, without building the lattice.

    ``log_semiring=True`` gives the forward score (log-sum-exp over all alignments), ``False`` the Viterbi
    score (the best alignment). Returns ``[batch]`` (``-inf`` where a sequence has no successful alignment,
    with zero gradients there). Differentiable with respect to ``graphs.scores`` and ``dense.log_probs``: the
    backward runs beta backwards over the frames and scatters the arc posteriors (Viterbi: the best path,
    ties broken towards the lowest arc index) onto the graph arcs and the emission entries. Equal to
    ``gtn.forward_score(gtn.intersect_dense(graphs, dense))`` (``viterbi_score`` for ``log_semiring=False``).

    ``backend``: ``"auto"`` (``None`` is the same; numba on CPU when available and enabled, else torch),
    ``"numba"`` (CPU inputs; even when kernels are disabled for ``"auto"``) or ``"torch"`` (the reference frame
    loop, also the GPU path): the library's one policy, `gtn.kernels.select`. ``GTN_NO_NUMBA=1`` makes
    ``"auto"`` mean torch. Half precision (float16 / bfloat16) is computed in float32 on either path; the
    result has the promoted dtype of the inputs.
    """
    from . import kernels
    plan = _Plan(graphs, dense)
    sc, lp = plan.gvec.scores, dense.log_probs
    cols = plan.narrow_columns()  # the graphs read few of the symbols: frame loops on those columns only
    out = torch.promote_types(sc.dtype, lp.dtype)
    cd = kernels.compute_dtype(out)
    k = _select(backend, lp.device, cd)
    if cols is not None:
        lp = _GatherColumns.apply(lp, cols, k)
    # posteriors computed in the forward when the backward will want them (emissions need a gradient, and
    # any graph whose scores need one serves a single sequence, so a per-sequence output gradient scales them)
    eager = (k is not None and torch.is_grad_enabled() and lp.requires_grad
             and (not sc.requires_grad or len(set(plan.gidx.tolist())) == plan.B))
    return _DenseScore.apply(sc.to(cd), lp.to(cd), plan, bool(log_semiring), k, eager).to(out)


# ---------------------------------------------------------------------------------------------- the lattice
def _best_through(ex, W, lengths):
    """``tot[t, a]``: the best score of a complete path taking arc a at frame t (-inf: none), and the best
    total per sequence. Tropical alpha and beta over the frames."""
    Tn, N = W.shape[0], ex["N"]
    dev = W.device
    alpha = torch.full((Tn + 1, N), _NEG_INF, dtype=W.dtype, device=dev)
    alpha[0, ex["start"][ex["has"]]] = 0.0
    for t in range(Tn):
        alpha[t + 1] = _seg_reduce(alpha[t][ex["src"]] + W[t], ex["dst"], N, False)
    beta = torch.full((Tn + 1, N), _NEG_INF, dtype=W.dtype, device=dev)
    fin = ex["final"][ex["has"]]
    beta[:, fin] = 0.0
    for t in range(Tn - 1, -1, -1):
        b = _seg_reduce(W[t] + beta[t + 1][ex["dst"]], ex["src"], N, False)
        b[fin] = 0.0
        beta[t] = b
    Z = torch.full((lengths.numel(),), _NEG_INF, dtype=W.dtype, device=dev)
    has = ex["has"]
    Z[has] = alpha[(lengths.to(dev) + 1)[has], ex["final"][has]]
    return alpha[:-1][:, ex["src"]] + W + beta[1:][:, ex["dst"]], Z


def intersect_dense(graphs: Union[Fsa, FsaVec], dense: DenseFsaVec,
                    output_beam: Optional[float] = None) -> FsaVec:
    """The lattice of ``graphs`` against the frames of ``dense`` (k2's ``intersect_dense``), an `FsaVec`.

    Args:
        graphs: one `Fsa` used for every sequence, or an `FsaVec` with one graph per sequence (acceptor or
            transducer; labels index the emission symbols, ``0`` included; cycles allowed).
        dense: the `DenseFsaVec` of emissions.
        output_beam: keep only arcs on paths whose score is within this margin of the best path (tropical), as
            k2's ``output_beam``; ``None`` keeps every arc on a successful path.

    Member ``b`` has states ``(t, s)`` (frame, graph state), numbered by frame then graph state, start state
    ``(0, 0)`` first and a final state last; only pairs that are accessible and co-accessible are kept, so a
    sequence with no successful alignment gives an empty member. Arc ``j`` carries the label (and
    aux_label/attributes) of graph arc ``graph_arc[j]`` and the frame it consumes (``frame[j]``; arcs labelled
    ``-1`` take the extra frame ``lengths[b]``), and scores ``graphs.scores[graph_arc] +
    log_probs[b, frame, label]`` (emission 0 on ``-1`` arcs). ``graph_arc`` indexes the arcs of ``graphs``
    (of the shared `Fsa`, or of the whole `FsaVec`). Scores are gathered, so gradients flow to both inputs.
    """
    plan = _Plan(graphs, dense)
    ex = plan.expanded()
    gv = plan.gvec
    lp = dense.log_probs
    dev = gv.device
    B, T, C = plan.B, plan.T, plan.C
    Tn = int(plan.lengths.max()) + 1 if B else 1
    with torch.no_grad():
        # tropical alpha/beta give reachability and, with a beam, the best-path margin of every (frame, arc)
        W = plan.emission_matrix(gv.scores.detach(), lp.detach(), Tn)
        tot, Z = _best_through(ex, W, plan.lengths)
        keep = tot > _NEG_INF
        if output_beam is not None:
            # a small tolerance keeps the best path whole despite rounding; the second pass drops arcs whose
            # path lost an arc at the beam's edge, so every kept arc is on a complete kept path
            tol = 1e-6 * (Z.abs() + 1) if W.dtype == torch.float64 else 1e-4 * (Z.abs() + 1)
            keep &= tot >= (Z - float(output_beam) - tol)[ex["seq"]][None, :]
            tot, _ = _best_through(ex, torch.where(keep, W, torch.full_like(W, _NEG_INF)), plan.lengths)
            keep = tot > _NEG_INF
        t_idx, a_idx = keep.nonzero(as_tuple=True)
    seq = ex["seq"][a_idx]
    garc = ex["arc"][a_idx]
    g_arcs = gv.arcs[garc]
    lab = g_arcs[:, 2]
    is_final = lab == -1
    # number the kept (frame, state) pairs of each sequence in (frame, state) order: mark them on the dense
    # grid [sequence][frame][graph state] and count (no sort, no unique)
    nst = (ex["final"] - ex["start"] + 1) * ex["has"]
    cell = (Tn + 1) * nst
    gridoff = torch.cumsum(cell, 0) - cell
    key_src = gridoff[seq] + t_idx * nst[seq] + g_arcs[:, 0]
    key_dst = gridoff[seq] + (t_idx + 1) * nst[seq] + g_arcs[:, 1]
    mark = torch.zeros(int(cell.sum()) + 1, dtype=torch.int64, device=dev)
    mark[key_src] = 1
    mark[key_dst[~is_final]] = 1
    csum = torch.cumsum(mark, 0)
    before = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), csum])  # before[k]: marked cells < k
    first = before[gridoff]
    counts = before[gridoff + cell] - first
    rank_src = before[key_src]
    local_src = rank_src - first[seq]
    local_dst = torch.where(is_final, counts[seq], before[key_dst.clamp(max=mark.numel() - 1)] - first[seq])
    order = torch.sort(rank_src, stable=True).indices
    arcs = torch.stack([local_src, local_dst, lab], 1)[order]
    arc_map = garc[order]
    frame = t_idx[order]
    seq = seq[order]
    lab = lab[order]
    n_lat = counts + (counts > 0).to(torch.int64)
    zero = torch.zeros(1, dtype=torch.int64, device=dev)
    state_splits = torch.cat([zero, torch.cumsum(n_lat, 0)])
    arc_splits = torch.cat([zero, torch.cumsum(torch.bincount(seq, minlength=B), 0)])
    em_idx = torch.where(lab >= 0, (seq * T + frame) * C + lab, torch.full_like(lab, -1))
    dtype = torch.promote_types(lp.dtype, gv.scores.dtype)
    scores = index_arcs(gv.scores.to(dtype), arc_map, 0.0) + index_arcs(lp.reshape(-1).to(dtype), em_idx, 0.0)
    lat = gv._derive(arcs, arc_map, arc_splits, state_splits, scores=scores, kind=FsaVec)
    lat.set_attr("graph_arc", arc_map)
    lat.set_attr("frame", frame)
    return lat
