"""`cutover lab load` (the load generator) and `cutover lab summary RUN` (a rehearsal's summary).

Both are plain click commands, attached to the `lab` group by cutover/cli/lab.py.
"""

from __future__ import annotations

import signal
from pathlib import Path

import click

from cutover.cli.context import Session, pass_session


@click.command()
@click.option("--units", required=True, help="Unit codes, comma-separated (each is written through its legacy site's front door).")
@click.option("--rate", type=float, default=10.0, show_default=True, help="Writes per second, all units together.")
@click.option("--duration", type=float, default=None, help="Seconds to run (default: until interrupted).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSONL of acknowledged writes; refused and failed writes go next to it (.refused.jsonl, .errors.jsonl).")
@click.option("--pidfile", is_flag=True, help="Note this process's pid next to --out (FILE.pid), for whoever stops it.")
@pass_session
def load(session: Session, units: str, rate: float, duration: float | None, out: Path, pidfile: bool) -> None:
    """Write documents, dossiers and dossier events through the lab's front proxies, as civil servants would."""
    from cutover.lab import Lab
    from cutover.loadgen import LoadGenerator, LoadSpec, front_doors_for, write_pid

    codes = [c.strip() for c in units.split(",") if c.strip()]
    estate = session.estate
    sites = Lab(session.root, env=session.env).sites()
    doors = front_doors_for(codes, {code: u.site for code, u in estate.units.items()}, {s: site.address for s, site in sites.items()})
    generator = LoadGenerator(LoadSpec(doors, rate=rate, out=out, duration=duration))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: generator.stop())
    if pidfile:
        write_pid(out)
    report = generator.run().as_dict()
    if session.output == "json":
        session.emit_json(report)
        return
    session.say(f"{report['acknowledged']} writes acknowledged, {report['refused']} refused (frozen), {report['errors']} errors "
                f"in {report['seconds']} s ({report['rate']}/s); by back end: "
                + ", ".join(f"{k} {v}" for k, v in sorted(report["by_backend"].items())))
    session.say(f"acknowledged: {report['files']['acknowledged']}")


@click.command()
@click.argument("run_id")
@click.option("--loadgen", "loadgen_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A load generator's --out file: check every acknowledged write is in unified.")
@pass_session
def summary(session: Session, run_id: str, loadgen_out: Path | None) -> None:
    """A rehearsal's summary: units migrated, rows and files moved, reconciliation, quarantine, time per wave, freeze times."""
    from cutover.journal import open_journal
    from cutover.lab import Lab
    from cutover.rehearsal import summarize

    journal = open_journal(session.state)
    try:
        result = summarize(journal, run_id, Lab(session.root, env=session.env), loadgen_out=loadgen_out)
    finally:
        journal.close()
    if session.output == "json":
        session.emit_json(result)
        return
    t = result["totals"]
    session.say(f"run {run_id} ({result['status']}): {t['units_migrated']} of {t['units']} units migrated, "
                f"{t['units_rolled_back']} rolled back, {t['units_failed']} failed")
    session.say(f"moved {t['rows']} rows and {t['files']} files ({t['bytes'] / 1e6:.1f} MB); quarantined {t['quarantined']} records "
                f"(in unified: {t['quarantine_in_unified']}); reconciliation equal for {t['reconciled_equal']} of {t['units_migrated']} migrated units")
    f = result["freeze"]
    if f["units"]:
        session.say(f"freeze -> switch per unit: median {f['median_s']:.1f} s, max {f['max_s']:.1f} s ({f['max_unit']}) over {f['units']} units")
    session.table("waves", ["wave", "units", "batches", "seconds"], [[w["wave"], w["units"], w["batches"], f"{w['seconds']:.1f}"] for w in result["waves"]])
    session.table("units", ["unit", "wave", "status", "rows", "files", "quarantined", "reconciled", "freeze s"],
                  [[u["unit"], u["wave"], u["status"], u["rows"], u["files"], u["quarantined"], "equal" if u["reconciled"] else ("—" if u["reconciled"] is None else "DIFFERENT"),
                    "" if u["freeze_s"] is None else f"{u['freeze_s']:.1f}"] for u in result["units"]])
    if result.get("writes"):
        w = result["writes"]
        session.say(f"load generator: {w['acknowledged']} acknowledged writes, {w['found']} found in unified, {w['lost']} lost; "
                    f"{w['refused']} refused during freezes, {w['errors']} errors")
