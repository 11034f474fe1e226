"""The auditors' report: one self-contained HTML file for a run (jinja2, no external assets).

Built from the journal alone: the run's summary, a timeline (SVG) of its waves and batches,
a per-unit table (status, rows and files moved, reconciliation evidence, quarantined
records), approvals (who, when, why), rollbacks and lock breaks with their reasons, and the
audit chain's status.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from cutover.audit import Verification, atomic_write

# Events worth an auditor's eye, with a reason when the command required one.
NOTABLE_EVENTS = ("run.status", "run.replanned", "lock.broken", "lock.taken_over", "window.ignored", "rollback.requested", "run.aborted")


@dataclass
class UnitRow:
    unit: str
    wave: str = ""
    batch: str = ""
    status: str = "pending"
    steps: dict[str, str] = field(default_factory=dict)
    rows_moved: int | None = None
    files_moved: int | None = None
    quarantined: int | None = None
    reconciled: str = ""
    evidence_digest: str = ""
    freeze_seconds: float | None = None


@dataclass
class Bar:
    label: str
    wave: str
    start: float
    end: float
    status: str


def _totals(evidence: Any) -> dict[str, Any] | None:
    """The reconcile evidence's counts, wherever the gate's tasks put them (`totals` or flat)."""
    if not isinstance(evidence, dict):
        return None
    if isinstance(evidence.get("totals"), dict):
        return evidence["totals"]
    if any(k in evidence for k in ("rows", "files", "quarantined")):
        return evidence
    for value in evidence.values():
        found = _totals(value)
        if found is not None:
            return found
    return None


def _num(evidence: dict[str, Any] | None, *keys: str) -> int | None:
    evidence = _totals(evidence)
    if not evidence:
        return None
    for k in keys:
        v = evidence.get(k)
        if isinstance(v, (int, float)):
            return int(v)
        if isinstance(v, dict):
            total = sum(x for x in v.values() if isinstance(x, (int, float)))
            return int(total)
    return None


def unit_status(steps: dict[str, str]) -> str:
    values = set(steps.values())
    for status in ("undo_failed", "failed", "undoing", "started"):
        if status in values:
            return status
    if values and values <= {"undone", "skipped"} and "undone" in values:
        return "rolled back"
    if values and values <= {"done", "skipped"}:
        return "done"
    return "pending" if not values else ", ".join(sorted(values))


def build_model(journal: Any, run_id: str, audit: Verification | None) -> dict[str, Any]:
    run = journal.get_run(run_id)
    states = journal.unit_step_state(run_id)
    attempts = journal.attempts(run_id)
    gates = journal.gate_results(run_id)
    approvals = journal.approvals(run_id)
    events = journal.events(run_id=run_id)
    plan = run.plan or {}

    units: dict[str, UnitRow] = {}
    step_order = [s.get("id") for s in plan.get("steps", [])] if isinstance(plan.get("steps"), list) else []
    for (unit, step), st in states.items():
        row = units.setdefault(unit, UnitRow(unit, st.wave, st.batch))
        row.steps[step] = st.status
        if step not in step_order:
            step_order.append(step)
    for row in units.values():
        row.status = unit_status(row.steps)
    for g in gates:
        if not g.unit or g.unit not in units:
            continue
        row = units[g.unit]
        if g.gate.startswith("reconcile") or g.gate == "reconcile":
            row.reconciled = g.status
            row.rows_moved = _num(g.evidence, "rows", "rows_moved", "row_counts")
            row.files_moved = _num(g.evidence, "files", "files_moved", "file_counts")
            row.quarantined = _num(g.evidence, "quarantined", "quarantine")
            row.evidence_digest = (g.evidence or {}).get("digest", "") if g.evidence else ""
    # Freeze time: from the freeze task's start to the switch task's end (the tasks' own
    # timestamps when the step reported them; else the attempt's).
    freeze_at: dict[str, float] = {}
    for a in attempts:
        detail = a.detail or {}
        if a.phase == "do" and a.step == "freeze" and a.status == "done":
            freeze_at[a.unit] = float(detail.get("started") or a.started_at.timestamp())
        if a.phase == "do" and a.step == "switch" and a.status == "done" and a.unit in freeze_at and a.unit in units:
            ended = float(detail.get("finished") or (a.ended_at or a.started_at).timestamp())
            units[a.unit].freeze_seconds = round(ended - freeze_at[a.unit], 2)

    # Timeline: one bar per batch (first attempt start to last attempt end).
    spans: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    batch_status: dict[tuple[str, str], set[str]] = defaultdict(set)
    for a in attempts:
        key = (a.wave, a.batch)
        spans[key].append(a.started_at)
        if a.ended_at:
            spans[key].append(a.ended_at)
        batch_status[key].add(a.status)
    bars: list[Bar] = []
    if spans:
        t0 = min(min(v) for v in spans.values())
        for (wave, batch), times in spans.items():
            s = batch_status[(wave, batch)]
            status = "failed" if s & {"failed", "undo_failed"} else ("rolled back" if "undone" in s else "done")
            bars.append(Bar(batch, wave, (min(times) - t0).total_seconds(), (max(times) - t0).total_seconds(), status))
        bars.sort(key=lambda b: (b.start, b.label))
    total = max((b.end for b in bars), default=0.0) or 1.0
    waves = list(dict.fromkeys(b.wave for b in bars))

    notable = []
    for e in events:
        data = e.data or {}
        routine = e.kind == "run.status" and not data.get("reason") and data.get("to") in ("running", "succeeded", "waiting")
        if not routine and (e.kind in NOTABLE_EVENTS or e.kind.startswith(("lock.", "rollback", "abort"))):
            notable.append({"at": e.at, "actor": e.actor, "kind": e.kind, "reason": (e.data or {}).get("reason", ""), "data": e.data})
    counts: dict[str, int] = defaultdict(int)
    for row in units.values():
        counts[row.status] += 1
    freezes = sorted(r.freeze_seconds for r in units.values() if r.freeze_seconds is not None)
    return {
        "run": run,
        "plan_waves": [w.get("id") for w in plan.get("waves", [])] if isinstance(plan.get("waves"), list) else waves,
        "units": sorted(units.values(), key=lambda r: (r.wave, r.batch, r.unit)),
        "steps": step_order,
        "counts": dict(counts),
        "rows_moved": sum(r.rows_moved or 0 for r in units.values()),
        "files_moved": sum(r.files_moved or 0 for r in units.values()),
        "quarantined": sum(r.quarantined or 0 for r in units.values()),
        "freeze_median": freezes[len(freezes) // 2] if freezes else None,
        "freeze_max": freezes[-1] if freezes else None,
        "bars": bars,
        "waves": waves,
        "timeline_seconds": total,
        "approvals": approvals,
        "notable": notable,
        "audit": audit,
        "generated_at": datetime.now().astimezone(),
    }


def render(model: dict[str, Any]) -> str:
    env = Environment(loader=PackageLoader("cutover", "templates"), autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**model)


def write_report(journal: Any, run_id: str, out: Path, audit: Verification | None) -> dict[str, Any]:
    model = build_model(journal, run_id, audit)
    atomic_write(out, render(model).encode("utf-8"))
    return {"run": run_id, "out": str(out), "units": len(model["units"]), "approvals": len(model["approvals"])}
