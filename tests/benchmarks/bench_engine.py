"""Benchmark: the engine's overhead over plain Ansible, and the journal's write rate.

168 units (the production estate's wards, communes and special zone, all unblocked with
synthetic partition rules, local connection) x 6 no-op steps with a check gate after the
third, in batches of 20:

- `cutover run` (one ansible-runner invocation per batch and segment, every unit-step
  journaled to SQLite as its event arrives), with the linear and with the Mitogen strategy;
- plain `ansible-playbook` over the same inventory and the same task, one play with
  `serial: 20`, forks 20, with the linear and with the Mitogen strategy.

Printed, all measured in this one run: the ratio with the same strategy on both sides (aim at
most 1.10), cutover with Mitogen against plain linear (aim at most 0.40), and the journal's
write rate (writes per second of time spent writing, and per second of the run).

    python tests/benchmarks/bench_engine.py [--units 168] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "tests" / "fixtures" / "engine"))

from cutover.actions.ansible import ansible_bin_dir, mitogen_strategy_dir, write_inventory  # noqa: E402
from cutover.ansible_inventory import build_inventory  # noqa: E402
from cutover.estate import COMMUNE_KINDS, load_estate  # noqa: E402

STEPS = 6
GATE_AFTER = 3
BATCH = 20


def bench_project(tmp: Path, units: int) -> tuple[Path, list[str]]:
    """Production's estate with a synthetic partition rule for every split old unit (none blocked)."""
    root = tmp / "project"
    shutil.copytree(PROJECT / "inventories" / "production", root / "inventories" / "bench")
    shutil.copytree(PROJECT / "tests" / "fixtures" / "engine" / "playbooks", root / "playbooks")
    (root / "runbooks").mkdir()
    env_dir = root / "inventories" / "bench"
    estate = load_estate(env_dir)
    rules = []
    for old in estate.old_units.values():
        if old.split:
            rules.append({"old_unit": {"name": old.name, "district": old.district}, "by": "residential_quarter",
                          "successors": {s: [f"Khu phố {i + 1}"] for i, s in enumerate(old.successors)}})
    (env_dir / "partition_rules.yml").write_text(yaml.safe_dump({"rules": rules}, allow_unicode=True, sort_keys=False))
    hosts = yaml.safe_load((env_dir / "hosts.yml").read_text())
    for group in hosts["all"]["children"].values():
        for name in group["hosts"]:
            group["hosts"][name] = {}
    hosts["all"]["vars"] = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    (env_dir / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    estate = load_estate(env_dir)
    chosen = [u.code for u in sorted(estate.units.values(), key=lambda u: (u.seq or 0, u.code)) if u.kind in COMMUNE_KINDS and not u.blocked][:units]
    steps = []
    for n in range(1, STEPS + 1):
        step = {"id": f"step{n}", "do": {"playbook": "noop.yml"}, "undo": {"playbook": "noop.yml"}, "timeout": 600}
        if n == GATE_AFTER:
            step["gates"] = [{"reconcile": {"playbook": "noop.yml"}}]
        steps.append(step)
    runbook = {
        "name": "bench", "description": "engine benchmark", "system": "docs", "on_failure": "rollback_batch", "steps": steps,
        "waves": [{"id": "all", "select": {"codes": chosen}, "batch": BATCH, "max_parallel_per_site": BATCH, "max_failed": 0,
                   "window": {"not_before": "2020-01-01", "deadline": "2099-12-31"}}],
    }
    (root / "runbooks" / "bench.yml").write_text(yaml.safe_dump(runbook, sort_keys=False, allow_unicode=True))
    inventory = write_inventory(build_inventory(estate), root / "plain-inventory.json")
    plays = [{"name": "plain", "hosts": ",".join(chosen) if len(chosen) < 20 else "commune_level", "serial": BATCH, "gather_facts": False,
              "tasks": [{"name": f"step{n}" if n <= STEPS else "gate", "ansible.builtin.command": "true", "changed_when": False}
                        for n in range(1, STEPS + 2)]}]
    (root / "plain.yml").write_text("# Purpose: the plain-Ansible side of the engine benchmark\n" + yaml.safe_dump(plays, sort_keys=False))
    return root, chosen


def strategy_env(strategy: str) -> dict[str, str]:
    if strategy == "mitogen":
        return {"ANSIBLE_STRATEGY_PLUGINS": str(mitogen_strategy_dir()), "ANSIBLE_STRATEGY": "mitogen_linear"}
    return {"ANSIBLE_STRATEGY": "linear"}


def time_plain(root: Path, units: list[str], strategy: str, fork: bool = False) -> float:
    """Plain ansible-playbook; `fork`: Mitogen with a fork per task, as cutover runs it."""
    env = {**os.environ, "PATH": f"{ansible_bin_dir()}{os.pathsep}{os.environ['PATH']}", "ANSIBLE_DEPRECATION_WARNINGS": "False", **strategy_env(strategy)}
    started = time.perf_counter()
    subprocess.run([str(ansible_bin_dir() / "ansible-playbook"), "-i", str(root / "plain-inventory.json"), str(root / "plain.yml"),
                    "--limit", ",".join(units), "--forks", str(BATCH), *(["-e", "mitogen_task_isolation=fork"] if fork else [])],
                   cwd=root, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def time_cutover(root: Path, strategy: str, n: int) -> tuple[float, dict]:
    state = root / f"state-{strategy}-{n}.db"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cutover", "--root", str(root), "--env", "bench", "--state", f"sqlite:///{state}",
                           "--actor", "bench", "--output", "json", "run", "bench", "--non-interactive", "--yes", "--strategy", strategy],
                          cwd=root, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"cutover run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["run"]["status"] == "succeeded", report
    return elapsed, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=168)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--strategy", action="append", choices=["linear", "mitogen"], help="only these strategies (repeatable)")
    args = parser.parse_args()
    strategies = args.strategy or (["linear"] + (["mitogen"] if mitogen_strategy_dir() else []))
    with tempfile.TemporaryDirectory(prefix="cutover-bench-engine-") as tmp:
        root, units = bench_project(Path(tmp), args.units)
        print(f"{len(units)} units x {STEPS} no-op steps, a check gate after step {GATE_AFTER}, batches of {BATCH}; strategies: {', '.join(strategies)}")
        times: dict[str, list[float]] = {}
        journal: list[dict] = []
        for n in range(args.repeat):
            for strategy in strategies:
                times.setdefault(f"plain {strategy}", []).append(time_plain(root, units, strategy))
                if strategy == "mitogen":
                    times.setdefault("plain mitogen fork", []).append(time_plain(root, units, strategy, fork=True))
                elapsed, report = time_cutover(root, strategy, n)
                times.setdefault(f"cutover {strategy}", []).append(elapsed)
                journal.append({"elapsed": elapsed, "strategy": strategy, **report})
        med = {k: statistics.median(v) for k, v in times.items()}
        for name, value in med.items():
            print(f"  {name:<18} median {value:7.1f} s  ({', '.join(f'{x:.1f}' for x in times[name])})")
        for strategy in strategies:
            print(f"ratio cutover/plain, both {strategy}: {med[f'cutover {strategy}'] / med[f'plain {strategy}']:.2f}  (aim <= 1.10)")
        if "mitogen" in strategies:
            print(f"ratio cutover/plain, both mitogen with a fork per task (as cutover runs it): "
                  f"{med['cutover mitogen'] / med['plain mitogen fork']:.2f}  (aim <= 1.10)")
        if {"mitogen", "linear"} <= set(strategies):
            print(f"ratio cutover mitogen / plain linear: {med['cutover mitogen'] / med['plain linear']:.2f}  (aim <= 0.40)")
        for j in journal:
            print(f"journal ({j['strategy']}): {j['journal_writes']} transactions holding {j['journal_records']} records "
                  f"(unit-step outcomes, gate results, intents, statuses) in {j['journal_seconds']:.2f} s of writing: "
                  f"{j['journal_writes'] / j['journal_seconds']:.0f} transactions/s, {j['journal_records'] / j['journal_seconds']:.0f} records/s while writing, "
                  f"{j['journal_records'] / j['elapsed']:.1f} records per second of run; {j['invocations']} ansible-runner invocations")


if __name__ == "__main__":
    main()
