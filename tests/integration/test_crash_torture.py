"""Crash torture on the small lab: the rehearsal's `cutover` process is killed with SIGKILL 20
times at seeded random moments and resumed each time; at the end every unit is migrated once,
reconciled, nothing is lost or duplicated, no unexpected quarantine, and the audit chain
verifies (scripts/crash_torture.py does the killing and the checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_rehearsal import LabProject, lab_fixture  # noqa: E402

PROJECT = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("CUTOVER_TORTURE_KILLS", "20"))  # 200 for the benchmark figure
PREFIX = os.environ.get("CUTOVER_TORTURE_PREFIX", "127.0.6.")  # another one beside a running test suite

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def torture_lab() -> Iterator[LabProject]:
    yield from lab_fixture(PREFIX)


def test_crash_torture(torture_lab: LabProject) -> None:
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "crash_torture.py"), "--root", str(torture_lab.root), "--no-lab",
         "--kills", str(KILLS), "--seed", "20", "--max-delay", "5"],
        capture_output=True, text=True, timeout=max(2400, KILLS * 20), cwd=torture_lab.root)
    assert proc.stdout.strip(), proc.stderr[-4000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    print(json.dumps({k: v for k, v in result.items() if k != "tables"}, indent=2))
    assert result["kills"] == KILLS, (result, proc.stderr[-4000:])
    assert result["checks"] and all(result["checks"].values()), (result["checks"], proc.stderr[-4000:])
    assert proc.returncode == 0
