"""Run every benchmark of the project and print one table of their figures.

    .venv/bin/python tests/benchmarks/run_all.py [--only NAME ...] [--quick]

Each `bench_*.py` beside this file runs in its own process (so peak memory is its own); its
full output is kept under .cutover/benchmarks/<name>.txt and the lines that carry a figure
(medians, ratios, rates, throughput, peak memory, per-wave times, freeze times) go into the
table with the benchmark's wall time. `--quick` passes each benchmark its smallest settings.
`bench_datapath` runs the rehearsal on its lab too (`--rehearsal`): the time per wave.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIGURE = re.compile(r"(median|ratio|rate|/s|throughput|peak|wave |freeze|MiB|MB|seconds|_s\b|lab up|rehearsal|\d\s+\|)", re.I)
# bench_datapath also runs the rehearsal on its lab, for the time per wave and the freeze times.
DEFAULT = {"bench_datapath": ["--rehearsal"]}
QUICK = {"bench_engine": ["--units", "40"], "bench_datapath": ["--size", "small", "--rehearsal"], "bench_estate": ["--repeat", "5"],
         "bench_plan": ["--repeat", "5"], "bench_fuzz": ["--examples", "100"], "bench_torture": ["--kills", "20"], "bench_stacks": ["--repeat", "2", "--cli-repeat", "1"], "bench_journal": ["--repeat", "1"], "bench_lab": ["--size", "small"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names (e.g. bench_estate)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out_dir = ROOT / ".cutover" / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    status = 0
    for bench in sorted(HERE.glob("bench_*.py")):
        name = bench.stem
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, str(bench), *(QUICK.get(name, []) if args.quick else DEFAULT.get(name, []))]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.monotonic() - t0
        peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
        (out_dir / f"{name}.txt").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        print(proc.stdout, end="", flush=True)
        if proc.returncode != 0:
            status = 1
            rows.append((name, "FAILED", f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:100]}"))
        figures = [line.strip() for line in proc.stdout.splitlines() if FIGURE.search(line) and len(line.strip()) < 160]
        for line in figures:
            rows.append((name, "", line))
        rows.append((name, "wall time", f"{wall:.1f} s (largest child process so far: {peak:.0f} MB RSS)"))
    width = max((len(r[0]) for r in rows), default=10)
    print("\n| benchmark | figure |\n| --- | --- |")
    for name, label, value in rows:
        print(f"| {name:<{width}} | {(label + ': ' if label else '') + value} |")
    return status


if __name__ == "__main__":
    sys.exit(main())
