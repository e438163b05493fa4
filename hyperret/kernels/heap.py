"""Binary heaps over parallel ``(distance, id)`` arrays, for the Numba kernels (graph walks, builds, the scan).

A heap is two arrays of one capacity and a size held by the caller. ``sign = 1``
orders a min-heap (a walk's frontier), ``sign = -1`` a max-heap (the best rows kept
so far, the worst at the root).
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, inline="always")
def sift_up(hd, hi, pos, sign):
    """Restore a binary heap (min-heap if sign=1, max-heap if sign=-1) after a push at ``pos``."""
    while pos > 0:
        parent = (pos - 1) >> 1
        if sign * hd[pos] < sign * hd[parent]:
            hd[pos], hd[parent] = hd[parent], hd[pos]
            hi[pos], hi[parent] = hi[parent], hi[pos]
            pos = parent
        else:
            break


@njit(cache=True, inline="always")
def sift_down(hd, hi, size, sign):
    """Restore a binary heap of ``size`` entries after its root was replaced."""
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= size:
            break
        best = left
        if left + 1 < size and sign * hd[left + 1] < sign * hd[left]:
            best = left + 1
        if sign * hd[best] < sign * hd[pos]:
            hd[pos], hd[best] = hd[best], hd[pos]
            hi[pos], hi[best] = hi[best], hi[pos]
            pos = best
        else:
            break


@njit(cache=True, inline="always")
def push_min(hd, hi, size, d, i):
    """Push ``(d, i)`` onto a min-heap of ``size`` entries unless it is full -> its new size."""
    if size >= hd.shape[0]:
        return size
    hd[size], hi[size] = d, i
    sift_up(hd, hi, size, 1)
    return size + 1


@njit(cache=True, inline="always")
def pop_min(hd, hi, size):
    """Take the root of a min-heap of ``size`` entries -> ``(distance, id, size - 1)``."""
    d, i = hd[0], hi[0]
    size -= 1
    hd[0], hi[0] = hd[size], hi[size]
    sift_down(hd, hi, size, 1)
    return d, i, size


@njit(cache=True, inline="always")
def keep_smallest(hd, hi, size, d, i):
    """Offer ``(d, i)`` to a max-heap holding the ``len(hd)`` smallest so far -> its new size."""
    if size < hd.shape[0]:
        hd[size], hi[size] = d, i
        sift_up(hd, hi, size, -1)
        return size + 1
    if d >= hd[0]:
        return size
    hd[0], hi[0] = d, i
    sift_down(hd, hi, size, -1)
    return size
