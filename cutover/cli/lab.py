"""`cutover lab up | status | down | reset`: the local rehearsal estate (see cutover/lab.py)."""

from __future__ import annotations

import click

from cutover.cli.context import Session, pass_session

SIZE_OPTION = click.option("--size", type=click.Choice(["small", "full"]), default="small", show_default=True,
                           help="small: the lab inventory's old units; full: all 442 old units of production, realistic volumes.")
STRATEGY_OPTION = click.option("--strategy", type=click.Choice(["mitogen", "linear"]), default=None,
                               help="Ansible strategy.  [default: mitogen when installed, else linear]")


def _lab(session: Session):
    from cutover.lab import Lab

    session.env_dir  # noqa: B018 - fails with the known inventories if --env names none
    return Lab(session.root, env=session.env)


@click.group()
def lab() -> None:
    """The lab: every site on this machine, built by playbooks/hosting.yml with inventories/lab."""


@lab.command()
@SIZE_OPTION
@STRATEGY_OPTION
@pass_session
def up(session: Session, size: str, strategy: str | None) -> None:
    """Build (or bring up to date) every site, then seed the legacy sites. Idempotent: a second run changes nothing."""
    from cutover import lab as lab_

    result = lab_.up(_lab(session), size, strategy=strategy)
    if session.output == "json":
        session.emit_json(result)
        return
    run = result["hosting"]
    session.say(f"hosting ({run['strategy']}): {run['status']} in {run['seconds']} s — changed={run['changed']} ok={run['ok']} "
                f"failed={run['failed']} unreachable={run['unreachable']}")
    session.table(None, ["host", "ok", "changed", "failed", "skipped"],
                  [[h, c["ok"], c["changed"], c["failed"], c["skipped"]] for h, c in sorted(run["per_host"].items())])
    seed = result["seed"]
    if seed:
        session.say(f"seeded ({seed['size']}) in {seed['seconds']} s: {seed['units']} old units and departments, "
                    f"{seed['rows']} rows, {seed['files']} attachment files ({seed['file_bytes'] / 1e6:.1f} MB)")
    else:
        session.say(f"seed: unchanged (the legacy sites hold the {result['seeded_size']} seed; `cutover lab reset` restores it)")


@lab.command()
@pass_session
def status(session: Session) -> None:
    """Each site's services (PostgreSQL, app, nginx: up/down by pid) and what it holds."""
    from cutover import lab as lab_

    result = lab_.status(_lab(session))
    if session.output == "json":
        session.emit_json(result)
        return
    rows = []
    for s in result["sites"]:
        svc = s["services"]
        holds = s["holds"]
        held = "—" if not holds else holds.get("error") or (
            f"{holds.get('docs.documents', 0)} documents, {holds.get('procedures.dossiers', 0)} dossiers, "
            f"{holds.get('units', 0)} units" + (f", {holds['docs.frozen_units']} frozen" if holds.get("docs.frozen_units") else "")
            + (f", routes {holds['exchange.routes']}" if "exchange.routes" in holds else ""))
        rows.append([s["site"], s["address"]] + [f"up ({svc[n]['pid']})" if svc[n]["up"] else "down" for n in ("postgres", "app", "nginx")] + [held])
    session.table(f"lab ({result['seeded_size'] or 'not seeded'})", ["site", "address", "postgres", "app", "nginx", "holds"], rows)


@lab.command()
@click.option("--site", default=None, help="Stop only this site (hcm, bd, brvt, unified).")
@pass_session
def down(session: Session, site: str | None) -> None:
    """Stop what `lab up` started, by the pids in the lab's pidfiles (nothing else)."""
    from cutover import lab as lab_

    result = lab_.down(_lab(session), site)
    if session.output == "json":
        session.emit_json(result)
        return
    if not result["stopped"]:
        session.say("nothing of the lab was running")
    for s in result["stopped"]:
        session.say(f"stopped {s['site']} {s['service']} (pid {s['pid']})")


@lab.command()
@click.option("--size", type=click.Choice(["small", "full"]), default=None, help="Seed this size instead of the one seeded last.")
@STRATEGY_OPTION
@pass_session
def reset(session: Session, size: str | None, strategy: str | None) -> None:
    """Restore the seeded state: every route back to legacy, no freeze, the seeded records and files only."""
    from cutover import lab as lab_

    result = lab_.reset(_lab(session), size, strategy=strategy)
    if session.output == "json":
        session.emit_json(result)
        return
    seed = result["seed"]
    session.say(f"reset to the {seed['size']} seed in {seed['seconds']} s: {seed['rows']} rows, {seed['files']} files; "
                f"hosting changed={result['hosting']['changed']}")


# The load generator and the rehearsal summary live in their own module.
from cutover.cli.loadgen import load, summary  # noqa: E402

lab.add_command(load)
lab.add_command(summary)
