"""Statuses of runs, unit-steps, attempts, gates and approvals, and their allowed transitions.

The transitions are data: one table per kind, `{old status: {allowed new statuses}}`, where the
old status `None` means "no record yet" (what a new record may start as). `transition(kind, old,
new)` checks one change against its table and raises `IllegalTransition` (exit code 2: nothing
was executed) when the table does not allow it. The journal calls it for every change it
stores, so an illegal change never reaches the database.

Kinds and what they describe:

- `run`: a whole run of a runbook in an environment.
    planned -> running (the engine starts) | aborted
    running -> running (a resume after the process died) | waiting (approval or window, exit 4)
               | paused (on_failure: pause) | rolling_back | succeeded | failed (what the
               batch changed was rolled back, exit 1) | rolled_back | rollback_failed (exit 5)
               | aborted
    waiting / paused -> running (resume, approve) | rolling_back | aborted | (waiting <-> paused)
    rolling_back -> rolling_back (resumed rollback) | rolled_back | rollback_failed | failed
                    | paused | aborted | succeeded / waiting (a rollback of one unit or one wave
                    gives the run back the status it had: the rest of it stays done)
    failed / succeeded / aborted / rolled_back -> rolling_back (`cutover rollback RUN ...`)
    failed -> running (a resume after a stop, `on_failure: stop`)
    rollback_failed -> rolling_back (retry once a person acted) | aborted
- `step`: one step of one unit within a run (the unit-step's lifecycle, across attempts).
    (none) -> pending | started | skipped | undoing
    pending -> started | skipped | undoing (undo of a step that may have been half-applied)
    started -> started (re-run after a crash, a retry) | done | failed | skipped | undoing
    done -> undoing | started (explicit re-run, e.g. --replan) | pending (a step without undo of a
            unit retried on resume)
    failed -> started (retry) | undoing | skipped | pending (the unit is retried on resume)
    undoing -> undoing (resumed undo) | undone | undo_failed
    undo_failed -> undoing (retry)
    undone -> started (the unit is cut over again) | undoing | pending (retried on resume)
    skipped -> started | pending (retried on resume)
- `attempt`: one try of one phase of one unit-step (a journal row per try).
    do phase:   (none) -> started -> done | failed | skipped
    undo phase: (none) -> undoing -> undone | undo_failed
- `gate`: one gate result. (none) -> waiting | passed | failed | skipped; waiting -> passed |
  failed | skipped.
- `approval`: (none) -> requested | approved | rejected; requested -> approved | rejected.

Terminal statuses (`TERMINAL[kind]`) are those after which the engine has nothing left to do on
its own; some of them may still be left by an explicit command (rollback, resume).
"""

from __future__ import annotations

from collections.abc import Mapping

from cutover.errors import CutoverError

# --- run statuses -----------------------------------------------------------------------------
PLANNED = "planned"
RUNNING = "running"
WAITING = "waiting"
PAUSED = "paused"
ROLLING_BACK = "rolling_back"
SUCCEEDED = "succeeded"
FAILED = "failed"
ROLLED_BACK = "rolled_back"
ROLLBACK_FAILED = "rollback_failed"
ABORTED = "aborted"

RUN_STATUSES: tuple[str, ...] = (
    PLANNED, RUNNING, WAITING, PAUSED, ROLLING_BACK, SUCCEEDED, FAILED, ROLLED_BACK, ROLLBACK_FAILED, ABORTED,
)

# --- unit-step statuses -----------------------------------------------------------------------
PENDING = "pending"
STARTED = "started"
DONE = "done"
# FAILED = "failed" (shared spelling with the run status)
UNDOING = "undoing"
UNDONE = "undone"
UNDO_FAILED = "undo_failed"
SKIPPED = "skipped"

STEP_STATUSES: tuple[str, ...] = (PENDING, STARTED, DONE, FAILED, UNDOING, UNDONE, UNDO_FAILED, SKIPPED)

# --- gate and approval statuses ---------------------------------------------------------------
PASSED = "passed"
GATE_STATUSES: tuple[str, ...] = (WAITING, PASSED, FAILED, SKIPPED)

REQUESTED = "requested"
APPROVED = "approved"
REJECTED = "rejected"
APPROVAL_STATUSES: tuple[str, ...] = (REQUESTED, APPROVED, REJECTED)

# --- phases of a unit-step --------------------------------------------------------------------
DO = "do"
UNDO = "undo"
PHASES: tuple[str, ...] = (DO, UNDO)

# --- the tables -------------------------------------------------------------------------------
RUN_TRANSITIONS: Mapping[str | None, frozenset[str]] = {
    None: frozenset({PLANNED}),
    PLANNED: frozenset({RUNNING, ABORTED}),
    RUNNING: frozenset({RUNNING, WAITING, PAUSED, ROLLING_BACK, SUCCEEDED, FAILED, ROLLED_BACK, ROLLBACK_FAILED, ABORTED}),
    WAITING: frozenset({RUNNING, PAUSED, ROLLING_BACK, ABORTED}),
    PAUSED: frozenset({RUNNING, WAITING, ROLLING_BACK, ABORTED}),
    ROLLING_BACK: frozenset({ROLLING_BACK, ROLLED_BACK, ROLLBACK_FAILED, FAILED, PAUSED, ABORTED, SUCCEEDED, WAITING}),
    SUCCEEDED: frozenset({ROLLING_BACK}),
    FAILED: frozenset({RUNNING, ROLLING_BACK, ABORTED}),
    ROLLED_BACK: frozenset({ROLLING_BACK}),
    ROLLBACK_FAILED: frozenset({ROLLING_BACK, ABORTED}),
    ABORTED: frozenset({ROLLING_BACK}),
}

