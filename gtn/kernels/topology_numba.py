"""numba twins of two graph searches in `gtn.topology` (CPU), each one O(states + arcs) pass instead of a few
tensor operations per depth or frontier (which dominate for long, thin graphs):

* `levels`: the level-by-level Kahn's algorithm (`gtn.topology._kahn_torch`);
* `reachable`: the states reachable from seed states along or against the arcs (`gtn.topology._reachable_torch`,
  behind `accessible`, `coaccessible` and `connect`)."""
from __future__ import annotations

import numpy as np
import torch

try:
    import numba
    from . import njit as _njit
    _OK = True
except Exception:  # pragma: no cover
    numba = None
    _OK = False


def available() -> bool:
    return _OK


if _OK:
    @_njit(cache=True, nogil=True)
    def _levels(sas, dst, indeg, level):
        """level[s] = longest path (in arcs) from a state without entering arcs to s; -1 if s is on or after
        a cycle (never reached by Kahn's algorithm)."""
        S = level.shape[0]
        queue = np.empty(S, dtype=np.int64)
        done = np.zeros(S, dtype=np.bool_)
        tail = 0
        for s in range(S):
            level[s] = -1
            if indeg[s] == 0:
                queue[tail] = s
                tail += 1
                level[s] = 0
        head = 0
        while head < tail:
            s = queue[head]
            head += 1
            done[s] = True
            nxt = level[s] + 1
            for a in range(sas[s], sas[s + 1]):
                d = dst[a]
                if level[d] < nxt:
                    level[d] = nxt
                indeg[d] -= 1
                if indeg[d] == 0:
                    queue[tail] = d
                    tail += 1
        for s in range(S):
            if not done[s]:
                level[s] = -1

    @_njit(cache=True, nogil=True)
    def _reach(splits, nxt, seeds, seen):
        """Depth-first search from ``seeds`` over the CSR graph (``splits``, ``nxt``); marks ``seen``."""
        stack = np.empty(seen.shape[0], dtype=np.int64)
        top = 0
        for i in range(seeds.shape[0]):
            s = seeds[i]
            if not seen[s]:
                seen[s] = True
                stack[top] = s
                top += 1
        while top > 0:
            top -= 1
            s = stack[top]
            for a in range(splits[s], splits[s + 1]):
                d = nxt[a]
                if not seen[d]:
                    seen[d] = True
                    stack[top] = d
                    top += 1

    @_njit(cache=True, nogil=True)
    def _reverse_csr(src, dst, S, splits, prev):
        """CSR of the arcs by destination: ``prev[splits[d]:splits[d + 1]]`` are the sources of the arcs
        entering d (a counting sort, O(S + A))."""
        for a in range(dst.shape[0]):
            splits[dst[a] + 1] += 1
        for s in range(S):
            splits[s + 1] += splits[s]
        fill = splits[:-1].copy()
        for a in range(dst.shape[0]):
            d = dst[a]
            prev[fill[d]] = src[a]
            fill[d] += 1


def levels(v) -> torch.Tensor:
    """``[total_states]`` depth of each global state of the FsaVec ``v`` (-1: on or after a cycle)."""
    S = v.total_states
    indeg = torch.bincount(v.dst_global, minlength=S) if v.num_arcs else torch.zeros(S, dtype=torch.int64)
    level = np.empty(S, dtype=np.int64)
    _levels(v.state_arc_splits.numpy(), v.dst_global.numpy(), indeg.numpy().copy(), level)
    return torch.from_numpy(level)


def reachable(v, seeds: torch.Tensor, forward: bool) -> torch.Tensor:
    """Bool mask ``[total_states]`` of the global states of the FsaVec ``v`` reachable from the global states
    ``seeds``, along the arcs (``forward``) or against them."""
    S = v.total_states
    seen = np.zeros(S, dtype=np.bool_)
    if forward:
        splits, nxt = np.ascontiguousarray(v.state_arc_splits.numpy()), np.ascontiguousarray(v.dst_global.numpy())
    else:
        splits = np.zeros(S + 1, dtype=np.int64)
        nxt = np.empty(v.num_arcs, dtype=np.int64)
        _reverse_csr(np.ascontiguousarray(v.src_global.numpy()), np.ascontiguousarray(v.dst_global.numpy()), S,
                     splits, nxt)
    _reach(splits, nxt, np.ascontiguousarray(seeds.numpy(), dtype=np.int64), seen)
    return torch.from_numpy(seen)
