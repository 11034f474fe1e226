"""Fault injection on the small lab (its own copy of the project, on 127.0.3.x):

(a) one unit's import corrupted (the lab's faults.yml) -> its reconcile gate fails and that
    unit alone is rolled back: unified holds none of its rows or files, its legacy data is
    byte-identical to before (a dump's hash), it takes writes again, the front proxy and the
    document exchange point to legacy -- while the other unit of the batch completes;
(b) one legacy site's PostgreSQL stopped before a batch -> its units fail precheck and nothing
    of theirs changes; once the site is back, `cutover resume` completes them.

A drill runbook (the document-management steps, one wave of chosen units that tolerates one
failed unit per batch) keeps the drills short. About 5-7 minutes with the lab's build.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from test_rehearsal import (  # noqa: I001 - the shared lab helpers
    PROJECT, LabProject, exchange_site, http, lab_fixture, legacy_dump_digest, legacy_keys, unified_rows,
)

CORRUPTED, BYSTANDER = "phuong-cau-ong-lanh", "xa-can-gio"  # both at hcm; the first holds a split old unit
SITE_DOWN_UNITS = ["xa-kim-long", "xa-long-son"]  # brvt; Long Sơn's identifier code is pending


def drill_runbook(name: str, codes: list[str]) -> dict:
    runbook = yaml.safe_load((PROJECT / "runbooks" / "document-management.yml").read_text(encoding="utf-8"))
    runbook.update(name=name, description=f"fault drill: {', '.join(codes)}", final_gates=[])
    runbook.pop("forecast", None)
    runbook["waves"] = [{
        "id": "drill", "description": "the drill's units", "select": {"codes": codes}, "batch": 10,
        "max_parallel_per_site": 10, "max_failed": 1,
        "window": {"not_before": "2025-06-16", "deadline": "2025-08-15", "hours": "00:00-23:59"},
    }]
    return runbook


@pytest.fixture(scope="module")
def faults_lab() -> Iterator[LabProject]:
    runbooks = {"drill-import": drill_runbook("drill-import", [CORRUPTED, BYSTANDER]),
                "drill-site-down": drill_runbook("drill-site-down", SITE_DOWN_UNITS)}
    yield from lab_fixture("127.0.3.", runbooks)


def unified_files(project: LabProject, unit: str) -> list[Path]:
    folder = project.lab_dir / "unified" / "files" / "docs" / "attachments" / unit
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_corrupted_import_rolls_back_that_unit_alone(faults_lab: LabProject) -> None:
    project = faults_lab
    before = legacy_dump_digest(project, CORRUPTED)
    project.set_faults({"corrupt_import": [CORRUPTED]})
    try:
        proc = project.cli("run", "runbooks/drill-import.yml", "--non-interactive", "--yes", "--ignore-window", "--reason", "fault drill", check=False)
    finally:
        project.set_faults({})
    run_id = project.cli_json("status", "--runbook", "drill-import")["run"]["id"]
    status = project.cli_json("status", run_id)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]

    # the corrupted unit's reconcile gate failed, with the differences as evidence
    import json

    evidence = json.loads((project.lab_dir / "migrations" / CORRUPTED / "reconcile.json").read_text())
    assert evidence["equal"] is False and any("documents" in d["what"] for d in evidence["differences"]), evidence
    text = proc.stdout + proc.stderr + str(status)
    assert "reconcile" in text and CORRUPTED in text

    # rolled back alone: nothing of it in unified, legacy byte-identical, routes to legacy
    assert unified_rows(project, CORRUPTED) == 0
    assert unified_files(project, CORRUPTED) == []
    with project.db("unified") as conn:
        keys = legacy_keys(project, CORRUPTED)
        assert conn.execute("SELECT count(*) FROM docs.quarantine WHERE source_unit = ANY(%s)", [keys]).fetchone()[0] == 0
    assert legacy_dump_digest(project, CORRUPTED) == before
    status_code, headers, _ = http("GET", f"{project.front_door(CORRUPTED)}/units/{CORRUPTED}/documents?limit=1")
    assert (status_code, headers.get("x-cutover-backend")) == (200, "legacy-hcm")
    assert exchange_site(project, CORRUPTED) == "hcm"
    status_code, headers, body = http("POST", f"{project.front_door(CORRUPTED)}/units/{CORRUPTED}/documents", {"title": "after the rollback"})
    assert status_code == 201 and headers.get("x-cutover-backend") == "legacy-hcm", body  # writable again

    # the other unit of the batch completed
    status_code, headers, _ = http("GET", f"{project.front_door(BYSTANDER)}/units/{BYSTANDER}/documents?limit=1")
    assert headers.get("x-cutover-backend") == "unified"
    assert unified_rows(project, BYSTANDER) > 0
    assert exchange_site(project, BYSTANDER) == "unified"
    assert '"equal": true' in (project.lab_dir / "migrations" / BYSTANDER / "reconcile.json").read_text()


def _pg_ctl(project: LabProject, site: str, action: str) -> None:
    data = project.lab_dir / site / "postgres" / "data"
    log = data / "server.log"  # postgres_server's default (the postgres user owns it)
    cmd = ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D", str(data), "-w", "-t", "60"]
    cmd += ["-m", "fast", "stop"] if action == "stop" else ["-l", str(log), "start"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise AssertionError(f"pg_ctl {action} -> {proc.returncode}: {proc.stdout}{proc.stderr}\n{tail}")


SITE_DOWN: dict[str, str] = {}  # the drill's run, for the resume test


def test_legacy_site_down_fails_precheck_and_changes_nothing(faults_lab: LabProject) -> None:
    project = faults_lab
    digests = {u: legacy_dump_digest(project, u) for u in SITE_DOWN_UNITS}
    _pg_ctl(project, "brvt", "stop")
    try:
        proc = project.cli("run", "runbooks/drill-site-down.yml", "--non-interactive", "--yes", "--ignore-window", "--reason", "fault drill", check=False)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        run_id = project.cli_json("status", "--runbook", "drill-site-down")["run"]["id"]
        SITE_DOWN["run"] = run_id
        output = proc.stdout + proc.stderr
        for unit in SITE_DOWN_UNITS:
            assert f"{unit} precheck" in output and "legacy database unreachable" in output, output[-3000:]
            assert unified_rows(project, unit) == 0
            status_code, headers, _ = http("GET", f"{project.front_door(unit)}/units/{unit}/documents?limit=1")
            assert headers.get("x-cutover-route") == "legacy", (unit, status_code)
            assert not (project.lab_dir / "migrations" / unit / "pre_copy.json").exists()
    finally:
        _pg_ctl(project, "brvt", "start")
    for unit in SITE_DOWN_UNITS:
        assert legacy_dump_digest(project, unit) == digests[unit]  # nothing of theirs changed
        assert exchange_site(project, unit) in ("brvt", None)


def test_resume_completes_them_once_the_site_is_back(faults_lab: LabProject) -> None:
    project = faults_lab
    assert "run" in SITE_DOWN, "needs test_legacy_site_down_fails_precheck_and_changes_nothing first"
    proc = project.cli("resume", SITE_DOWN["run"], "--non-interactive", check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for unit in SITE_DOWN_UNITS:
        assert unified_rows(project, unit) > 0, unit
        status_code, headers, _ = http("GET", f"{project.front_door(unit)}/units/{unit}/documents?limit=1")
        assert headers.get("x-cutover-backend") == "unified", unit
        assert '"equal": true' in (project.lab_dir / "migrations" / unit / "reconcile.json").read_text()
    assert exchange_site(project, "xa-kim-long") == "unified"
    assert exchange_site(project, "xa-long-son") is None  # pending identifier code: no route yet
