"""Benchmark: the fuzzed-input properties at benchmark size (aim: at least 1,000 cases each).

Run: python tests/benchmarks/bench_fuzz.py [--examples N]
Runs tests/unit/test_estate_fuzz.py (damaged inventories) and tests/unit/test_runbook_fuzz.py
(damaged runbooks) with CUTOVER_FUZZ_EXAMPLES=N under pytest, and prints, per property, how many
generated cases passed (each: exit 2, every message naming a file and a field, no traceback,
and for runbooks an empty journal after `cutover run`), how many failed, and the rate.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = {"estate": "tests/unit/test_estate_fuzz.py", "runbook": "tests/unit/test_runbook_fuzz.py"}
COUNTS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    status = 0
    for name, path in TESTS.items():
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics", path],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, "CUTOVER_FUZZ_EXAMPLES": str(args.examples)})
        seconds = time.monotonic() - t0
        found = [tuple(map(int, m)) for m in COUNTS.findall(proc.stdout)]
        passing = sum(f[0] for f in found)
        failing = sum(f[1] for f in found)
        if proc.returncode != 0:
            status = 1
            print(proc.stdout[-3000:], proc.stderr[-2000:], file=sys.stderr)
        print(f"fuzz {name}: {passing} cases passed, {failing} failed, pytest exit {proc.returncode}; "
              f"{seconds:.1f} seconds, rate {passing / seconds:.0f} cases/s")
    return status


if __name__ == "__main__":
    sys.exit(main())
