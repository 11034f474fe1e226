"""The fault matrix on the small lab (its own copy of the project, on 127.0.7.x): a failure
injected at each step and check gate of runbooks/document-management.yml (the lab's faults.yml,
`fail_step`, which fails the unit at the end of that step, its work done), for one unit of a
batch and for more units than the batch tolerates.

Expected per case:
- one unit (the batch tolerates it): that unit alone is rolled back, the run goes on and
  succeeds (exit 0); the batch's other units are migrated;
- more than `max_failed` (on_failure: rollback_batch): the whole batch is rolled back, its
  healthy unit too, and the run stops (exit 1).
Either way, for every rolled-back unit: unified holds none of its rows, files or quarantine
rows, its legacy data is byte-identical to before (a dump's hash), the front door serves it from
legacy and takes its writes again, and the document exchange routes it to legacy.

The results table is printed (pytest -s) and written to $CUTOVER_RESULTS_DIR/fault-matrix.md
when that is set; BENCHMARKS.md quotes it. About 8 minutes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from test_rehearsal import PROJECT, LabProject, exchange_site, http, lab_fixture, legacy_dump_digest, legacy_keys, unified_rows  # noqa: I001

pytestmark = pytest.mark.integration

POINTS = ["precheck", "pre_copy", "freeze", "export", "import", "reconcile", "switch", "smoke"]
# one unit per failure point in one batch (three former provinces, the split Cầu Ông Lãnh), and a bystander
ALONE = dict(zip(POINTS, ["phuong-sai-gon", "phuong-tan-dinh", "phuong-cau-ong-lanh", "xa-tru-van-tho",
                          "xa-bau-bang", "xa-long-dien", "xa-kim-long", "phuong-thoi-hoa"]))
BYSTANDER = "dac-khu-con-dao"
BATCH = ["phuong-sai-gon", "xa-long-dien", "phuong-tan-dinh"]  # the last one healthy
FAILING = BATCH[:2]
RESULTS: list[dict[str, str]] = []


def matrix_runbook(name: str, codes: list[str], max_failed: int) -> dict:
    runbook = yaml.safe_load((PROJECT / "runbooks" / "document-management.yml").read_text(encoding="utf-8"))
    runbook.update(name=name, description=f"fault matrix: {', '.join(codes)}", final_gates=[], on_failure="rollback_batch")
    runbook.pop("forecast", None)
    runbook["waves"] = [{
        "id": "matrix", "description": "the matrix's units", "select": {"codes": codes}, "batch": len(codes),
        "max_parallel_per_site": len(codes), "max_failed": max_failed,
        "window": {"not_before": "2025-06-16", "deadline": "2025-08-15", "hours": "00:00-23:59"},
    }]
    return runbook


@pytest.fixture(scope="module")
def matrix_lab() -> Iterator[LabProject]:
    runbooks = {"matrix-alone": matrix_runbook("matrix-alone", [*ALONE.values(), BYSTANDER], max_failed=len(ALONE)),
                "matrix-batch": matrix_runbook("matrix-batch", BATCH, max_failed=len(FAILING) - 1)}
    yield from lab_fixture("127.0.7.", runbooks)
    table = results_table()
    print("\n" + table)
    if os.environ.get("CUTOVER_RESULTS_DIR"):
        out = Path(os.environ["CUTOVER_RESULTS_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "fault-matrix.md").write_text(table + "\n", encoding="utf-8")


def results_table() -> str:
    lines = ["| failure at | units failing | exit | failed unit(s) | healthy unit(s) of the batch | legacy byte-identical | unified clean | routes to legacy |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['point']} | {r['case']} | {r['exit']} | {r['failed']} | {r['healthy']} | {r['legacy']} | {r['unified']} | {r['routes']} |" for r in RESULTS]
    return "\n".join(lines)


def unified_leftovers(project: LabProject, unit: str) -> dict[str, int]:
    """What unified still holds of the unit: rows, attachment files, quarantine rows of its old units."""
    from cutover.lab import UNIT_TABLES

    folder = project.lab_dir / "unified" / "files"
    files = [p for p in folder.rglob("*") if p.is_file() and f"/{unit}/" in str(p)] if folder.exists() else []
    with project.db("unified") as conn:
        quarantine = sum(conn.execute(f"SELECT count(*) FROM {s}.quarantine WHERE source_unit = ANY(%s)", [legacy_keys(project, unit)]).fetchone()[0]
                         for s in UNIT_TABLES)
    return {"rows": unified_rows(project, unit), "files": len(files), "quarantine": quarantine}


def served_by(project: LabProject, unit: str) -> str | None:
    _, headers, _ = http("GET", f"{project.front_door(unit)}/units/{unit}/documents?limit=1")
    return headers.get("x-cutover-backend")


def check_rolled_back(project: LabProject, unit: str, before: str) -> None:
    site = project.estate().units[unit].site
    assert unified_leftovers(project, unit) == {"rows": 0, "files": 0, "quarantine": 0}, unit
    assert legacy_dump_digest(project, unit) == before, f"{unit}: legacy data changed"
    assert served_by(project, unit) == f"legacy-{site}", unit
    assert exchange_site(project, unit) in (site, None), unit
    status, headers, body = http("POST", f"{project.front_door(unit)}/units/{unit}/documents", {"title": "written after the rollback"})
    assert status == 201 and headers.get("x-cutover-backend") == f"legacy-{site}", (unit, status, body)


def unit_statuses(project: LabProject, run_id: str) -> dict[str, str]:
    report = project.cli_json("status", run_id)
    return {u["unit"]: u["status"] for w in report["waves"] for b in w["batches"] for u in b["units"]}


def test_one_unit_failing_at_each_point_is_rolled_back_alone(matrix_lab: LabProject) -> None:
    project = matrix_lab
    before = {u: legacy_dump_digest(project, u) for u in ALONE.values()}
    project.set_faults({"fail_step": {point: [unit] for point, unit in ALONE.items()}})
    try:
        proc = project.cli("run", "runbooks/matrix-alone.yml", "--non-interactive", "--yes", "--ignore-window", "--reason", "fault matrix", check=False)
    finally:
        project.set_faults({})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_id = project.cli_json("status", "--runbook", "matrix-alone")["run"]["id"]
    statuses = unit_statuses(project, run_id)
    for point, unit in ALONE.items():
        # precheck changes nothing, so nothing is undone; every other point is rolled back
        assert statuses[unit] == ("failed" if point == "precheck" else "rolled_back"), (point, unit, statuses[unit])
        assert f"injected fault: {point} fails for {unit}" in proc.stdout + proc.stderr, (point, unit)
        check_rolled_back(project, unit, before[unit])
        RESULTS.append({"point": point, "case": f"1 ({unit}) of 9, max_failed 8", "exit": str(proc.returncode), "failed": statuses[unit],
                        "healthy": f"{BYSTANDER}: {statuses[BYSTANDER]}", "legacy": "yes", "unified": "yes", "routes": "yes"})
    assert statuses[BYSTANDER] == "done"
    assert served_by(project, BYSTANDER) == "unified" and unified_rows(project, BYSTANDER) > 0


@pytest.mark.parametrize("point", POINTS)
def test_more_than_max_failed_rolls_the_whole_batch_back(matrix_lab: LabProject, point: str) -> None:
    project = matrix_lab
    before = {u: legacy_dump_digest(project, u) for u in BATCH}
    project.set_faults({"fail_step": {point: FAILING}})
    try:
        proc = project.cli("run", "runbooks/matrix-batch.yml", "--non-interactive", "--yes", "--ignore-window", "--reason", f"fault matrix: {point}", check=False)
    finally:
        project.set_faults({})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "whole batch was rolled back" in proc.stdout + proc.stderr
    run_id = project.cli_json("status", "--runbook", "matrix-batch")["run"]["id"]
    assert project.cli_json("status", run_id)["run"]["status"] == "failed"
    statuses = unit_statuses(project, run_id)
    for unit in BATCH:
        assert statuses[unit] != "done", (unit, statuses[unit])
        check_rolled_back(project, unit, before[unit])
    RESULTS.append({"point": point, "case": f"2 of 3, max_failed 1", "exit": str(proc.returncode),
                    "failed": ", ".join(sorted({statuses[u] for u in FAILING})), "healthy": f"{BATCH[2]}: {statuses[BATCH[2]]}",
                    "legacy": "yes", "unified": "yes", "routes": "yes"})
