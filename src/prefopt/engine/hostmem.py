"""Keep freed host memory in the process while training on a CPU.

glibc hands every freed block above its mmap threshold (128 KiB, rising to at most 32 MiB) back
to the kernel and trims the top of its heap, so the activations of each training step, hundreds
of megabytes allocated and freed every step, come back as fresh pages the kernel has to fault in
and zero, a large share of a step's time (docs/performance.md). With mmap off and the trim
threshold raised, freed blocks stay in the heap and the next step reuses them: no faults. Peak
RSS stays the same (freed memory is reused, not added to). Other C libraries: nothing changes.

On exit the heap is trimmed and mmap comes back, but not glibc's start-up state: the first
mallopt call turns off for good its dynamic threshold, which starts at 128 KiB and follows the
largest mmapped block freed, up to 32 MiB. Left at 128 KiB fixed, every later tensor above it
would be mmapped and faulted in afresh (a GEMM with a large output faults at every call, a
third slower). So the state that threshold reaches by itself comes back: mmap from 32 MiB, trim
above 64 MiB."""

from __future__ import annotations

import contextlib
import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)
DEFAULT_MMAP_MAX = 65536
# where glibc's dynamic threshold ends up (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit; trim at twice it)
SETTLED_MMAP_THRESHOLD, SETTLED_TRIM_THRESHOLD = 32 * 1024 * 1024, 64 * 1024 * 1024
KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True):
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_MMAP_THRESHOLD, SETTLED_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, SETTLED_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def release_freed_memory() -> None:
    """Hand the heap's freed blocks back to the kernel (glibc's malloc_trim): what one phase
    freed (sampling's caches) stops counting in the process's memory while the next (training)
    allocates blocks of other sizes. Other C libraries: nothing."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
