"""`cutover run | status | resume | rollback | abort | approve | unlock`: carry out runbooks.

Thin: parse, open the journal, call `cutover.engine.Conductor`, render its progress (a live
rich display on a terminal, plain lines otherwise). SIGINT/SIGTERM cancel the running
ansible-runner invocation; `cutover resume RUN` continues from the journal.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from datetime import datetime

import click

from cutover.cli.context import Session, pass_session

STRATEGY = click.option("--strategy", type=click.Choice(["mitogen", "linear"]), default=None,
                        help="Ansible strategy.  [default: mitogen when installed, else linear]")
NON_INTERACTIVE = click.option("--non-interactive", is_flag=True, help="Never prompt or wait: exit 4 at an approval or a closed window.")


class ProgressView:
    """Renders `cutover.engine.Progress` events: rich on a terminal, one plain line each otherwise."""

    STYLE = {"failed": "bold red", "rollback_failed": "bold red", "undo_failed": "bold red", "undone": "yellow", "undoing": "yellow",
             "rolling_back": "yellow", "waiting": "cyan", "requested": "cyan", "done": "green", "passed": "green", "succeeded": "bold green"}

    def __init__(self, session: Session, live: bool):
        self.session = session
        self.live = live and session.output == "text"
        self.progress = None
        self.tasks: dict[str, int] = {}

    @contextlib.contextmanager
    def showing(self) -> Iterator["ProgressView"]:
        if not self.live:
            yield self
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.session.console)
        with self.progress:
            yield self
        self.progress = None

    def __call__(self, event) -> None:  # noqa: ANN001 - cutover.engine.Progress
        if self.session.output == "json":
            return
        where = "/".join(x for x in (event.wave, event.batch) if x)
        subject = " ".join(x for x in (event.unit, event.step) if x)
        text = f"{event.kind:<8} {event.status:<13} {where:<18} {subject} {event.message}".rstrip()
        if self.progress is None:
            click.echo(f"{datetime.now():%H:%M:%S} {text}")
            return
        if event.kind == "batch" and event.status == "running" and event.batch:
            self.tasks[event.batch] = self.progress.add_task(f"{event.batch}", total=event.total)
        if event.kind in ("step", "gate") and event.batch in self.tasks and event.status in ("done", "failed", "passed"):
            self.progress.advance(self.tasks[event.batch])
            if event.status != "failed":
                return
        if event.kind == "batch" and event.status == "done" and event.batch in self.tasks:
            self.progress.update(self.tasks[event.batch], total=self.progress.tasks[self.tasks[event.batch]].completed)
        style = self.STYLE.get(event.status, "")
        self.progress.console.print(f"[{style}]{text}[/]" if style else text, markup=bool(style), highlight=False)


@contextlib.contextmanager
def cancelling(conductor) -> Iterator[None]:  # noqa: ANN001
    """SIGINT/SIGTERM set the conductor's cancel flag: the running invocation is cancelled."""
    def handler(signum, frame) -> None:  # noqa: ANN001
        conductor.cancelled.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _conductor(session: Session, journal, *, strategy: str | None, non_interactive: bool, view: ProgressView):  # noqa: ANN001, ANN202
    from cutover.engine import Conductor, Options

    options = Options(strategy=strategy, interactive=session.interactive and not non_interactive)
    return Conductor(journal, root=session.root, estate=session.estate, actor=session.actor, options=options, work_dir=session.work_dir, report=view)


def _open(session: Session):  # noqa: ANN202
    from cutover.journal import open_journal

    session.work_dir.mkdir(parents=True, exist_ok=True)
    return open_journal(session.state)


def _finish(session: Session, run, conductor) -> None:  # noqa: ANN001
    if session.output == "json":
        session.emit_json({"run": run.as_dict(), "journal_writes": conductor.stats.writes, "journal_records": conductor.stats.records,
                           "journal_seconds": round(conductor.stats.seconds, 4),
                           "invocations": conductor.invocations})
    else:
        session.say(f"run {run.id}: {run.status}")


