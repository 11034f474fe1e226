"""How long `cutover lab up --size full` takes and how much it holds.

    python tests/benchmarks/bench_lab.py [--size full|small] [--keep]

Builds the lab on a copy of the project (under /tmp) with the hosting playbook (Mitogen when
installed), seeds it, then measures a second `up` (idempotent: changed must be 0), a `reset`
and `down`. Prints seconds per phase and the data volume: rows per table, attachment files and
bytes, each site's database size and folder size. Needs root, PostgreSQL 15, nginx, and the
lab's addresses free. One run (`full` writes about 4 GB); `--keep` leaves the copy for a look.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=False).stdout
    return int(out.split()[0]) if out else 0


def main() -> None:
    from cutover import lab as lab_

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="full", choices=sorted(lab_.SIZES))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="cutover-bench-lab-"))
    base.chmod(0o755)
    root = base / "project"
    root.mkdir()
    for name in ("inventories", "playbooks"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", ".cutover", "molecule"))
    lab = lab_.Lab(root)
    result: dict = {"size": args.size, "strategy": lab_.default_strategy()}
    try:
        t = time.monotonic()
        first = lab_.up(lab, args.size)
        result["up_seconds"] = round(time.monotonic() - t, 1)
        result["hosting_seconds"] = first["hosting"]["seconds"]
        result["hosting_changed"] = first["hosting"]["changed"]
        seed = first["seed"]
        result["seed_seconds"] = seed["seconds"]
        result["old_units_and_departments"] = seed["units"]
        result["rows"] = seed["rows"]
        result["rows_per_table"] = {t: sum(s["rows"][t] for s in seed["sites"]) for t in seed["sites"][0]["rows"]}
        result["attachment_files"] = seed["files"]
        result["attachment_bytes"] = seed["file_bytes"]
        result["quarantine_candidates"] = sum(s["quarantine_candidates"] for s in seed["sites"])

        sites = lab.sites()
        result["database_bytes"] = {}
        for code, site in sites.items():
            with lab_.connect(site) as conn:
                result["database_bytes"][code] = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        result["site_folder_bytes"] = {code: du_bytes(site.dir) for code, site in sites.items()}

        t = time.monotonic()
        second = lab_.up(lab, args.size)
        result["second_up_seconds"] = round(time.monotonic() - t, 1)
        result["second_up_changed"] = second["hosting"]["changed"]
        result["second_up_seeded"] = second["seed"] is not None

        t = time.monotonic()
        lab_.reset(lab)
        result["reset_seconds"] = round(time.monotonic() - t, 1)
    finally:
        t = time.monotonic()
        lab_.down(lab)
        result["down_seconds"] = round(time.monotonic() - t, 1)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    for key, value in result.items():
        print(f"{key:28} {json.dumps(value, ensure_ascii=False)}")
    if result.get("second_up_changed"):
        raise SystemExit("the second `lab up` changed something: not idempotent")


if __name__ == "__main__":
    main()
