"""The journal's one interface, implemented once over SQL; the backends supply connection,
transactions, type adaptation, migrations and the lock lease.

Every public method is one database transaction ("one transaction per change"), validated
through `cutover.states` before anything is written; every JSON value written goes through
`redact` first, so secrets never reach the database. Methods are safe to call from several
threads of one process (an internal mutex serialises them); each process opens its own journal.

Write-ahead protocol for the engine:

    intent = journal.record_intent(run.id, wave="pilot", batch="pilot-1",
                                   units=["26734", ...], steps=["precheck", "copy"], phase="do")
    # ... run the segment; for each job event that closes a unit-step:
    journal.record_outcome(run.id, unit="26734", step="copy", status="done",
                           detail={...}, evidence_digest="sha256:...")
    # on resume:
    state = journal.unit_step_state(run.id)      # {(unit, step): UnitStepState}
    state[("26734", "copy")].done                # skip it
    state[("26734", "copy")].interrupted         # started and never finished: run it again

`record_intent` opens one attempt per (unit, step) (step status `started` for do, `undoing`
for undo); `record_outcome` closes the open attempt of that phase (`done`/`failed`/`skipped`
for do, `undone`/`undo_failed` for undo). `record_outcome(status="started"|"undoing")` on a
unit-step whose attempt is already open is a no-op (so a runner's task-start event may be passed
through); `status="skipped"` needs no intent (blocked or filtered units).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from cutover import states
from cutover.audit import digest_json
from cutover.journal import chain
from cutover.errors import CutoverError, InvalidInput, Problem
from cutover.journal.lock import DEFAULT_LEASE, Lease, LockRequest, RunLock, this_host
from cutover.journal.records import (
    Approval,
    Attempt,
    Event,
    GateResult,
    Intent,
    LockHolder,
    Run,
    UnitStepState,
    redact,
    utcnow,
)


class JournalUnavailable(CutoverError):
    """The journal's database cannot be reached or stayed locked past the busy timeout (exit 1)."""

    exit_code = 1
    status = "failed"


