"""End to end on the small lab: runbooks/document-management.yml through every wave, with the
load generator writing through the front doors, approvals by a second lab identity.

The lab is real (PostgreSQL, the back ends and nginx per site, built by playbooks/hosting.yml
through `cutover lab up`) and lives in a copy of the project under pytest's tmp folder, on its
own loopback addresses (127.0.4.x), so it does not meet a lab a developer keeps running.
Needs root, PostgreSQL 15 and nginx (scripts/setup.sh installs them). About 5-8 minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
RUNBOOK = "runbooks/document-management.yml"
STARTER, APPROVER = "lab-rehearsal", "lab-approver"


def lab_requirements() -> str | None:
    """Why the lab cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "the lab needs root (PostgreSQL runs as the postgres user, nginx binds port 80)"
    if not Path("/usr/lib/postgresql/15/bin/initdb").exists():
        return "PostgreSQL 15 is not installed (scripts/setup.sh)"
    if not Path("/usr/sbin/nginx").exists():
        return "nginx is not installed (scripts/setup.sh)"
    return None


def cutover_command() -> str:
    """The `cutover` of this environment (next to the running interpreter, else on PATH)."""
    here = Path(sys.executable).parent / "cutover"
    found = str(here) if here.exists() else shutil.which("cutover")
    if not found:
        pytest.skip("no `cutover` command in this environment (pip install -e .)")
    return found


