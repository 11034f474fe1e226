"""The engine through `cutover run` with real ansible-runner and the fixture playbooks (local
connection, the lab inventory), under both the Mitogen and the linear strategy.

The fixture steps append "<unit> <phase> <step>" to a side-effect log, so each test reads what
was really done and undone, in which order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "engine"))
from engine_project import LOG, cutover, fail, fail_once, make_project, side_effects  # noqa: E402

from cutover.actions.ansible import resolve_strategy  # noqa: E402
from cutover.journal import open_journal  # noqa: E402

PILOT = ["phuong-sai-gon", "xa-tru-van-tho", "xa-long-dien"]
STRATEGIES = ["linear"] + (["mitogen"] if resolve_strategy(None) == "mitogen" else [])


@pytest.fixture(params=STRATEGIES)
def strategy(request) -> str:
    return request.param


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def journal(root: Path):
    return open_journal(f"sqlite:///{root / '.cutover' / 'state.db'}")


def latest_run(root: Path) -> str:
    with journal(root) as j:
        return j.runs(limit=1)[0].id


def status(cli, root: Path, run_id: str) -> dict:
    result = cli("--output", "json", "status", run_id, root=root)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def units_by_status(report: dict) -> dict[str, str]:
    return {u["unit"]: u["status"] for w in report["waves"] for b in w["batches"] for u in b["units"]}


def of(lines: list[str], unit: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == unit]


def test_normal_run(cli, root: Path, strategy: str) -> None:
    result = cli("--actor", "alice", "run", "engine", "--non-interactive", "--strategy", strategy, root=root)
    assert result.exit_code == 0, result.output
    lines = side_effects(root)
    for unit in PILOT + ["phuong-tan-dinh", "phuong-ben-thanh"]:
        assert of(lines, unit) == ["do precheck", "do copy", "do switch", "gate switch reconcile"]
    # the pilot batch ran as one invocation: every unit finished precheck before any copied
    assert max(lines.index(f"{u} do precheck") for u in PILOT) < min(lines.index(f"{u} do copy") for u in PILOT)
    report = status(cli, root, latest_run(root))
    assert report["run"]["status"] == "succeeded"
    assert set(units_by_status(report).values()) == {"done"}
    with journal(root) as j:
        run_id = latest_run(root)
        assert len(j.intents(run_id)) == 3  # one per batch and segment
        assert {g.status for g in j.gate_results(run_id)} == {"passed"} and len(j.gate_results(run_id)) == 5


def test_one_failing_unit_within_max_failed_is_undone_alone(cli, root: Path, strategy: str) -> None:
    fail(root, "do-switch", "xa-tru-van-tho")
    result = cli("--actor", "alice", "run", "engine", "--wave", "pilot", "--non-interactive", "--strategy", strategy, root=root)
    assert result.exit_code == 0, result.output
    lines = side_effects(root)
    # the failed unit's attempted steps undone in reverse order (switch may be half-applied); the read-only precheck has no undo
    assert of(lines, "xa-tru-van-tho") == ["do precheck", "do copy", "do switch", "undo switch", "undo copy"]
    for unit in ("phuong-sai-gon", "xa-long-dien"):
        assert of(lines, unit) == ["do precheck", "do copy", "do switch", "gate switch reconcile"]
    report = status(cli, root, latest_run(root))
    assert report["run"]["status"] == "succeeded"
    assert {u: s for u, s in units_by_status(report).items() if u in PILOT} == {"phuong-sai-gon": "done", "xa-tru-van-tho": "rolled_back", "xa-long-dien": "done"}


def test_a_failed_check_gate_rolls_the_unit_back(cli, root: Path) -> None:
    fail(root, "gate-switch", "xa-long-dien")
    result = cli("--actor", "alice", "run", "engine", "--wave", "pilot", "--non-interactive", "--strategy", "linear", root=root)
    assert result.exit_code == 0, result.output
    assert of(side_effects(root), "xa-long-dien") == ["do precheck", "do copy", "do switch", "gate switch reconcile", "undo switch", "undo copy"]
    with journal(root) as j:
        failed = [g for g in j.gate_results(latest_run(root)) if g.status == "failed"]
    assert [(g.unit, g.gate) for g in failed] == [("xa-long-dien", "reconcile")]


def test_a_batch_past_max_failed_is_undone_whole_and_the_run_stops(cli, root: Path, strategy: str) -> None:
    fail(root, "do-copy", "phuong-sai-gon", "xa-long-dien")
    result = cli("--actor", "alice", "run", "engine", "--non-interactive", "--strategy", strategy, root=root)
    assert result.exit_code == 1, result.output
    assert "whole batch was rolled back" in result.output
    lines = side_effects(root)
    for unit in ("phuong-sai-gon", "xa-long-dien"):
        assert of(lines, unit) == ["do precheck", "do copy", "undo copy"]
    # the unit that had not failed is undone too, in reverse order, after the failed ones
    assert of(lines, "xa-tru-van-tho") == ["do precheck", "do copy", "undo copy"]
    assert not any(line.startswith(("phuong-tan-dinh", "phuong-ben-thanh")) for line in lines)  # the run stopped
    report = status(cli, root, latest_run(root))
    assert report["run"]["status"] == "failed"
    assert set(units_by_status(report).values()) >= {"rolled_back"}


def test_a_failed_undo_is_rollback_failed(cli, root: Path) -> None:
    fail(root, "do-switch", "xa-tru-van-tho")
    fail(root, "undo-copy", "xa-tru-van-tho")
    result = cli("--actor", "alice", "run", "engine", "--wave", "pilot", "--non-interactive", "--strategy", "linear", root=root)
    assert result.exit_code == 5, result.output
    assert "a person must act" in result.output
    assert status(cli, root, latest_run(root))["run"]["status"] == "rollback_failed"


def test_approval_gate_with_four_eyes(cli, root: Path, strategy: str) -> None:
    result = cli("--actor", "alice", "run", "engine-approval", "--non-interactive", "--strategy", strategy, root=root)
    assert result.exit_code == 4, result.output
    run_id = latest_run(root)
    assert sorted(side_effects(root)) == ["phuong-sai-gon do copy", "xa-tru-van-tho do copy"]
    # the starter's own approval is refused
    refused = cli("--actor", "alice", "approve", run_id, "--gate", "pilot-signoff", "--reason", "looks good", root=root)
    assert refused.exit_code == 2 and "four eyes" in refused.output
    # still waiting: resume exits 4 again without running anything
    again = cli("--actor", "alice", "resume", run_id, "--non-interactive", "--strategy", strategy, root=root)
    assert again.exit_code == 4 and len(side_effects(root)) == 2
    approved = cli("--actor", "bob", "approve", run_id, "--gate", "pilot-signoff", "--reason", "copies reconciled", root=root)
    assert approved.exit_code == 0, approved.output
    resumed = cli("--actor", "alice", "resume", run_id, "--non-interactive", "--strategy", strategy, root=root)
    assert resumed.exit_code == 0, resumed.output
    lines = side_effects(root)
    assert sorted(lines[2:]) == ["phuong-sai-gon do switch", "xa-tru-van-tho do switch"]  # copy not re-run
    report = status(cli, root, run_id)
    assert report["run"]["status"] == "succeeded"
    assert [(a["gate"], a["status"], a["approved_by"]) for a in report["approvals"]] == [("pilot-signoff@pilot-1", "approved", "bob")]


def test_a_window_not_yet_open_waits(cli, root: Path) -> None:
    result = cli("--actor", "alice", "run", "engine-window", "--non-interactive", root=root)
    assert result.exit_code == 4, result.output
    assert "outside its window" in result.output and "2099-01-01" in result.output
    assert side_effects(root) == []
    assert status(cli, root, latest_run(root))["run"]["status"] == "waiting"
    # overriding needs a reason, and then runs
    assert cli("--actor", "alice", "run", "engine-window", "--non-interactive", "--ignore-window", root=root).exit_code == 2
    forced = cli("--actor", "alice", "run", "engine-window", "--non-interactive", "--ignore-window", "--reason", "rehearsal", "--strategy", "linear", root=root)
    assert forced.exit_code == 0, forced.output
    assert side_effects(root) == ["phuong-sai-gon do copy"]


def test_dry_run_changes_nothing(cli, root: Path) -> None:
    result = cli("--actor", "alice", "run", "engine", "--wave", "pilot", "--dry-run", "--non-interactive", "--strategy", "linear", root=root)
    assert result.exit_code == 0, result.output
    assert side_effects(root) == []


def test_resume_refuses_a_changed_plan_unless_replanned(cli, root: Path) -> None:
    result = cli("--actor", "alice", "run", "engine-approval", "--non-interactive", "--strategy", "linear", root=root)
    assert result.exit_code == 4
    run_id = latest_run(root)
    book = root / "runbooks" / "engine-approval.yml"
    book.write_text(book.read_text().replace("description: engine fixture with an approval", "description: changed"))
    refused = cli("--actor", "alice", "resume", run_id, "--non-interactive", root=root)
    assert refused.exit_code == 2 and "plan changed" in refused.output
    replanned = cli("--actor", "alice", "resume", run_id, "--non-interactive", "--replan", "--reason", "description fixed", root=root)
    assert replanned.exit_code == 4  # accepted; still waits for its approval


def test_rollback_of_one_unit_after_success(cli, root: Path) -> None:
    assert cli("--actor", "alice", "run", "engine", "--wave", "pilot", "--non-interactive", "--strategy", "linear", root=root).exit_code == 0
    run_id = latest_run(root)
    result = cli("--actor", "alice", "rollback", run_id, "--unit", "xa-long-dien", "--reason", "citizens report errors", "--strategy", "linear", root=root)
    assert result.exit_code == 0, result.output
    assert of(side_effects(root), "xa-long-dien")[-2:] == ["undo switch", "undo copy"]
    assert of(side_effects(root), "phuong-sai-gon")[-1] == "gate switch reconcile"
    report = status(cli, root, run_id)
    assert units_by_status(report)["xa-long-dien"] == "rolled_back" and units_by_status(report)["phuong-sai-gon"] == "done"
    assert report["run"]["status"] == "succeeded"  # the rest of the run stays done
    assert cli("--actor", "alice", "resume", run_id, "--non-interactive", root=root).exit_code == 2  # nothing to resume


def test_abort_and_unlock_need_reasons(cli, root: Path) -> None:
    assert cli("--actor", "alice", "run", "engine-window", "--non-interactive", root=root).exit_code == 4
    run_id = latest_run(root)
    assert cli("abort", run_id, root=root).exit_code == 2
    aborted = cli("--actor", "alice", "abort", run_id, "--reason", "postponed", root=root)
    assert aborted.exit_code == 0 and "aborted" in aborted.output
    assert cli("--actor", "alice", "resume", run_id, "--non-interactive", root=root).exit_code == 2
    unlocked = cli("--actor", "alice", "unlock", "--runbook", "engine-window", "--reason", "stale", root=root)
    assert unlocked.exit_code == 0 and "was not held" in unlocked.output


def test_no_environment_value_reaches_the_work_dir(root: Path) -> None:
    """A canary secret in the conductor's environment appears nowhere under .cutover/ (journal, artifacts)."""
    canary = "canary-7d2c9a41-never-on-disk"
    fail(root, "do-switch", "xa-long-dien")  # an undo invocation too
    result = cutover(root, "run", "engine", "--wave", "pilot", "--non-interactive", "--strategy", "linear",
                     env={"CUTOVER_DB_PASSWORD": canary, "ANSIBLE_BECOME_PASSWORD": canary, "SOME_TOKEN": canary})
    assert result.returncode == 0, result.stdout + result.stderr
    files = [p for p in (root / ".cutover").rglob("*") if p.is_file()]
    assert any(p.name == "state.db" for p in files) and any(p.name == "command" for p in files)
    assert len([p for p in files if "job_events" in p.parts]) > 5
    assert [p for p in files if canary.encode() in p.read_bytes()] == []


