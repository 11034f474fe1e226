"""`cutover plan RUNBOOK`: what a runbook will do to the estate, before anything runs."""

from __future__ import annotations

from pathlib import Path

import click

from cutover.cli.context import Session, pass_session
from cutover.errors import InvalidInput, Problem


def resolve_runbook_path(session: Session, given: str) -> Path:
    """As given (relative to the current folder), else relative to the project root, else
    `runbooks/<given>.yml` under the root."""
    for candidate in (Path(given), session.root / given, session.root / "runbooks" / f"{given}.yml"):
        if candidate.is_file():
            return candidate
    return Path(given)


@click.command()
@click.argument("runbook")
@click.option("--wave", "wave_id", default=None, help="Only this wave, with every batch's units.")
@click.option("--unit", "unit_code", default=None, help="Only this unit: its wave, batch and steps.")
@pass_session
def plan(session: Session, runbook: str, wave_id: str | None, unit_code: str | None) -> None:
    """Compile RUNBOOK (a file under runbooks/) against the estate of --env and show the plan:
    per wave its units, batches, window, deadline, blocked units and forecast.

    Invalid runbooks exit 2 with every problem and its key path; nothing runs.
    """
    from cutover.plan import compile_plan
    from cutover.runbook import load_runbook

    if wave_id and unit_code:
        raise InvalidInput([Problem("--wave/--unit", "", "give --wave or --unit, not both")])
    estate = session.estate
    book = load_runbook(resolve_runbook_path(session, runbook), estate, session.root)
    compiled = compile_plan(estate, book)
    if unit_code:
        _show_unit(session, compiled, unit_code)
    elif wave_id:
        _show_wave(session, compiled, compiled.wave(wave_id), full=True)
    else:
        _show_plan(session, compiled)


def _show_plan(session: Session, compiled) -> None:  # noqa: ANN001 - Plan, imported lazily
    if session.output == "json":
        session.emit_json(compiled.to_dict())
        return
    rb = compiled.runbook
    summary = compiled.to_dict()["summary"]
    needs = " (requires assigned identifier codes)" if rb.requires.identifier_code else ""
    session.say(f"plan {rb.name} on {compiled.env}: system {rb.system}{needs}, on failure {rb.on_failure}")
    session.say(
        f"{summary['units']} units in {summary['batches']} batches over {summary['waves']} waves; "
        f"{summary['blocked']} blocked; {summary['outside']} units of the estate outside this runbook"
    )
    session.say(f"steps: {' → '.join(_step_label(s) for s in compiled.steps)}")
    rows = []
    for w in compiled.waves:
        fc = w.forecast
        verdict = "—" if fc is None or fc.fits is None else ("nothing to run" if not fc.batches else "fits" if fc.fits else "LATE")
        finish = fc.finish.isoformat() if fc and fc.finish else ""
        rows.append(
            [
                w.id,
                len(w.units),
                len(w.batches),
                w.batch_size,
                f"{w.window.not_before} → {w.window.deadline} {w.window.hours}",
                len(w.blocked),
                f"{verdict} {finish}".strip(),
            ]
        )
    session.table("waves", ["wave", "units", "batches", "batch size", "window (deadline)", "blocked", "forecast"], rows)
    for w in compiled.waves:
        if w.forecast and w.forecast.note:
            session.say(f"{w.id}: forecast ({w.forecast.source}): {w.forecast.note}")
    blocked = [(w.id, b) for w in compiled.waves for b in w.blocked]
    if blocked:
        session.table(
            f"{len(blocked)} blocked units",
            ["wave", "unit", "why"],
            [[wave_id, b.code, compact_reasons(b.reasons)] for wave_id, b in blocked],
        )
    for g in compiled.final_gates:
        parts = []
        if g.approval:
            parts.append(f"approval {g.approval.gate}" + (f" by {g.deadline}" if g.deadline else ""))
        if g.not_before:
            parts.append(f"not before {g.not_before}")
        session.say(f"final gate {g.id}: {', '.join(parts)}")
    for c in compiled.conflicts:
        session.say(f"conflict: {c}")
    session.say(f"plan hash {compiled.hash}")


