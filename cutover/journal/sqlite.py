"""The SQLite journal (the default: `.cutover/state.db`).

WAL mode, one `BEGIN IMMEDIATE` transaction per change, a busy timeout so that several
processes (a run, `cutover status`, `cutover approve`) share the file. URL:
`sqlite:///abs/path.db` (also `sqlite:////abs/path.db`), with optional query parameters
`synchronous=normal|full` (default `normal`: durable against a killed process, which is what
resume needs; `full` also against power loss, at a write-rate cost, see
tests/benchmarks/bench_journal.py) and `busy_timeout` in milliseconds (default 30000).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cutover.errors import InvalidInput, Problem
from cutover.journal.lock import LockRequest, holder_is_stale, lock_held_error
from cutover.journal.records import LockHolder, utcnow
from cutover.journal.chain import AUDIT_MIGRATION
from cutover.journal.store import LOCK_COLUMNS, Journal, JournalUnavailable, Tx, _require_reason, dumps

# Ordered; version N is MIGRATIONS[N-1]. Append new lists, never edit applied ones.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            runbook TEXT NOT NULL,
            env TEXT NOT NULL,
            plan_hash TEXT NOT NULL,
            plan TEXT,
            status TEXT NOT NULL,
            started_by TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            params TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        "CREATE INDEX runs_by_runbook_env ON runs (runbook, env, created_at)",
        """CREATE TABLE intents (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs (id),
            wave TEXT NOT NULL,
            batch TEXT NOT NULL,
            phase TEXT NOT NULL CHECK (phase IN ('do', 'undo')),
            units TEXT NOT NULL,
            steps TEXT NOT NULL,
            at TEXT NOT NULL)""",
        """CREATE TABLE unit_steps (
            run_id TEXT NOT NULL REFERENCES runs (id),
            wave TEXT NOT NULL,
            batch TEXT NOT NULL,
            unit TEXT NOT NULL,
            step TEXT NOT NULL,
            status TEXT NOT NULL,
            phase TEXT CHECK (phase IN ('do', 'undo')),
            attempts INTEGER NOT NULL DEFAULT 0,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (run_id, unit, step))""",
        """CREATE TABLE attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs (id),
            wave TEXT NOT NULL,
            batch TEXT NOT NULL,
            unit TEXT NOT NULL,
            step TEXT NOT NULL,
            phase TEXT NOT NULL CHECK (phase IN ('do', 'undo')),
            attempt INTEGER NOT NULL,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            detail TEXT,
            evidence_digest TEXT,
            intent_id INTEGER REFERENCES intents (id),
            UNIQUE (run_id, unit, step, phase, attempt))""",
        """CREATE TABLE gate_results (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs (id),
            wave TEXT NOT NULL,
            batch TEXT NOT NULL,
            unit TEXT,
            step TEXT,
            gate TEXT NOT NULL,
            status TEXT NOT NULL,
            evidence TEXT,
            at TEXT NOT NULL)""",
        "CREATE INDEX gate_results_by_run ON gate_results (run_id, batch, gate)",
        """CREATE TABLE approvals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs (id),
            gate TEXT NOT NULL,
            status TEXT NOT NULL,
            requested_at TEXT,
            approved_by TEXT,
            reason TEXT,
            at TEXT)""",
        "CREATE INDEX approvals_by_run ON approvals (run_id, gate)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL)""",
        "CREATE INDEX events_by_run ON events (run_id, id)",
        """CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
           BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
        """CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
           BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
        """CREATE TABLE locks (
            runbook TEXT NOT NULL,
            env TEXT NOT NULL,
            actor TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            since TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL,
            run_id TEXT,
            token TEXT NOT NULL,
            pid_start TEXT,
            lease REAL NOT NULL,
            PRIMARY KEY (runbook, env))""",
    ],
    AUDIT_MIGRATION,  # version 2: the audit chain (cutover/journal/chain.py)
]

SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL", "off": "OFF", "extra": "EXTRA"}


def sqlite_path(url: str) -> tuple[Path, dict[str, str]]:
    """`sqlite:///abs/path.db?synchronous=full` -> (Path('/abs/path.db'), {'synchronous': 'full'})."""
    rest = url[len("sqlite://"):] if url.startswith("sqlite://") else url
    rest, _, query = rest.partition("?")
    if rest.startswith("//"):
        rest = rest[1:]
    if not rest.startswith("/"):
        raise InvalidInput([Problem("--state", "", f"SQLite journal URL needs an absolute path: sqlite:///abs/path.db, not {url!r}")])
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    return Path(rest), options


