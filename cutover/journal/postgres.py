"""The PostgreSQL journal (shared between operators): `--state postgresql://user@host:port/db`.

psycopg 3, one connection per journal in autocommit mode with explicit transactions (one per
change), timestamps as `timestamptz` in UTC, JSON as `jsonb`. The run lock is a session-level
`pg_try_advisory_lock` held on a dedicated connection (the server frees it when that
connection dies, so a killed run never leaves a live lock behind), plus a holder row in
`locks` for display and for `LockHeld`'s message.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cutover.errors import InvalidInput, Problem
from cutover.journal.lock import LockRequest, advisory_key, lock_held_error, process_alive, this_host
from cutover.journal.records import LockHolder, utcnow
from cutover.journal.chain import AUDIT_MIGRATION
from cutover.journal.store import LOCK_COLUMNS, Journal, JournalUnavailable, Tx, _require_reason, dumps, redact_url

MIGRATION_LOCK_KEY = 0x637574_6F766572  # "cutover": serialises concurrent migrators

# Ordered; version N is MIGRATIONS[N-1]. Append new lists, never edit applied ones.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            runbook TEXT NOT NULL,
            env TEXT NOT NULL,
            plan_hash TEXT NOT NULL,
            plan JSONB,
            status TEXT NOT NULL,
            started_by TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            params JSONB NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL)""",
        "CREATE INDEX runs_by_runbook_env ON runs (runbook, env, created_at)",
        """CREATE TABLE intents (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs (id),
            wave TEXT NOT NULL,
            batch TEXT NOT NULL,
            phase TEXT NOT NULL CHECK (phase IN ('do', 'undo')),
            units JSONB NOT NULL,
            steps JSONB NOT NULL,
            at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE unit_steps (
            run_id TEXT NOT NULL REFERENCES runs (id),
            wave TEXT NOT NULL,
            batch TEXT NOT NULL,
            unit TEXT NOT NULL,
            step TEXT NOT NULL,
            status TEXT NOT NULL,
            phase TEXT CHECK (phase IN ('do', 'undo')),
            attempts INTEGER NOT NULL DEFAULT 0,
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (run_id, unit, step))""",
        """CREATE TABLE attempts (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs (id),
            wave TEXT NOT NULL,
            batch TEXT NOT NULL,
            unit TEXT NOT NULL,
            step TEXT NOT NULL,
            phase TEXT NOT NULL CHECK (phase IN ('do', 'undo')),
            attempt INTEGER NOT NULL,
            status TEXT NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            ended_at TIMESTAMPTZ,
            detail JSONB,
            evidence_digest TEXT,
            intent_id BIGINT REFERENCES intents (id),
            UNIQUE (run_id, unit, step, phase, attempt))""",
        """CREATE TABLE gate_results (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs (id),
            wave TEXT NOT NULL,
            batch TEXT NOT NULL,
            unit TEXT,
            step TEXT,
            gate TEXT NOT NULL,
            status TEXT NOT NULL,
            evidence JSONB,
            at TIMESTAMPTZ NOT NULL)""",
        "CREATE INDEX gate_results_by_run ON gate_results (run_id, batch, gate)",
        """CREATE TABLE approvals (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs (id),
            gate TEXT NOT NULL,
            status TEXT NOT NULL,
            requested_at TIMESTAMPTZ,
            approved_by TEXT,
            reason TEXT,
            at TIMESTAMPTZ)""",
        "CREATE INDEX approvals_by_run ON approvals (run_id, gate)",
        """CREATE TABLE events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id TEXT,
            at TIMESTAMPTZ NOT NULL,
            actor TEXT NOT NULL,
            kind TEXT NOT NULL,
            data JSONB NOT NULL)""",
        "CREATE INDEX events_by_run ON events (run_id, id)",
        """CREATE FUNCTION cutover_events_append_only() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'events are append-only'; END $$""",
        """CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
           FOR EACH ROW EXECUTE FUNCTION cutover_events_append_only()""",
        """CREATE TABLE locks (
            runbook TEXT NOT NULL,
            env TEXT NOT NULL,
            actor TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            since TIMESTAMPTZ NOT NULL,
            heartbeat_at TIMESTAMPTZ NOT NULL,
            run_id TEXT,
            token TEXT NOT NULL,
            pid_start TEXT,
            lease DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (runbook, env))""",
    ],
    AUDIT_MIGRATION,  # version 2: the audit chain (cutover/journal/chain.py)
]


