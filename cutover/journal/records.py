"""What the journal returns: plain frozen records, the same from both backends, and `redact`.

Timestamps are timezone-aware UTC `datetime`s. JSON columns come back as Python objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from cutover import states

# Keys whose values are secrets and never reach the journal (case-insensitive, anywhere in the key).
SECRET_KEY = re.compile(r"password|passwd|secret|token|passphrase|key|credential", re.IGNORECASE)
REDACTED = "***"


def redact(value: Any) -> Any:
    """A copy of `value` with the values of secret-looking keys replaced by '***'.

    Walks mappings, lists and tuples; a mapping key matching password|secret|token|passphrase|
    key (also passwd, credential; case-insensitive, substring) has its whole value replaced.
    Used by the journal on everything it stores as JSON (params, plan, details, evidence, event
    data); callers may use it on anything they log or display.
    """
    if isinstance(value, Mapping):
        return {k: (REDACTED if isinstance(k, str) and SECRET_KEY.search(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _jsonable(record: Any) -> dict[str, Any]:
    out = asdict(record)
    for k, v in out.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat().replace("+00:00", "Z")
    return out


@dataclass(frozen=True)
class Run:
    """One run of a runbook in an environment. `plan` is None in listings (`Journal.runs()`)."""

    id: str
    runbook: str
    env: str
    plan_hash: str
    status: str
    started_by: str
    host: str
    pid: int
    params: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    plan: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return states.is_terminal("run", self.status)

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class UnitStepState:
    """Where one unit-step of a run stands, across its attempts (what resume needs).

    `status` is a step status (states.STEP_STATUSES); `phase` the phase of the latest attempt
    (do|undo, None when none was made yet); `attempts` how many attempts of that phase exist.
    `interrupted` is True when the latest attempt was started and never finished (resume must
    run it again).
    """

    run_id: str
    wave: str
    batch: str
    unit: str
    step: str
    status: str
    phase: str | None
    attempts: int
    updated_at: datetime

    @property
    def interrupted(self) -> bool:
        return self.status in (states.STARTED, states.UNDOING)

    @property
    def done(self) -> bool:
        return self.status == states.DONE

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(self) | {"interrupted": self.interrupted}


@dataclass(frozen=True)
class Attempt:
    """One try of one phase (do|undo) of one unit-step."""

    id: int
    run_id: str
    wave: str
    batch: str
    unit: str
    step: str
    phase: str
    attempt: int
    status: str
    started_at: datetime
    ended_at: datetime | None
    detail: dict[str, Any] | None
    evidence_digest: str | None
    intent_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class Intent:
    """A segment announced before it runs: these units, these steps, this phase."""

    id: int
    run_id: str
    wave: str
    batch: str
    phase: str
    units: list[str]
    steps: list[str]
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class GateResult:
    id: int
    run_id: str
    wave: str
    batch: str
    unit: str | None
    step: str | None
    gate: str
    status: str
    evidence: dict[str, Any] | None
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class Approval:
    """An approval gate of a run: requested (by the engine), then approved or rejected by someone."""

    id: int
    run_id: str
    gate: str
    status: str
    requested_at: datetime | None
    approved_by: str | None
    reason: str | None
    at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class Event:
    """One append-only record: run status changes, approvals, lock breaks, whatever the engine adds."""

    id: int
    run_id: str | None
    at: datetime
    actor: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) the run lock of a runbook in an environment."""

    runbook: str
    env: str
    actor: str
    host: str
    pid: int
    since: datetime
    heartbeat_at: datetime
    run_id: str | None
    token: str = ""
    pid_start: str | None = None

    def describe(self) -> str:
        run = f", run {self.run_id}" if self.run_id else ""
        return (
            f"{self.actor} on {self.host} (pid {self.pid}) since {self.since:%Y-%m-%d %H:%M:%S} UTC{run}; "
            f"last heartbeat {max(0.0, (utcnow() - self.heartbeat_at).total_seconds()):.0f}s ago"
        )

    def as_dict(self) -> dict[str, Any]:
        out = _jsonable(self)
        out.pop("token", None)
        return out
