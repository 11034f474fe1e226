"""Approvals: a request the engine raises at an approval step or gate, and a person's decision.

Four eyes: whoever started the run cannot approve its gates. `decide()` is the only way to
turn a request into a decision, and it refuses the starter (InvalidInput, exit 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from cutover.errors import InvalidInput, Problem


@dataclass(frozen=True)
class ApprovalRequest:
    run: str
    gate: str
    starter: str
    prompt: str = ""
    scope: str = ""  # what waits on it: "wave pilot", "batch pilot-1, before step switch"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ApprovalDecision:
    run: str
    gate: str
    approver: str
    approved: bool
    reason: str
    at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(request: ApprovalRequest, *, approver: str, reason: str, approved: bool = True, now: datetime | None = None) -> ApprovalDecision:
    problems = []
    if not approver.strip():
        problems.append(Problem("--actor", "", "an approval needs a named approver"))
    elif approver.strip() == request.starter.strip():
        problems.append(Problem("--actor", "", f"four eyes: {approver} started run {request.run} and cannot approve its gate {request.gate!r}; another person must"))
    if not reason.strip():
        problems.append(Problem("--reason", "", "an approval needs a reason"))
    if problems:
        raise InvalidInput(problems)
    at = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    return ApprovalDecision(request.run, request.gate, approver.strip(), approved, reason.strip(), at)
