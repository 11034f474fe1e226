"""The SQLite journal's own behaviour: URL, WAL, file mode, migrations, lock staleness rules, redaction."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from cutover.errors import InvalidInput, LockHeld
from cutover.journal import open_journal, process_alive, redact
from cutover.journal import sqlite as sqlite_backend
from cutover.journal.lock import advisory_key, process_start, this_host
from cutover.journal.records import utcnow
from cutover.journal.sqlite import SqliteJournal, sqlite_path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / ".cutover" / "state.db"


@pytest.fixture
def journal(db: Path):
    j = open_journal(f"sqlite:///{db}")
    yield j
    j.close()


def test_url_forms(tmp_path: Path) -> None:
    assert sqlite_path(f"sqlite:///{tmp_path}/a.db") == (tmp_path / "a.db", {})
    assert sqlite_path(f"sqlite:////{str(tmp_path).lstrip('/')}/a.db")[0] == tmp_path / "a.db"
    assert sqlite_path(f"sqlite:///{tmp_path}/a.db?synchronous=full&busy_timeout=5")[1] == {"synchronous": "full", "busy_timeout": "5"}
    with pytest.raises(InvalidInput, match="absolute path"):
        sqlite_path("sqlite://relative.db")
    with pytest.raises(InvalidInput, match="unknown journal URL"):
        open_journal("mysql://somewhere/db")
    with pytest.raises(InvalidInput, match="synchronous"):
        open_journal(f"sqlite:///{tmp_path}/a.db?synchronous=sometimes")
    with open_journal(str(tmp_path / "plain.db")) as plain:
        assert plain.backend == "sqlite" and plain.schema_version() >= 1


def test_file_is_private_wal_and_parent_created(journal: SqliteJournal, db: Path) -> None:
    assert db.exists() and stat.S_IMODE(db.stat().st_mode) == 0o600
    with journal._tx(write=False) as tx:
        assert tx.one("PRAGMA journal_mode")[0] == "wal"
        assert tx.one("PRAGMA synchronous")[0] == 1  # NORMAL
        assert tx.one("PRAGMA busy_timeout")[0] == 30000
        assert tx.one("PRAGMA foreign_keys")[0] == 1
    with open_journal(f"sqlite:///{db}?synchronous=full&busy_timeout=1500") as full, full._tx(write=False) as tx:
        assert (tx.one("PRAGMA synchronous")[0], tx.one("PRAGMA busy_timeout")[0]) == (2, 1500)


def test_a_new_migration_applies_once_and_a_failing_one_changes_nothing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_journal(f"sqlite:///{db}") as journal:
        run_id = journal.create_run(runbook="docs", env="lab", plan_hash="h", plan={}, started_by="alice").id
        base = journal.schema_version()
    added = [*sqlite_backend.MIGRATIONS, ["ALTER TABLE runs ADD COLUMN note TEXT", "UPDATE runs SET note = 'migrated'"]]
    monkeypatch.setattr(SqliteJournal, "MIGRATIONS", added)
    with open_journal(f"sqlite:///{db}") as journal:
        assert journal.schema_version() == base + 1
        assert journal.migrate() == base + 1
        with journal._tx(write=False) as tx:
            assert tx.one("SELECT note FROM runs WHERE id = ?", (run_id,))[0] == "migrated"
    broken = [*added, ["CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"]]
    monkeypatch.setattr(SqliteJournal, "MIGRATIONS", broken)
    with pytest.raises(Exception, match="syntax error"):
        open_journal(f"sqlite:///{db}")
    monkeypatch.setattr(SqliteJournal, "MIGRATIONS", added)
    with open_journal(f"sqlite:///{db}") as journal:
        assert journal.schema_version() == base + 1
        with journal._tx(write=False) as tx:
            assert tx.one("SELECT 1 FROM sqlite_master WHERE name = 'extra'") is None


def test_threads_and_second_connection_write_concurrently(db: Path) -> None:
    with open_journal(f"sqlite:///{db}") as journal, open_journal(f"sqlite:///{db}") as other:
        run_id = journal.create_run(runbook="docs", env="lab", plan_hash="h", plan={}, started_by="alice").id
        units = [f"u{i:03d}" for i in range(40)]
        journal.record_intent(run_id, wave="w", batch="b", units=units, steps=["copy"])
        errors: list[BaseException] = []

        def report(j, chunk):
            try:
                for unit in chunk:
                    j.record_outcome(run_id, unit=unit, step="copy", status="done")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=report, args=(j, units[i::4])) for i, j in enumerate([journal, journal, other, other])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert {s.status for s in other.unit_step_state(run_id).values()} == {"done"}


def insert_holder(journal: SqliteJournal, *, host: str, pid: int, heartbeat_age: float, pid_start: str | None = None,
                  lease: float = 30.0) -> None:
    beat = utcnow() - timedelta(seconds=heartbeat_age)
    with journal._tx() as tx:
        tx.execute("INSERT INTO locks (runbook, env, actor, host, pid, since, heartbeat_at, run_id, token, pid_start, lease)"
                   " VALUES ('docs', 'lab', 'carol', ?, ?, ?, ?, 'docs-old', 'tok', ?, ?)",
                   (host, pid, journal._ts(beat), journal._ts(beat), pid_start, lease))


def test_other_host_holder_is_stale_only_past_its_lease(journal: SqliteJournal) -> None:
    insert_holder(journal, host="other-host", pid=1, heartbeat_age=5)
    with pytest.raises(LockHeld, match=r"held by carol on other-host \(pid 1\) since .* run docs-old"):
        journal.lock("docs", "lab", actor="bob").acquire()
    with journal._tx() as tx:
        tx.execute("DELETE FROM locks")
    insert_holder(journal, host="other-host", pid=1, heartbeat_age=45)
    with journal.lock("docs", "lab", actor="bob"):
        assert journal.lock_holder("docs", "lab").actor == "bob"
    (event,) = journal.events(kind="lock.taken_over")
    assert event.data["stale_holder"]["host"] == "other-host"


def test_same_host_holder_is_judged_by_its_pid(journal: SqliteJournal) -> None:
    # alive (this very process), heartbeat ancient: still held, a person must decide (--force)
    insert_holder(journal, host=this_host(), pid=os.getpid(), heartbeat_age=3600, pid_start=process_start(os.getpid()))
    with pytest.raises(LockHeld):
        journal.lock("docs", "lab", actor="bob").acquire()
    with journal._tx() as tx:
        tx.execute("DELETE FROM locks")
    # same pid number but another process start time: the pid was reused, the holder is gone
    insert_holder(journal, host=this_host(), pid=os.getpid(), heartbeat_age=1, pid_start="1")
    with journal.lock("docs", "lab", actor="bob"):
        pass


def test_zombie_and_missing_processes_are_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while process_alive(child.pid) and time.monotonic() < deadline:  # exited but not reaped: a zombie
        time.sleep(0.02)
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)
    assert process_alive(os.getpid(), process_start(os.getpid()))
    assert not process_alive(0)


def test_heartbeat_notices_a_deleted_row(journal: SqliteJournal) -> None:
    with journal.lock("docs", "lab", actor="alice", heartbeat=0.05) as lock:
        with journal._tx() as tx:
            tx.execute("DELETE FROM locks")
        deadline = time.monotonic() + 5
        while not lock.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.lost.is_set() and not lock.held


def test_redact_replaces_secret_looking_keys_everywhere() -> None:
    value = {"db_password": "x", "API_TOKEN": "y", "ssh_key": "z", "nested": {"Passphrase": "p", "ok": 1},
             "items": [{"client_secret": "s", "name": "n"}, "plain"], "unit": "26734", "tuple": ({"token": 1},)}
    assert redact(value) == {"db_password": "***", "API_TOKEN": "***", "ssh_key": "***", "nested": {"Passphrase": "***", "ok": 1},
                             "items": [{"client_secret": "***", "name": "n"}, "plain"], "unit": "26734", "tuple": [{"token": "***"}]}
    assert value["db_password"] == "x"  # a copy
    assert redact("plain") == "plain"


def test_advisory_key_is_stable_signed_64_bit() -> None:
    key = advisory_key("docs", "lab")
    assert key == advisory_key("docs", "lab") != advisory_key("docs", "production")
    assert -(2**63) <= key < 2**63


def test_a_journal_locked_past_the_busy_timeout_is_unavailable(db: Path) -> None:
    import sqlite3

    from cutover.journal import JournalUnavailable

    with open_journal(f"sqlite:///{db}?busy_timeout=100") as journal:
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(JournalUnavailable, match="stayed locked for 100 ms") as caught:
                journal.create_run(runbook="docs", env="lab", plan_hash="h", plan={}, started_by="alice")
            assert caught.value.exit_code == 1
            assert journal.runs() == []  # reads go on under WAL
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        journal.create_run(runbook="docs", env="lab", plan_hash="h", plan={}, started_by="alice")
