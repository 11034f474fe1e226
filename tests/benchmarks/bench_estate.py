"""Benchmark: load and validate the production estate (aim: median under 0.3 s).

Run: python tests/benchmarks/bench_estate.py [--repeat N]
Prints one line per measure; `--json` prints them as a JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cutover.ansible_inventory import build_inventory  # noqa: E402
from cutover.estate import load_estate  # noqa: E402


def measure(repeat: int) -> dict[str, float]:
    prod = ROOT / "inventories" / "production"
    load_estate(prod)  # warm the file cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        load_estate(prod)
        times.append(time.perf_counter() - t)
    estate = load_estate(prod)
    inv_times = []
    for _ in range(repeat):
        t = time.perf_counter()
        build_inventory(estate)
        inv_times.append(time.perf_counter() - t)
    tracemalloc.start()
    load_estate(prod)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    median = statistics.median(times)
    return {
        "estate_load_median_s": round(median, 4),
        "estate_load_p90_s": round(sorted(times)[int(0.9 * (len(times) - 1))], 4),
        "estate_load_vs_target_0.3s": round(median / 0.3, 3),
        "ansible_inventory_median_s": round(statistics.median(inv_times), 4),
        "estate_load_peak_mib": round(peak / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
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
