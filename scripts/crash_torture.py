#!/usr/bin/env python3
"""Crash torture: run a lab rehearsal and SIGKILL the `cutover` process at random moments,
resuming each time, then check that nothing was lost or done twice.

    .venv/bin/python scripts/crash_torture.py --kills 20 --seed 7 [--runbook document-management]

Each round starts `cutover run` (then `cutover resume RUN`), waits a random time drawn from the
seeded generator, and kills the process with SIGKILL (its ansible-playbook children die with
it). Approvals met on the way are given by a second identity. At the end the run is resumed
to completion and checked: every unit-step done, every unit's reconcile gate passed, the
audit chain verifies, and (when the lab summary exists) every unit migrated exactly once with
no unexpected quarantine. Prints the counts; exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
APPROVER = "torture-approver"


def cutover(*args: str, actor: str = "torture-operator", capture: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cutover", "--root", str(ROOT), "--env", ENV, "--actor", actor, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=capture, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def spawn(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cutover", "--root", str(ROOT), "--env", ENV, "--actor", "torture-operator", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)


def latest_run(runbook: str) -> str | None:
    out = cutover("--output", "json", "status", "--runbook", runbook)
    if out.returncode != 0:
        return None
    report = json.loads(out.stdout)
    if "run" in report:
        return report["run"]["id"]
    runs = report.get("runs") or []
    return runs[0]["id"] if runs else None


def conservation() -> dict[str, dict[str, int]]:
    """Per table: rows on the legacy sites, rows in unified, rows in unified's quarantine."""
    from cutover.lab import UNIT_TABLES, Lab, connect

    totals: dict[str, dict[str, int]] = {}
    for site in Lab(ROOT).sites().values():
        with connect(site) as conn:
            for schema, tables in UNIT_TABLES.items():
                for table in tables:
                    entry = totals.setdefault(f"{schema}.{table}", {"legacy": 0, "unified": 0, "quarantine": 0, "duplicates": 0})
                    n = conn.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()[0]
                    if site.role == "unified":
                        entry["unified"] += n
                        entry["quarantine"] += conn.execute(f"SELECT count(*) FROM {schema}.quarantine WHERE table_name = %s", [table]).fetchone()[0]
                        entry["duplicates"] += conn.execute(
                            f"SELECT count(*) FROM (SELECT source_site, source_unit, id FROM {schema}.{table}"
                            " GROUP BY source_site, source_unit, id HAVING count(*) > 1) d").fetchone()[0]
                    else:
                        entry["legacy"] += n
    return totals


def waiting_gate(run_id: str) -> str | None:
    out = cutover("--output", "json", "status", run_id)
    if out.returncode != 0:
        return None
    report = json.loads(out.stdout)
    for approval in report.get("approvals", []):
        if approval.get("status") == "requested":
            return approval.get("gate")
    return None


def main() -> int:
    global ENV, ROOT
    parser = argparse.ArgumentParser(description="SIGKILL a lab rehearsal at random moments and resume it each time.")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runbook", default="document-management")
    parser.add_argument("--env", default="lab")
    parser.add_argument("--max-delay", type=float, default=6.0, help="longest wait before a kill, seconds")
    parser.add_argument("--no-lab", action="store_true", help="do not bring the lab up or reset it (it is up already)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project folder whose lab is tortured")
    args = parser.parse_args()
    ENV, ROOT = args.env, args.root.resolve()
    rng = random.Random(args.seed)
    started = time.monotonic()

    if not args.no_lab:
        up = cutover("lab", "up", capture=False)
        if up.returncode != 0:
            print(f"torture: lab up failed (exit {up.returncode})", file=sys.stderr)
            return 1
        cutover("lab", "reset", capture=False)

    kills = resumes = approvals = 0
    run_id: str | None = None
    rc = None
    while True:
        if run_id is None:
            proc = spawn("run", args.runbook, "--non-interactive", "--yes", "--ignore-window", "--reason", "crash torture on the lab")
        else:
            proc = spawn("resume", run_id, "--non-interactive")
            resumes += 1
        if kills < args.kills:
            try:
                proc.wait(timeout=rng.uniform(0.3, args.max_delay))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
        else:
            proc.wait()
        output = proc.stdout.read() if proc.stdout else ""
        rc = proc.returncode
        run_id = run_id or latest_run(args.runbook)
        if rc == 0:
            break
        if rc == 4 and run_id:
            gate = waiting_gate(run_id)
            if gate:
                ok = cutover("approve", run_id, "--gate", gate, "--reason", "torture: second identity approves", actor=APPROVER)
                approvals += ok.returncode == 0
            continue
        if rc not in (-signal.SIGKILL, 4):
            print(f"torture: run ended with exit {rc}:\n{output[-3000:]}", file=sys.stderr)
            break
        if run_id is None:
            continue  # killed before the run was even created: start again

    checks: dict[str, bool] = {}
    status = json.loads(cutover("--output", "json", "status", run_id).stdout) if run_id else {}
    units = [u for w in status.get("waves", []) for b in w["batches"] for u in b["units"]]
    steps = [s for u in units for s in u.get("steps", {}).values()]
    checks["run succeeded"] = rc == 0 and status.get("run", {}).get("status") == "succeeded"
    checks["every unit-step done"] = bool(steps) and all(s in ("done", "skipped") for s in steps)
    verify = cutover("audit", "verify")
    checks["audit chain verifies"] = verify.returncode == 0
    summary = cutover("--output", "json", "lab", "summary", run_id) if run_id else None
    totals: dict = {}
    tables: dict = {}
    if summary is not None and summary.returncode == 0:
        totals = json.loads(summary.stdout)["totals"]
        checks["every unit migrated"] = totals["units"] > 0 and totals["units_migrated"] == totals["units"]
        checks["reconciliation equal for every unit"] = totals["reconciled_equal"] == totals["units_migrated"]
        checks["no unexpected quarantine"] = totals["quarantine_in_unified"] == totals["quarantined"]
        tables = conservation()
        checks["every legacy row in unified or quarantine exactly once"] = all(
            t["legacy"] == t["unified"] + t["quarantine"] and t["duplicates"] == 0 for t in tables.values())
    else:
        checks["lab summary available"] = False
    result = {
        "kills": kills,
        "resumes": resumes,
        "approvals": approvals,
        "run": run_id,
        "units": len(units),
        "unit_steps": len(steps),
        "rows": totals.get("rows"),
        "quarantined": totals.get("quarantined"),
        "tables": tables,
        "seconds": round(time.monotonic() - started, 1),
        "checks": checks,
    }
    print(json.dumps(result, indent=2))
    return 0 if checks and all(checks.values()) else 1


ENV = "lab"

if __name__ == "__main__":
    sys.exit(main())
