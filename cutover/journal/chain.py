"""The audit chain inside the journal: every event and every unit-step outcome also becomes a
hash-linked audit record, appended in the same transaction (both backends).

The process that opens the journal says who it is once (`set_audit_context`: the command line,
redacted; the signing key; where the head checkpoint is kept outside the journal); the
journal then chains, signs and checkpoints on its own. See `cutover.audit` for the record,
verification and bundles.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cutover.audit import GENESIS, AuditRecord, Signer, redact_argv, utc_now, write_checkpoint
from cutover.journal.records import redact

# Appended to each backend's MIGRATIONS (schema version 2).
AUDIT_TABLE = """CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    host TEXT NOT NULL,
    event TEXT NOT NULL,
    command TEXT NOT NULL,
    reason TEXT NOT NULL,
    run TEXT NOT NULL,
    runbook TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    unit TEXT NOT NULL,
    outcome TEXT NOT NULL,
    evidence TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL
)"""
AUDIT_INDEXES = ["CREATE INDEX audit_run ON audit (run)", "CREATE INDEX audit_unit ON audit (unit)"]
AUDIT_MIGRATION = [AUDIT_TABLE, *AUDIT_INDEXES]
AUDIT_LOCK_KEY = 0x6375746F7665  # serialises appends on PostgreSQL ("cutove")

COLUMNS = ("seq", "at", "actor", "host", "event", "command", "reason", "run", "runbook", "plan_hash", "unit", "outcome",
           "evidence", "detail", "prev_hash", "hash", "signature", "key_id")
JSON_COLUMNS = {"command", "evidence", "detail"}


@dataclass
class AuditContext:
    command: list[str] = field(default_factory=list)
    actor: str = ""
    signer: Signer | None = None
    checkpoint_paths: list[Path] = field(default_factory=list)
    runs_dir: Path | None = None


_context = AuditContext()


def set_audit_context(*, command: Sequence[str] | None = None, actor: str = "", signer: Signer | None = None,
                      checkpoint_paths: Sequence[Path] | None = None, runs_dir: Path | None = None) -> AuditContext:
    """Say once per process what every audit record of this process carries. With `runs_dir`,
    the head is also checkpointed in `<runs_dir>/<run>/audit-checkpoint.json` when that run's
    folder exists."""
    global _context
    _context = AuditContext(redact_argv(command or []), actor, signer, list(checkpoint_paths or []), runs_dir)
    return _context


def audit_context() -> AuditContext:
    return _context


def add_checkpoint_path(path: Path) -> None:
    """Also keep the head checkpoint at `path` (e.g. a run's artifacts folder)."""
    if path not in _context.checkpoint_paths:
        _context.checkpoint_paths.append(path)


def _evidence(data: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in data.items():
        if isinstance(v, str) and v.startswith("sha256:") and len(v) == 71:
            out[k] = v
    for k in ("evidence_digest", "digest"):
        if isinstance(data.get(k), str) and data[k]:
            out[k] = data[k]
    return out


def append(tx: Any, *, backend: str, actor: str, event: str, run_id: str | None, data: Mapping[str, Any] | None,
           unit: str = "", outcome: str = "") -> AuditRecord:
    """Append one chained record inside the open transaction `tx` (a journal `Tx`)."""
    if backend == "postgresql":
        tx.execute("SELECT pg_advisory_xact_lock(?)", (AUDIT_LOCK_KEY,))
    # SQLite: the write transaction (BEGIN IMMEDIATE) already serialises appends.
    head = tx.one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
    runbook = plan_hash = ""
    if run_id:
        row = tx.one("SELECT runbook, plan_hash FROM runs WHERE id = ?", (run_id,))
        if row:
            runbook, plan_hash = row[0], row[1]
    clean = redact(dict(data or {}))
    ctx = _context
    record = AuditRecord(
        seq=(int(head[0]) + 1) if head else 1,
        at=utc_now(),
        actor=actor,
        host=socket.gethostname(),
        event=event,
        command=list(ctx.command),
        reason=str(clean.pop("reason", "") or ""),
        run=run_id or "",
        runbook=runbook,
        plan_hash=plan_hash,
        unit=unit or str(clean.get("unit", "") or ""),
        outcome=outcome or str(clean.get("to", clean.get("status", "")) or ""),
        evidence=_evidence(clean),
        detail=clean,
        prev_hash=head[1] if head else GENESIS,
    )
    if ctx.signer:
        record.key_id = ctx.signer.key_id
    record.hash = record.compute_hash()
    if ctx.signer:
        record.signature = ctx.signer.sign(record.hash)
    values = [json.dumps(getattr(record, c), sort_keys=True, ensure_ascii=False, default=str) if c in JSON_COLUMNS else getattr(record, c) for c in COLUMNS]
    tx.execute(f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)
    return record


def from_row(row: Sequence[Any]) -> AuditRecord:
    data = dict(zip(COLUMNS, row))
    for c in JSON_COLUMNS:
        if isinstance(data[c], str):
            data[c] = json.loads(data[c])
    data["seq"] = int(data["seq"])
    return AuditRecord.from_dict(data)


def read(tx: Any, *, run: str | None = None, after_seq: int = 0) -> list[AuditRecord]:
    sql = f"SELECT {', '.join(COLUMNS)} FROM audit WHERE seq > ?"
    params: list[Any] = [after_seq]
    if run:
        sql += " AND run = ?"
        params.append(run)
    return [from_row(r) for r in tx.all(sql + " ORDER BY seq", params)]


_unflushed: dict[Path, AuditRecord] = {}


def checkpoint(record: AuditRecord | None) -> None:
    """After the transaction that appended `record` committed: move the head checkpoints.
    Written whole (atomic rename) but not waited for on disk: one fsync per outcome would be
    the hot path's biggest cost; `flush_checkpoints` (the journal's close) makes them durable."""
    if record is None:
        return
    paths = list(_context.checkpoint_paths)
    if _context.runs_dir and record.run and (_context.runs_dir / record.run).is_dir():
        paths.append(_context.runs_dir / record.run / "audit-checkpoint.json")
    for path in paths:
        write_checkpoint(path, record, _context.signer, durable=False)
        _unflushed[path] = record


def flush_checkpoints() -> None:
    """Write the latest head checkpoints again, waiting for the disk this time."""
    while _unflushed:
        path, record = _unflushed.popitem()
        write_checkpoint(path, record, _context.signer)
