"""glibc malloc settings for CPU inference: freed activations stay in the heap for the next call.

torch allocates every activation of a CPU forward afresh (it has no caching allocator on the CPU),
and glibc serves blocks above its mmap threshold with mmap and returns them with munmap; the
threshold moves with what the process has freed so far, and the top of the heap is trimmed back to
the system past the trim threshold. So, depending on what ran before, one forward can fault in its
tens of megabytes of activations page by page: measured on a 2-core AMD EPYC (Zen 3), MiniLM at
8x128 with torch's ops: 8 900 page faults and 27 ms of system time in a 190 ms call.

``keep_freed_memory()`` fixes both thresholds once per process (mmap above 32 MiB, the most glibc
accepts; trim past 512 MiB), so blocks of a forward's sizes come from the heap and stay there: the
process keeps up to the trim threshold of freed memory instead of returning it. It runs when an
engine is loaded on the CPU; ``BERTRT_MALLOC=system`` leaves malloc as it is. Other C libraries
(musl) and systems other than Linux are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger("bertrt.runtime")

MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>

_state: str | None = None


def keep_freed_memory() -> str:
    """Sets glibc's mmap and trim thresholds (once per process) -> what was done, for ``bertrt info``."""
    global _state
    if _state is None:
        _state = _apply()
        log.debug("malloc: %s", _state)
    return _state


def state() -> str:
    """What ``keep_freed_memory`` did in this process, or that it has not run (no CPU engine loaded)."""
    return _state or "not set (no engine loaded on the CPU in this process)"


def _apply() -> str:
    if os.environ.get("BERTRT_MALLOC", "").lower() == "system":
        return "left as it is (BERTRT_MALLOC=system)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"left as it is ({platform.system()}, {platform.libc_ver()[0] or 'unknown libc'}: not glibc)"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError) as exc:
        return f"left as it is (no mallopt: {exc})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = [name for name, param, value in (("mmap_threshold", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                            ("trim_threshold", _M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            if mallopt(param, value) == 1]
    if not done:
        return "left as it is (mallopt refused both settings)"
    return (f"glibc {', '.join(done)} set (mmap above {MMAP_THRESHOLD >> 20} MiB, trim past {TRIM_THRESHOLD >> 20} "
            "MiB): freed activations stay in the heap; BERTRT_MALLOC=system to leave malloc alone")
