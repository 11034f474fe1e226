"""Approval decisions: four eyes, named approver, a reason."""

from __future__ import annotations

import pytest

from cutover.actions.approval import ApprovalRequest, decide
from cutover.errors import InvalidInput

REQUEST = ApprovalRequest(run="docs-1", gate="pilot-signoff", starter="alice", prompt="pilot units look right?")


def test_another_person_approves() -> None:
    decision = decide(REQUEST, approver="bob", reason="reconciled rows match")
    assert decision.approved and decision.approver == "bob" and decision.gate == "pilot-signoff"


def test_the_starter_cannot_approve_their_own_run() -> None:
    with pytest.raises(InvalidInput, match="four eyes"):
        decide(REQUEST, approver="alice", reason="looks fine to me")


def test_every_problem_is_reported() -> None:
    with pytest.raises(InvalidInput) as caught:
        decide(REQUEST, approver=" ", reason="")
    assert [p.where for p in caught.value.problems] == ["", ""] and len(caught.value.problems) == 2