def test_a_step_with_retries_runs_again_for_the_failed_unit_only(cli, root: Path) -> None:
    fail_once(root, "do-copy", "xa-long-dien")
    result = cli("--actor", "alice", "run", "engine", "--wave", "pilot", "--non-interactive", "--strategy", "linear", root=root)
    assert result.exit_code == 0, result.output
    lines = side_effects(root)
    assert of(lines, "xa-long-dien") == ["do precheck", "do copy", "do copy", "do switch", "gate switch reconcile"]
    assert of(lines, "phuong-sai-gon") == ["do precheck", "do copy", "do switch", "gate switch reconcile"]
    with journal(root) as j:
        run_id = latest_run(root)
        assert [a.status for a in j.attempts(run_id, unit="xa-long-dien", step="copy")] == ["failed", "done"]
    assert set(units_by_status(status(cli, root, run_id)).values()) >= {"done"}


def test_resume_after_a_batch_rollback_runs_the_batch_again(cli, root: Path) -> None:
    fail(root, "do-copy", "phuong-sai-gon", "xa-long-dien")
    assert cli("--actor", "alice", "run", "engine", "--non-interactive", "--strategy", "linear", root=root).exit_code == 1
    run_id = latest_run(root)
    (root / f"{LOG}.fail.do-copy").unlink()  # the cause is fixed
    resumed = cli("--actor", "alice", "resume", run_id, "--non-interactive", "--strategy", "linear", root=root)
    assert resumed.exit_code == 0, resumed.output
    lines = side_effects(root)
    for unit in PILOT:  # undone with the batch, then cut over again from the first step
        assert of(lines, unit)[-4:] == ["do precheck", "do copy", "do switch", "gate switch reconcile"], of(lines, unit)
    assert of(lines, "phuong-tan-dinh") == ["do precheck", "do copy", "do switch", "gate switch reconcile"]
    report = status(cli, root, run_id)
    assert report["run"]["status"] == "succeeded" and set(units_by_status(report).values()) == {"done"}
    with journal(root) as j:
        retried = j.events(run_id=run_id, kind="units.retried")
        assert [sorted(e.data["units"]) for e in retried] == [sorted(PILOT)] and retried[0].actor == "alice"
        assert j.failed_gate_units(run_id) == set()


