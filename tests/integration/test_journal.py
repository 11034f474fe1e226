"""The journal and the run lock, the same tests against SQLite and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cutover import states
from cutover.errors import CutoverError, InvalidInput, LockHeld
from cutover.journal import Journal, UnknownRun, open_journal, unlock
from cutover.journal.lock import this_host
from cutover.states import IllegalTransition

pytestmark = pytest.mark.integration

CANARY = "canary-Secr3t-7f1d9c"  # a secret that must never land in the database
UNITS = ["26734", "26737", "25747"]
STEPS = ["precheck", "precopy", "freeze", "catchup", "switch"]


def new_run(journal: Journal, **overrides) -> str:
    fields = dict(runbook="docs", env="lab", plan_hash="h" * 64, plan={"waves": [{"id": "pilot"}]}, started_by="alice",
                  params={"wave": "pilot"})
    fields.update(overrides)
    return journal.create_run(**fields).id


# --- schema ---------------------------------------------------------------------------------

def test_migrations_are_idempotent(journal_url: str) -> None:
    with open_journal(journal_url) as first:
        version = first.schema_version()
        assert version == len(first.MIGRATIONS) >= 1
        run_id = new_run(first)
        assert first.migrate() == version
    with open_journal(journal_url) as again:  # reopening migrates again: nothing to do, nothing lost
        assert again.schema_version() == version
        assert again.get_run(run_id).status == states.PLANNED


def test_concurrent_first_opens_migrate_once(journal_url: str) -> None:
    code = "import sys; from cutover.journal import open_journal; j = open_journal(sys.argv[1]); print(j.schema_version())"
    procs = [subprocess.Popen([sys.executable, "-c", code, journal_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in results]
    with open_journal(journal_url) as journal:
        assert {int(out) for out, _ in results} == {journal.schema_version()}
        with journal._tx(write=False) as tx:  # one row per version, not one per opener
            assert tx.one("SELECT COUNT(*) FROM schema_version")[0] == len(journal.MIGRATIONS)


# --- runs -----------------------------------------------------------------------------------

def test_run_is_created_planned_and_moves_through_legal_statuses(journal: Journal) -> None:
    run_id = new_run(journal)
    run = journal.get_run(run_id)
    assert (run.runbook, run.env, run.status, run.started_by) == ("docs", "lab", "planned", "alice")
    assert run.host == this_host() and run.pid == os.getpid()
    assert run.plan == {"waves": [{"id": "pilot"}]}
    assert run.created_at.tzinfo is not None

    for status in ("running", "waiting", "running", "failed", "rolling_back", "rolled_back"):
        journal.set_run_status(run_id, status, actor="alice")
    assert journal.get_run(run_id).status == "rolled_back"
    kinds = [(e.kind, e.data.get("to")) for e in journal.events(run_id=run_id)]
    assert kinds[0] == ("run.created", None)
    assert [to for kind, to in kinds if kind == "run.status"] == ["running", "waiting", "running", "failed", "rolling_back", "rolled_back"]


def test_illegal_run_transition_raises_and_changes_nothing(journal: Journal) -> None:
    run_id = new_run(journal)
    journal.set_run_status(run_id, "running", actor="alice")
    journal.set_run_status(run_id, "succeeded", actor="alice")
    with pytest.raises(IllegalTransition) as caught:
        journal.set_run_status(run_id, "running", actor="bob")
    assert isinstance(caught.value, CutoverError) and caught.value.exit_code == 2
    assert "succeeded" in str(caught.value) and "running" in str(caught.value)
    assert journal.get_run(run_id).status == "succeeded"
    assert [e.data["to"] for e in journal.events(run_id=run_id, kind="run.status")] == ["running", "succeeded"]


def test_unknown_run_is_invalid_input(journal: Journal) -> None:
    with pytest.raises(UnknownRun) as caught:
        journal.get_run("nope")
    assert caught.value.exit_code == 2
    with pytest.raises(UnknownRun):
        journal.record_intent("nope", wave="w", batch="b", units=["u"], steps=["s"])


def test_runs_listing_newest_first_filtered(journal: Journal) -> None:
    a = new_run(journal, run_id="docs-a")
    time.sleep(0.01)
    b = new_run(journal, run_id="docs-b")
    new_run(journal, run_id="proc-a", runbook="procedures")
    journal.set_run_status(b, "running", actor="alice")
    assert [r.id for r in journal.runs(runbook="docs")] == [b, a]
    assert [r.id for r in journal.runs(runbook="docs", status="running")] == [b]
    assert journal.runs(runbook="docs")[0].plan is None
    assert journal.latest_run("docs", "lab").id == b
    with pytest.raises(InvalidInput):
        new_run(journal, run_id="docs-a")


def test_replan_needs_a_reason_and_records_both_hashes(journal: Journal) -> None:
    run_id = new_run(journal)
    with pytest.raises(InvalidInput):
        journal.replan(run_id, plan_hash="new", plan={}, actor="alice", reason="  ")
    journal.replan(run_id, plan_hash="new", plan={"waves": []}, actor="alice", reason="estate changed")
    run = journal.get_run(run_id)
    assert (run.plan_hash, run.plan) == ("new", {"waves": []})
    (event,) = journal.events(run_id=run_id, kind="run.replanned")
    assert event.data == {"from": "h" * 64, "to": "new", "reason": "estate changed"}


# --- write-ahead: intent, outcome, resume state ---------------------------------------------

def test_intent_then_outcomes_then_resume_state_survives_reopen(journal_url: str) -> None:
    with open_journal(journal_url) as journal:
        run_id = new_run(journal)
        intent = journal.record_intent(run_id, wave="pilot", batch="pilot-1", units=UNITS, steps=STEPS[:3])
        assert (intent.units, intent.steps, intent.phase) == (UNITS, STEPS[:3], "do")
        state = journal.unit_step_state(run_id)
        assert len(state) == 9 and all(s.status == "started" and s.interrupted for s in state.values())
        for step in STEPS[:3]:
            journal.record_outcome(run_id, unit="26734", step=step, status="done", evidence_digest="sha256:" + "0" * 64)
        journal.record_outcome(run_id, unit="26737", step="precheck", status="done")
        journal.record_outcome(run_id, unit="26737", step="precopy", status="failed", detail={"rc": 2, "msg": "disk full"})
    # the process "dies" here; a new one reads the journal
    with open_journal(journal_url) as journal:
        state = journal.unit_step_state(run_id)
        assert {k: v.status for k, v in state.items() if k[0] == "26734"} == {("26734", s): "done" for s in STEPS[:3]}
        assert state[("26737", "precopy")].status == "failed"
        assert state[("26737", "freeze")].interrupted
        assert [k for k, v in state.items() if v.interrupted] == [("25747", s) for s in sorted(STEPS[:3])] + [("26737", "freeze")]
        # resume re-runs what was started and not finished: a second attempt, the first left open and visible
        journal.record_intent(run_id, wave="pilot", batch="pilot-1", units=["25747"], steps=["precheck"])
        journal.record_outcome(run_id, unit="25747", step="precheck", status="done")
        tries = journal.attempts(run_id, unit="25747", step="precheck")
        assert [(a.attempt, a.status, a.ended_at is None) for a in tries] == [(1, "started", True), (2, "done", False)]
        assert journal.unit_step_state(run_id)[("25747", "precheck")].attempts == 2
        failed = journal.attempts(run_id, unit="26737", step="precopy")[0]
        assert failed.detail == {"rc": 2, "msg": "disk full"} and failed.ended_at >= failed.started_at
        assert [i.id for i in journal.intents(run_id)] == sorted(i.id for i in journal.intents(run_id)) and len(journal.intents(run_id)) == 2


def test_undo_phase_and_illegal_step_moves(journal: Journal) -> None:
    run_id = new_run(journal)
    journal.record_intent(run_id, wave="pilot", batch="pilot-1", units=["26734"], steps=["precopy", "freeze"])
    journal.record_outcome(run_id, unit="26734", step="precopy", status="done")
    journal.record_outcome(run_id, unit="26734", step="freeze", status="failed")
    journal.record_intent(run_id, wave="pilot", batch="pilot-1", units=["26734"], steps=["freeze", "precopy"], phase="undo")
    assert journal.record_outcome(run_id, unit="26734", step="freeze", status="undone").status == "undone"
    assert journal.record_outcome(run_id, unit="26734", step="precopy", status="undo_failed").status == "undo_failed"
    undo = journal.attempts(run_id, unit="26734", step="precopy")
    assert [(a.phase, a.status) for a in undo] == [("do", "done"), ("undo", "undo_failed")]
    # a done step cannot be marked failed; an undone one cannot become done without a new attempt
    with pytest.raises(IllegalTransition):
        journal.record_outcome(run_id, unit="26734", step="freeze", status="done")
    with pytest.raises(IllegalTransition):
        journal.record_outcome(run_id, unit="26734", step="precopy", status="undone")  # no open undo attempt any more
    # an outcome without an intent is refused (write-ahead), a skip is not
    with pytest.raises(IllegalTransition):
        journal.record_outcome(run_id, unit="26737", step="precopy", status="done", wave="pilot", batch="pilot-1")
    skipped = journal.record_outcome(run_id, unit="26737", step="precopy", status="skipped", wave="pilot", batch="pilot-1")
    assert (skipped.status, skipped.attempts, skipped.batch) == ("skipped", 0, "pilot-1")
    with pytest.raises(IllegalTransition):
        journal.record_outcome(run_id, unit="26734", step="freeze", status="pending")


def test_failed_intent_writes_nothing(journal: Journal) -> None:
    run_id = new_run(journal)
    journal.record_intent(run_id, wave="w", batch="b", units=["26734"], steps=["precopy"])
    journal.record_outcome(run_id, unit="26734", step="precopy", status="done")
    journal.record_intent(run_id, wave="w", batch="b", units=["26734"], steps=["precopy"], phase="undo")
    journal.record_outcome(run_id, unit="26734", step="precopy", status="undo_failed")
    # undo_failed -> started is illegal: the whole intent (both units) must be refused
    with pytest.raises(IllegalTransition):
        journal.record_intent(run_id, wave="w", batch="b", units=["26737", "26734"], steps=["precopy"])
    assert set(journal.unit_step_state(run_id)) == {("26734", "precopy")}
    assert len(journal.intents(run_id)) == 2


def test_start_event_passed_through_is_a_no_op(journal: Journal) -> None:
    run_id = new_run(journal)
    journal.record_intent(run_id, wave="w", batch="b", units=["26734"], steps=["precopy"])
    journal.record_outcome(run_id, unit="26734", step="precopy", status="started")
    assert len(journal.attempts(run_id)) == 1


def test_record_outcomes_in_one_transaction(journal: Journal) -> None:
    run_id = new_run(journal)
    journal.record_intent(run_id, wave="w", batch="b", units=UNITS, steps=["precopy"])
    with pytest.raises(IllegalTransition):
        journal.record_outcomes(run_id, [dict(unit="26734", step="precopy", status="done"),
                                         dict(unit="26737", step="precopy", status="undone")])
    assert journal.unit_step_state(run_id)[("26734", "precopy")].status == "started"  # rolled back together
    done = journal.record_outcomes(run_id, [dict(unit=u, step="precopy", status="done") for u in UNITS])
    assert [s.status for s in done] == ["done"] * 3


def test_retry_units_resets_out_units_and_their_failed_gates(journal: Journal) -> None:
    run_id = new_run(journal)
    journal.record_intent(run_id, wave="w", batch="b", units=["26734", "26737"], steps=["precheck", "precopy"])
    journal.record_outcomes(run_id, [dict(unit="26734", step="precheck", status="done"), dict(unit="26734", step="precopy", status="done"),
                                     dict(unit="26737", step="precheck", status="failed"), dict(unit="26737", step="precopy", status="skipped")])
    journal.record_gate(run_id, gate="reconcile", status="failed", wave="w", batch="b", unit="26734", step="precopy")
    journal.record_intent(run_id, wave="w", batch="b", units=["26734"], steps=["precopy"], phase="undo")
    journal.record_outcome(run_id, unit="26734", step="precopy", status="undone")
    assert journal.failed_gate_units(run_id) == {"26734"}
    with pytest.raises(InvalidInput):
        journal.retry_units(run_id, ["26734"], actor="alice", reason=" ")
    assert journal.retry_units(run_id, ["26734", "26737"], actor="alice", reason="the site is back", batch="b") == ["26734", "26737"]
    state = journal.unit_step_state(run_id)
    assert {k: v.status for k, v in state.items()} == {(u, s): "pending" for u in ("26734", "26737") for s in ("precheck", "precopy")}
    assert journal.failed_gate_units(run_id) == set()  # the earlier failure no longer counts
    event = journal.events(run_id=run_id, kind="units.retried")[-1]
    assert (event.actor, event.data["units"], event.data["reason"]) == ("alice", ["26734", "26737"], "the site is back")
    assert journal.audit_records(run_id)[-1].event == "units.retried"
    # a new attempt starts from pending; a failed gate after the retry counts again
    journal.record_intent(run_id, wave="w", batch="b", units=["26734"], steps=["precheck"])
    journal.record_gate(run_id, gate="reconcile", status="failed", wave="w", batch="b", unit="26734", step="precopy")
    assert journal.failed_gate_units(run_id) == {"26734"}
    # a unit with a step under way is refused, and nothing is reset
    journal.record_intent(run_id, wave="w", batch="b", units=["26737"], steps=["precheck"])
    journal.record_outcome(run_id, unit="26737", step="precheck", status="failed")
    with pytest.raises(IllegalTransition):
        journal.retry_units(run_id, ["26737", "26734"], actor="alice", reason="again")
    assert journal.unit_step_state(run_id)[("26737", "precheck")].status == "failed"
    assert journal.unit_step_state(run_id)[("26734", "precheck")].status == "started"


def test_a_unit_retried_twice_keeps_the_steps_it_never_reached(journal: Journal) -> None:
    """A second retry of a unit that failed before reaching its later steps (still pending from
    the first retry) resets what it ran and leaves the rest pending; passed gates and attempts
    from before a retry no longer count for that unit."""
    run_id = new_run(journal)
    steps = ["precheck", "precopy", "switch"]
    journal.record_intent(run_id, wave="w", batch="b", units=["26734", "26737"], steps=steps)
    journal.record_outcomes(run_id, [dict(unit=u, step=s, status="done") for u in ("26734", "26737") for s in steps[:2]]
                            + [dict(unit="26734", step="switch", status="failed"), dict(unit="26737", step="switch", status="done")])
    journal.record_gate(run_id, gate="reconcile", status="passed", wave="w", batch="b", unit="26734", step="precopy")
    journal.record_gate(run_id, gate="reconcile", status="passed", wave="w", batch="b", unit="26737", step="precopy")
    for step in reversed(steps):
        journal.record_intent(run_id, wave="w", batch="b", units=["26734"], steps=[step], phase="undo")
        journal.record_outcome(run_id, unit="26734", step=step, status="undone")
    journal.retry_units(run_id, ["26734"], actor="alice", reason="the site is back")
    assert journal.passed_gates(run_id) == {("26737", "precopy", "reconcile")}  # 26734's pass was before its retry
    assert journal.retry_marks(run_id)["26734"][1] == {"precheck": 1, "precopy": 1, "switch": 1}
    # the second attempt fails at precheck: precopy and switch are never reached (still pending)
    journal.record_intent(run_id, wave="w", batch="b", units=["26734"], steps=["precheck"])
    journal.record_outcome(run_id, unit="26734", step="precheck", status="failed")
    assert journal.retry_units(run_id, ["26734"], actor="alice", reason="again") == ["26734"]
    state = journal.unit_step_state(run_id)
    assert {s: state[("26734", s)].status for s in steps} == dict.fromkeys(steps, "pending")
    assert journal.retry_marks(run_id)["26734"][1] == {"precheck": 2, "precopy": 1, "switch": 1}
    assert state[("26737", "switch")].status == "done"


# --- gates and approvals ---------------------------------------------------------------------

def test_gate_results_waiting_then_decided(journal: Journal) -> None:
    run_id = new_run(journal)
    journal.record_gate(run_id, gate="reconcile", status="passed", wave="pilot", batch="pilot-1", unit="26734",
                        step="catchup", evidence={"rows_legacy": 120, "rows_unified": 120})
    journal.record_gate(run_id, gate="threshold", status="waiting", wave="pilot", batch="pilot-1")
    decided = journal.record_gate(run_id, gate="threshold", status="failed", wave="pilot", batch="pilot-1", evidence={"failed": 3, "max": 2})
    results = journal.gate_results(run_id, batch="pilot-1")
    assert [(g.gate, g.unit, g.status) for g in results] == [("reconcile", "26734", "passed"), ("threshold", None, "failed")]
    assert decided.evidence == {"failed": 3, "max": 2}
    with pytest.raises(IllegalTransition):
        journal.record_gate(run_id, gate="threshold", status="approved", batch="pilot-1")


def test_approvals_request_approve_and_refuse_twice(journal: Journal) -> None:
    run_id = new_run(journal)
    requested = journal.request_approval(run_id, "switch-ok", actor="alice", prompt="switch the pilot?")
    assert requested.status == "requested" and requested.approved_by is None
    assert journal.request_approval(run_id, "switch-ok", actor="alice").id == requested.id  # idempotent
    with pytest.raises(InvalidInput):
        journal.record_approval(run_id, "switch-ok", actor="bob", reason="")
    approved = journal.record_approval(run_id, "switch-ok", actor="bob", reason="checked the reconcile report")
    assert (approved.id, approved.status, approved.approved_by) == (requested.id, "approved", "bob")
    assert approved.at >= approved.requested_at
    with pytest.raises(IllegalTransition):
        journal.record_approval(run_id, "switch-ok", actor="carol", reason="again")
    rejected = journal.record_approval(run_id, "training", actor="bob", reason="not attested", approved=False)
    assert rejected.status == "rejected" and journal.approval(run_id, "training").status == "rejected"
    assert journal.approval(run_id, "nope") is None
    assert [e.kind for e in journal.events(run_id=run_id) if e.kind.startswith("approval.")] == [
        "approval.requested", "approval.approved", "approval.rejected"]


def test_events_are_append_only(journal: Journal) -> None:
    event = journal.append_event("engine.note", actor="alice", data={"text": "hello"})
    assert journal.events(kind="engine.note") == [event]
    for sql in ("UPDATE events SET kind = 'x'", "DELETE FROM events"):
        with pytest.raises(Exception, match="append-only"):
            with journal._tx() as tx:
                tx.execute(sql)
    assert journal.events(kind="engine.note") == [event]


# --- secrets ---------------------------------------------------------------------------------

def test_canary_secret_never_lands_in_the_database(journal: Journal, request: pytest.FixtureRequest) -> None:
    run_id = new_run(journal, params={"wave": "pilot", "db_password": CANARY, "stack": {"api_token": CANARY, "Key": CANARY},
                                      "list": [{"passphrase": CANARY}]},
                     plan={"steps": [{"id": "copy", "do": {"playbook": "copy.yml", "vars": {"secret_key": CANARY}}}]})
    journal.record_intent(run_id, wave="pilot", batch="pilot-1", units=["26734"], steps=["copy"])
    journal.record_outcome(run_id, unit="26734", step="copy", status="done", detail={"env": {"PGPASSWORD": CANARY}, "rc": 0})
    journal.record_gate(run_id, gate="smoke", status="passed", batch="pilot-1", evidence={"auth_token": CANARY})
    journal.append_event("note", actor="alice", run_id=run_id, data={"credentials": {"user": "x", "password": CANARY}})
    run = journal.get_run(run_id)
    assert run.params["db_password"] == "***" and run.params["stack"] == {"api_token": "***", "Key": "***"}
    assert run.params["wave"] == "pilot"

    if journal.backend == "sqlite":
        journal.close()  # checkpoint the WAL into the file, then look at every byte on disk
        path = Path(journal.path)
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        blob = b"".join(p.read_bytes() for p in files)
        assert b"26734" in blob  # the check can see what was written
    else:
        database = journal.url.rsplit("/", 1)[1]
        blob = request.getfixturevalue("postgres").dump(database)
        assert b"26734" in blob
    assert CANARY.encode() not in blob


# --- the run lock ----------------------------------------------------------------------------

LOCKER = textwrap.dedent("""
    import json, os, sys, time
    from cutover.errors import LockHeld
    from cutover.journal import open_journal
    url, actor, hold, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    journal = open_journal(url)
    while time.time() < start_at:
        time.sleep(0.001)
    try:
        with journal.lock("docs", "lab", actor=actor, heartbeat=0.2) as lock:
            print(json.dumps({"actor": actor, "result": "acquired", "pid": os.getpid()}), flush=True)
            if hold == "stdin":
                sys.stdin.readline()  # hold until the test says so
            else:
                time.sleep(float(hold))
    except LockHeld as exc:
        print(json.dumps({"actor": actor, "result": "held", "message": str(exc)}), flush=True)
        sys.exit(3)
