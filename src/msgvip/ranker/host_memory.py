"""Keep freed host memory inside the process while training on a CPU (glibc's malloc).

A training step allocates and frees the same few hundred megabytes of activations every step.
By default glibc hands large freed blocks back to the kernel: blocks above its mmap threshold are
unmapped on free, and free memory at the top of the heap is trimmed once it exceeds twice that
threshold. The next step then faults every page back in, and the kernel zeroes each one first. At
the step benchmark's shape (hidden 768, 5,600 person-frames, 2 CPU cores) that was 75-118
thousand minor page faults per step; a fresh 22 MB buffer took 10 ms to fill where a reused one
took 0.6 ms.

Launchers of CPU training swap the allocator for the same reason (Intel's PyTorch launcher
preloads jemalloc or tcmalloc). This sets glibc's own two knobs from inside the process instead:
blocks up to 32 MB (the largest mmap threshold glibc accepts) come from the heap, and the heap is
never trimmed, so a step's memory is reused by the next. The process keeps its peak footprint
until it exits, which a training process reaches every step anyway. A policy the user chose
(``GLIBC_TUNABLES`` naming ``glibc.malloc``) is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def retain_freed_memory() -> bool:
    """Set the policy above for this process; True if it is in force (False off glibc, or when
    the user's ``GLIBC_TUNABLES`` already sets malloc's parameters)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
