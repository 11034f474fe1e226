"""The conductor: decides what runs next, calls the actions, journals intent before and outcome after.

A run goes wave by wave, batch by batch, segment by segment. A *segment* is the consecutive
steps up to the next approval (an approval step, or a step followed by an approval gate); for
one batch it is one ansible-runner invocation (`cutover.actions.ansible`), whose check gates
(reconcile, smoke) run inside it right after their step. Per-site concurrency comes from the
plan's batch cutting.

Write-ahead: before a segment runs, its intent (units x steps) is journaled; each unit-step's
outcome is journaled the moment its job event arrives. A unit-step recorded `done` is never
run again; one `started` and not finished is (steps are idempotent). Units the ansible run
drops (they failed earlier in the segment) have their unreached steps marked `skipped`.

Failure, per batch: units failing a step or a check gate are rolled back alone right after the
segment (their attempted steps undone in reverse order, in one invocation limited to them) and
stay failed while the others go on; once more units failed than the batch tolerates
(`max_failed`, or a `failure_threshold` gate already passed), `on_failure` decides:
`rollback_batch` undoes the whole batch and stops (RunFailed, exit 1), `pause` stops and waits
for a person (Waiting, exit 4), `stop` stops without undoing (RunFailed). A failed undo is
RollbackFailed (exit 5): a person must act. `resume` of a run stopped that way (failed or
paused at a batch) runs that batch's out units again from their first step, once the cause is
fixed (`journal.retry_units`, journaled and audited); units that failed alone in batches that
went on stay failed, and a crash or an interrupt never makes a failed unit run again.

Approvals (approval steps, approval gates, a wave's approve_before/approve_after, approval final
gates) are requested in the journal; the run goes on once someone other than its starter
approved (`approve`). With a terminal the engine waits for it; without one the run stops
`waiting` (exit 4) and `resume` continues. A wave outside its window is Waiting too, unless the
run was started with `ignore_window` and a reason.

The engine never prints: it reports progress through `Conductor.report` (a callable).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from cutover import states
from cutover.actions.ansible import AnsibleAction, CheckGate, Outcome, PlayStep, reap_invocations, resolve_strategy, write_inventory
from cutover.actions.approval import ApprovalRequest, decide
from cutover.actions.http import HttpCheck
from cutover.errors import CutoverError, InvalidInput, Problem, RollbackFailed, RunFailed, Waiting
from cutover.estate import Estate
from cutover.journal import Journal
from cutover.journal.records import Run
from cutover.runbook import TIMEZONE, Step, load_runbook, resolve_share

OUT_STATUSES = frozenset({states.FAILED, states.UNDOING, states.UNDONE, states.UNDO_FAILED})
UNDO_CANDIDATES = frozenset({states.DONE, states.FAILED, states.STARTED, states.UNDOING, states.UNDO_FAILED})


class Interrupted(CutoverError):
    """SIGINT/SIGTERM: the running invocation was cancelled; `resume RUN` continues."""

    exit_code = 130
    status = "interrupted"


class Aborted(CutoverError):
    """Someone aborted the run (`cutover abort`) while it ran."""

    exit_code = 1
    status = "aborted"


@dataclass(frozen=True)
class Progress:
    """One thing worth showing: a run, wave, batch, segment, unit-step or approval moved."""

    kind: str  # run | wave | batch | segment | step | gate | undo | approval | window
    run: str
    status: str
    wave: str | None = None
    batch: str | None = None
    unit: str | None = None
    step: str | None = None
    message: str = ""
    total: int | None = None  # batch: how many unit-step and gate outcomes to expect


@dataclass
class Options:
    """How this process carries out runs (not part of the plan)."""

    strategy: str | None = None  # mitogen | linear | None = mitogen when installed
    interactive: bool = False  # a terminal: wait for approvals instead of exiting 4
    approval_poll: float = 2.0
    forks: int = 50
    lease: float = 30.0


@dataclass
class JournalStats:
    writes: int = 0  # transactions
    records: int = 0  # unit-step outcomes, gate results, intents, statuses written
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.writes / self.seconds if self.seconds else 0.0


def runbook_path(root: Path, name: str) -> Path:
    candidate = Path(name)
    if candidate.suffix in (".yml", ".yaml") and candidate.exists():
        return candidate.resolve()
    path = root / "runbooks" / f"{name}.yml"
    if not path.exists():
        known = sorted(p.stem for p in (root / "runbooks").glob("*.yml"))
        raise InvalidInput([Problem(str(path), "", f"no runbook {name!r} (known: {', '.join(known) or 'none'})")])
    return path


def load_plan(root: Path, estate: Estate, runbook: str):  # noqa: ANN201 - Plan
    from cutover.plan import compile_plan

    return compile_plan(estate, load_runbook(runbook_path(root, runbook), estate, root))


def split_segments(steps: Sequence[Step]) -> list[list[Step]]:
    """The plan's segments (cut before approval steps), also cut after a step with an approval gate."""
    out: list[list[Step]] = []
    cut_next = False
    for step in steps:
        if not out or step.is_approval or cut_next:
            out.append([])
        out[-1].append(step)
        cut_next = any(g.kind == "approval" for g in step.gates)
    return out


def approval_id(gate: str, scope: str | None) -> str:
    return f"{gate}@{scope}" if scope else gate


