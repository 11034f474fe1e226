"""Crash and resume: `cutover run` in a subprocess killed with SIGKILL at several points, then
`cutover resume`. The side-effect log must show every unit-step done, a step recorded `done`
at the kill exactly once, and only interrupted steps (started, not finished) run a second time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "engine"))
from engine_project import cutover, cutover_command, fail, make_project, side_effects  # noqa: E402

from cutover.actions.ansible import resolve_strategy  # noqa: E402
from cutover.journal import open_journal  # noqa: E402

UNITS = ["phuong-sai-gon", "xa-tru-van-tho", "xa-long-dien", "phuong-tan-dinh"]
STEPS = ["copy", "freeze", "switch"]
STRATEGIES = ["linear"] + (["mitogen"] if resolve_strategy(None) == "mitogen" else [])

pytestmark = pytest.mark.integration


def state_db(root: Path) -> str:
    return f"sqlite:///{root / '.cutover' / 'state.db'}"


def start(root: Path, runbook: str = "engine-crash", strategy: str = "linear") -> subprocess.Popen:
    return subprocess.Popen(cutover_command(root, "run", runbook, "--non-interactive", "--strategy", strategy), cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)


def kill_when(proc: subprocess.Popen, root: Path, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready(side_effects(root)):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill point (rc {proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("kill point never reached")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def no_ansible_left(root: Path, timeout: float = 20) -> None:
    """The killed conductor's ansible-playbook died with it (PR_SET_PDEATHSIG)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ansible-playbook" in cmd and str(root).encode() in cmd:
                alive.append(pid)
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"ansible-playbook still running after the kill: {alive}")


def snapshot(root: Path) -> tuple[str, dict[tuple[str, str], str]]:
    with open_journal(state_db(root)) as journal:
        run = journal.runs(limit=1)[0]
        return run.id, {k: v.status for k, v in journal.unit_step_state(run.id).items()}


def check_exactly_once(root: Path, done_at_kill: dict[tuple[str, str], str], lines_at_kill: list[str]) -> Counter:
    counts = Counter(line for line in side_effects(root))
    for unit in UNITS:
        for step in STEPS:
            n = counts[f"{unit} do {step}"]
            assert n >= 1, f"{unit} {step} never ran"
            if done_at_kill.get((unit, step)) == "done":
                assert n == 1, f"{unit} {step} was recorded done at the kill and ran again"
            else:
                assert n <= 2, f"{unit} {step} ran {n} times"
                if n == 2:  # a visible re-run: it had started before the kill
                    assert f"{unit} do {step}" in lines_at_kill
    return counts


def resume_and_check(root: Path) -> Counter:
    run_id, at_kill = snapshot(root)
    lines_at_kill = side_effects(root)
    no_ansible_left(root)
    lines_at_kill = side_effects(root)  # whatever a dying worker still wrote belongs to the interrupted step
    resumed = cutover(root, "resume", run_id, "--non-interactive", "--strategy", "linear")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    counts = check_exactly_once(root, at_kill, lines_at_kill)
    _, after = snapshot(root)
    assert all(after[(u, s)] == "done" for u in UNITS for s in STEPS)
    with open_journal(state_db(root)) as journal:
        assert journal.get_run(run_id).status == "succeeded"
        reruns = {(a.unit, a.step) for a in journal.attempts(run_id) if a.attempt > 1}
    assert reruns == {k for k, v in at_kill.items() if v in ("started",)}  # exactly the interrupted ones ran again
    return counts


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def test_killed_between_intent_and_outcome(root: Path) -> None:
    """The first step's line is written: the intent is journaled, no outcome yet."""
    proc = start(root)
    kill_when(proc, root, lambda lines: len(lines) >= 1)
    run_id, at_kill = snapshot(root)
    assert at_kill and set(at_kill.values()) == {"started"}  # intent recorded, no outcome
    resume_and_check(root)


def test_killed_mid_invocation_after_some_outcomes(root: Path) -> None:
    """Both units of the first batch copied (their outcomes journaled), freeze under way."""
    proc = start(root)
    kill_when(proc, root, lambda lines: any(line.endswith("do freeze") for line in lines))
    _, at_kill = snapshot(root)
    assert "done" in at_kill.values() and "started" in at_kill.values()
    resume_and_check(root)


def test_killed_in_the_second_batch(root: Path) -> None:
    proc = start(root)
    kill_when(proc, root, lambda lines: any(line in ("xa-long-dien do copy", "xa-tru-van-tho do copy") for line in lines))
    counts = resume_and_check(root)
    assert all(counts[f"{u} do {s}"] == 1 for u in ("phuong-sai-gon", "phuong-tan-dinh") for s in STEPS)  # the first batch is not touched again


