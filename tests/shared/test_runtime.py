"""certpager.runtime: the CLI's process-wide settings (run in a child: they are global)."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc
from certpager.runtime import GC_GEN0_THRESHOLD, tune_gc
before = gc.get_threshold()
tune_gc()
after = gc.get_threshold()
assert after == (GC_GEN0_THRESHOLD, before[1], before[2]), (before, after)
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()  # startup's objects are frozen
print("ok")
"""


def test_tune_gc_freezes_startup_and_raises_the_young_threshold():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
