"""Peak resident memory of this process (Linux VmHWM, resettable) and of waited children."""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark for this process; False where the kernel refuses."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """VmHWM of this process in bytes, or None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def children_peak_rss_bytes() -> int:
    """Largest peak RSS of any child this process has waited for (0 if none)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