def connect(url: str) -> psycopg.Connection:
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise InvalidInput([Problem("--state", "", f"cannot connect to {redact_url(url)}: {str(exc).strip()}")]) from None
    conn.execute("SET TIME ZONE 'UTC'")
    return conn


class PostgresJournal(Journal):
    backend = "postgresql"
    placeholder = "%s"
    MIGRATIONS = MIGRATIONS

    def __init__(self, url: str):
        super().__init__(url)
        self._conn: psycopg.Connection | None = connect(url)

    def _disconnect(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]:
        if self._conn is None:
            raise RuntimeError("journal is closed")
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                yield cur
        except psycopg.OperationalError as exc:
            raise JournalUnavailable(f"journal {redact_url(self.url)}: {str(exc).strip()}") from exc

    def _guard_migrations(self, tx: Tx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))

    def _has_version_table(self, tx: Tx) -> bool:
        return tx.one("SELECT to_regclass('schema_version') IS NOT NULL")[0]

    def _json(self, value: Any) -> Any:
        return None if value is None else Jsonb(value, dumps=dumps)

    def _unjson(self, value: Any) -> Any:
        return value

    def _ts(self, value: datetime | None) -> Any:
        return value

    def _unts(self, value: Any) -> datetime | None:
        return None if value is None else value.astimezone(timezone.utc)

    # --- the lock ----------------------------------------------------------------------------
    def _acquire_lease(self, request: LockRequest) -> "PostgresLease":
        key = advisory_key(request.runbook, request.env)
        conn = connect(self.url)
        try:
            # the server drops the session of a holder whose host vanished within ~25 s,
            # freeing the advisory lock (TCP keepalives; ignored on unix sockets)
            for setting, value in (("tcp_keepalives_idle", 10), ("tcp_keepalives_interval", 5), ("tcp_keepalives_count", 3)):
                conn.execute(f"SET {setting} = {value}")
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
            if not got:
                # The winner writes its holder row just after taking the advisory lock: give
                # that transaction a moment to commit so the error can name the holder.
                holder_row = self.lock_holder(request.runbook, request.env)
                for _ in range(20):
                    if holder_row is not None:
                        break
                    time.sleep(0.1)
                    holder_row = self.lock_holder(request.runbook, request.env)
                raise lock_held_error(request.runbook, request.env, holder_row)
            holder = request.new_holder(uuid.uuid4().hex)
            with self._tx() as tx:
                row = tx.one(f"SELECT {LOCK_COLUMNS} FROM locks WHERE runbook = ? AND env = ?", (request.runbook, request.env))
                if row is not None:  # we hold the advisory lock: whoever wrote that row is gone
                    tx.execute("DELETE FROM locks WHERE runbook = ? AND env = ?", (request.runbook, request.env))
                    self._event(tx, "lock.taken_over", actor=request.actor, run_id=request.run_id,
                                data={"runbook": request.runbook, "env": request.env, "stale_holder": self._holder(row).as_dict()})
                tx.execute(f"INSERT INTO locks ({LOCK_COLUMNS}, lease) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (holder.runbook, holder.env, holder.actor, holder.host, holder.pid, holder.since,
                            holder.heartbeat_at, holder.run_id, holder.token, holder.pid_start, request.lease))
        except BaseException:
            conn.close()  # closing the session frees the advisory lock
            raise
        return PostgresLease(holder, conn)

    def break_lock(self, runbook: str, env: str, actor: str, reason: str, *, force: bool = False) -> LockHolder | None:
        """Break the run lock of (runbook, env), recording `lock.broken` with the reason.

        If no session holds the advisory lock, the leftover holder row is removed. If one does
        and its heartbeat is older than its lease (or its pid is dead on this host), or `force`,
        the holding backend is terminated (`pg_terminate_backend`: needs a superuser or the same
        role). A live holder without `force` raises `LockHeld`. Returns the holder removed, or
        None when nothing was held.
        """
        reason = _require_reason(reason, "--reason")
        key = advisory_key(runbook, env)
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT {LOCK_COLUMNS}, lease FROM locks WHERE runbook = ? AND env = ?", (runbook, env))
        holder = self._holder(row[:10]) if row else None
        lease = float(row[10]) if row else 0.0
        probe = connect(self.url)
        try:
            got = probe.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
            terminated: list[int] = []
            stale = True
            if not got:
                stale = holder is not None and (
                    utcnow() - holder.heartbeat_at > timedelta(seconds=lease)
                    or (holder.host == this_host() and not process_alive(holder.pid, holder.pid_start))
                )
                if not stale and not force:
                    raise lock_held_error(runbook, env, holder, "it is live (its session holds the advisory lock and its heartbeat is fresh); use --force to break it anyway")
                terminated = self._terminate_holders(probe, key)
                got = self._wait_for_lock(probe, key)
                if not got:
                    raise lock_held_error(runbook, env, holder, "could not terminate the session that holds it")
            if holder is None and not terminated:
                return None
            with self._tx() as tx:
                if holder is not None:
                    tx.execute("DELETE FROM locks WHERE runbook = ? AND env = ? AND token = ?", (runbook, env, holder.token))
                self._event(tx, "lock.broken", actor=actor, run_id=holder.run_id if holder else None,
                            data={"runbook": runbook, "env": env, "reason": reason, "stale": stale, "forced": force and not stale,
                                  "holder": holder.as_dict() if holder else None, "terminated_backends": terminated})
            return holder
        finally:
            probe.close()

    @staticmethod
    def _terminate_holders(probe: psycopg.Connection, key: int) -> list[int]:
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        classid, objid = unsigned >> 32, unsigned & 0xFFFFFFFF
        pids = [r[0] for r in probe.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND objid = %s AND objsubid = 1",
            (classid, objid)).fetchall()]
        for pid in pids:
            probe.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return pids

    @staticmethod
    def _wait_for_lock(probe: psycopg.Connection, key: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                return True
            time.sleep(0.05)
        return False


class PostgresLease:
    """A held advisory lock: its dedicated connection, used by the heartbeat thread too."""

    def __init__(self, holder: LockHolder, conn: psycopg.Connection):
        self.holder = holder
        self._conn = conn
        self._mutex = threading.Lock()

    def heartbeat(self) -> bool:
        with self._mutex:
            if self._conn.closed:
                return False
            try:
                cur = self._conn.execute("UPDATE locks SET heartbeat_at = %s WHERE runbook = %s AND env = %s AND token = %s",
                                         (utcnow(), self.holder.runbook, self.holder.env, self.holder.token))
            except psycopg.OperationalError:
                return False  # the session is gone, and the advisory lock with it
            return cur.rowcount == 1

    def attach(self, run_id: str) -> None:
        with self._mutex:
            self._conn.execute("UPDATE locks SET run_id = %s WHERE runbook = %s AND env = %s AND token = %s",
                               (run_id, self.holder.runbook, self.holder.env, self.holder.token))
        self.holder = LockHolder(**{**self.holder.__dict__, "run_id": run_id})

    def release(self) -> None:
        with self._mutex:
            if self._conn.closed:
                return
            try:
                self._conn.execute("DELETE FROM locks WHERE runbook = %s AND env = %s AND token = %s",
                                   (self.holder.runbook, self.holder.env, self.holder.token))
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(self.holder.runbook, self.holder.env),))
            except psycopg.OperationalError:
                pass
            finally:
                self._conn.close()
