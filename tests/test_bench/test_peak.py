"""bench/peak.py: a benchmark's child process reports its own peak memory."""

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_a_childs_peak_is_its_own_not_its_parents():
    # Linux hands a parent's peak RSS to its child across exec; the benchmarks' children measured under a parent
    # holding the emulator's year of files reported the parent's peak.
    ballast = bytearray(b"x") * (256 * 2**20)  # written, so resident
    code = ("import resource; from bench.peak import own_peak_mib; "
            "print(own_peak_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    own, maxrss = map(float, subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True,
                                            text=True, check=True).stdout.split())
    assert maxrss >= 256  # what the benchmarks used to report
    assert 5 < own < 200  # the child's own interpreter
    del ballast