STEP_TRANSITIONS: Mapping[str | None, frozenset[str]] = {
    None: frozenset({PENDING, STARTED, SKIPPED, UNDOING}),
    PENDING: frozenset({STARTED, SKIPPED, UNDOING}),
    STARTED: frozenset({STARTED, DONE, FAILED, SKIPPED, UNDOING}),
    DONE: frozenset({UNDOING, STARTED, PENDING}),
    FAILED: frozenset({STARTED, UNDOING, SKIPPED, PENDING}),
    UNDOING: frozenset({UNDOING, UNDONE, UNDO_FAILED}),
    UNDO_FAILED: frozenset({UNDOING}),
    UNDONE: frozenset({STARTED, UNDOING, PENDING}),
    SKIPPED: frozenset({STARTED, PENDING}),
}

ATTEMPT_TRANSITIONS: Mapping[str | None, frozenset[str]] = {
    None: frozenset({STARTED, UNDOING}),
    STARTED: frozenset({DONE, FAILED, SKIPPED}),
    UNDOING: frozenset({UNDONE, UNDO_FAILED}),
    DONE: frozenset(),
    FAILED: frozenset(),
    SKIPPED: frozenset(),
    UNDONE: frozenset(),
    UNDO_FAILED: frozenset(),
}

GATE_TRANSITIONS: Mapping[str | None, frozenset[str]] = {
    None: frozenset({WAITING, PASSED, FAILED, SKIPPED}),
    WAITING: frozenset({PASSED, FAILED, SKIPPED}),
    PASSED: frozenset(),
    FAILED: frozenset(),
    SKIPPED: frozenset(),
}

APPROVAL_TRANSITIONS: Mapping[str | None, frozenset[str]] = {
    None: frozenset({REQUESTED, APPROVED, REJECTED}),
    REQUESTED: frozenset({APPROVED, REJECTED}),
    APPROVED: frozenset(),
    REJECTED: frozenset(),
}

TRANSITIONS: Mapping[str, Mapping[str | None, frozenset[str]]] = {
    "run": RUN_TRANSITIONS,
    "step": STEP_TRANSITIONS,
    "attempt": ATTEMPT_TRANSITIONS,
    "gate": GATE_TRANSITIONS,
    "approval": APPROVAL_TRANSITIONS,
}

TERMINAL: Mapping[str, frozenset[str]] = {
    "run": frozenset({SUCCEEDED, FAILED, ROLLED_BACK, ROLLBACK_FAILED, ABORTED}),
    "step": frozenset({DONE, FAILED, UNDONE, UNDO_FAILED, SKIPPED}),
    "attempt": frozenset({DONE, FAILED, SKIPPED, UNDONE, UNDO_FAILED}),
    "gate": frozenset({PASSED, FAILED, SKIPPED}),
    "approval": frozenset({APPROVED, REJECTED}),
}

# The attempt status that opens a phase, and the outcomes that close it.
PHASE_START: Mapping[str, str] = {DO: STARTED, UNDO: UNDOING}
PHASE_OUTCOMES: Mapping[str, frozenset[str]] = {DO: frozenset({DONE, FAILED, SKIPPED}), UNDO: frozenset({UNDONE, UNDO_FAILED})}


class IllegalTransition(CutoverError):
    """A status change its table does not allow (e.g. approving a finished run). Nothing changed."""

    exit_code = 2
    status = "invalid"

    def __init__(self, kind: str, old: str | None, new: str, subject: str = ""):
        self.kind, self.old, self.new, self.subject = kind, old, new, subject
        allowed = sorted(TRANSITIONS.get(kind, {}).get(old, ()))
        what = f"{kind} {subject}".strip()
        super().__init__(
            f"{what}: cannot go from {old or '(new)'} to {new}"
            + (f" (allowed: {', '.join(allowed)})" if allowed else " (no further change allowed)")
        )


def statuses(kind: str) -> frozenset[str]:
    """Every status a record of `kind` can have."""
    table = _table(kind)
    return frozenset(s for s in table if s is not None) | frozenset().union(*table.values())


def allowed(kind: str, old: str | None) -> frozenset[str]:
    """The statuses a record of `kind` may move to from `old` (None: a new record)."""
    table = _table(kind)
    if old not in table:
        raise IllegalTransition(kind, old, "?", "(unknown current status)")
    return table[old]


def can_transition(kind: str, old: str | None, new: str) -> bool:
    table = _table(kind)
    return old in table and new in table[old]


def transition(kind: str, old: str | None, new: str, subject: str = "") -> str:
    """Check one status change; return `new` or raise `IllegalTransition`.

    `kind` is one of `run`, `step`, `attempt`, `gate`, `approval`; `old` None means the record
    does not exist yet; `subject` (e.g. "run-x unit 26734 step copy") goes into the message.
    """
    if not can_transition(kind, old, new):
        raise IllegalTransition(kind, old, new, subject)
    return new


def is_terminal(kind: str, status: str) -> bool:
    return status in TERMINAL[kind]


def _table(kind: str) -> Mapping[str | None, frozenset[str]]:
    try:
        return TRANSITIONS[kind]
    except KeyError:
        raise ValueError(f"unknown status kind {kind!r} (known: {', '.join(TRANSITIONS)})") from None