@click.command()
@click.argument("runbook")
@click.option("--wave", default=None, help="Only this wave.")
@click.option("--units", "units", multiple=True, help="Only these units (codes; repeat or comma-separate).")
@click.option("--dry-run", is_flag=True, help="Run Ansible in check mode: change nothing.")
@NON_INTERACTIVE
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@STRATEGY
@click.option("--ignore-window", is_flag=True, help="Start waves outside their calendar window (needs --reason).")
@click.option("--reason", default=None, help="Why (with --ignore-window).")
@pass_session
def run(session: Session, runbook: str, wave: str | None, units: tuple[str, ...], dry_run: bool, non_interactive: bool, yes: bool,
        strategy: str | None, ignore_window: bool, reason: str | None) -> None:
    """Start a run of RUNBOOK (a name under runbooks/ or a path) in the session's env."""
    from cutover.engine import load_plan
    from cutover.errors import InvalidInput, Problem

    codes = [c.strip() for item in units for c in item.split(",") if c.strip()]
    if ignore_window and not (reason or "").strip():
        raise InvalidInput([Problem("--reason", "", "--ignore-window needs a reason")])
    if session.interactive and not (yes or non_interactive or dry_run):
        plan = load_plan(session.root, session.estate, runbook)
        count = sum(len([u for u in b.units if not codes or u in codes]) for w in plan.waves if wave in (None, w.id) for b in w.batches)
        click.confirm(f"Cut over {count} unit(s) of {plan.runbook.name} in {session.env} (plan {plan.hash[:12]})?", abort=True)
    view = ProgressView(session, live=session.interactive)
    with _open(session) as journal:
        conductor = _conductor(session, journal, strategy=strategy, non_interactive=non_interactive, view=view)
        with cancelling(conductor), view.showing():
            result = conductor.start(runbook, wave=wave, units=codes, dry_run=dry_run, ignore_window=reason if ignore_window else None)
        _finish(session, result, conductor)


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--replan", is_flag=True, help="Accept a changed plan (needs --reason).")
@click.option("--reason", default=None)
@NON_INTERACTIVE
@STRATEGY
@pass_session
def resume(session: Session, run_id: str, replan: bool, reason: str | None, non_interactive: bool, strategy: str | None) -> None:
    """Continue RUN: done unit-steps are skipped, interrupted ones run again."""
    from cutover.errors import InvalidInput, Problem

    if replan and not (reason or "").strip():
        raise InvalidInput([Problem("--reason", "", "--replan needs a reason")])
    view = ProgressView(session, live=session.interactive)
    with _open(session) as journal:
        conductor = _conductor(session, journal, strategy=strategy, non_interactive=non_interactive, view=view)
        with cancelling(conductor), view.showing():
            result = conductor.resume(run_id, replan=reason if replan else None)
        _finish(session, result, conductor)


