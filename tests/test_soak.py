# SPDX-License-Identifier: MIT
"""The 10-second version of bench/soak.py: contenders, SIGKILLs, daemon restarts and readers at once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


def test_short_soak_keeps_every_invariant() -> None:
    result = subprocess.run([sys.executable, str(SOAK), "--seconds", "10"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"invariants: overlapping holders 0, 0 while held > window 0, 1 long after release 0, "
                     r"lost signals 0, reader failures 0", out)
    observed = int(re.search(r"signals: (\d+) holds began and ended", out).group(1))  # type: ignore[union-attr]
    assert observed > 5, out
    completed, killed, restarts = map(int, re.search(  # type: ignore[union-attr]
        r"(\d+) operations completed, (\d+) holders SIGKILLed, (\d+) daemon restarts", out).groups())
    assert completed > 10 and killed > 0 and restarts > 0, out
    checked = int(re.search(r"answers checked: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert checked > 1000, out
