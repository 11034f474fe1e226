"""Journal write rate per backend, shaped like a run: 168 units x 6 steps in batches of 20.

Per batch: one `record_intent` (20 units x 6 steps), then one `record_outcome` per unit-step
(each its own transaction, as the engine journals job events as they stream in). Also the
same outcomes through `record_outcomes` (one transaction per batch) for comparison.

    python tests/benchmarks/bench_journal.py [--repeat 3] [--no-postgres]

Backends: SQLite with synchronous=normal (the default) and =full, and PostgreSQL (a cluster of
our own on loopback with the server's durable defaults: fsync on, synchronous_commit on).
Prints medians over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from pg import LocalPostgres, find_binaries  # noqa: E402

from cutover.journal import open_journal  # noqa: E402

UNITS = [f"{26000 + i}" for i in range(168)]
STEPS = ["precheck", "precopy", "freeze", "catchup", "reconcile", "switch"]
BATCH = 20


def one_run(url: str, batched: bool) -> dict[str, float]:
    with open_journal(url) as journal:
        run = journal.create_run(runbook="docs", env="bench", plan_hash="h" * 64, plan={"units": UNITS}, started_by="bench")
        journal.set_run_status(run.id, "running", actor="bench")
        intent_s = outcome_s = 0.0
        for n, start in enumerate(range(0, len(UNITS), BATCH)):
            units = UNITS[start:start + BATCH]
            t0 = time.perf_counter()
            journal.record_intent(run.id, wave="all", batch=f"all-{n + 1}", units=units, steps=STEPS)
            t1 = time.perf_counter()
            if batched:
                journal.record_outcomes(run.id, [dict(unit=u, step=s, status="done") for u in units for s in STEPS])
            else:
                for unit in units:
                    for step in STEPS:
                        journal.record_outcome(run.id, unit=unit, step=step, status="done", evidence_digest="sha256:" + "0" * 64)
            t2 = time.perf_counter()
            intent_s += t1 - t0
            outcome_s += t2 - t1
        assert all(s.done for s in journal.unit_step_state(run.id).values())
    outcomes = len(UNITS) * len(STEPS)
    return {"total_s": intent_s + outcome_s, "intent_ms_per_batch": 1000 * intent_s / -(-len(UNITS) // BATCH),
            "outcomes_per_s": outcomes / outcome_s}


def measure(name: str, url_factory, repeat: int) -> None:
    for batched in (False, True):
        results = [one_run(url_factory(), batched) for _ in range(repeat)]
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        mode = "record_outcomes (1 tx/batch)" if batched else "record_outcome (1 tx/outcome)"
        print(f"{name:<26} {mode:<31} outcomes/s {med['outcomes_per_s']:>8.0f}   intent {med['intent_ms_per_batch']:>6.1f} ms/batch"
              f"   run total {med['total_s']:>6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(f"journal write rate: {len(UNITS)} units x {len(STEPS)} steps = {len(UNITS) * len(STEPS)} unit-steps, "
          f"batches of {BATCH}, median of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10**6))
        for sync in ("normal", "full"):
            measure(f"sqlite synchronous={sync}", lambda: f"sqlite:///{tmp}/bench-{next(counter)}.db?synchronous={sync}", args.repeat)
    if args.no_postgres:
        return
    if find_binaries() is None:
        print("postgresql: skipped (no PostgreSQL binaries)")
        return
    with LocalPostgres(durable=True) as pg:
        measure("postgresql (fsync on)", pg.create_database, args.repeat)


if __name__ == "__main__":
    main()
