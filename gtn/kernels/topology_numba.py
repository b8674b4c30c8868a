"""numba twin of the level-by-level Kahn's algorithm in `gtn.topology._kahn` (CPU): one FIFO pass over the
states, O(states + arcs), instead of a few tensor operations per depth (which dominate for small graphs)."""
from __future__ import annotations

import numpy as np
import torch

try:
    import numba
    _OK = True
except Exception:  # pragma: no cover
    numba = None
    _OK = False


def available() -> bool:
    return _OK


if _OK:
    @numba.njit(cache=True, nogil=True)
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


def levels(v) -> torch.Tensor:
    """``[total_states]`` depth of each global state of the FsaVec ``v`` (-1: on or after a cycle)."""
    S = v.total_states
    indeg = torch.bincount(v.dst_global, minlength=S) if v.num_arcs else torch.zeros(S, dtype=torch.int64)
    level = np.empty(S, dtype=np.int64)
    _levels(v.state_arc_splits.numpy(), v.dst_global.numpy(), indeg.numpy().copy(), level)
    return torch.from_numpy(level)
