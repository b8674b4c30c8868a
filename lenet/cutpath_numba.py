"""The cut-path dynamic program of `lenet.segment` as a compiled loop (numba, CPU).

`lenet.segment._path_dp` (numpy, vectorised over paths and positions, a Python loop over rows) is the
reference; this twin runs the same recursion with the same tie rule and gives identical tables (tested). It is
used when numba imports and gtn's kernels are enabled (``GTN_NO_NUMBA=1`` turns both off)."""
from __future__ import annotations

import numpy as np

from gtn.kernels import njit


@njit(cache=True)   # gtn's njit: compiles without the cache (and warns once) where no cache folder is writable
def path_dp(through, S):   # pragma: no cover - compiled (tested against the numpy reference)
    H, K, J = through.shape
    acc = np.empty((H, K, J))
    back = np.zeros((H, K, J), dtype=np.int64)
    acc[0] = through[0]
    from_left = np.empty(J)
    left_arg = np.empty(J, dtype=np.int64)
    for y in range(1, H):
        for k in range(K):
            best = np.inf
            arg = 0
            for q in range(J):      # from the left: the latest position with the least acc[p] - S[p]
                a = acc[y - 1, k, q] - S[y - 1, k, q]
                if a <= best:
                    best = a
                    arg = q
                from_left[q] = S[y - 1, k, q] + best
                left_arg[q] = arg
            best = np.inf
            arg = J - 1
            for q in range(J - 1, -1, -1):   # from the right: the first position with the least acc[p] + S[p]
                b = acc[y - 1, k, q] + S[y - 1, k, q]
                if b <= best:
                    best = b
                    arg = q
                from_right = best - S[y - 1, k, q]
                if from_left[q] <= from_right:
                    acc[y, k, q] = from_left[q] + through[y, k, q]
                    back[y, k, q] = left_arg[q]
                else:
                    acc[y, k, q] = from_right + through[y, k, q]
                    back[y, k, q] = arg
    return acc, back


@njit(cache=True)
def follow_paths(back_down, back_up, ka, ya, start):   # pragma: no cover - compiled (tested against numpy)
    """The positions of each anchored path in every row (see `lenet.segment._follow_paths`, the reference):
    from its anchor row ``ya[a]`` at window position ``start[a]``, down along ``back_up`` and up along
    ``back_down`` (the tables of start column ``ka[a]``)."""
    H = back_down.shape[0]
    A = ka.shape[0]
    j = np.zeros((A, H), dtype=np.int64)
    for a in range(A):
        k = ka[a]
        y0 = ya[a]
        j[a, y0] = start[a]
        for y in range(y0, H - 1):
            j[a, y + 1] = back_up[y, k, j[a, y]]
        for y in range(y0, 0, -1):
            j[a, y - 1] = back_down[y, k, j[a, y]]
    return j
