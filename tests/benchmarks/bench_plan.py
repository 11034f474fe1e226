"""Benchmark: compile every shipped runbook against the production estate (aim: median under
0.5 s, peak memory under 200 MB).

Run: python tests/benchmarks/bench_plan.py [--repeat N] [--json]
Measures, over all runbooks/*.yml together: the compile alone (estate and runbooks loaded
once), loading the runbooks and compiling, and the whole path from files (estate load,
runbook loads, compiles, hashes) as `cutover plan` does it. Peak memory: tracemalloc's peak
during one whole pass, and the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cutover.estate import load_estate  # noqa: E402
from cutover.plan import compile_plan  # noqa: E402
from cutover.runbook import load_runbook  # noqa: E402

TARGET_S = 0.5
TARGET_MB = 200


def _timed(fn, repeat: int) -> list[float]:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def measure(repeat: int) -> dict[str, float | int]:
    prod = ROOT / "inventories" / "production"
    paths = sorted((ROOT / "runbooks").glob("*.yml"))
    estate = load_estate(prod)
    books = [load_runbook(p, estate, ROOT) for p in paths]

    def compile_only() -> None:
        for b in books:
            compile_plan(estate, b)

    def load_and_compile() -> None:
        for p in paths:
            compile_plan(estate, load_runbook(p, estate, ROOT))

    def from_files() -> None:
        e = load_estate(prod)
        for p in paths:
            compile_plan(e, load_runbook(p, e, ROOT)).to_dict()

    from_files()  # warm caches and imports
    compile_times = _timed(compile_only, repeat)
    load_times = _timed(load_and_compile, repeat)
    whole_times = _timed(from_files, repeat)
    tracemalloc.start()
    from_files()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole = statistics.median(whole_times)
    units = sum(len(w.units) + len(w.blocked) for b in books for w in compile_plan(estate, b).waves)
    return {
        "runbooks": len(paths),
        "units_planned": units,
        "compile_median_s": round(statistics.median(compile_times), 4),
        "load_and_compile_median_s": round(statistics.median(load_times), 4),
        "from_files_median_s": round(whole, 4),
        "from_files_p90_s": round(sorted(whole_times)[int(0.9 * (len(whole_times) - 1))], 4),
        "from_files_vs_target_0.5s": round(whole / TARGET_S, 3),
        "tracemalloc_peak_mib": round(peak / 2**20, 2),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "max_rss_vs_target_200mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / TARGET_MB, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.repeat)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:32} {v}")


if __name__ == "__main__":
    main()
