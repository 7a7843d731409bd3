"""The process's allocator policy for bulk loads."""

from __future__ import annotations

import ctypes
import os
import threading

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the threshold it adjusts by itself
TRIM_THRESHOLD = 256 << 20

_lock = threading.Lock()
_applied: bool | None = None


def keep_freed_buffers() -> bool:
    """Have glibc keep freed buffers of up to 32 MiB for reuse instead of handing each back to the OS at once.

    A bulk archive load allocates and frees buffers of several MiB per file (the download, its CSV, the
    parsed columns). By default glibc maps each anew and unmaps it when freed, so every file faults in fresh
    zeroed pages again: a third of the loader's CPU time went to the kernel, and the load ran ~15% slower
    (bench/ingest.py --archive). With these thresholds such buffers come from the heap, and up to 256 MiB
    freed at its top is kept for the next file. Process-wide, applied once; returns whether it is in effect
    (never without glibc).
    """
    global _applied
    with _lock:
        if _applied is None:
            _applied = False
            if _glibc():
                try:
                    mallopt = ctypes.CDLL(None).mallopt
                except (OSError, AttributeError):
                    return False
                mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
                _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                    bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        return _applied


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not a name this platform knows
        return False