class SqliteJournal(Journal):
    backend = "sqlite"
    placeholder = "?"
    MIGRATIONS = MIGRATIONS

    def __init__(self, url: str):
        super().__init__(url)
        self.path, options = sqlite_path(url)
        sync = options.get("synchronous", "normal").lower()
        if sync not in SYNCHRONOUS:
            raise InvalidInput([Problem("--state", "synchronous", f"must be one of {', '.join(SYNCHRONOUS)}, not {sync!r}")])
        try:
            self.busy_timeout_ms = int(options.get("busy_timeout", "30000"))
        except ValueError:
            raise InvalidInput([Problem("--state", "busy_timeout", "must be milliseconds (an integer)")]) from None
        self.synchronous = SYNCHRONOUS[sync]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)  # the journal is not for everyone's eyes
            os.close(fd)
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        # Switching a new file to WAL takes an exclusive lock that busy_timeout does not wait for:
        # two processes opening a fresh journal at once would see "database is locked". Retry.
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    conn.close()
                    raise JournalUnavailable(f"{self.path}: {error}") from None
                time.sleep(0.02)
        if str(mode).lower() != "wal":
            raise InvalidInput([Problem("--state", "", f"{self.path}: could not switch SQLite to WAL mode (got {mode})")])
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _disconnect(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]:
        if self._conn is None:
            raise RuntimeError("journal is closed")
        cur = self._conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            cur.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise JournalUnavailable(f"journal {self.path} stayed locked for {self.busy_timeout_ms} ms: {exc}") from exc
            raise
        try:
            yield cur
        except BaseException:
            self._conn.rollback()
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()

    def _guard_migrations(self, tx: Tx) -> None:
        pass  # BEGIN IMMEDIATE already holds the write lock

    def _has_version_table(self, tx: Tx) -> bool:
        return tx.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'") is not None

    def _json(self, value: Any) -> Any:
        return None if value is None else dumps(value)

    def _unjson(self, value: Any) -> Any:
        return None if value is None else json.loads(value)

    def _ts(self, value: datetime | None) -> Any:
        return None if value is None else value.astimezone(timezone.utc).isoformat(timespec="microseconds")

    def _unts(self, value: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)

    # --- the lock ----------------------------------------------------------------------------
    def _acquire_lease(self, request: LockRequest) -> "SqliteLease":
        holder = request.new_holder(uuid.uuid4().hex)
        with self._tx() as tx:
            row = tx.one(f"SELECT {LOCK_COLUMNS}, lease FROM locks WHERE runbook = ? AND env = ?", (request.runbook, request.env))
            if row is not None:
                current = self._holder(row[:10])
                if not holder_is_stale(current, float(row[10])):
                    raise lock_held_error(request.runbook, request.env, current)
                tx.execute("DELETE FROM locks WHERE runbook = ? AND env = ?", (request.runbook, request.env))
                self._event(tx, "lock.taken_over", actor=request.actor, run_id=request.run_id,
                            data={"runbook": request.runbook, "env": request.env, "stale_holder": current.as_dict()})
            tx.execute(f"INSERT INTO locks ({LOCK_COLUMNS}, lease) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (holder.runbook, holder.env, holder.actor, holder.host, holder.pid, self._ts(holder.since),
                        self._ts(holder.heartbeat_at), holder.run_id, holder.token, holder.pid_start, request.lease))
        return SqliteLease(self, holder)

    def break_lock(self, runbook: str, env: str, actor: str, reason: str, *, force: bool = False) -> LockHolder | None:
        """Remove the lock row of (runbook, env) if stale (or `force`), recording `lock.broken`
        with the reason. A live holder without `force` raises `LockHeld`. Returns the holder
        that was removed, or None when nothing was held."""
        reason = _require_reason(reason, "--reason")
        with self._tx() as tx:
            row = tx.one(f"SELECT {LOCK_COLUMNS}, lease FROM locks WHERE runbook = ? AND env = ?", (runbook, env))
            if row is None:
                return None
            current = self._holder(row[:10])
            stale = holder_is_stale(current, float(row[10]))
            if not stale and not force:
                raise lock_held_error(runbook, env, current, "it is live (its process runs and its heartbeat is fresh); use --force to break it anyway")
            tx.execute("DELETE FROM locks WHERE runbook = ? AND env = ? AND token = ?", (runbook, env, current.token))
            self._event(tx, "lock.broken", actor=actor, run_id=current.run_id,
                        data={"runbook": runbook, "env": env, "reason": reason, "stale": stale, "forced": force and not stale,
                              "holder": current.as_dict()})
        return current


class SqliteLease:
    """A held SQLite lock row; the heartbeat uses its own connection (the thread's)."""

    def __init__(self, journal: SqliteJournal, holder: LockHolder):
        self.journal = journal
        self.holder = holder
        self._beat_conn: sqlite3.Connection | None = None

    def heartbeat(self) -> bool:
        if self._beat_conn is None:
            self._beat_conn = self.journal._connect()  # noqa: SLF001
        cur = self._beat_conn.execute(
            "UPDATE locks SET heartbeat_at = ? WHERE runbook = ? AND env = ? AND token = ?",
            (self.journal._ts(utcnow()), self.holder.runbook, self.holder.env, self.holder.token),  # noqa: SLF001
        )
        return cur.rowcount == 1

    def attach(self, run_id: str) -> None:
        with self.journal._tx() as tx:  # noqa: SLF001
            tx.execute("UPDATE locks SET run_id = ? WHERE runbook = ? AND env = ? AND token = ?",
                       (run_id, self.holder.runbook, self.holder.env, self.holder.token))
        self.holder = LockHolder(**{**self.holder.__dict__, "run_id": run_id})

    def release(self) -> None:
        if self._beat_conn is not None:
            self._beat_conn.close()
            self._beat_conn = None
        if self.journal._conn is None:  # noqa: SLF001 - journal closed first: the row stays, stale once we exit
            return
        with self.journal._tx() as tx:  # noqa: SLF001
            tx.execute("DELETE FROM locks WHERE runbook = ? AND env = ? AND token = ?",
                       (self.holder.runbook, self.holder.env, self.holder.token))