class UnknownRun(InvalidInput):
    """No run with that id in this journal (exit 2)."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__([Problem("RUN", "", f"no run {run_id!r} in this journal")])


RUN_COLUMNS = "id, runbook, env, plan_hash, status, started_by, host, pid, params, created_at, updated_at"
STEP_COLUMNS = "run_id, wave, batch, unit, step, status, phase, attempts, updated_at"
ATTEMPT_COLUMNS = "id, run_id, wave, batch, unit, step, phase, attempt, status, started_at, ended_at, detail, evidence_digest, intent_id"
INTENT_COLUMNS = "id, run_id, wave, batch, phase, units, steps, at"
GATE_COLUMNS = "id, run_id, wave, batch, unit, step, gate, status, evidence, at"
APPROVAL_COLUMNS = "id, run_id, gate, status, requested_at, approved_by, reason, at"
EVENT_COLUMNS = "id, run_id, at, actor, kind, data"
LOCK_COLUMNS = "runbook, env, actor, host, pid, since, heartbeat_at, run_id, token, pid_start"

START_OF_PHASE = states.PHASE_START
PHASE_OF_STATUS = {
    states.STARTED: states.DO, states.DONE: states.DO, states.FAILED: states.DO, states.SKIPPED: states.DO,
    states.UNDOING: states.UNDO, states.UNDONE: states.UNDO, states.UNDO_FAILED: states.UNDO,
}


class Tx:
    """One open transaction: `execute` with `?` placeholders, rows as tuples."""

    def __init__(self, cursor: Any, placeholder: str):
        self.cursor = cursor
        self.placeholder = placeholder

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        if params:
            self.cursor.execute(sql, tuple(params))
        else:
            self.cursor.execute(sql)
        return self.cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        if rows:
            self.cursor.executemany(sql, [tuple(r) for r in rows])

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return list(self.execute(sql, params).fetchall())


class Journal(ABC):
    """The durable record of runs. Open one with `cutover.journal.open_journal(url)`.

    Backends: `cutover.journal.sqlite.SqliteJournal`, `cutover.journal.postgres.PostgresJournal`.

    Runs:        create_run, get_run, runs, latest_run, set_run_status, replan
    Unit-steps:  record_intent, record_outcome, record_outcomes, unit_step_state, attempts, intents,
                 retry_units, retry_marks
    Gates:       record_gate, gate_results, failed_gate_units, passed_gates
    Approvals:   request_approval, record_approval, approval, approvals
    Events:      append_event, events (append-only; the audit chain rides along, see chain.py)
    Run lock:    lock (-> RunLock), lock_holder, lock_holders, break_lock
    Schema:      migrate, schema_version
    Errors: UnknownRun / InvalidInput (2), IllegalTransition (2), LockHeld (3), JournalUnavailable (1).
    """

    backend: str = ""
    placeholder = "?"
    MIGRATIONS: Sequence[Sequence[str]] = ()

    def __init__(self, url: str):
        self.url = url
        self._mutex = threading.RLock()

    # --- backend hooks -----------------------------------------------------------------------
    @abstractmethod
    def _transaction(self, write: bool) -> Any:
        """A context manager yielding a DB-API cursor inside one transaction."""

    @abstractmethod
    def _json(self, value: Any) -> Any: ...

    @abstractmethod
    def _unjson(self, value: Any) -> Any: ...

    @abstractmethod
    def _ts(self, value: datetime | None) -> Any: ...

    @abstractmethod
    def _unts(self, value: Any) -> datetime | None: ...

    @abstractmethod
    def _guard_migrations(self, tx: Tx) -> None:
        """Serialise concurrent migrators (called first inside the migration transaction)."""

    @abstractmethod
    def _acquire_lease(self, request: LockRequest) -> Lease: ...

    @abstractmethod
    def break_lock(self, runbook: str, env: str, actor: str, reason: str, *, force: bool = False) -> LockHolder | None:
        """Break the run lock of (runbook, env); see the backends. Needs a non-empty reason."""

    @abstractmethod
    def _disconnect(self) -> None: ...

    def close(self) -> None:
        """Make the head checkpoints durable, then close the connection."""
        chain.flush_checkpoints()
        self._disconnect()

    # --- plumbing ----------------------------------------------------------------------------
    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Tx]:
        with self._mutex:
            self._audit_last: chain.AuditRecord | None = None
            with self._transaction(write) as cursor:
                yield Tx(cursor, self.placeholder)
            # Committed: move the head checkpoints kept outside the journal.
            last, self._audit_last = self._audit_last, None
            chain.checkpoint(last)

    def _audit(self, tx: Tx, **fields: Any) -> None:
        """Chain one audit record into the open transaction (see cutover/journal/chain.py)."""
        self._audit_last = chain.append(tx, backend=self.backend, **fields)

    # --- the audit chain ---------------------------------------------------------------------
    def audit_records(self, run: str | None = None, *, after_seq: int = 0) -> list[chain.AuditRecord]:
        """The audit records in order (all, or one run's); see `cutover.audit.verify_records`."""
        with self._tx(write=False) as tx:
            return chain.read(tx, run=run, after_seq=after_seq)

    def audit_head(self) -> chain.AuditRecord | None:
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT {', '.join(chain.COLUMNS)} FROM audit ORDER BY seq DESC LIMIT 1")
        return chain.from_row(row) if row else None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"

    # --- schema ------------------------------------------------------------------------------
    def schema_version(self) -> int:
        with self._tx(write=False) as tx:
            if not self._has_version_table(tx):
                return 0
            row = tx.one("SELECT MAX(version) FROM schema_version")
            return int(row[0] or 0)

    def migrate(self) -> int:
        """Apply the pending migrations (each backend's ordered SQL lists) in one transaction.

        Idempotent; safe when several processes open the same database at once. Returns the
        schema version reached. New migrations are appended to `MIGRATIONS` (never edit one).
        """
        with self._tx() as tx:
            self._guard_migrations(tx)
            tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            current = int(tx.one("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0])
            for version, statements in enumerate(self.MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in statements:
                    tx.execute(statement)
                tx.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, utcnow().isoformat()))
                current = version
            return current

    def _has_version_table(self, tx: Tx) -> bool:
        raise NotImplementedError

    # --- runs --------------------------------------------------------------------------------
    def create_run(self, *, runbook: str, env: str, plan_hash: str, plan: Mapping[str, Any], started_by: str,
                   params: Mapping[str, Any] | None = None, run_id: str | None = None) -> Run:
        """A new run, status `planned`. `params` (and the plan) are stored redacted.

        The run id is `<runbook>-<YYYYmmdd-HHMMSS>-<4 hex>` unless given.
        """
        now = utcnow()
        run_id = run_id or f"{runbook}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        status = states.transition("run", None, states.PLANNED, run_id)
        clean = redact(dict(params or {}))
        with self._tx() as tx:
            if tx.one("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
                raise InvalidInput([Problem("RUN", "", f"run {run_id!r} already exists")])
            tx.execute(
                "INSERT INTO runs (id, runbook, env, plan_hash, plan, status, started_by, host, pid, params, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, runbook, env, plan_hash, self._json(redact(dict(plan))), status, started_by, this_host(), os.getpid(),
                 self._json(clean), self._ts(now), self._ts(now)),
            )
            self._event(tx, "run.created", actor=started_by, run_id=run_id,
                        data={"runbook": runbook, "env": env, "plan_hash": plan_hash, "params": clean})
        return self.get_run(run_id)

    def get_run(self, run_id: str, *, with_plan: bool = True) -> Run:
        """The run with its stored (redacted) plan; raises `UnknownRun` (exit 2)."""
        with self._tx(write=False) as tx:
            cols = RUN_COLUMNS + (", plan" if with_plan else "")
            row = tx.one(f"SELECT {cols} FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise UnknownRun(run_id)
        return self._run(row)

    def runs(self, *, runbook: str | None = None, env: str | None = None, status: str | Iterable[str] | None = None,
             limit: int | None = None) -> list[Run]:
        """Runs, newest first, without their plans."""
        where, params = [], []
        if runbook is not None:
            where.append("runbook = ?"), params.append(runbook)
        if env is not None:
            where.append("env = ?"), params.append(env)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            where.append("status IN (" + ", ".join("?" * len(wanted)) + ")"), params.extend(wanted)
        sql = f"SELECT {RUN_COLUMNS} FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        with self._tx(write=False) as tx:
            return [self._run(r) for r in tx.all(sql, params)]

    def latest_run(self, runbook: str, env: str) -> Run | None:
        found = self.runs(runbook=runbook, env=env, limit=1)
        return found[0] if found else None

    def set_run_status(self, run_id: str, status: str, *, actor: str, reason: str | None = None,
                       detail: Mapping[str, Any] | None = None) -> Run:
        """Move the run to `status` (validated by states.RUN_TRANSITIONS); appends a `run.status` event."""
        with self._tx() as tx:
            row = tx.one("SELECT status FROM runs WHERE id = ?", (run_id,))
            if row is None:
                raise UnknownRun(run_id)
            old = row[0]
            states.transition("run", old, status, run_id)
            tx.execute("UPDATE runs SET status = ?, updated_at = ? WHERE id = ?", (status, self._ts(utcnow()), run_id))
            data = {"from": old, "to": status} | ({"reason": reason} if reason else {}) | ({"detail": dict(detail)} if detail else {})
            self._event(tx, "run.status", actor=actor, run_id=run_id, data=data)
        return self.get_run(run_id, with_plan=False)

    def replan(self, run_id: str, *, plan_hash: str, plan: Mapping[str, Any], actor: str, reason: str) -> Run:
        """Store a new plan for a run (`resume --replan --reason`); the old hash goes into the event."""
        _require_reason(reason, "--reason")
        with self._tx() as tx:
            row = tx.one("SELECT plan_hash FROM runs WHERE id = ?", (run_id,))
            if row is None:
                raise UnknownRun(run_id)
            tx.execute("UPDATE runs SET plan_hash = ?, plan = ?, updated_at = ? WHERE id = ?",
                       (plan_hash, self._json(redact(dict(plan))), self._ts(utcnow()), run_id))
            self._event(tx, "run.replanned", actor=actor, run_id=run_id,
                        data={"from": row[0], "to": plan_hash, "reason": reason})
        return self.get_run(run_id)

    # --- unit-steps --------------------------------------------------------------------------
    def record_intent(self, run_id: str, *, wave: str, batch: str, units: Sequence[str], steps: Sequence[str],
                      phase: str = states.DO) -> Intent:
        """Before a segment runs: open one attempt per (unit, step), all in one transaction.

        Step status becomes `started` (do) or `undoing` (undo). Every move is checked against
        states.STEP_TRANSITIONS first (e.g. `undo_failed` -> `started` is refused); if any is
        illegal, `IllegalTransition` is raised and nothing at all is written.
        """
        if phase not in states.PHASES:
            raise ValueError(f"phase must be one of {states.PHASES}, not {phase!r}")
        start = START_OF_PHASE[phase]
        now = utcnow()
        units, steps = list(dict.fromkeys(units)), list(dict.fromkeys(steps))
        with self._tx() as tx:
            self._require_run(tx, run_id)
            current: dict[tuple[str, str], str] = {}
            numbers: dict[tuple[str, str], int] = {}
            for chunk in _chunks(units, 500):
                marks = ", ".join("?" * len(chunk))
                for unit, step, status in tx.all(f"SELECT unit, step, status FROM unit_steps WHERE run_id = ? AND unit IN ({marks})", (run_id, *chunk)):
                    current[(unit, step)] = status
                for unit, step, number in tx.all(f"SELECT unit, step, MAX(attempt) FROM attempts WHERE run_id = ? AND phase = ?"
                                                 f" AND unit IN ({marks}) GROUP BY unit, step", (run_id, phase, *chunk)):
                    numbers[(unit, step)] = int(number)
            for unit in units:  # validate everything before writing anything
                for step in steps:
                    states.transition("step", current.get((unit, step)), start, f"{run_id} unit {unit} step {step}")
            intent_id = self._insert(tx, "INSERT INTO intents (run_id, wave, batch, phase, units, steps, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     (run_id, wave, batch, phase, self._json(units), self._json(steps), self._ts(now)))
            ts = self._ts(now)
            pairs = [(u, s, numbers.get((u, s), 0) + 1) for u in units for s in steps]
            tx.executemany("INSERT INTO attempts (run_id, wave, batch, unit, step, phase, attempt, status, started_at, intent_id)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(run_id, wave, batch, u, s, phase, n, start, ts, intent_id) for u, s, n in pairs])
            tx.executemany("INSERT INTO unit_steps (run_id, wave, batch, unit, step, status, phase, attempts, updated_at)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, unit, step) DO UPDATE SET"
                           " wave = excluded.wave, batch = excluded.batch, status = excluded.status, phase = excluded.phase,"
                           " attempts = excluded.attempts, updated_at = excluded.updated_at",
                           [(run_id, wave, batch, u, s, start, phase, n, ts) for u, s, n in pairs])
            self._audit(tx, actor=chain.audit_context().actor or "engine", event=f"segment.{phase}", run_id=run_id, outcome=start,
                        data={"wave": wave, "batch": batch, "units": units, "steps": steps, "intent": intent_id})
        return Intent(intent_id, run_id, wave, batch, phase, list(units), list(steps), now)

    def record_outcome(self, run_id: str, *, unit: str, step: str, status: str, phase: str | None = None,
                       detail: Mapping[str, Any] | None = None, evidence_digest: str | None = None,
                       wave: str | None = None, batch: str | None = None) -> UnitStepState:
        """One unit-step outcome, as its event arrives (one transaction). See the module doc."""
        with self._tx() as tx:
            return self._outcome(tx, run_id, unit, step, status, phase, detail, evidence_digest, wave, batch, utcnow())

    def record_outcomes(self, run_id: str, outcomes: Iterable[Mapping[str, Any]]) -> list[UnitStepState]:
        """Several outcomes in one transaction; each mapping has record_outcome's keyword arguments."""
        now = utcnow()
        with self._tx() as tx:
            return [
                self._outcome(tx, run_id, o["unit"], o["step"], o["status"], o.get("phase"), o.get("detail"),
                              o.get("evidence_digest"), o.get("wave"), o.get("batch"), now)
                for o in outcomes
            ]

    def retry_units(self, run_id: str, units: Sequence[str], *, actor: str, reason: str, wave: str = "", batch: str = "") -> list[str]:
        """Give units that are out of a run (failed, then undone: nothing left to undo, which
        the engine checks) a fresh start: their unit-steps go back to `pending` and their earlier
        failed gates stop counting (`failed_gate_units`). One transaction; returns the units
        reset. A unit with a step started, undoing or undo_failed is refused (IllegalTransition)."""
        _require_reason(reason, "--reason")
        units = list(dict.fromkeys(units))
        if not units:
            return []
        now = self._ts(utcnow())
        with self._tx() as tx:
            self._require_run(tx, run_id)
            rows: list[tuple] = []
            attempts: dict[str, dict[str, int]] = {}  # what a retried unit's step `retries` count from
            for chunk in _chunks(units, 500):
                marks = ", ".join("?" * len(chunk))
                rows += tx.all(f"SELECT unit, step, status FROM unit_steps WHERE run_id = ? AND unit IN ({marks})", (run_id, *chunk))
                for unit, step, number in tx.all(f"SELECT unit, step, MAX(attempt) FROM attempts WHERE run_id = ? AND phase = ?"
                                                 f" AND unit IN ({marks}) GROUP BY unit, step", (run_id, states.DO, *chunk)):
                    attempts.setdefault(unit, {})[step] = int(number)
            rows = [r for r in rows if r[2] != states.PENDING]  # a step the unit never reached stays as it is
            for unit, step, status in rows:  # validate everything before writing anything
                states.transition("step", status, states.PENDING, f"{run_id} unit {unit} step {step}")
            tx.executemany("UPDATE unit_steps SET status = ?, phase = NULL, updated_at = ? WHERE run_id = ? AND unit = ? AND step = ?",
                           [(states.PENDING, now, run_id, unit, step) for unit, step, _ in rows])
            watermark = tx.one("SELECT COALESCE(MAX(id), 0) FROM gate_results WHERE run_id = ?", (run_id,))[0]
            self._event(tx, "units.retried", actor=actor, run_id=run_id,
                        data={"units": units, "wave": wave, "batch": batch, "reason": reason, "gates_before": int(watermark),
                              "attempts_before": attempts})
        return units

    def retry_marks(self, run_id: str) -> dict[str, tuple[int, dict[str, int]]]:
        """Per unit retried (`retry_units`), where its fresh start began: {unit: (the last gate
        result id before it, {step: attempts before it})}. Gate results up to that id and those
        attempts no longer count for the unit."""
        with self._tx(write=False) as tx:
            return self._retry_marks(tx, run_id)

    def _retry_marks(self, tx: Tx, run_id: str) -> dict[str, tuple[int, dict[str, int]]]:
        marks: dict[str, tuple[int, dict[str, int]]] = {}
        for (data,) in tx.all("SELECT data FROM events WHERE run_id = ? AND kind = 'units.retried' ORDER BY id", (run_id,)):
            data = self._unjson(data) or {}
            for unit in data.get("units", []):
                marks[unit] = (int(data.get("gates_before", 0)), dict((data.get("attempts_before") or {}).get(unit) or {}))
        return marks

    def failed_gate_units(self, run_id: str) -> set[str]:
        """Units with a failed gate since they were last retried (`retry_units`)."""
        with self._tx(write=False) as tx:
            retried = self._retry_marks(tx, run_id)
            rows = tx.all("SELECT id, unit FROM gate_results WHERE run_id = ? AND status = ? AND unit IS NOT NULL", (run_id, states.FAILED))
        return {unit for gate_id, unit in rows if gate_id > retried.get(unit, (0, {}))[0]}

    def passed_gates(self, run_id: str) -> set[tuple[str, str, str]]:
        """(unit, step, gate) of the unit gates passed since the unit was last retried."""
        with self._tx(write=False) as tx:
            retried = self._retry_marks(tx, run_id)
            rows = tx.all("SELECT id, unit, step, gate FROM gate_results WHERE run_id = ? AND status = ? AND unit IS NOT NULL",
                          (run_id, states.PASSED))
        return {(unit, step, gate) for gate_id, unit, step, gate in rows if gate_id > retried.get(unit, (0, {}))[0]}

    def unit_step_state(self, run_id: str) -> dict[tuple[str, str], UnitStepState]:
        """Every unit-step the run has touched: {(unit, step): UnitStepState}."""
        with self._tx(write=False) as tx:
            self._require_run(tx, run_id)
            rows = tx.all(f"SELECT {STEP_COLUMNS} FROM unit_steps WHERE run_id = ? ORDER BY wave, batch, unit, step", (run_id,))
        return {(r[3], r[4]): self._step(r) for r in rows}

    def attempts(self, run_id: str, *, unit: str | None = None, step: str | None = None) -> list[Attempt]:
        """Attempts in the order they were opened (an open one has `ended_at` None)."""
        sql, params = f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = ?", [run_id]
        if unit is not None:
            sql += " AND unit = ?"
            params.append(unit)
        if step is not None:
            sql += " AND step = ?"
            params.append(step)
        with self._tx(write=False) as tx:
            return [self._attempt(r) for r in tx.all(sql + " ORDER BY id", params)]

    def intents(self, run_id: str) -> list[Intent]:
        with self._tx(write=False) as tx:
            rows = tx.all(f"SELECT {INTENT_COLUMNS} FROM intents WHERE run_id = ? ORDER BY id", (run_id,))
        return [Intent(r[0], r[1], r[2], r[3], r[4], self._unjson(r[5]), self._unjson(r[6]), self._unts(r[7])) for r in rows]

    # --- gates -------------------------------------------------------------------------------
    def record_gate(self, run_id: str, *, gate: str, status: str, wave: str = "", batch: str = "", unit: str | None = None,
                    step: str | None = None, evidence: Mapping[str, Any] | None = None) -> GateResult:
        """A gate's result for a batch (unit None) or one unit. A `waiting` result for the same
        (batch, unit, step, gate) is updated in place (validated); otherwise a row is added."""
        now = utcnow()
        with self._tx() as tx:
            self._require_run(tx, run_id)
            row = tx.one(
                "SELECT id, status FROM gate_results WHERE run_id = ? AND batch = ? AND gate = ?"
                " AND COALESCE(unit, '') = ? AND COALESCE(step, '') = ? ORDER BY id DESC LIMIT 1",
                (run_id, batch, gate, unit or "", step or ""),
            )
            subject = f"{run_id} gate {gate} {batch} {unit or ''}".strip()
            if row is not None and row[1] == states.WAITING:
                states.transition("gate", row[1], status, subject)
                tx.execute("UPDATE gate_results SET status = ?, evidence = ?, at = ? WHERE id = ?",
                           (status, self._json(redact(dict(evidence or {}))), self._ts(now), row[0]))
                gate_id = row[0]
            else:
                states.transition("gate", None, status, subject)
                gate_id = self._insert(tx, "INSERT INTO gate_results (run_id, wave, batch, unit, step, gate, status, evidence, at)"
                                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                       (run_id, wave, batch, unit, step, gate, status, self._json(redact(dict(evidence or {}))), self._ts(now)))
            r = tx.one(f"SELECT {GATE_COLUMNS} FROM gate_results WHERE id = ?", (gate_id,))
            self._audit(tx, actor=chain.audit_context().actor or "engine", event=f"gate.{status}", run_id=run_id, unit=unit or "",
                        outcome=status, data={"gate": gate, "wave": wave, "batch": batch, "step": step or "",
                                              "evidence_digest": digest_json(redact(dict(evidence or {})))})
        return self._gate(r)

    def gate_results(self, run_id: str, *, batch: str | None = None, gate: str | None = None) -> list[GateResult]:
        sql, params = f"SELECT {GATE_COLUMNS} FROM gate_results WHERE run_id = ?", [run_id]
        if batch is not None:
            sql += " AND batch = ?"
            params.append(batch)
        if gate is not None:
            sql += " AND gate = ?"
            params.append(gate)
        with self._tx(write=False) as tx:
            return [self._gate(r) for r in tx.all(sql + " ORDER BY id", params)]

    # --- approvals ---------------------------------------------------------------------------
    def request_approval(self, run_id: str, gate: str, *, actor: str, prompt: str | None = None) -> Approval:
        """The engine reached approval gate `gate`: record the request (idempotent while open
        or approved: returns the existing record)."""
        with self._tx() as tx:
            self._require_run(tx, run_id)
            current = self._latest_approval(tx, run_id, gate)
            if current is not None and current.status in (states.REQUESTED, states.APPROVED):
                return current
            states.transition("approval", None, states.REQUESTED, f"{run_id} gate {gate}")
            now = utcnow()
            approval_id = self._insert(tx, "INSERT INTO approvals (run_id, gate, status, requested_at) VALUES (?, ?, ?, ?)",
                                       (run_id, gate, states.REQUESTED, self._ts(now)))
            self._event(tx, "approval.requested", actor=actor, run_id=run_id, data={"gate": gate} | ({"prompt": prompt} if prompt else {}))
            return self._approval(tx.one(f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = ?", (approval_id,)))

    def record_approval(self, run_id: str, gate: str, *, actor: str, reason: str, approved: bool = True) -> Approval:
        """Someone approved (or rejected) gate `gate`. Needs a non-empty reason.

        Four eyes is the engine's rule to enforce before calling this (compare `actor` with
        `get_run(run_id).started_by`); the journal only records. Approving an already decided
        gate raises `IllegalTransition`.
        """
        _require_reason(reason, "--reason")
        new = states.APPROVED if approved else states.REJECTED
        now = utcnow()
        with self._tx() as tx:
            self._require_run(tx, run_id)
            current = self._latest_approval(tx, run_id, gate)
            subject = f"{run_id} gate {gate}"
            if current is None or current.status == states.REJECTED:
                states.transition("approval", None, new, subject)
                approval_id = self._insert(tx, "INSERT INTO approvals (run_id, gate, status, requested_at, approved_by, reason, at)"
                                               " VALUES (?, ?, ?, ?, ?, ?, ?)",
                                           (run_id, gate, new, None, actor, reason, self._ts(now)))
            else:
                states.transition("approval", current.status, new, subject)
                approval_id = current.id
                tx.execute("UPDATE approvals SET status = ?, approved_by = ?, reason = ?, at = ? WHERE id = ?",
                           (new, actor, reason, self._ts(now), approval_id))
            self._event(tx, f"approval.{new}", actor=actor, run_id=run_id, data={"gate": gate, "reason": reason})
            return self._approval(tx.one(f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = ?", (approval_id,)))

    def approval(self, run_id: str, gate: str) -> Approval | None:
        """The latest record of gate `gate` in the run, or None."""
        with self._tx(write=False) as tx:
            return self._latest_approval(tx, run_id, gate)

    def approvals(self, run_id: str) -> list[Approval]:
        with self._tx(write=False) as tx:
            return [self._approval(r) for r in tx.all(f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE run_id = ? ORDER BY id", (run_id,))]

    # --- events ------------------------------------------------------------------------------
    def append_event(self, kind: str, *, actor: str, run_id: str | None = None, data: Mapping[str, Any] | None = None) -> Event:
        """Append one record to the append-only `events` table (data stored redacted)."""
        with self._tx() as tx:
            event_id = self._event(tx, kind, actor=actor, run_id=run_id, data=data)
            return self._eventrow(tx.one(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", (event_id,)))

    def events(self, *, run_id: str | None = None, kind: str | None = None, after_id: int = 0) -> list[Event]:
        sql, params = f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ?", [after_id]
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        with self._tx(write=False) as tx:
            return [self._eventrow(r) for r in tx.all(sql + " ORDER BY id", params)]

    # --- the run lock ------------------------------------------------------------------------
    def lock(self, runbook: str, env: str, *, actor: str, run_id: str | None = None, lease: float = DEFAULT_LEASE,
             heartbeat: float | None = None) -> RunLock:
        """The run lock of (runbook, env), not yet taken: `with journal.lock(...) as lock:`."""
        return RunLock(self, runbook, env, actor=actor, run_id=run_id, lease=lease, heartbeat=heartbeat)

    def lock_holder(self, runbook: str, env: str) -> LockHolder | None:
        """The holder row of (runbook, env), live or stale, or None."""
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT {LOCK_COLUMNS} FROM locks WHERE runbook = ? AND env = ?", (runbook, env))
        return self._holder(row) if row else None

    def lock_holders(self) -> list[LockHolder]:
        with self._tx(write=False) as tx:
            return [self._holder(r) for r in tx.all(f"SELECT {LOCK_COLUMNS} FROM locks ORDER BY runbook, env")]

    # --- internals ---------------------------------------------------------------------------
    def _insert(self, tx: Tx, sql: str, params: Sequence[Any]) -> int:
        return int(tx.one(sql + " RETURNING id", params)[0])

    def _event(self, tx: Tx, kind: str, *, actor: str, run_id: str | None = None, data: Mapping[str, Any] | None = None) -> int:
        event_id = self._insert(tx, "INSERT INTO events (run_id, at, actor, kind, data) VALUES (?, ?, ?, ?, ?)",
                                (run_id, self._ts(utcnow()), actor, kind, self._json(redact(dict(data or {})))))
        self._audit(tx, actor=actor, event=kind, run_id=run_id, data=data)
        return event_id

    def _require_run(self, tx: Tx, run_id: str) -> None:
        if tx.one("SELECT 1 FROM runs WHERE id = ?", (run_id,)) is None:
            raise UnknownRun(run_id)

    def _open_attempt(self, tx: Tx, run_id: str, wave: str, batch: str, unit: str, step: str, phase: str, start: str,
                      now: datetime, intent_id: int | None) -> None:
        row = tx.one("SELECT status FROM unit_steps WHERE run_id = ? AND unit = ? AND step = ?", (run_id, unit, step))
        old = row[0] if row else None
        states.transition("step", old, start, f"{run_id} unit {unit} step {step}")
        states.transition("attempt", None, start)
        number = int(tx.one("SELECT COALESCE(MAX(attempt), 0) FROM attempts WHERE run_id = ? AND unit = ? AND step = ? AND phase = ?",
                            (run_id, unit, step, phase))[0]) + 1
        tx.execute("INSERT INTO attempts (run_id, wave, batch, unit, step, phase, attempt, status, started_at, intent_id)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (run_id, wave, batch, unit, step, phase, number, start, self._ts(now), intent_id))
        if row is None:
            tx.execute("INSERT INTO unit_steps (run_id, wave, batch, unit, step, status, phase, attempts, updated_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (run_id, wave, batch, unit, step, start, phase, number, self._ts(now)))
        else:
            tx.execute("UPDATE unit_steps SET wave = ?, batch = ?, status = ?, phase = ?, attempts = ?, updated_at = ?"
                       " WHERE run_id = ? AND unit = ? AND step = ?", (wave, batch, start, phase, number, self._ts(now), run_id, unit, step))

    def _outcome(self, tx: Tx, run_id: str, unit: str, step: str, status: str, phase: str | None,
                 detail: Mapping[str, Any] | None, evidence_digest: str | None, wave: str | None, batch: str | None,
                 now: datetime) -> UnitStepState:
        subject = f"{run_id} unit {unit} step {step}"
        if status not in PHASE_OF_STATUS:  # pending or an unknown word: not something an event reports
            raise states.IllegalTransition("step", None, status, subject + f" (not an outcome; outcomes: {', '.join(PHASE_OF_STATUS)})")
        phase = phase or PHASE_OF_STATUS[status]
        row = tx.one(
            "SELECT s.status, s.wave, s.batch, a.id, a.status FROM unit_steps s LEFT JOIN attempts a ON a.id ="
            " (SELECT MAX(id) FROM attempts WHERE run_id = s.run_id AND unit = s.unit AND step = s.step AND phase = ? AND ended_at IS NULL)"
            " WHERE s.run_id = ? AND s.unit = ? AND s.step = ?", (phase, run_id, unit, step))
        if row is None:
            self._require_run(tx, run_id)
        old = row[0] if row else None
        wave = wave if wave is not None else (row[1] if row else "")
        batch = batch if batch is not None else (row[2] if row else "")
        open_attempt = (row[3], row[4]) if row and row[3] is not None else None
        if status == START_OF_PHASE.get(phase):
            if open_attempt is None or old != status:
                self._open_attempt(tx, run_id, wave, batch, unit, step, phase, status, now, None)
            return self._step(tx.one(f"SELECT {STEP_COLUMNS} FROM unit_steps WHERE run_id = ? AND unit = ? AND step = ?", (run_id, unit, step)))
        states.transition("step", old, status, subject)
        if open_attempt is not None:
            states.transition("attempt", open_attempt[1], status, subject)
            tx.execute("UPDATE attempts SET status = ?, ended_at = ?, detail = ?, evidence_digest = ? WHERE id = ?",
                       (status, self._ts(now), self._json(redact(dict(detail))) if detail is not None else None, evidence_digest, open_attempt[0]))
        elif status != states.SKIPPED:
            raise states.IllegalTransition("attempt", None, status, subject + " (no intent recorded)")
        if row is None:
            result = tx.one("INSERT INTO unit_steps (run_id, wave, batch, unit, step, status, phase, attempts, updated_at)"
                            f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {STEP_COLUMNS}",
                            (run_id, wave, batch, unit, step, status, phase, 0, self._ts(now)))
        else:
            result = tx.one("UPDATE unit_steps SET status = ?, phase = ?, updated_at = ? WHERE run_id = ? AND unit = ? AND step = ?"
                            f" RETURNING {STEP_COLUMNS}", (status, phase, self._ts(now), run_id, unit, step))
        self._audit(tx, actor=chain.audit_context().actor or "engine", event=f"step.{status}", run_id=run_id, unit=unit, outcome=status,
                    data={"wave": wave, "batch": batch, "step": step, "phase": phase, "evidence_digest": evidence_digest or "",
                          **({"detail": dict(detail)} if detail else {})})
        return self._step(result)

    def _latest_approval(self, tx: Tx, run_id: str, gate: str) -> Approval | None:
        row = tx.one(f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE run_id = ? AND gate = ? ORDER BY id DESC LIMIT 1", (run_id, gate))
        return self._approval(row) if row else None

    def _run(self, r: tuple) -> Run:
        return Run(id=r[0], runbook=r[1], env=r[2], plan_hash=r[3], status=r[4], started_by=r[5], host=r[6], pid=int(r[7]),
                   params=self._unjson(r[8]) or {}, created_at=self._unts(r[9]), updated_at=self._unts(r[10]),
                   plan=self._unjson(r[11]) if len(r) > 11 else None)

    def _step(self, r: tuple) -> UnitStepState:
        return UnitStepState(run_id=r[0], wave=r[1], batch=r[2], unit=r[3], step=r[4], status=r[5], phase=r[6],
                             attempts=int(r[7]), updated_at=self._unts(r[8]))

    def _attempt(self, r: tuple) -> Attempt:
        return Attempt(id=int(r[0]), run_id=r[1], wave=r[2], batch=r[3], unit=r[4], step=r[5], phase=r[6], attempt=int(r[7]),
                       status=r[8], started_at=self._unts(r[9]), ended_at=self._unts(r[10]), detail=self._unjson(r[11]),
                       evidence_digest=r[12], intent_id=r[13])

    def _gate(self, r: tuple) -> GateResult:
        return GateResult(id=int(r[0]), run_id=r[1], wave=r[2], batch=r[3], unit=r[4], step=r[5], gate=r[6], status=r[7],
                          evidence=self._unjson(r[8]), at=self._unts(r[9]))

    def _approval(self, r: tuple) -> Approval:
        return Approval(id=int(r[0]), run_id=r[1], gate=r[2], status=r[3], requested_at=self._unts(r[4]), approved_by=r[5],
                        reason=r[6], at=self._unts(r[7]))

    def _eventrow(self, r: tuple) -> Event:
        return Event(id=int(r[0]), run_id=r[1], at=self._unts(r[2]), actor=r[3], kind=r[4], data=self._unjson(r[5]) or {})

    def _holder(self, r: tuple) -> LockHolder:
        return LockHolder(runbook=r[0], env=r[1], actor=r[2], host=r[3], pid=int(r[4]), since=self._unts(r[5]),
                          heartbeat_at=self._unts(r[6]), run_id=r[7], token=r[8], pid_start=r[9])


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _require_reason(reason: str | None, option: str) -> str:
    if reason is None or not str(reason).strip():
        raise InvalidInput([Problem(option, "", "a non-empty reason is required")])
    return str(reason).strip()


def redact_url(url: str) -> str:
    """The URL with any password replaced (for messages and reprs)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", re.sub(r"(password=)[^&\s]*", r"\1***", url))


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
