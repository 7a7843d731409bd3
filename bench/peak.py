"""Peak memory of the calling process, for figures measured in a child process of their own."""

from __future__ import annotations

import resource


def own_peak_mib() -> float:
    """This process's peak RSS in MiB. Not ru_maxrss alone: Linux carries a parent's peak into its child across
    exec, so a child of a benchmark holding data (the emulator's files, a year of bars) reported the parent's
    figure whenever it was larger."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
