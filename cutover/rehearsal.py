"""A rehearsal's summary: what a run moved, whether it reconciled, how long each wave and each
unit's write outage (freeze -> switch) took.

Reads the run's journal (units, steps, attempts with their times, per wave) and the evidence
the migration roles leave per unit in the lab's migration folder
(`<lab>/migrations/<unit>/`: manifest.json, reconcile.json, freeze.json, switch.json), plus,
when given, a load generator's record of acknowledged writes, checked against unified.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from cutover import states

MIGRATED_STEP = "switch"  # a unit whose switch is done (and not undone) is on unified


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def unit_evidence(migrations_dir: Path, unit: str) -> dict[str, Any]:
    folder = migrations_dir / unit
    manifest = _read(folder / "manifest.json") or {}
    reconcile = _read(folder / "reconcile.json")
    freeze, switch = _read(folder / "freeze.json"), _read(folder / "switch.json")
    frozen_at, switched_at = _at((freeze or {}).get("at")), _at((switch or {}).get("at"))
    totals = manifest.get("totals") or {}
    return {
        "rows": totals.get("rows", 0), "files": totals.get("files", 0), "bytes": totals.get("bytes", 0),
        "quarantined": totals.get("quarantined", 0),
        # a split old unit's unmatched records, per "<schema>.<table>/<old unit key>" (each of its
        # successors' manifests counts them: the run's total counts each old unit once)
        "quarantine_parts": {f"{manifest.get('site')}:{name}": v["count"] for name, v in (manifest.get("quarantine") or {}).items()},
        "reconciled": None if reconcile is None else bool(reconcile.get("equal")),
        "differences": (reconcile or {}).get("differences", []),
        "frozen_at": frozen_at.isoformat() if frozen_at else None,
        "switched_at": switched_at.isoformat() if switched_at else None,
        "freeze_s": (switched_at - frozen_at).total_seconds() if frozen_at and switched_at else None,
    }


def summarize(journal, run_id: str, lab, *, loadgen_out: Path | None = None) -> dict[str, Any]:  # noqa: ANN001
    """The summary of one run (see the module docstring); `lab` is a cutover.lab.Lab."""
    run = journal.get_run(run_id)
    plan = run.plan or {}
    migrations = Path(lab.dir) / "migrations"
    state = journal.unit_step_state(run_id)
    attempts = journal.attempts(run_id)
    by_unit: dict[str, dict[str, str]] = defaultdict(dict)
    for (unit, step), s in state.items():
        by_unit[unit][step] = s.status
    wave_of: dict[str, str] = {}
    waves = []
    for w in plan.get("waves", []):
        units = [u for b in w.get("batches", []) for u in b["units"]]
        for u in units:
            wave_of[u] = w["id"]
        times = [a for a in attempts if a.wave == w["id"]]
        started = min((a.started_at for a in times), default=None)
        ended = max((a.ended_at for a in times if a.ended_at), default=None)
        waves.append({"wave": w["id"], "units": len(units), "batches": len(w.get("batches", [])), "blocked": len(w.get("blocked", [])),
                      "started_at": started.isoformat() if started else None, "ended_at": ended.isoformat() if ended else None,
                      "seconds": (ended - started).total_seconds() if started and ended else 0.0})
    units = []
    for code in wave_of:
        steps = by_unit.get(code, {})
        evidence = unit_evidence(migrations, code)
        if steps.get(MIGRATED_STEP) == states.DONE:
            status = "migrated"
        elif any(s in (states.UNDONE, states.UNDOING) for s in steps.values()):
            status = "rolled_back"
        elif any(s in (states.FAILED, states.UNDO_FAILED) for s in steps.values()):
            status = "failed"
        elif steps:
            status = "in_progress"
        else:
            status = "not_started"
        if status != "migrated":
            evidence["freeze_s"] = None
        units.append({"unit": code, "wave": wave_of[code], "status": status, "steps": steps, **evidence})
    migrated = [u for u in units if u["status"] == "migrated"]
    freezes = [u for u in migrated if u["freeze_s"] is not None]
    longest = max(freezes, key=lambda u: u["freeze_s"], default=None)
    result: dict[str, Any] = {
        "run": run_id, "runbook": run.runbook, "env": run.env, "status": run.status, "plan_hash": run.plan_hash,
        "totals": {
            "units": len(units),
            "units_migrated": len(migrated),
            "units_rolled_back": sum(1 for u in units if u["status"] == "rolled_back"),
            "units_failed": sum(1 for u in units if u["status"] == "failed"),
            "rows": sum(u["rows"] for u in migrated),
            "files": sum(u["files"] for u in migrated),
            "bytes": sum(u["bytes"] for u in migrated),
            "quarantined": sum({k: n for u in migrated for k, n in u["quarantine_parts"].items()}.values()),
            "quarantine_in_unified": quarantine_in_unified(lab),
            "reconciled_equal": sum(1 for u in migrated if u["reconciled"]),
        },
        "freeze": {
            "units": len(freezes),
            "median_s": statistics.median([u["freeze_s"] for u in freezes]) if freezes else None,
            "max_s": longest["freeze_s"] if longest else None,
            "max_unit": longest["unit"] if longest else None,
        },
        "waves": waves,
        "units": units,
        "quarantine": quarantine_report(lab),
    }
    if loadgen_out is not None:
        result["writes"] = check_writes(lab, loadgen_out, {u["unit"] for u in migrated})
    return result


def _unified(lab):  # noqa: ANN001, ANN202
    from cutover.lab import connect

    return connect(lab.sites()["unified"])


def quarantine_in_unified(lab) -> int | None:  # noqa: ANN001
    try:
        with _unified(lab) as conn:
            return int(conn.execute("SELECT (SELECT count(*) FROM docs.quarantine) + (SELECT count(*) FROM procedures.quarantine)").fetchone()[0])
    except Exception:  # noqa: BLE001 - a stopped lab: the summary says "unknown"
        return None


def quarantine_report(lab) -> list[dict[str, Any]]:  # noqa: ANN001
    """What quarantine holds, per split old unit and table, with the reason: reported, never dropped."""
    try:
        with _unified(lab) as conn:
            rows = conn.execute(
                "SELECT 'docs', source_site, source_unit, table_name, count(*), min(reason) FROM docs.quarantine GROUP BY 1, 2, 3, 4 "
                "UNION ALL SELECT 'procedures', source_site, source_unit, table_name, count(*), min(reason) FROM procedures.quarantine GROUP BY 1, 2, 3, 4 "
                "ORDER BY 2, 3, 1, 4").fetchall()
    except Exception:  # noqa: BLE001
        return []
    return [{"system": s, "site": site, "old_unit": unit, "table": t, "records": int(n), "reason": reason} for s, site, unit, t, n, reason in rows]


def check_writes(lab, loadgen_out: Path, migrated: set[str]) -> dict[str, Any]:  # noqa: ANN001
    """Every write the load generator got acknowledged for a migrated unit is in unified."""
    from cutover.loadgen import errors_path, read_records, refused_path, verify_acknowledged

    acks = [r for r in read_records(loadgen_out) if r["unit"] in migrated]
    with _unified(lab) as conn:
        def existing(table: str, ids: list[str]) -> set[str]:
            found = conn.execute(f"SELECT id::text FROM {table} WHERE id = ANY(%s::uuid[])", [ids]).fetchall()
            return {r[0] for r in found}

        check = verify_acknowledged(acks, existing)
    out = check.as_dict()
    out["refused"] = len(read_records(refused_path(loadgen_out)))
    out["errors"] = len(read_records(errors_path(loadgen_out)))
    return out