@click.command()
@click.argument("run_id", metavar="RUN", required=False)
@click.option("--runbook", default=None, help="Without RUN: the latest run of this runbook.")
@pass_session
def status(session: Session, run_id: str | None, runbook: str | None) -> None:
    """Progress of RUN per wave, batch and unit (without RUN: the latest runs)."""
    from cutover.engine import run_status

    with _open(session) as journal:
        if run_id is None and runbook is not None:
            latest = journal.latest_run(runbook, session.env)
            run_id = latest.id if latest else None
        if run_id is None:
            runs = journal.runs(env=session.env, limit=20)
            if session.output == "json":
                session.emit_json({"runs": [r.as_dict() for r in runs]})
            else:
                session.table("runs", ["run", "runbook", "status", "started by", "updated"],
                              [[r.id, r.runbook, r.status, r.started_by, f"{r.updated_at:%Y-%m-%d %H:%M:%S}"] for r in runs])
            return
        report = run_status(journal, run_id)
    if session.output == "json":
        session.emit_json(report)
        return
    r = report["run"]
    session.say(f"run {r['id']}: {r['status']} (runbook {r['runbook']}, env {r['env']}, started by {r['started_by']}, plan {r['plan_hash'][:12]})")
    session.say("units: " + ", ".join(f"{k} {v}" for k, v in sorted(report["totals"].items())))
    rows = [[w["id"], b["id"], u["unit"], u["status"], " ".join(f"{s}:{st}" for s, st in u["steps"].items())]
            for w in report["waves"] for b in w["batches"] for u in b["units"]]
    session.table(None, ["wave", "batch", "unit", "status", "steps"], rows)
    for a in report["approvals"]:
        session.say(f"approval {a['gate']}: {a['status']}" + (f" by {a['approved_by']} ({a['reason']})" if a.get("approved_by") else ""))


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--wave", default=None, help="Only this wave.")
@click.option("--unit", default=None, help="Only this unit.")
@click.option("--reason", required=True)
@STRATEGY
@pass_session
def rollback(session: Session, run_id: str, wave: str | None, unit: str | None, reason: str, strategy: str | None) -> None:
    """Undo what RUN did (all, one wave or one unit), last batch first, steps in reverse order."""
    from cutover.errors import InvalidInput, Problem

    if wave and unit:
        raise InvalidInput([Problem("--wave/--unit", "", "give --wave or --unit, not both")])
    view = ProgressView(session, live=session.interactive)
    with _open(session) as journal:
        conductor = _conductor(session, journal, strategy=strategy, non_interactive=True, view=view)
        with cancelling(conductor), view.showing():
            result = conductor.rollback(run_id, reason=reason, wave=wave, unit=unit)
        _finish(session, result, conductor)


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reason", required=True)
@pass_session
def abort(session: Session, run_id: str, reason: str) -> None:
    """Mark RUN aborted (a running process stops at its next segment; nothing is undone)."""
    from cutover.engine import Conductor

    with _open(session) as journal:
        result = Conductor(journal, root=session.root, estate=None, actor=session.actor).abort(run_id, reason=reason)  # type: ignore[arg-type]
    if session.output == "json":
        session.emit_json({"run": result.as_dict()})
    else:
        session.say(f"run {result.id}: {result.status}")


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--gate", required=True, help="The approval gate (as requested, e.g. pilot-signoff or pilot-signoff@pilot-1).")
@click.option("--reason", required=True)
@click.option("--reject", is_flag=True, help="Reject instead: the waiting batch is rolled back.")
@pass_session
def approve(session: Session, run_id: str, gate: str, reason: str, reject: bool) -> None:
    """Approve a gate of RUN (four eyes: not by the run's starter)."""
    from cutover.engine import Conductor

    with _open(session) as journal:
        target = Conductor(journal, root=session.root, estate=None, actor=session.actor).approve(run_id, gate, reason=reason, approved=not reject)  # type: ignore[arg-type]
    if session.output == "json":
        session.emit_json({"run": run_id, "gate": target, "approved": not reject, "by": session.actor})
    else:
        session.say(f"run {run_id}: {target} {'rejected' if reject else 'approved'} by {session.actor}; `cutover resume {run_id}` if the run is not waiting in a terminal")


@click.command()
@click.option("--runbook", required=True)
@click.option("--reason", required=True)
@click.option("--force", is_flag=True, help="Break a lock whose holder still looks alive.")
@pass_session
def unlock(session: Session, runbook: str, reason: str, force: bool) -> None:
    """Break the run lock of RUNBOOK in this env (audited in the journal's events)."""
    from cutover.journal import unlock as break_lock

    session.work_dir.mkdir(parents=True, exist_ok=True)
    holder = break_lock(session.state, runbook, session.env, actor=session.actor, reason=reason, force=force)
    if session.output == "json":
        session.emit_json({"released": holder.as_dict() if holder else None})
    else:
        session.say(f"lock of {runbook} in {session.env}: " + (f"broken (was {holder.describe()})" if holder else "was not held"))


__all__ = ["abort", "approve", "resume", "rollback", "run", "status", "unlock"]