def test_killed_while_undoing_a_failed_unit(root: Path) -> None:
    """A unit fails; the conductor is killed during its undo; resume finishes the undo, the others go on."""
    fail(root, "do-freeze", "phuong-sai-gon")
    book = root / "runbooks" / "engine-crash.yml"
    book.write_text(book.read_text().replace("max_failed: 0", "max_failed: 1").replace("undo: {playbook: step.yml}", "undo: {playbook: step.yml, vars: {sleep: 0.5}}"))
    proc = start(root)
    kill_when(proc, root, lambda lines: "phuong-sai-gon undo freeze" in lines)
    run_id, at_kill = snapshot(root)
    no_ansible_left(root)
    resumed = cutover(root, "resume", run_id, "--non-interactive", "--strategy", "linear")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    mine = [line.split(" ", 1)[1] for line in side_effects(root) if line.startswith("phuong-sai-gon ")]
    assert mine[:3] == ["do copy", "do freeze", "undo freeze"]
    assert mine[-1] == "undo copy" and mine.count("undo copy") >= 1 and "do switch" not in mine
    _, after = snapshot(root)
    assert {s: after[("phuong-sai-gon", s)] for s in STEPS} == {"copy": "undone", "freeze": "undone", "switch": "skipped"}
    assert all(after[(u, s)] == "done" for u in UNITS[1:] for s in STEPS)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_resume_stops_what_the_killed_conductor_left_running(root: Path, strategy: str) -> None:
    """PR_SET_PDEATHSIG takes down the killed conductor's ansible-playbook, not its forks (its
    workers, their modules): a task still running (here a 60 s sleep) would go on writing beside
    the resumed run. The resume
    stops it first (it carries the invocation's mark) and journals that it did."""
    from cutover.actions.ansible import leftover_processes

    book = root / "runbooks" / "engine-crash.yml"
    book.write_text(book.read_text().replace("vars: {sleep: 0.5}}", "vars: {sleep: 60}}", 1))
    proc = start(root, strategy=strategy)
    kill_when(proc, root, lambda lines: len(lines) >= 2)
    run_id, _ = snapshot(root)
    runs = str(root / ".cutover" / "runs" / run_id) + os.sep
    time.sleep(1)
    left = leftover_processes(runs)
    assert left, "the killed run's task processes were expected to outlive it"
    book.write_text(book.read_text().replace("vars: {sleep: 60}}", "vars: {sleep: 0.5}}", 1))
    resumed = cutover(root, "resume", run_id, "--non-interactive", "--strategy", strategy, "--replan", "--reason", "shorter sleep")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert leftover_processes(runs) == []
    assert all(not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1][:3] for pid in left)
    with open_journal(state_db(root)) as journal:
        reaped = journal.events(run_id=run_id, kind="invocations.reaped")
        assert reaped and set(left) <= set(reaped[0].data["pids"])
        assert journal.get_run(run_id).status == "succeeded"


def test_killed_while_rolling_a_batch_back(root: Path) -> None:
    """Both units of the first batch fail (it tolerates none); the conductor is killed while it
    undoes the batch. Resume finishes the batch's undo and stops the run failed (exit 1); once the
    cause is fixed, a second resume runs the batch again and the run completes."""
    fail(root, "do-freeze", "phuong-sai-gon", "phuong-tan-dinh")
    book = root / "runbooks" / "engine-crash.yml"
    book.write_text(book.read_text().replace("undo: {playbook: step.yml}", "undo: {playbook: step.yml, vars: {sleep: 0.5}}"))
    proc = start(root)
    kill_when(proc, root, lambda lines: any(line.endswith("undo freeze") for line in lines))
    run_id, _ = snapshot(root)
    with open_journal(state_db(root)) as journal:
        assert journal.get_run(run_id).status == "rolling_back"
    finished = cutover(root, "resume", run_id, "--non-interactive", "--strategy", "linear")
    assert finished.returncode == 1 and "whole batch was rolled back" in finished.stdout + finished.stderr, finished.stdout + finished.stderr
    _, after = snapshot(root)
    assert {after[(u, s)] for u in ("phuong-sai-gon", "phuong-tan-dinh") for s in ("copy", "freeze")} == {"undone"}
    (root / "side_effects.log.fail.do-freeze").unlink()
    again = cutover(root, "resume", run_id, "--non-interactive", "--strategy", "linear")
    assert again.returncode == 0, again.stdout + again.stderr
    _, after = snapshot(root)
    assert all(after[(u, s)] == "done" for u in UNITS for s in STEPS)
