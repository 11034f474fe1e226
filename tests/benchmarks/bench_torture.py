"""Benchmark: the crash torture at benchmark size (200 SIGKILLs of the small lab's rehearsal).

Run: python tests/benchmarks/bench_torture.py [--kills 200] [--seed 200] [--prefix 127.0.9.]
Builds the small lab in a copy of the project on its own loopback addresses (`--prefix`.N, so a
running test suite is not met), runs scripts/crash_torture.py against it (SIGKILL at seeded
random moments, resume each time, approvals by a second identity), prints its counts and
checks, and takes the lab down. Exit 1 when a check fails. Needs root, PostgreSQL 15, nginx.
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
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT))

from test_rehearsal import make_lab_project  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=200)
    parser.add_argument("--prefix", default="127.0.9.")
    parser.add_argument("--max-delay", type=float, default=5.0)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cutover-bench-torture-"))
    base.chmod(0o755)
    project = make_lab_project(base, args.prefix)
    try:
        t = time.monotonic()
        project.cli("lab", "up", "--size", "small", timeout=1800)
        print(f"lab up: {time.monotonic() - t:.1f} seconds", flush=True)
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "crash_torture.py"), "--root", str(project.root), "--no-lab",
                               "--kills", str(args.kills), "--seed", str(args.seed), "--max-delay", str(args.max_delay)],
                              capture_output=True, text=True, cwd=project.root, timeout=max(3600, args.kills * 30))
        result = json.loads(proc.stdout[proc.stdout.index("{"):]) if "{" in proc.stdout else {}
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
        checks = result.get("checks", {})
        print(f"torture: {result.get('kills')} kills, {result.get('resumes')} resumes, {result.get('approvals')} approvals; "
              f"{result.get('units')} units, {result.get('rows')} rows, {result.get('quarantined')} quarantined; {result.get('seconds')} seconds")
        print(f"torture checks: {sum(checks.values())}/{len(checks)} hold" + "".join(f"\n  {'ok ' if v else 'NOT'} {k}" for k, v in checks.items()))
        return 0 if checks and all(checks.values()) and proc.returncode == 0 else 1
    finally:
        project.cli("lab", "down", check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