def _show_wave(session: Session, compiled, wave, *, full: bool) -> None:  # noqa: ANN001
    if session.output == "json":
        session.emit_json({"plan_hash": compiled.hash, "wave": wave.to_dict()})
        return
    w = wave
    session.say(f"wave {w.id}: {w.description}".rstrip(": "))
    session.say(f"window {w.window.not_before} → {w.window.deadline}, hours {w.window.hours} (Asia/Ho_Chi_Minh)")
    session.say(
        f"{len(w.units)} units in {len(w.batches)} batches of up to {w.batch_size} (batch: {w.batch_spec}), "
        f"at most {w.max_parallel_per_site} per site, max failed {w.max_failed}"
        + (f", timeouts x{w.timeout_factor:g}" if w.timeout_factor != 1 else "")
    )
    if w.approve_before:
        session.say(f"approval before the wave: {w.approve_before}")
    if w.approve_after:
        session.say(f"approval after the wave: {w.approve_after}")
    rows = [[b.id, len(b.units), w.max_failed_for(b), ", ".join(f"{s} {n}" for s, n in b.sites), " ".join(b.units)] for b in w.batches]
    session.table(f"batches of {w.id}", ["batch", "units", "max failed", "per site", "unit codes"], rows)
    if w.blocked:
        session.table(f"blocked in {w.id}", ["unit", "why"], [[b.code, compact_reasons(b.reasons)] for b in w.blocked])
    if w.forecast:
        session.say(f"forecast ({w.forecast.source}): {w.forecast.note}")


def _show_unit(session: Session, compiled, code: str) -> None:  # noqa: ANN001
    wave, batch, steps = compiled.unit(code)
    blocked = next((b for b in wave.blocked if b.code == code), None)
    if session.output == "json":
        session.emit_json(
            {
                "plan_hash": compiled.hash,
                "unit": code,
                "wave": wave.id,
                "batch": batch.id if batch else None,
                "blocked": list(blocked.reasons) if blocked else [],
                "steps": [
                    {**s.model_dump(mode="json", exclude_none=True), "timeout_in_wave": wave.timeout_for(s), "changes_state": s.changes_state}
                    for s in steps
                ],
            }
        )
        return
    where = f"batch {batch.id}" if batch else "blocked"
    session.say(f"{code}: wave {wave.id}, {where}")
    if blocked:
        for r in blocked.reasons:
            session.say(f"  blocked: {r}")
    rows = [[s.id, _action_label(s.do), _action_label(s.undo) if s.undo else ("(read-only)" if not s.changes_state else ""), ", ".join(_gate_label(g) for g in s.gates), wave.timeout_for(s), s.retries] for s in steps]
    session.table(f"steps for {code}", ["step", "do", "undo", "gates", "timeout s", "retries"], rows)


def compact_reasons(reasons: tuple[str, ...] | list[str]) -> str:
    """Reasons for a table cell: the missing partition rules folded into one entry."""
    prefix = "no partition rule for split old unit "
    rules = [r.removeprefix(prefix) for r in reasons if r.startswith(prefix)]
    others = [r for r in reasons if not r.startswith(prefix)]
    parts = ([f"no partition rule for split old unit(s) {'; '.join(rules)}"] if rules else []) + others
    return " | ".join(parts)


def _action_label(action) -> str:  # noqa: ANN001
    if action is None:
        return ""
    if action.kind == "playbook":
        return action.playbook
    if action.kind == "http":
        return f"http {action.http.url}"
    if action.kind == "approval":
        return f"approval {action.approval.gate}"
    return f"stack {action.stack.env}"


def _gate_label(gate) -> str:  # noqa: ANN001
    if gate.kind == "reconcile":
        return f"reconcile {gate.reconcile.playbook}"
    if gate.kind == "smoke":
        return f"smoke {_action_label(gate.smoke)}"
    if gate.kind == "approval":
        return f"approval {gate.approval.gate}"
    return f"failure threshold {gate.failure_threshold}"


def _step_label(step) -> str:  # noqa: ANN001
    gates = "".join(f" [{_gate_label(g)}]" for g in step.gates)
    return f"{step.id}{gates}"
