"""Benchmark: render and check the production stack under Pulumi's mocks (aim: under 10 s).

Measures, in one process after a warm-up run: the mocked render, the checks (strict schema
validation of every manifest plus the policies), render + check together, and writing the
manifests; then the whole `cutover --env production stack check` command, cold, as CI runs it.
CPU seconds are printed beside wall seconds: on a busy machine wall time grows, CPU time not.

Run: python tests/benchmarks/bench_stacks.py [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cutover.stacks import check, render, write_manifests  # noqa: E402

TARGET_S = 10.0


def _timed(fn):  # noqa: ANN001, ANN202
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(repeat: int, cli_repeat: int) -> dict[str, float]:
    env = "production"
    check(render(ROOT, env))  # warm-up: imports, schema cache
    renders, checks, totals, cpus, writes = [], [], [], [], []
    manifests = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            rendering, r_wall, r_cpu = _timed(lambda: render(ROOT, env))
            report, c_wall, c_cpu = _timed(lambda: check(rendering))
            assert report.passed, [str(v) for v in report.violations]
            _, w_wall, _ = _timed(lambda: write_manifests(rendering, Path(tmp) / f"m{i}"))
            manifests = len(rendering.manifests)
            renders.append(r_wall)
            checks.append(c_wall)
            totals.append(r_wall + c_wall)
            cpus.append(r_cpu + c_cpu)
            writes.append(w_wall)
    cli = []
    for _ in range(cli_repeat):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cutover", "--root", str(ROOT), "--env", env, "stack", "check"], capture_output=True, text=True, env={**os.environ})
        cli.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr
    median_total = statistics.median(totals)
    return {
        "manifests": manifests,
        "render_median_s": round(statistics.median(renders), 3),
        "check_median_s": round(statistics.median(checks), 3),
        "render_and_check_median_s": round(median_total, 3),
        "render_and_check_cpu_median_s": round(statistics.median(cpus), 3),
        "write_manifests_median_s": round(statistics.median(writes), 3),
        "cli_stack_check_cold_median_s": round(statistics.median(cli), 3),
        "render_and_check_vs_target_10s": round(median_total / TARGET_S, 3),
        "cli_vs_target_10s": round(statistics.median(cli) / TARGET_S, 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cli-repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.repeat, args.cli_repeat)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