class Conductor:
    """Carries out one run of one plan against the estate, through the journal."""

    def __init__(self, journal: Journal, *, root: Path, estate: Estate, actor: str, options: Options | None = None, work_dir: Path | None = None,
                 report: Callable[[Progress], None] = lambda p: None, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.journal = journal
        self.root = Path(root)
        self.work_dir = Path(work_dir) if work_dir else self.root / ".cutover"
        self.estate = estate
        self.actor = actor
        self.options = options or Options()
        self.report = report
        self.now = now
        self.cancelled = threading.Event()
        self.retry_batch: tuple[str, str] | None = None  # set by resume: the stopped batch it owes a retry
        self.stats = JournalStats()
        self.invocations = 0

    # --- commands ---------------------------------------------------------------------------

    def start(self, runbook: str, *, wave: str | None = None, units: Sequence[str] = (), dry_run: bool = False,
              ignore_window: str | None = None) -> Run:
        """A new run of `runbook` (lock taken first: LockHeld, exit 3, if another run holds it)."""
        plan = load_plan(self.root, self.estate, runbook)
        params = self._params(plan, wave=wave, units=units, dry_run=dry_run, ignore_window=ignore_window)
        resolve_strategy(self.options.strategy)
        with self.journal.lock(plan.runbook.name, self.estate.env, actor=self.actor, lease=self.options.lease) as lock:
            run = self.journal.create_run(runbook=plan.runbook.name, env=self.estate.env, plan_hash=plan.hash, plan=plan.to_dict(),
                                          started_by=self.actor, params=params)
            lock.attach(run.id)
            return self._conduct(run, plan, lock)

    def resume(self, run_id: str, *, replan: str | None = None) -> Run:
        run = self.journal.get_run(run_id)
        plan = load_plan(self.root, self.estate, run.runbook)
        if run.env != self.estate.env:
            raise InvalidInput([Problem("--env", "", f"run {run_id} belongs to env {run.env!r}, not {self.estate.env!r}")])
        if plan.hash != run.plan_hash:
            if not replan:
                raise InvalidInput([Problem("RUN", "", f"the plan changed since run {run_id} started ({run.plan_hash[:12]} -> {plan.hash[:12]}): "
                                                        "check `cutover plan`, then `resume --replan --reason ...`")])
            self.journal.replan(run_id, plan_hash=plan.hash, plan=plan.to_dict(), actor=self.actor, reason=replan)
        if run.status in (states.SUCCEEDED, states.ROLLED_BACK, states.ABORTED):
            raise InvalidInput([Problem("RUN", "", f"run {run_id} is {run.status}: nothing to resume")])
        if run.status == states.ROLLBACK_FAILED or (run.status == states.ROLLING_BACK and self._last_status_detail(run).get("rollback")):
            raise InvalidInput([Problem("RUN", "", f"run {run_id} is {run.status} (`cutover rollback`): finish it with `cutover rollback {run_id} --reason ...`")])
        with self.journal.lock(plan.runbook.name, self.estate.env, actor=self.actor, run_id=run_id, lease=self.options.lease) as lock:
            run = self.journal.get_run(run_id)
            if run.status == states.ROLLING_BACK:  # the conductor died while undoing a batch past its threshold
                return self._finish_batch_rollback(run, plan, lock)
            self.retry_batch = self._stopped_batch(run)
            return self._conduct(run, plan, lock)

    def _finish_batch_rollback(self, run: Run, plan, lock) -> Run:  # noqa: ANN001
        """Undo the rest of the batch whose rollback a crash interrupted; the run then stops as
        failed, as it would have (RunFailed, exit 1); a later resume runs the batch again."""
        where = self._last_status_detail(run).get("stopped_batch") or {}
        if not where:
            raise InvalidInput([Problem("RUN", "", f"run {run.id} is rolling_back with no batch recorded: finish it with `cutover rollback {run.id} --reason ...`")])
        self._prepare(run, lock)
        pw = plan.wave(where["wave"])
        batch = next(b for b in pw.batches if b.id == where["batch"])
        chosen = set(run.params.get("units") or ())
        reason = self._last_status_detail(run).get("why") or f"batch {batch.id} past its failure threshold"
        self._rollback_batch(run, plan, pw, batch, [u for u in batch.units if not chosen or u in chosen], reason)
        raise AssertionError("unreachable: _rollback_batch raises")

    def _stopped_batch(self, run: Run) -> tuple[str, str] | None:
        """The (wave, batch) that last stopped the run past its failure threshold, if no resume
        has run its units again since (`units.retried`): a resume owes it that, however many
        stops (a window, an approval, an interrupt, a crash, a partial rollback) came between.
        None otherwise: units that failed alone in batches that went on stay failed."""
        owed: tuple[int, tuple[str, str]] | None = None
        for event in self.journal.events(run_id=run.id, kind="run.status"):
            where = ((event.data or {}).get("detail") or {}).get("stopped_batch")
            if where:
                owed = (event.id, (where["wave"], where["batch"]))
        if owed is None:
            return None
        since = self.journal.events(run_id=run.id, kind="units.retried", after_id=owed[0])
        return None if any(((e.data or {}).get("wave"), (e.data or {}).get("batch")) == owed[1] for e in since) else owed[1]

    def approve(self, run_id: str, gate: str, *, reason: str, approved: bool = True) -> str:
        """Decide a requested approval (four eyes: not the run's starter). Returns the gate id."""
        run = self.journal.get_run(run_id, with_plan=False)
        requested = [a for a in self.journal.approvals(run_id) if a.status == states.REQUESTED]
        exact = [a for a in requested if a.gate == gate]
        matches = exact or [a for a in requested if a.gate.split("@", 1)[0] == gate]
        if len(matches) != 1:
            known = ", ".join(sorted(a.gate for a in requested)) or "none"
            what = "no requested approval" if not matches else "several requested approvals"
            raise InvalidInput([Problem("--gate", "", f"{what} named {gate!r} in run {run_id} (requested: {known})")])
        target = matches[0].gate
        decision = decide(ApprovalRequest(run_id, target, run.started_by), approver=self.actor, reason=reason, approved=approved)
        self.journal.record_approval(run_id, target, actor=decision.approver, reason=decision.reason, approved=approved)
        self.report(Progress("approval", run_id, states.APPROVED if approved else states.REJECTED, message=f"{target} by {self.actor}"))
        return target

    def abort(self, run_id: str, *, reason: str) -> Run:
        _need_reason(reason)
        run = self.journal.set_run_status(run_id, states.ABORTED, actor=self.actor, reason=reason)
        self.report(Progress("run", run_id, states.ABORTED, message=reason))
        return run

    def rollback(self, run_id: str, *, reason: str, wave: str | None = None, unit: str | None = None) -> Run:
        """Undo what the run did (all of it, one wave, or one unit), batch by batch, last first."""
        _need_reason(reason)
        run = self.journal.get_run(run_id)
        plan = load_plan(self.root, self.estate, run.runbook)
        if plan.hash != run.plan_hash:
            raise InvalidInput([Problem("RUN", "", f"the plan changed since run {run_id} started; resume --replan first or roll back with the old inputs")])
        if unit is not None:
            plan.unit(unit)
        if wave is not None:
            plan.wave(wave)
        with self.journal.lock(plan.runbook.name, self.estate.env, actor=self.actor, run_id=run_id, lease=self.options.lease) as lock:
            before = self._status_before_rollback(run) if (wave or unit) else None
            self._status(run_id, states.ROLLING_BACK, reason=reason, detail={"wave": wave, "unit": unit, "rollback": True,
                                                                             **({"resume_as": before} if before else {})})
            self._prepare(run, lock)
            state = self.journal.unit_step_state(run_id)
            for pw in reversed(plan.waves):
                if wave is not None and pw.id != wave:
                    continue
                for batch in reversed(pw.batches):
                    units = [u for u in batch.units if unit in (None, u)]
                    self._undo(run, plan, pw, batch, units, state, label="rollback")
            # A part rolled back (one unit, one wave): the run keeps the status it had, the rest stays done.
            ending = before if before and states.can_transition("run", states.ROLLING_BACK, before) else states.ROLLED_BACK
            self._status(run_id, ending, reason=reason, detail={"wave": wave, "unit": unit, "rolled_back": "part" if ending != states.ROLLED_BACK else "all"})
            return self.journal.get_run(run_id, with_plan=False)

    def _status_before_rollback(self, run: Run) -> str | None:
        """The status a partial rollback gives back: the run's, or (a rollback already under way)
        the one the first rollback recorded. A run still marked running holds no lock (ours now):
        its conductor died, and it gives back `paused`, for `resume` to go on."""
        if run.status == states.RUNNING:
            return states.PAUSED
        if run.status != states.ROLLING_BACK:
            return run.status
        return (self._last_status_detail(run).get("resume_as")) or None

    def _last_status_detail(self, run: Run) -> dict[str, Any]:
        moves = [e for e in self.journal.events(run_id=run.id, kind="run.status") if (e.data or {}).get("to") == run.status]
        return dict((moves[-1].data or {}).get("detail") or {}) if moves else {}

    # --- conducting ---------------------------------------------------------------------------

    def _params(self, plan, *, wave, units, dry_run, ignore_window) -> dict[str, Any]:  # noqa: ANN001
        problems: list[Problem] = []
        if wave is not None:
            plan.wave(wave)
        for code in units:
            try:
                w, batch, _ = plan.unit(code)
            except InvalidInput as exc:
                problems += exc.problems
                continue
            if batch is None:
                problems.append(Problem("--units", code, "blocked: " + "; ".join(next(b.reasons for b in w.blocked if b.code == code))))
            elif wave is not None and w.id != wave:
                problems.append(Problem("--units", code, f"is in wave {w.id!r}, not {wave!r}"))
        if ignore_window is not None and not ignore_window.strip():
            problems.append(Problem("--reason", "", "--ignore-window needs a reason"))
        for step in plan.steps:
            if step.do.kind == "stack" or (step.undo is not None and step.undo.kind == "stack"):
                problems.append(Problem(str(plan.runbook.path), f"steps.{step.id}", "stack actions are not carried out by the engine yet"))
        if problems:
            raise InvalidInput(problems)
        return {"wave": wave, "units": list(units), "dry_run": dry_run, "ignore_window": ignore_window,
                "strategy": resolve_strategy(self.options.strategy)}

    def _prepare(self, run: Run, lock) -> None:  # noqa: ANN001
        self.run_dir = self.work_dir / "runs" / run.id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = lock
        # Holding the lock: what a dead conductor of this run left running on this machine (its
        # playbook's forks still writing) is stopped before anything runs again.
        reaped = reap_invocations(str(self.run_dir) + os.sep)
        if reaped:
            self.journal.append_event("invocations.reaped", actor=self.actor, run_id=run.id, data={"pids": reaped})
            self.report(Progress("run", run.id, "reaped", message=f"stopped {len(reaped)} process(es) left by an earlier conductor of this run"))
        from cutover.ansible_inventory import build_inventory

        self.dynamic_inventory = build_inventory(self.estate)
        self.action = AnsibleAction(inventory=self.run_dir / "inventory.json", strategy=resolve_strategy(self.options.strategy),
                                    check_mode=bool(run.params.get("dry_run")), forks=self.options.forks)

    def _conduct(self, run: Run, plan, lock) -> Run:  # noqa: ANN001
        try:
            return self._conduct_waves(run, plan, lock)
        except Interrupted:
            self._status(run.id, states.PAUSED, reason="interrupted (SIGINT/SIGTERM)")
            raise
        except _Rejected as rejected:
            why = f"approval {rejected.gate} rejected: {rejected.reason}"
            self._status(run.id, states.FAILED, reason=why)
            raise RunFailed(f"run {run.id} stopped: {why}; what earlier waves did stays (`cutover rollback {run.id} --wave W --reason ...` undoes it)") from None

    def _conduct_waves(self, run: Run, plan, lock) -> Run:  # noqa: ANN001
        self._prepare(run, lock)
        params = run.params
        self._status(run.id, states.RUNNING)
        self.report(Progress("run", run.id, states.RUNNING, message=f"{plan.runbook.name} in {self.estate.env}, plan {plan.hash[:12]}"
                             + (" (dry run: check mode)" if params.get("dry_run") else "")))
        chosen = set(params.get("units") or ())
        for pw in plan.waves:
            if params.get("wave") not in (None, pw.id):
                continue
            units_of = {b.id: [u for u in b.units if not chosen or u in chosen] for b in pw.batches}
            if not any(units_of.values()):
                continue
            state = self.journal.unit_step_state(run.id)
            retrying = self.retry_batch is not None and self.retry_batch[0] == pw.id
            if not retrying and self._finished(run.id, state, [u for us in units_of.values() for u in us], plan):
                continue
            self._check_window(run, pw)
            if pw.approve_before:
                self._await_approval(run, pw.approve_before, None, f"before wave {pw.id}")
            self.report(Progress("wave", run.id, states.RUNNING, wave=pw.id))
            for batch in pw.batches:
                if units_of[batch.id]:
                    self._run_batch(run, plan, pw, batch, units_of[batch.id])
            if pw.approve_after:
                self._await_approval(run, pw.approve_after, None, f"after wave {pw.id}")
            self.report(Progress("wave", run.id, states.DONE, wave=pw.id))
        if params.get("wave") is None and not chosen:
            self._final_gates(run, plan)
        failed = self._out(run.id, self.journal.unit_step_state(run.id))
        self._status(run.id, states.SUCCEEDED, detail={"failed_units": sorted(failed)} if failed else None)
        self.report(Progress("run", run.id, states.SUCCEEDED, message=f"{len(failed)} unit(s) failed and rolled back" if failed else ""))
        return self.journal.get_run(run.id, with_plan=False)

    def _check_window(self, run: Run, pw) -> None:  # noqa: ANN001
        now = self.now()
        if pw.window.is_open(now):
            return
        if self._calendar_ignored(run, {"wave": pw.id, "window": pw.window.hours, "at": now.isoformat()}):
            return
        opening = pw.window.next_opening(now)
        when = f"opens {opening:%Y-%m-%d %H:%M} Asia/Ho_Chi_Minh" if opening else f"closed after {pw.window.deadline}"
        self._status(run.id, states.WAITING, reason=f"wave {pw.id} window {when}")
        self.report(Progress("window", run.id, states.WAITING, wave=pw.id, message=when))
        raise Waiting(f"run {run.id}: wave {pw.id} is outside its window ({when}); resume then, or start with --ignore-window --reason")

    def _calendar_ignored(self, run: Run, what: dict[str, Any]) -> bool:
        """The one calendar override: a run started with --ignore-window --reason goes on outside a
        wave's window or past an approval's deadline, each time journaled (`window.ignored`) with
        that reason and what it overrode. False for any other run."""
        reason = run.params.get("ignore_window")
        if not reason:
            return False
        self.journal.append_event("window.ignored", actor=self.actor, run_id=run.id, data={**what, "reason": reason})
        return True

    def _final_gates(self, run: Run, plan) -> None:  # noqa: ANN001
        today = self.now().astimezone(TIMEZONE).date()
        for gate in plan.final_gates:
            if gate.not_before is not None and today < gate.not_before:
                self._status(run.id, states.WAITING, reason=f"final gate {gate.id}: not before {gate.not_before}")
                raise Waiting(f"run {run.id}: final gate {gate.id} opens on {gate.not_before}; resume then")
            if gate.approval is not None:
                self._await_approval(run, gate.approval.gate, None, f"final gate {gate.id}", prompt=gate.approval.prompt, deadline=gate.deadline)

    # --- approvals ----------------------------------------------------------------------------

    def _await_approval(self, run: Run, gate: str, scope: str | None, where: str, *, prompt: str = "", deadline: date | None = None) -> None:
        target = approval_id(gate, scope)
        current = self.journal.approval(run.id, target)
        if current is None or current.status not in (states.APPROVED, states.REQUESTED):
            self.journal.request_approval(run.id, target, actor=self.actor, prompt=prompt or where)
            self.report(Progress("approval", run.id, states.REQUESTED, message=f"{target} ({where}): `cutover approve {run.id} --gate {target} --reason ...` by someone other than {run.started_by}"))
        while True:
            current = self.journal.approval(run.id, target)
            if current is not None and current.status == states.APPROVED:
                if deadline is not None and current.at is not None and current.at.astimezone(TIMEZONE).date() > deadline:
                    if not self._calendar_ignored(run, {"gate": target, "deadline": str(deadline), "at": current.at.isoformat()}):
                        raise RunFailed(f"run {run.id}: approval {target} came after its deadline {deadline}")
                return
            if current is not None and current.status == states.REJECTED:
                raise _Rejected(target, current.reason or "")
            if not self.options.interactive:
                self._status(run.id, states.WAITING, reason=f"approval {target}")
                raise Waiting(f"run {run.id} waits for approval {target} ({where}); then `cutover resume {run.id}`")
            self._checkpoint(run)
            time.sleep(self.options.approval_poll)

    # --- a batch ------------------------------------------------------------------------------

    def _run_batch(self, run: Run, plan, pw, batch, units: list[str]) -> None:  # noqa: ANN001
        state = self.journal.unit_step_state(run.id)
        tolerated = pw.max_failed_for(batch)
        parts = sum(1 + sum(g.kind in ("reconcile", "smoke") for g in s.gates) for s in plan.steps if not s.is_approval)
        self.report(Progress("batch", run.id, states.RUNNING, wave=pw.id, batch=batch.id, message=f"{len(units)} unit(s), tolerates {tolerated} failure(s)",
                             total=len(units) * parts))
        # finish a rollback-alone that a crash interrupted
        out = self._out(run.id, state)
        pending_undo = [u for u in units if u in out and self._needs_undo(state, u, plan)]
        if pending_undo:
            self._undo(run, plan, pw, batch, pending_undo, state, label="resume undo")
            state = self.journal.unit_step_state(run.id)
        if self.retry_batch == (pw.id, batch.id):
            self.retry_batch = None  # once per resume
            out = self._out(run.id, state)
            again = [u for u in units if u in out and not self._needs_undo(state, u, plan)]
            if again:
                self._write(lambda: self.journal.retry_units(run.id, again, actor=self.actor, wave=pw.id, batch=batch.id,
                                                             reason=f"resume of run stopped at batch {batch.id}"))
                self.report(Progress("batch", run.id, "retrying", wave=pw.id, batch=batch.id, message=f"runs again: {', '.join(again)}"))
                state = self.journal.unit_step_state(run.id)
        seen_steps: list[Step] = []
        for index, segment in enumerate(split_segments(plan.steps), start=1):
            self._checkpoint(run)
            seen_steps += segment
            failed = self._out(run.id, state) & set(units)
            alive = [u for u in units if u not in failed]
            if segment[0].is_approval:
                spec = segment[0].do.approval
                todo = [u for u in alive if not _done(state, u, segment[0].id)]
                if todo:
                    try:
                        self._await_approval(run, spec.gate, batch.id, f"batch {batch.id}, step {segment[0].id}", prompt=spec.prompt)
                    except _Rejected as rejected:
                        self._rollback_batch(run, plan, pw, batch, units, f"approval {rejected.gate} rejected: {rejected.reason}")
                    self._journal_intent(run, pw, batch, todo, [segment[0].id])
                    self._write(lambda: self.journal.record_outcomes(run.id, [
                        {"unit": u, "step": segment[0].id, "status": states.DONE, "wave": pw.id, "batch": batch.id,
                         "detail": {"approval": approval_id(spec.gate, batch.id)}} for u in todo]))
                segment = segment[1:]
                if not segment:
                    continue
            limit = min([tolerated] + [resolve_share(g.failure_threshold, len(units), round_up=False)
                                       for s in seen_steps for g in s.gates if g.kind == "failure_threshold"])
            newly_failed = self._run_segment(run, plan, pw, batch, index, segment, alive, state, budget=limit - len(failed))
            state = self.journal.unit_step_state(run.id)
            failed |= newly_failed
            if len(failed) > limit:
                self._past_threshold(run, plan, pw, batch, units, state, failed, limit)
            if newly_failed:
                self._undo(run, plan, pw, batch, sorted(newly_failed), state, label="failed units")
                state = self.journal.unit_step_state(run.id)
            approvals = [g for s in segment for g in s.gates if g.kind == "approval"]
            for gate in approvals:
                try:
                    self._await_approval(run, gate.approval.gate, batch.id, f"batch {batch.id}, after step {segment[-1].id}", prompt=gate.approval.prompt)
                except _Rejected as rejected:
                    self._rollback_batch(run, plan, pw, batch, units, f"approval {rejected.gate} rejected: {rejected.reason}")
        failed = sorted(self._out(run.id, state) & set(units))
        self.report(Progress("batch", run.id, states.DONE, wave=pw.id, batch=batch.id,
                             message=f"{len(units) - len(failed)} done, {len(failed)} failed" + (f" ({', '.join(failed)})" if failed else "")))

    def _past_threshold(self, run: Run, plan, pw, batch, units, state, failed, limit) -> None:  # noqa: ANN001
        why = f"batch {batch.id}: {len(failed)} unit(s) failed ({', '.join(sorted(failed))}), more than the {limit} tolerated"
        on_failure = plan.runbook.on_failure
        stopped_at = {"stopped_batch": {"wave": pw.id, "batch": batch.id}}
        if on_failure == "rollback_batch":
            self._rollback_batch(run, plan, pw, batch, units, why)
        if on_failure == "pause":
            self._undo(run, plan, pw, batch, sorted(failed), state, label="failed units")
            self._status(run.id, states.PAUSED, reason=why, detail=stopped_at)
            raise Waiting(f"run {run.id} paused: {why}; `cutover resume` runs the batch's failed units again, `cutover rollback` undoes it")
        self._status(run.id, states.FAILED, reason=why, detail=stopped_at)
        raise RunFailed(f"run {run.id} stopped: {why} (on_failure: stop, nothing undone)")

    def _rollback_batch(self, run: Run, plan, pw, batch, units, why: str) -> None:  # noqa: ANN001
        self._status(run.id, states.ROLLING_BACK, reason=why, detail={"stopped_batch": {"wave": pw.id, "batch": batch.id}, "why": why})
        self.report(Progress("batch", run.id, states.ROLLING_BACK, wave=pw.id, batch=batch.id, message=why))
        self._undo(run, plan, pw, batch, list(units), self.journal.unit_step_state(run.id), label="batch rollback")
        self._status(run.id, states.FAILED, reason=why, detail={"stopped_batch": {"wave": pw.id, "batch": batch.id}})
        raise RunFailed(f"run {run.id} failed: {why}; the whole batch was rolled back (`cutover resume {run.id}` runs it again once the cause is fixed)")

    # --- a segment ----------------------------------------------------------------------------

    def _run_segment(self, run: Run, plan, pw, batch, index: int, segment: list[Step], alive: list[str], state, *, budget: int) -> set[str]:  # noqa: ANN001
        """Run the segment for the alive units; units failing a step with `retries` left run it
        again (from that step, in one more invocation for all of them). Returns the failed units."""
        by_id = {s.id: s for s in segment}
        failed_for_good: set[str] = set()
        units = list(alive)
        marks = self.journal.retry_marks(run.id)  # a unit retried by a resume has its step retries afresh

        def attempts(unit: str, step: str) -> int:
            return state[(unit, step)].attempts - marks.get(unit, (0, {}))[1].get(step, 0)

        while units:
            failed, failed_step, stopped = self._run_segment_once(run, plan, pw, batch, index, segment, units, state, budget=budget - len(failed_for_good))
            state = self.journal.unit_step_state(run.id)
            retry = [] if stopped else sorted(u for u in failed if u in failed_step
                                             and by_id[failed_step[u]].retries >= attempts(u, failed_step[u]))
            failed_for_good |= failed - set(retry)
            if retry:
                self.report(Progress("segment", run.id, "retrying", wave=pw.id, batch=batch.id, message=", ".join(f"{u} from {failed_step[u]}" for u in retry)))
            units = retry
        return failed_for_good

    def _run_segment_once(self, run: Run, plan, pw, batch, index: int, segment: list[Step], alive: list[str], state, *, budget: int):  # noqa: ANN001, ANN202
        """One invocation; stopped early once more than `budget` units failed. -> (failed, {unit: failed step}, stopped)"""
        # A step recorded done whose check gate has no result (the conductor died during the
        # gate) runs again with its gate: steps are idempotent, a gate never runs alone.
        passed = self.journal.passed_gates(run.id)  # since each unit was last retried
        todo = {s.id: [u for u in alive if not _complete(state, passed, u, s)] for s in segment}
        failed_step: dict[str, str] = {}
        if not any(todo.values()):
            return set(), failed_step, False
        steps: list[PlayStep] = []
        for s in segment:
            if todo[s.id]:
                steps.append(self._play_step(plan, pw, s, todo[s.id]))
        groups: dict[tuple[str, ...], list[str]] = {}
        for unit in alive:
            key = tuple(s.id for s in segment if unit in todo[s.id])
            if key:
                groups.setdefault(key, []).append(unit)
        for step_ids, group in groups.items():
            self._journal_intent(run, pw, batch, group, list(step_ids))
        self.report(Progress("segment", run.id, states.STARTED, wave=pw.id, batch=batch.id,
                             message=f"steps {', '.join(s.id for s in segment)} for {len({u for us in todo.values() for u in us})} unit(s)"))
        failed: set[str] = set()
        reported: set[tuple[str, str]] = set()

        def on_outcomes(outcomes: list[Outcome]) -> None:
            """Journal outcomes the moment they are known: the step outcomes of one delivery in one transaction."""
            steps_done = [o for o in outcomes if o.gate is None]
            if steps_done:
                reported.update((o.unit, o.step) for o in steps_done)
                self._write(lambda: self.journal.record_outcomes(run.id, [
                    {"unit": o.unit, "step": o.step, "status": states.DONE if o.ok else states.FAILED, "wave": pw.id, "batch": batch.id,
                     "detail": {"message": o.message, "task": o.task, "changed": o.changed, "started": o.started, "finished": o.finished}}
                    for o in steps_done]))
            for o in outcomes:
                if o.gate is not None:
                    self._write(lambda: self.journal.record_gate(run.id, gate=o.gate, status=states.PASSED if o.ok else states.FAILED, wave=pw.id,
                                                                 batch=batch.id, unit=o.unit, step=o.step, evidence={**o.evidence, "message": o.message}))
                if not o.ok:
                    failed.add(o.unit)
                    if o.gate is None:
                        failed_step.setdefault(o.unit, o.step)
                self.report(Progress("gate" if o.gate else "step", run.id, (states.PASSED if o.gate else states.DONE) if o.ok else states.FAILED,
                                     wave=pw.id, batch=batch.id, unit=o.unit, step=o.step if not o.gate else f"{o.step}/{o.gate}", message=o.message))

        result = self._invoke(run, batch, f"s{index}", steps, lambda o: on_outcomes([o]), on_outcomes, failure_budget=budget)
        if result.stopped:
            # stopped on purpose at a step boundary: every step before it was reported, none after it ran
            closing = [{"unit": u, "step": s.id, "status": states.SKIPPED,
                        "detail": {"message": "not reached: the unit failed earlier" if u in failed else "not reached: the batch passed its failure threshold"}}
                       for s in segment for u in todo[s.id] if (u, s.id) not in reported]
            if closing:
                self._write(lambda: self.journal.record_outcomes(run.id, [{**c, "wave": pw.id, "batch": batch.id} for c in closing]))
            return failed, failed_step, True
        if result.status == "canceled" or self.cancelled.is_set():
            raise Interrupted(f"run {run.id} interrupted during batch {batch.id}; `cutover resume {run.id}` continues (the interrupted steps run again)")
        closing = []
        for s in segment:
            for unit in todo[s.id]:
                if (unit, s.id) in reported:
                    continue
                if unit in failed:
                    closing.append({"unit": unit, "step": s.id, "status": states.SKIPPED, "detail": {"message": "not reached: the unit failed earlier"}})
                else:  # the invocation stopped short (error, timeout): the first unreported step failed
                    failed.add(unit)
                    failed_step.setdefault(unit, s.id)
                    closing.append({"unit": unit, "step": s.id, "status": states.FAILED, "detail": {"message": (result.error or result.status)[-2000:]}})
                    self.report(Progress("step", run.id, states.FAILED, wave=pw.id, batch=batch.id, unit=unit, step=s.id, message=result.error[-300:]))
        if closing:
            self._write(lambda: self.journal.record_outcomes(run.id, [{**c, "wave": pw.id, "batch": batch.id} for c in closing]))
        return failed, failed_step, False

    def _play_step(self, plan, pw, step: Step, units: list[str], *, undo: bool = False) -> PlayStep:  # noqa: ANN001
        action = step.undo if undo else step.do
        gates = () if undo else tuple(self._check_gate(g) for g in step.gates if g.kind in ("reconcile", "smoke"))
        common = {"step": step.id, "units": tuple(units), "phase": states.UNDO if undo else states.DO, "timeout": pw.timeout_for(step), "gates": gates}
        if action.kind == "playbook":
            return PlayStep(playbook=self.root / "playbooks" / action.playbook, vars=dict(action.vars), **common)
        if action.kind == "http":
            return PlayStep(http=HttpCheck(**action.http.model_dump()), **common)
        raise InvalidInput([Problem(str(plan.runbook.path), f"steps.{step.id}", f"a {action.kind} action cannot run inside a segment")])

    def _check_gate(self, gate) -> CheckGate:  # noqa: ANN001
        action = gate.reconcile if gate.kind == "reconcile" else gate.smoke
        if action.kind == "playbook":
            return CheckGate(gate.kind, playbook=self.root / "playbooks" / action.playbook, vars=dict(action.vars))
        return CheckGate(gate.kind, http=HttpCheck(**action.http.model_dump()))

    # --- undo ---------------------------------------------------------------------------------

    def _undo(self, run: Run, plan, pw, batch, units: Sequence[str], state, *, label: str) -> None:  # noqa: ANN001
        """Undo, in reverse step order, every step the units attempted; one invocation."""
        wanted: dict[str, list[str]] = {}
        for step in reversed(plan.steps):
            if step.undo is None:
                continue
            who = [u for u in units if (u, step.id) in state and state[(u, step.id)].status in UNDO_CANDIDATES]
            if who:
                wanted[step.id] = who
        if not wanted:
            return
        by_id = {s.id: s for s in plan.steps}
        steps = [self._play_step(plan, pw, by_id[sid], who, undo=True) for sid, who in wanted.items()]
        groups: dict[tuple[str, ...], list[str]] = {}
        for unit in units:
            key = tuple(sid for sid, who in wanted.items() if unit in who)
            if key:
                groups.setdefault(key, []).append(unit)
        for step_ids, group in groups.items():
            self._write(lambda: self.journal.record_intent(run.id, wave=pw.id, batch=batch.id, units=group, steps=list(step_ids), phase=states.UNDO))
        self.report(Progress("undo", run.id, states.UNDOING, wave=pw.id, batch=batch.id, message=f"{label}: {', '.join(sorted(set(units) & {u for w in wanted.values() for u in w}))}"))
        failures: list[str] = []
        reported: set[tuple[str, str]] = set()

        def on_outcomes(outcomes: list[Outcome]) -> None:
            reported.update((o.unit, o.step) for o in outcomes)
            self._write(lambda: self.journal.record_outcomes(run.id, [
                {"unit": o.unit, "step": o.step, "status": states.UNDONE if o.ok else states.UNDO_FAILED, "wave": pw.id, "batch": batch.id,
                 "detail": {"message": o.message, "task": o.task}} for o in outcomes]))
            for o in outcomes:
                if not o.ok:
                    failures.append(f"{o.unit}/{o.step}: {o.message}")
                self.report(Progress("undo", run.id, states.UNDONE if o.ok else states.UNDO_FAILED, wave=pw.id, batch=batch.id, unit=o.unit, step=o.step, message=o.message))

        result = self._invoke(run, batch, "undo", steps, lambda o: on_outcomes([o]), on_outcomes)
        if result.status == "canceled" or self.cancelled.is_set():
            raise Interrupted(f"run {run.id} interrupted while undoing batch {batch.id}; `cutover resume {run.id}` or `cutover rollback` continues")
        unreported = [(u, sid) for sid, who in wanted.items() for u in who if (u, sid) not in reported]
        if unreported:
            self._write(lambda: self.journal.record_outcomes(run.id, [{"unit": u, "step": sid, "status": states.UNDO_FAILED, "wave": pw.id, "batch": batch.id,
                                                                      "detail": {"message": "not undone: " + (result.error or "the unit failed an earlier undo")[-2000:]}}
                                                                     for u, sid in unreported]))
            failures += [f"{u}/{sid}: not undone" for u, sid in unreported]
        if failures:
            self._status(run.id, states.ROLLBACK_FAILED, reason="; ".join(failures)[:2000])
            raise RollbackFailed(f"run {run.id}: rollback failed in batch {batch.id}: {'; '.join(failures)[:500]}; a person must act, then `cutover rollback {run.id}`")

    # --- plumbing -----------------------------------------------------------------------------

    def _invoke(self, run: Run, batch, name: str, steps: list[PlayStep], on_outcome, on_outcomes=None, failure_budget: int | None = None):  # noqa: ANN001, ANN202
        n = 1
        while (self.run_dir / batch.id / f"{name}-{n}").exists():
            n += 1
        private = self.run_dir / batch.id / f"{name}-{n}"
        private.mkdir(parents=True)
        # The estate's own dynamic inventory, so that its group_vars/ and inventory_dir are what its
        # playbooks expect; a generated copy only for an estate without the script.
        inventory = self.estate.root / "inventory.py"
        if not os.access(inventory, os.X_OK):
            inventory = write_inventory(self.dynamic_inventory, private / "inventory.json")
        action = AnsibleAction(inventory=inventory, strategy=self.action.strategy, check_mode=self.action.check_mode, forks=self.action.forks)
        limit = sorted({u for s in steps for u in s.units})
        self.invocations += 1
        return action.run(steps, private_data_dir=private / "runner", limit=limit, on_outcome=on_outcome, on_outcomes=on_outcomes, cancel=self.cancelled.is_set,
                          failure_budget=failure_budget)

    def _journal_intent(self, run: Run, pw, batch, units: list[str], steps: list[str]) -> None:  # noqa: ANN001
        self._write(lambda: self.journal.record_intent(run.id, wave=pw.id, batch=batch.id, units=units, steps=steps, phase=states.DO))

    def _write(self, fn: Callable[[], Any]) -> Any:
        """One journal transaction, timed (the benchmark's write rate)."""
        started = time.perf_counter()
        try:
            result = fn()
        finally:
            self.stats.writes += 1
            self.stats.seconds += time.perf_counter() - started
        self.stats.records += len(result) if isinstance(result, list) else 1
        return result

    def _status(self, run_id: str, status: str, *, reason: str | None = None, detail: dict | None = None) -> None:
        current = self.journal.get_run(run_id, with_plan=False).status
        if current == status and status != states.RUNNING:
            return
        self._write(lambda: self.journal.set_run_status(run_id, status, actor=self.actor, reason=reason, detail=detail))

    def _checkpoint(self, run: Run) -> None:
        """Between segments: still holding the lock, not aborted, not cancelled."""
        self.lock.ensure_held()
        if self.cancelled.is_set():
            raise Interrupted(f"run {run.id} interrupted; `cutover resume {run.id}` continues")
        if self.journal.get_run(run.id, with_plan=False).status == states.ABORTED:
            raise Aborted(f"run {run.id} was aborted")

    def _out(self, run_id: str, state) -> set[str]:  # noqa: ANN001
        """The run's units that are out: a step failed or undone, or a check gate failed (since
        the unit was last retried). One journal read: callers take it once per decision."""
        return {u for (u, _), s in state.items() if s.status in OUT_STATUSES} | self.journal.failed_gate_units(run_id)

    def _needs_undo(self, state, unit: str, plan) -> bool:  # noqa: ANN001
        return any((unit, s.id) in state and state[(unit, s.id)].status in UNDO_CANDIDATES for s in plan.steps if s.undo is not None)

    def _finished(self, run_id: str, state, units: list[str], plan) -> bool:  # noqa: ANN001
        """Every unit has all steps done (check gates passed), or is out with nothing left to undo."""
        out, passed = self._out(run_id, state), self.journal.passed_gates(run_id)
        return all(all(_complete(state, passed, u, s) for s in plan.steps) or (u in out and not self._needs_undo(state, u, plan))
                   for u in units)


class _Rejected(Exception):
    def __init__(self, gate: str, reason: str):
        self.gate, self.reason = gate, reason


def _complete(state, passed: set[tuple[str, str, str]], unit: str, step: Step) -> bool:  # noqa: ANN001
    """Done, and every check gate of the step passed for the unit."""
    return _done(state, unit, step.id) and all((unit, step.id, g.kind) in passed for g in step.gates if g.kind in ("reconcile", "smoke"))


def _done(state, unit: str, step: str) -> bool:  # noqa: ANN001
    return (unit, step) in state and state[(unit, step)].status == states.DONE


def _need_reason(reason: str | None) -> None:
    if not reason or not reason.strip():
        raise InvalidInput([Problem("--reason", "", "a non-empty reason is required")])


# --- status ---------------------------------------------------------------------------------


def unit_status(steps: Iterable[str], state, unit: str, gate_failed: bool) -> str:  # noqa: ANN001
    statuses = [state[(unit, s)].status if (unit, s) in state else None for s in steps]
    if any(s in (states.UNDO_FAILED,) for s in statuses):
        return "rollback_failed"
    if any(s == states.UNDOING for s in statuses):
        return "undoing"
    if any(s == states.UNDONE for s in statuses):
        return "rolled_back"
    if any(s == states.FAILED for s in statuses) or gate_failed:
        return "failed"
    if statuses and all(s == states.DONE for s in statuses):
        return "done"
    if any(s is not None for s in statuses):
        return "running" if any(s == states.STARTED for s in statuses) else "partial"
    return "pending"


def run_status(journal: Journal, run_id: str) -> dict[str, Any]:
    """Progress of a run per wave, batch and unit, from its stored plan and the journal."""
    run = journal.get_run(run_id)
    plan = run.plan or {}
    steps = [s["id"] for s in plan.get("steps", [])]
    state = journal.unit_step_state(run_id)
    gate_failed = journal.failed_gate_units(run_id)
    waves = []
    totals: dict[str, int] = {}
    for w in plan.get("waves", []):
        batches = []
        for b in w.get("batches", []):
            units = []
            for u in b["units"]:
                status = unit_status(steps, state, u, u in gate_failed)
                totals[status] = totals.get(status, 0) + 1
                units.append({"unit": u, "status": status, "steps": {s: state[(u, s)].status for s in steps if (u, s) in state}})
            counts: dict[str, int] = {}
            for u in units:
                counts[u["status"]] = counts.get(u["status"], 0) + 1
            batches.append({"id": b["id"], "units": units, "counts": counts})
        waves.append({"id": w["id"], "batches": batches, "blocked": [x["code"] for x in w.get("blocked", [])]})
    approvals = [a.as_dict() for a in journal.approvals(run_id)]
    return {"run": run.as_dict() | {"plan": None}, "steps": steps, "totals": totals, "waves": waves, "approvals": approvals}
