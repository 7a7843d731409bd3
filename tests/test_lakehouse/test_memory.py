import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse.memory import _glibc

ROOT = Path(__file__).resolve().parents[2]

# Twenty buffers of 8 MiB and more (2048 pages each), every page written, each freed before the next and each a
# little larger (as a 31-day month's CSV is than a 30-day one's): what an archive load does with a file's
# download and CSV. Prints the page faults they cost after the first one.
REUSE = """
import resource, sys
from lakehouse.memory import keep_freed_buffers
if sys.argv[1] == "keep":
    assert keep_freed_buffers() and keep_freed_buffers()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buf = bytearray(8 << 20)
del buf
before = faults()
for i in range(1, 21):
    buf = bytearray((8 << 20) + i * (64 << 10))
    del buf
print(faults() - before)
"""


def faults_for(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", REUSE, mode], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(out.stdout)


@pytest.mark.skipif(not _glibc(), reason="a policy of glibc's allocator")
def test_freed_buffers_are_reused_instead_of_faulted_in_anew():
    assert faults_for("default") > 20 * 2048  # glibc's default: each buffer mapped and faulted in anew
    assert faults_for("keep") < 2 * 2048  # reused from the heap: only the growth is new