""")


def start_locker(url: str, actor: str, hold: float | str, start_at: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOCKER, url, actor, str(hold), str(start_at)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_race_for_the_lock_exactly_one_wins(journal_url: str) -> None:
    open_journal(journal_url).close()  # migrate first, so the race is only about the lock
    start_at = time.time() + 2.0  # both wait for the same instant, then try
    procs = {actor: start_locker(journal_url, actor, hold="stdin", start_at=start_at) for actor in ("alice", "bob")}
    lines = {actor: proc.stdout.readline() for actor, proc in procs.items()}  # the winner keeps holding meanwhile
    results = {}
    for actor, proc in procs.items():
        out, err = proc.communicate(input="release\n", timeout=60)
        results[actor] = (proc.returncode, json.loads(lines[actor]) if lines[actor].strip() else err)
    outcomes = sorted(r[1]["result"] for r in results.values())
    assert outcomes == ["acquired", "held"], results
    (winner,) = [a for a, r in results.items() if r[1]["result"] == "acquired"]
    (loser,) = [a for a, r in results.items() if r[1]["result"] == "held"]
    assert results[loser][0] == 3
    message = results[loser][1]["message"]
    assert f"held by {winner} on {this_host()} (pid {results[winner][1]['pid']}) since " in message
    with open_journal(journal_url) as journal:
        assert journal.lock_holder("docs", "lab") is None  # released on exit


def test_lock_held_in_process_names_holder_and_release_frees_it(journal: Journal) -> None:
    run_id = new_run(journal)
    with journal.lock("docs", "lab", actor="alice", heartbeat=0.05) as lock:
        lock.attach(run_id)
        first_beat = journal.lock_holder("docs", "lab").heartbeat_at
        time.sleep(0.3)
        holder = journal.lock_holder("docs", "lab")
        assert holder.heartbeat_at > first_beat and holder.run_id == run_id
        with pytest.raises(LockHeld) as caught:
            journal.lock("docs", "lab", actor="bob").acquire()
        assert caught.value.exit_code == 3
        assert f"alice on {this_host()} (pid {os.getpid()}) since" in str(caught.value) and run_id in str(caught.value)
        assert caught.value.holder.actor == "alice"
        with journal.lock("docs", "production", actor="bob"):  # another env is another lock
            pass
        lock.ensure_held()
    assert journal.lock_holder("docs", "lab") is None
    with journal.lock("docs", "lab", actor="bob"):
        assert journal.lock_holder("docs", "lab").actor == "bob"


def test_stale_lock_is_taken_over_after_the_holder_dies(journal_url: str) -> None:
    open_journal(journal_url).close()
    proc = start_locker(journal_url, "alice", hold=120)
    line = json.loads(proc.stdout.readline())
    assert line["result"] == "acquired"
    with open_journal(journal_url) as journal:
        with pytest.raises(LockHeld):
            journal.lock("docs", "lab", actor="bob").acquire()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10  # PostgreSQL frees the advisory lock once it sees the socket close
        while True:
            try:
                lock = journal.lock("docs", "lab", actor="bob").acquire()
                break
            except LockHeld:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            assert journal.lock_holder("docs", "lab").actor == "bob"
            (takeover,) = journal.events(kind="lock.taken_over")
            assert takeover.actor == "bob" and takeover.data["stale_holder"]["pid"] == line["pid"]
        finally:
            lock.release()
    proc.stdout.close()
    proc.stderr.close()


def test_break_lock_needs_a_reason_and_refuses_a_live_holder(journal: Journal) -> None:
    with journal.lock("docs", "lab", actor="alice", heartbeat=0.05) as lock:
        for reason in ("", "   ", None):
            with pytest.raises(InvalidInput):
                journal.break_lock("docs", "lab", "bob", reason)
        with pytest.raises(LockHeld, match="live"):
            journal.break_lock("docs", "lab", "bob", "I think it hangs")
        assert not lock.lost.is_set()
        broken = journal.break_lock("docs", "lab", "bob", "operator confirmed the run hangs", force=True)
        assert broken.actor == "alice"
        deadline = time.monotonic() + 5
        while not lock.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.lost.is_set()
        with pytest.raises(LockHeld, match="lost its lease"):
            lock.ensure_held()
    (event,) = journal.events(kind="lock.broken")
    assert (event.actor, event.data["reason"], event.data["forced"]) == ("bob", "operator confirmed the run hangs", True)
    assert event.data["holder"]["actor"] == "alice"
    assert journal.break_lock("docs", "lab", "bob", "nothing there") is None


def test_unlock_breaks_the_lock_of_a_dead_holder(journal_url: str) -> None:
    open_journal(journal_url).close()
    proc = start_locker(journal_url, "alice", hold=120)
    assert json.loads(proc.stdout.readline())["result"] == "acquired"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()
    with pytest.raises(InvalidInput):
        unlock(journal_url, "docs", "lab", actor="bob", reason="")
    broken = unlock(journal_url, "docs", "lab", actor="bob", reason="alice's run was killed by the OOM killer")
    assert broken is not None and broken.actor == "alice" and broken.pid == proc.pid
    with open_journal(journal_url) as journal:
        assert journal.lock_holder("docs", "lab") is None
        (event,) = journal.events(kind="lock.broken")
        assert event.data["stale"] is True and event.data["reason"] == "alice's run was killed by the OOM killer"


def test_postgres_going_away_is_reported_and_the_lease_is_lost() -> None:
    from pg import LocalPostgres, MISSING_REASON, find_binaries

    from cutover.journal import JournalUnavailable

    if find_binaries() is None:
        pytest.skip(MISSING_REASON)
    with LocalPostgres() as pg:
        journal = open_journal(pg.create_database())
        lock = journal.lock("docs", "lab", actor="alice", heartbeat=0.05).acquire()
        pg.stop()
        deadline = time.monotonic() + 10
        while not lock.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.lost.is_set()
        with pytest.raises(JournalUnavailable) as caught:
            journal.runs()
        assert caught.value.exit_code == 1 and "postgresql://postgres@127.0.0.1" in str(caught.value)
        lock.release()
        journal.close()
