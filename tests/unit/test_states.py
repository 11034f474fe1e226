"""Statuses and their transition tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover import states
from cutover.errors import CutoverError
from cutover.states import IllegalTransition, transition


def test_status_words_are_the_declared_ones() -> None:
    assert states.statuses("run") == set(states.RUN_STATUSES)
    assert states.statuses("step") == set(states.STEP_STATUSES)
    assert states.statuses("gate") == set(states.GATE_STATUSES)
    assert states.statuses("approval") == set(states.APPROVAL_STATUSES)
    assert set(states.RUN_STATUSES) >= {"planned", "running", "waiting", "paused", "succeeded", "failed", "rolled_back",
                                        "rollback_failed", "aborted"}
    assert set(states.STEP_STATUSES) == {"pending", "started", "done", "failed", "undoing", "undone", "undo_failed", "skipped"}


@pytest.mark.parametrize("kind", sorted(states.TRANSITIONS))
def test_every_table_is_closed_and_every_status_reachable(kind: str) -> None:
    table = states.TRANSITIONS[kind]
    known = states.statuses(kind)
    for old, targets in table.items():
        assert targets <= known, (kind, old)
    for status in known:
        assert status in table, f"{kind}: {status} has no row (what may follow it?)"
    reached, frontier = set(), {None}
    while frontier:
        nxt = set().union(*(table[s] for s in frontier)) - reached
        reached |= nxt
        frontier = nxt
    assert reached == known
    assert states.TERMINAL[kind] <= known


@pytest.mark.parametrize(
    ("kind", "old", "new"),
    [
        ("run", None, "planned"), ("run", "planned", "running"), ("run", "running", "running"),
        ("run", "running", "waiting"), ("run", "waiting", "running"), ("run", "running", "failed"),
        ("run", "failed", "rolling_back"), ("run", "rolling_back", "rollback_failed"), ("run", "rollback_failed", "rolling_back"),
        ("step", None, "started"), ("step", "started", "done"), ("step", "done", "undoing"), ("step", "undoing", "undone"),
        ("step", "started", "started"), ("step", "undo_failed", "undoing"), ("step", "pending", "skipped"),
        ("attempt", None, "started"), ("attempt", "started", "done"), ("attempt", "undoing", "undo_failed"),
        ("gate", "waiting", "passed"), ("approval", "requested", "approved"),
    ],
)
def test_legal_transitions_return_the_new_status(kind: str, old: str | None, new: str) -> None:
    assert transition(kind, old, new) == new
    assert states.can_transition(kind, old, new)


@pytest.mark.parametrize(
    ("kind", "old", "new"),
    [
        ("run", None, "running"), ("run", "succeeded", "running"), ("run", "planned", "succeeded"),
        ("run", "aborted", "running"), ("run", "rolled_back", "succeeded"), ("run", "running", "planned"),
        ("step", "done", "failed"), ("step", "undone", "done"), ("step", "undo_failed", "started"),
        ("step", "pending", "done"), ("step", "started", "undone"), ("step", None, "done"),
        ("attempt", "done", "failed"), ("attempt", None, "done"), ("attempt", "started", "undone"),
        ("gate", "passed", "failed"), ("approval", "approved", "rejected"), ("approval", "rejected", "approved"),
        ("run", "running", "no-such-status"), ("step", "no-such-status", "done"),
    ],
)
def test_illegal_transitions_raise(kind: str, old: str | None, new: str) -> None:
    with pytest.raises(IllegalTransition) as caught:
        transition(kind, old, new, subject="run-1")
    err = caught.value
    assert isinstance(err, CutoverError) and err.exit_code == 2
    assert (err.kind, err.old, err.new) == (kind, old, new)
    assert "run-1" in str(err) and new in str(err)
    assert not states.can_transition(kind, old, new)


def test_message_lists_what_is_allowed() -> None:
    with pytest.raises(IllegalTransition, match=r"cannot go from succeeded to running \(allowed: rolling_back\)"):
        transition("run", "succeeded", "running")
    with pytest.raises(IllegalTransition, match="no further change allowed"):
        transition("approval", "approved", "rejected")


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown status kind"):
        transition("wave", None, "planned")


def test_terminal_statuses() -> None:
    assert states.is_terminal("run", "succeeded") and not states.is_terminal("run", "waiting")
    assert states.is_terminal("step", "undo_failed") and not states.is_terminal("step", "undoing")
    assert states.allowed("run", "succeeded") == {"rolling_back"}


@given(st.data())
def test_random_walks_through_the_step_table_stay_legal(data: st.DataObject) -> None:
    current: str | None = None
    for _ in range(data.draw(st.integers(1, 30))):
        options = sorted(states.STEP_TRANSITIONS[current])
        nxt = data.draw(st.sampled_from(options))
        assert transition("step", current, nxt) == nxt
        illegal = sorted(set(states.STEP_STATUSES) - states.STEP_TRANSITIONS[current])
        if illegal:
            with pytest.raises(IllegalTransition):
                transition("step", current, data.draw(st.sampled_from(illegal)))
        current = nxt
