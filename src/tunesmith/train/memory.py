"""glibc heap tuning for training: freed activations go back to the OS instead of fragmenting the heap."""

from __future__ import annotations

import ctypes
import functools
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MAP_FROM = 4 << 20  # bytes


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (e.g. musl): its heap is not tuned this way
        return None


def release_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise): once before training, so the data pipeline's
    leftovers do not add to the peak, and after each checkpoint. Not every step: that costs 25% speed."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


def map_big_blocks() -> None:
    """Blocks of 4 MiB and more (activations of long batches, gradients) get their own mapping, which goes back
    to the OS when freed. glibc's default threshold rises to 32 MiB as such blocks are freed, after which they
    are carved from its heap and fragment it: on a minilm-l6 SST-2 step loop peak RSS settled 80-90 MB higher
    (1,750 vs 1,657-1,675 MB, 400 steps; speed within run-to-run noise, 150 vs 148 ex/s). 2 MiB saves more but
    costs 8% speed in page faults.
    Process-wide, and fixed from then on (mallopt turns glibc's dynamic threshold off)."""
    libc = _glibc()
    if libc:
        libc.mallopt(M_MMAP_THRESHOLD, MAP_FROM)