def test_a_unit_failed_alone_stays_failed_on_resume(cli, root: Path) -> None:
    # a pilot unit fails alone (within max_failed) and its batch goes on; a later batch then stops
    # the run: the resume runs that batch again, not the unit that failed alone
    fail(root, "gate-switch", "xa-long-dien")
    fail(root, "do-switch", "phuong-tan-dinh")
    assert cli("--actor", "alice", "run", "engine", "--non-interactive", "--strategy", "linear", root=root).exit_code == 1
    run_id = latest_run(root)
    for leftover in root.glob(f"{LOG}.fail.*"):
        leftover.unlink()
    resumed = cli("--actor", "alice", "resume", run_id, "--non-interactive", "--strategy", "linear", root=root)
    assert resumed.exit_code == 0, resumed.output
    lines = side_effects(root)
    assert of(lines, "xa-long-dien") == ["do precheck", "do copy", "do switch", "gate switch reconcile", "undo switch", "undo copy"]
    assert of(lines, "phuong-tan-dinh")[-4:] == ["do precheck", "do copy", "do switch", "gate switch reconcile"]
    assert of(lines, "phuong-ben-thanh") == ["do precheck", "do copy", "do switch", "gate switch reconcile"]
    report = status(cli, root, run_id)
    assert units_by_status(report)["xa-long-dien"] == "rolled_back" and units_by_status(report)["phuong-tan-dinh"] == "done"
    with journal(root) as j:
        assert [e.data["units"] for e in j.events(run_id=run_id, kind="units.retried")] == [["phuong-tan-dinh"]]
        assert j.failed_gate_units(run_id) == {"xa-long-dien"}


