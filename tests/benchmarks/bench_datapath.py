"""Benchmark: the migration data path against the standard tools, on the same data, in one run.

    python tests/benchmarks/bench_datapath.py [--size full|small] [--rehearsal] [--keep]

Builds its own lab (a copy of the project on 127.0.5.x, `cutover lab up --size SIZE`), then
for each legacy site moves the site's whole holding (every old unit it files, as one bench
"unit") with the unit_data module's own code (in process: the data path, not Ansible's
start-up) and times, against the baseline on the same rows and files:

    copy       pre_copy (rows legacy -> unified by COPY, files to the unified store)
               vs  pg_dump --data-only of the site's unit tables + cp -r of its attachment store
    export     export (catch-up + manifest: every row and file hashed)
               vs  pg_dump --data-only | sha256sum + sha256sum of every file
    reconcile  reconcile (unified's rows and files hashed, compared)
               vs  the same baseline on the unified copy's files

A ratio is baseline seconds / ours (1.0: as fast as the tools; the aim is at least 0.5).
With --rehearsal it then runs scripts/rehearsal.sh on that lab and prints the time per wave
and the freeze times from its summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from test_rehearsal import lab_requirements, make_lab_project  # noqa: E402

MODULE = ROOT / "playbooks" / "roles" / "unit_data" / "library" / "cutover_unit_data.py"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def load_mover():
    spec = importlib.util.spec_from_file_location("cutover_unit_data", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--rehearsal", action="store_true", help="also run scripts/rehearsal.sh on the lab and report its waves")
    parser.add_argument("--keep", action="store_true", help="leave the lab running (and its folder) at the end")
    args = parser.parse_args()
    reason = lab_requirements()
    if reason:
        print(f"skipped: {reason}")
        return 0
    base = Path(tempfile.mkdtemp(prefix="cutover-bench-datapath-"))
    base.chmod(0o755)  # the postgres user runs the lab's clusters in there
    project = make_lab_project(base, "127.0.5.")
    cli = [str(Path(sys.executable).parent / "cutover"), "--root", str(project.root), "--env", "lab"]
    try:
        t_up, _ = timed(lambda: subprocess.run(cli + ["lab", "up", "--size", args.size], check=True, capture_output=True))
        print(f"lab up --size {args.size}: {t_up:.1f} s")
        run_sites(project, load_mover())
        if args.rehearsal:
            rehearse(project, args.size)
    finally:
        if not args.keep:
            subprocess.run(cli + ["lab", "down"], capture_output=True)
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"lab kept: {project.root}")
    return 0


def run_sites(project, mod) -> None:  # noqa: ANN001
    from cutover.lab import LEGACY_SITES, connect

    secrets = project.lab_dir / "secrets"
    password = (secrets / "postgres_migration_password").read_text().strip()
    sites = project.lab().sites()
    rows_out = []
    for code in LEGACY_SITES:
        site = sites[code]
        with connect(site) as conn:
            keys = [r[0] for r in conn.execute("SELECT DISTINCT unit FROM docs.documents UNION SELECT DISTINCT unit FROM procedures.dossiers ORDER BY 1")]
            n_rows = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in (
                "docs.documents", "docs.recipients", "docs.attachments", "docs.processing_history", "procedures.dossiers", "procedures.dossier_events"))
        unit = f"bench-{code}"
        work = project.lab_dir / "bench" / unit
        params = {
            "unit": unit, "site": code, "partition_rules": [],
            # every key the site files, as whole old units: the site's whole holding moves
            "old_units": [], "systems": ["docs", "procedures"],
            "tables": {"docs": ["documents", "recipients", "attachments", "processing_history"], "procedures": ["dossiers", "dossier_events"]},
            "file_tables": {"docs.attachments": {"store": "docs/attachments", "path_column": "store_path"}},
            "legacy_db": {"host": site.address, "port": 5432, "dbname": "shared_systems", "user": "shared_migration", "password": password},
            "unified_db": {"host": sites["unified"].address, "port": 5432, "dbname": "shared_systems", "user": "shared_migration", "password": password},
            "legacy_store": str(site.dir / "files"), "unified_store": str(sites["unified"].dir / "files"),
            "work_dir": str(work), "identifier_code": "pending", "require_identifier_code": False, "drain_timeout": 15, "faults": {},
        }

        def mover(action: str):  # noqa: ANN202
            m = mod.Mover(params)
            m.scope.parts = [(k, None) for k in keys]
            m.scope.keys = keys
            return m.run(action)

        store = site.dir / "files" / "docs" / "attachments"
        files = [p for p in store.rglob("*") if p.is_file()]
        n_bytes = sum(p.stat().st_size for p in files)
        dump = f"runuser -u postgres -- {PG_BIN}/pg_dump -h {site.postgres_socket} -d shared_systems --data-only -n docs -n procedures -T '*.change_log' -T '*.frozen_units'"
        scratch = project.lab_dir / "bench" / f"cp-{code}"
        t_copy, _ = timed(lambda: mover("pre_copy"))
        t_base_copy, _ = timed(lambda: sh(f"{dump} > /dev/null && rm -rf {scratch} && cp -r {store} {scratch}"))
        t_export, _ = timed(lambda: mover("export"))
        t_base_export, _ = timed(lambda: sh(f"{dump} | sha256sum > /dev/null && find {store} -type f -print0 | xargs -0 -r sha256sum > /dev/null"))
        mover("import")
        t_reconcile, _ = timed(lambda: mover("reconcile"))
        unified_store = sites["unified"].dir / "files" / "docs" / "attachments" / unit
        t_base_reconcile, _ = timed(lambda: sh(f"{dump} | sha256sum > /dev/null && find {unified_store} -type f -print0 | xargs -0 -r sha256sum > /dev/null"))
        mover("purge")
        shutil.rmtree(scratch, ignore_errors=True)
        rows_out.append((code, len(keys), n_rows, len(files), n_bytes, t_copy, t_base_copy, t_export, t_base_export, t_reconcile, t_base_reconcile))
    print(f"{'site':6} {'keys':>5} {'rows':>7} {'files':>6} {'MB':>7} | {'copy s':>7} {'base':>6} {'ratio':>5} | {'export':>7} {'base':>6} {'ratio':>5} | {'recon':>7} {'base':>6} {'ratio':>5}")
    ratios = {"copy": [], "export": [], "reconcile": []}
    for code, keys, n_rows, n_files, n_bytes, tc, bc, te, be, tr, br in rows_out:
        ratios["copy"].append(bc / tc)
        ratios["export"].append(be / te)
        ratios["reconcile"].append(br / tr)
        print(f"{code:6} {keys:5} {n_rows:7} {n_files:6} {n_bytes / 1e6:7.1f} | {tc:7.2f} {bc:6.2f} {bc / tc:5.2f} | {te:7.2f} {be:6.2f} {be / te:5.2f} | {tr:7.2f} {br:6.2f} {br / tr:5.2f}")
        print(f"{'':6} throughput: copy {n_rows / tc:,.0f} rows/s {n_bytes / 1e6 / tc:.1f} MB/s; export {n_rows / te:,.0f} rows/s; reconcile {n_rows / tr:,.0f} rows/s")
    print("median ratio (baseline / ours): " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in ratios.items()))


def rehearse(project, size: str) -> None:  # noqa: ANN001
    started = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "rehearsal.sh"), "--size", size, "--root", str(project.root)], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    summaries = sorted((project.lab_dir / "rehearsals").glob("*/summary.json"))
    print(f"rehearsal --size {size}: exit {proc.returncode} in {seconds:.0f} s")
    if not summaries:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        return
    summary = json.loads(summaries[-1].read_text())
    for w in summary["waves"]:
        print(f"  wave {w['wave']:13} {w['units']:3} units {w['batches']:2} batches {w['seconds']:7.1f} s")
    f = summary["freeze"]
    print(f"  freeze -> switch: median {f['median_s']:.1f} s, max {f['max_s']:.1f} s ({f['max_unit']}) over {f['units']} units")


if __name__ == "__main__":
    raise SystemExit(main())