@dataclass
class LabProject:
    """A copy of the project whose lab runs on its own loopback addresses."""

    root: Path
    addresses: dict[str, str]

    @property
    def lab_dir(self) -> Path:
        return self.root / ".cutover" / "lab"

    def cli(self, *args: str, actor: str = STARTER, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
        cmd = [cutover_command(), "--root", str(self.root), "--env", "lab", "--actor", actor, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def cli_json(self, *args: str, actor: str = STARTER) -> Any:
        return json.loads(self.cli("--output", "json", *args, actor=actor).stdout)

    def lab(self):  # noqa: ANN201
        from cutover.lab import Lab

        return Lab(self.root)

    def db(self, site: str):  # noqa: ANN201
        from cutover.lab import connect

        return connect(self.lab().sites()[site], autocommit=True)

    def estate(self):  # noqa: ANN201
        from cutover.estate import load_estate

        return load_estate(self.root / "inventories" / "lab")

    def front_door(self, unit: str) -> str:
        return f"http://{self.addresses[self.estate().units[unit].site]}"

    def set_faults(self, faults: dict[str, Any]) -> None:
        path = self.lab_dir / "faults.yml"
        if faults:
            path.write_text(yaml.safe_dump(faults), encoding="utf-8")
        else:
            path.unlink(missing_ok=True)


def make_lab_project(base: Path, prefix: str, runbooks: dict[str, dict] | None = None) -> LabProject:
    """The declarations copied (playbooks linked), the lab's addresses moved to `prefix`.N."""
    root = base / "project"
    root.mkdir(parents=True)
    (root / "playbooks").symlink_to(PROJECT / "playbooks")
    shutil.copytree(PROJECT / "inventories", root / "inventories", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT / "runbooks", root / "runbooks")
    all_vars = root / "inventories" / "lab" / "group_vars" / "all.yml"
    text = all_vars.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    addresses = {}
    for site, address in data["lab_site_addresses"].items():
        new = prefix + address.rsplit(".", 1)[1]
        text = text.replace(f"{site}: {address}", f"{site}: {new}")
        addresses[site] = new
    all_vars.write_text(text, encoding="utf-8")
    for name, runbook in (runbooks or {}).items():
        (root / "runbooks" / f"{name}.yml").write_text(yaml.safe_dump(runbook, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return LabProject(root, addresses)


def lab_fixture(prefix: str, runbooks: dict[str, dict] | None = None) -> Iterator[LabProject]:
    """A lab in a folder the postgres user can reach (pytest's own tmp folders are 0700)."""
    reason = lab_requirements()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="cutover-lab-test-"))
    base.chmod(0o755)
    project = make_lab_project(base, prefix, runbooks)
    try:
        project.cli("lab", "up", "--size", "small", timeout=1800)
        yield project
    finally:
        project.cli("lab", "down", check=False)
        if not os.environ.get("CUTOVER_KEEP_LAB"):
            shutil.rmtree(base, ignore_errors=True)


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict[str, str], dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, json.loads(err.read() or b"{}")


def legacy_keys(project: LabProject, unit: str) -> list[str]:
    from cutover.lab import legacy_unit_key

    u = project.estate().units[unit]
    return [legacy_unit_key(o) for o in u.lineage] or [unit]


def legacy_dump_digest(project: LabProject, unit: str) -> str:
    """sha256 of a dump of every legacy row filed under the unit's old unit keys (all tables)."""
    from cutover.lab import UNIT_TABLES

    site = project.estate().units[unit].site
    keys = legacy_keys(project, unit)
    h = hashlib.sha256()
    with project.db(site) as conn:
        for schema, tables in UNIT_TABLES.items():
            for table in tables:
                with conn.cursor().copy(f"COPY (SELECT * FROM {schema}.{table} WHERE unit = ANY(%s) ORDER BY id) TO STDOUT", [keys]) as copy:
                    for block in copy:
                        h.update(block)
        for schema in UNIT_TABLES:
            frozen = conn.execute(f"SELECT count(*) FROM {schema}.frozen_units WHERE unit = ANY(%s)", [keys]).fetchone()[0]
            h.update(f"{schema} frozen {frozen}".encode())
    return h.hexdigest()


def unified_rows(project: LabProject, unit: str) -> int:
    from cutover.lab import UNIT_TABLES

    with project.db("unified") as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {s}.{t} WHERE unit = %s", [unit]).fetchone()[0] for s, ts in UNIT_TABLES.items() for t in ts)


def exchange_site(project: LabProject, unit: str) -> str | None:
    with project.db("unified") as conn:
        row = conn.execute("SELECT site FROM exchange.routes WHERE unit = %s", [unit]).fetchone()
    return row[0] if row else None


def run_with_approvals(project: LabProject, runbook: str, *extra: str) -> tuple[str, int]:
    """Start the runbook; at every approval, approve as the second identity and resume."""
    proc = project.cli("run", runbook, "--non-interactive", "--yes", "--ignore-window", "--reason", "lab rehearsal", *extra, check=False)
    run_id = project.cli_json("status", "--runbook", Path(runbook).stem)["run"]["id"]
    rc = proc.returncode
    for _ in range(10):
        if rc != 4:
            break
        pending = [a["gate"] for a in project.cli_json("status", run_id)["approvals"] if a["status"] == "requested"]
        assert pending, f"run {run_id} waits but for no approval:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        project.cli("approve", run_id, "--gate", pending[0], "--reason", "reviewed by a second lab identity", actor=APPROVER)
        proc = project.cli("resume", run_id, "--non-interactive", check=False)
        rc = proc.returncode
    return run_id, rc


# --- the rehearsal --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rehearsal_lab() -> Iterator[LabProject]:
    yield from lab_fixture("127.0.4.")


@pytest.fixture(scope="module")
def rehearsal(rehearsal_lab: LabProject) -> dict[str, Any]:
    """The whole runbook with the load generator writing for every unit, then the summary."""
    from cutover.journal import open_journal
    from cutover.loadgen import LoadGenerator, LoadSpec, front_doors_for
    from cutover.rehearsal import summarize

    project = rehearsal_lab
    estate = project.estate()
    split_before = {}
    with project.db("hcm") as conn:
        split_before["phuong-da-kao--quan-1"] = conn.execute("SELECT count(*) FROM docs.documents WHERE unit = 'phuong-da-kao--quan-1'").fetchone()[0]
    out = project.lab_dir / "rehearsal" / "writes.jsonl"
    doors = front_doors_for(sorted(estate.units), {c: u.site for c, u in estate.units.items()}, project.addresses)
    generator = LoadGenerator(LoadSpec(doors, rate=6.0, out=out))
    thread = threading.Thread(target=generator.run, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        run_id, rc = run_with_approvals(project, RUNBOOK)
        seconds = time.monotonic() - started
        time.sleep(4.0)  # a few writes after the last switch, through the same front doors
    finally:
        generator.stop()
        thread.join(timeout=30)
    journal = open_journal(f"sqlite:///{project.root / '.cutover' / 'state.db'}")
    try:
        summary = summarize(journal, run_id, project.lab(), loadgen_out=out)
    finally:
        journal.close()
    return {"run": run_id, "rc": rc, "seconds": seconds, "summary": summary, "writes": out, "split_before": split_before}


def test_every_unit_is_migrated_and_reconciled(rehearsal: dict[str, Any], rehearsal_lab: LabProject) -> None:
    assert rehearsal["rc"] == 0, rehearsal
    summary = rehearsal["summary"]
    units = {u["unit"]: u for u in summary["units"]}
    assert set(units) == set(rehearsal_lab.estate().units)
    provinces = {rehearsal_lab.estate().units[c].province for c in units}
    assert provinces == {"HCM", "BD", "BRVT"} and "dac-khu-con-dao" in units
    for code, u in units.items():
        assert u["status"] == "migrated", (code, u["steps"])
        assert u["reconciled"] is True, (code, u["differences"])
        assert u["rows"] > 0
        assert u["freeze_s"] is not None and u["freeze_s"] > 0
    totals = summary["totals"]
    assert totals["units_migrated"] == len(units) == totals["reconciled_equal"]
    assert [w["wave"] for w in summary["waves"]] == ["pilot", "rollout", "special-zone"]
    assert all(w["seconds"] > 0 for w in summary["waves"])
    assert summary["freeze"]["median_s"] <= summary["freeze"]["max_s"]


def test_routing_goes_to_unified_and_legacy_is_read_only(rehearsal: dict[str, Any], rehearsal_lab: LabProject) -> None:
    project = rehearsal_lab
    for code, unit in project.estate().units.items():
        status, headers, _ = http("GET", f"{project.front_door(code)}/units/{code}/documents?limit=1")
        assert (status, headers.get("x-cutover-backend")) == (200, "unified"), code
        if unit.identifier_code != "pending":
            assert exchange_site(project, code) == "unified", code
        else:
            assert exchange_site(project, code) is None
        # Straight to the legacy back end (not through the front door): the unit is frozen there.
        status, _, body = http("POST", f"http://{project.addresses[unit.site]}:8080/units/{code}/documents", {"title": "late write"})
        assert status == 423 and "frozen for cutover" in body["error"], (code, status, body)


def test_split_old_unit_partitioned_unmatched_in_quarantine(rehearsal: dict[str, Any], rehearsal_lab: LabProject) -> None:
    key = "phuong-da-kao--quan-1"
    rules = {"phuong-sai-gon": {"Khu phố 1", "Khu phố 2", "Khu phố 3"}, "phuong-tan-dinh": {"Khu phố 4", "Khu phố 5"}}
    with rehearsal_lab.db("unified") as conn:
        placed = conn.execute("SELECT unit, residential_quarter, count(*) FROM docs.documents WHERE source_unit = %s GROUP BY 1, 2", [key]).fetchall()
        quarantined = conn.execute("SELECT count(*), min(reason) FROM docs.quarantine WHERE source_unit = %s AND table_name = 'documents'", [key]).fetchone()
    assert {u for u, _, _ in placed} == set(rules)
    for unit, quarter, _ in placed:
        assert quarter in rules[unit], (unit, quarter)
    assert quarantined[0] > 0 and "matches no partition rule" in quarantined[1]
    # nothing dropped: every legacy record of the split old unit is placed or quarantined
    with rehearsal_lab.db("hcm") as conn:
        legacy_now = conn.execute("SELECT count(*) FROM docs.documents WHERE unit = %s", [key]).fetchone()[0]
    assert sum(n for _, _, n in placed) + quarantined[0] == legacy_now >= rehearsal["split_before"][key]
    report = [q for q in rehearsal["summary"]["quarantine"] if q["old_unit"] == key and q["table"] == "documents"]
    assert report and report[0]["records"] == quarantined[0]
    assert rehearsal["summary"]["totals"]["quarantine_in_unified"] >= quarantined[0]


def test_no_acknowledged_write_lost_and_freeze_refusals_are_clear(rehearsal: dict[str, Any]) -> None:
    from cutover.loadgen import errors_path, read_records, refused_path

    writes = rehearsal["summary"]["writes"]
    assert writes["acknowledged"] > 50 and writes["lost"] == 0, writes
    assert writes["errors"] == 0, read_records(errors_path(rehearsal["writes"]))[:5]
    refused = read_records(refused_path(rehearsal["writes"]))
    assert refused, "no write met a freeze: the rehearsal should have frozen units under load"
    for r in refused:
        assert r["status"] == 423 and "frozen for cutover" in r["message"] and r["backend"].startswith("legacy-"), r
    # per unit, the same front door answers from legacy, then (after its switch) from unified only
    acks = read_records(rehearsal["writes"])
    by_unit: dict[str, list[str]] = {}
    for a in acks:
        by_unit.setdefault(a["unit"], []).append(a["backend"])
    for unit, backends in by_unit.items():
        if "unified" in backends:
            first = backends.index("unified")
            assert set(backends[first:]) == {"unified"}, unit
    assert sum(1 for b in by_unit.values() if b and b[-1] == "unified") == len(by_unit)
