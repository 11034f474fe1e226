"""The durable journal of runs: one interface (`Journal`), two backends, and the run lock.

    from cutover.journal import open_journal

    with open_journal(session.state) as journal:          # migrated on open
        with journal.lock(runbook, env, actor=session.actor) as lock:   # LockHeld (exit 3) if taken
            run = journal.create_run(runbook=..., env=..., plan_hash=plan.hash, plan=plan.to_dict(),
                                     started_by=session.actor, params={...})
            lock.attach(run.id)
            journal.set_run_status(run.id, "running", actor=session.actor)
            journal.record_intent(run.id, wave=..., batch=..., units=[...], steps=[...])
            journal.record_outcome(run.id, unit=..., step=..., status="done", detail={...})
            ...

URLs: `sqlite:///abs/path.db` (the default `.cutover/state.db`, see `sqlite.py`) or
`postgresql://user@host:port/db` (`postgres.py`). What is stored: runs (with plan and redacted
params), intents (segments announced before they run), unit_steps (current status per run,
unit and step) and attempts (one row per try and phase), gate_results, approvals, and an
append-only `events` table (run status changes, approvals, lock take-overs and breaks, and
whatever `append_event` adds). Statuses are validated through `cutover.states`.

For the CLI's `cutover unlock RUNBOOK --reason R [--force]` use `unlock(url, runbook, env,
actor=..., reason=..., force=...)`; it returns the holder that was removed (None if nothing was
held), raises `InvalidInput` (exit 2) for an empty reason and `LockHeld` (exit 3) for a live
holder without `force`.
"""

from __future__ import annotations

from cutover.errors import InvalidInput, Problem
from cutover.journal.lock import DEFAULT_LEASE, RunLock, advisory_key, holder_is_stale, process_alive
from cutover.journal.records import (
    REDACTED,
    Approval,
    Attempt,
    Event,
    GateResult,
    Intent,
    LockHolder,
    Run,
    UnitStepState,
    redact,
)
from cutover.journal.store import Journal, JournalUnavailable, UnknownRun, redact_url

__all__ = [
    "DEFAULT_LEASE", "REDACTED", "Approval", "Attempt", "Event", "GateResult", "Intent", "Journal", "LockHolder", "Run",
    "JournalUnavailable", "RunLock", "UnitStepState", "UnknownRun", "advisory_key", "holder_is_stale", "open_journal", "process_alive", "redact",
    "redact_url", "unlock",
]


def open_journal(url: str, *, migrate: bool = True) -> Journal:
    """Open (and by default migrate) the journal at `url`; raises InvalidInput for a bad URL."""
    url = (url or "").strip()
    if url.startswith("sqlite:") or (url.startswith("/") and "://" not in url):
        from cutover.journal.sqlite import SqliteJournal

        journal: Journal = SqliteJournal(url if url.startswith("sqlite:") else f"sqlite://{url}")
    elif url.startswith(("postgresql://", "postgres://")):
        from cutover.journal.postgres import PostgresJournal

        journal = PostgresJournal(url)
    else:
        raise InvalidInput([Problem("--state", "", f"unknown journal URL {redact_url(url)!r}: use sqlite:///abs/path.db or postgresql://...")])
    if migrate:
        try:
            journal.migrate()
        except BaseException:
            journal.close()
            raise
    return journal


def unlock(url: str, runbook: str, env: str, *, actor: str, reason: str, force: bool = False) -> LockHolder | None:
    """Break the run lock of (runbook, env) in the journal at `url` (for `cutover unlock`)."""
    with open_journal(url) as journal:
        return journal.break_lock(runbook, env, actor, reason, force=force)