def test_a_resume_that_waits_still_owes_the_stopped_batch_its_retry(cli, root: Path) -> None:
    # the pilot batch stops the run (two failures, one tolerated) and is rolled back; a resume
    # then waits (the wave's window has closed) before it reaches the batch: the resume after
    # that, the window open again, still runs the batch's units again from their first step
    fail(root, "do-copy", "phuong-sai-gon", "xa-long-dien")
    assert cli("--actor", "alice", "run", "engine", "--non-interactive", "--strategy", "linear", root=root).exit_code == 1
    run_id = latest_run(root)
    (root / f"{LOG}.fail.do-copy").unlink()
    book = root / "runbooks" / "engine.yml"
    original = book.read_text()
    book.write_text(original.replace("window: {not_before: 2020-01-01, deadline: 2099-12-31}", "window: {not_before: 2099-01-01, deadline: 2099-12-31}", 1))
    waiting = cli("--actor", "alice", "resume", run_id, "--non-interactive", "--replan", "--reason", "window moved", root=root)
    assert waiting.exit_code == 4 and "outside its window" in waiting.output, waiting.output
    assert status(cli, root, run_id)["run"]["status"] == "waiting"
    book.write_text(original)
    resumed = cli("--actor", "alice", "resume", run_id, "--non-interactive", "--replan", "--reason", "window back", "--strategy", "linear", root=root)
    assert resumed.exit_code == 0, resumed.output
    lines = side_effects(root)
    for unit in PILOT:
        assert of(lines, unit)[-4:] == ["do precheck", "do copy", "do switch", "gate switch reconcile"], of(lines, unit)
    report = status(cli, root, run_id)
    assert report["run"]["status"] == "succeeded" and set(units_by_status(report).values()) == {"done"}


