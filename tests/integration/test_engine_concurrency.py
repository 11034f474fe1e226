"""Two `cutover run` of the same runbook at once: exactly one runs, the other exits 3 naming the
holder, on SQLite and on PostgreSQL (a cluster of our own on loopback, see pg.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "engine"))
from engine_project import cutover_command, make_project, side_effects  # noqa: E402

from cutover.journal import open_journal  # noqa: E402

pytestmark = pytest.mark.integration


def test_two_runs_of_one_runbook_exactly_one_runs(tmp_path: Path, journal_url: str) -> None:
    root = make_project(tmp_path)
    procs = [
        subprocess.Popen(cutover_command(root, "run", "engine-crash", "--non-interactive", "--strategy", "linear", actor=actor, state=journal_url),
                         cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        for actor in ("alice", "bob")
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outputs
    loser = outputs[[p.returncode for p in procs].index(3)]
    winner_actor = ("alice", "bob")[[p.returncode for p in procs].index(0)]
    assert "held by" in loser and winner_actor in loser and "pid" in loser
    counts = Counter(side_effects(root))
    assert counts and set(counts.values()) == {1}  # one run did every unit-step once
    with open_journal(journal_url) as journal:
        runs = journal.runs(runbook="engine-crash")
        assert [(r.status, r.started_by) for r in runs] == [("succeeded", winner_actor)]
        assert journal.lock_holder("engine-crash", "lab") is None or journal.lock_holder("engine-crash", "lab").run_id == runs[0].id