def test_rollback_of_one_unit_of_a_run_whose_conductor_died_leaves_it_resumable(cli, root: Path) -> None:
    book = root / "runbooks" / "engine-approval.yml"
    book.write_text(book.read_text().replace("max_failed: 0", "max_failed: 1"))  # the unit rolled back is tolerated
    assert cli("--actor", "alice", "run", "engine-approval", "--non-interactive", "--strategy", "linear", root=root).exit_code == 4
    run_id = latest_run(root)
    with journal(root) as j:  # as a conductor killed mid-run leaves it (its lock lapses with it)
        j.set_run_status(run_id, "running", actor="alice", reason="conductor killed")
    result = cli("--actor", "alice", "rollback", run_id, "--unit", "xa-tru-van-tho", "--reason", "copy looks wrong", "--strategy", "linear", root=root)
    assert result.exit_code == 0, result.output
    assert of(side_effects(root), "xa-tru-van-tho") == ["do copy", "undo copy"]
    report = status(cli, root, run_id)
    assert report["run"]["status"] == "paused" and units_by_status(report)["xa-tru-van-tho"] == "rolled_back"
    assert cli("--actor", "bob", "approve", run_id, "--gate", "pilot-signoff", "--reason", "checked", root=root).exit_code == 0
    resumed = cli("--actor", "alice", "resume", run_id, "--non-interactive", "--strategy", "linear", root=root)
    assert resumed.exit_code == 0, resumed.output
    assert of(side_effects(root), "phuong-sai-gon") == ["do copy", "do switch"]  # the rest of the run went on
    assert status(cli, root, run_id)["run"]["status"] == "succeeded"


def test_a_unit_run_again_by_a_resume_has_its_step_retries_afresh(cli, root: Path) -> None:
    fail(root, "do-copy", "phuong-sai-gon", "xa-long-dien")  # each copy tried twice (retries: 1), then the batch rolled back
    assert cli("--actor", "alice", "run", "engine", "--wave", "pilot", "--non-interactive", "--strategy", "linear", root=root).exit_code == 1
    run_id = latest_run(root)
    (root / f"{LOG}.fail.do-copy").unlink()
    fail_once(root, "do-copy", "xa-long-dien")  # the retried unit's copy fails once more: its retry is still there
    resumed = cli("--actor", "alice", "resume", run_id, "--non-interactive", "--strategy", "linear", root=root)
    assert resumed.exit_code == 0, resumed.output
    assert of(side_effects(root), "xa-long-dien")[-5:] == ["do precheck", "do copy", "do copy", "do switch", "gate switch reconcile"]
    assert units_by_status(status(cli, root, run_id))["xa-long-dien"] == "done"


def test_a_partial_rollback_after_a_stopped_batch_leaves_its_retry_owed(cli, root: Path) -> None:
    fail(root, "do-copy", "phuong-sai-gon", "xa-long-dien")
    assert cli("--actor", "alice", "run", "engine", "--non-interactive", "--strategy", "linear", root=root).exit_code == 1
    run_id = latest_run(root)
    rolled = cli("--actor", "alice", "rollback", run_id, "--unit", "xa-tru-van-tho", "--reason", "check it by hand", "--strategy", "linear", root=root)
    assert rolled.exit_code == 0, rolled.output
    assert status(cli, root, run_id)["run"]["status"] == "failed"  # the run keeps its status
    (root / f"{LOG}.fail.do-copy").unlink()
    resumed = cli("--actor", "alice", "resume", run_id, "--non-interactive", "--strategy", "linear", root=root)
    assert resumed.exit_code == 0, resumed.output
    report = status(cli, root, run_id)
    assert report["run"]["status"] == "succeeded" and set(units_by_status(report).values()) == {"done"}
