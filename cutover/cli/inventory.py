"""`cutover inventory ...`: validate and explore the estate of one environment."""

from __future__ import annotations

from pathlib import Path

import click

from cutover.cli.context import Session, pass_session
from cutover.errors import InvalidInput, Problem
from cutover.estate import COMMUNE_KINDS, PROVINCES, UNIT_KINDS


@click.group()
def inventory() -> None:
    """Validate and explore the estate (inventories/<env>/): sites, systems, units, lineage."""


@inventory.command()
@pass_session
def validate(session: Session) -> None:
    """Load and validate the whole inventory; list every problem with file and row/key (exit 2)."""
    estate = session.estate
    stats = estate.stats()
    if session.output == "json":
        session.emit_json({"valid": True, "env": estate.env, "digest": estate.digest, "stats": stats})
        return
    session.say(
        f"{estate.root}: valid — {stats['commune_level_units']} commune-level units, {stats['departments']} departments, "
        f"{stats['old_units']} old units ({stats['split_old_units']} split), {stats['blocked_units']} blocked, "
        f"{stats['pending_identifier_codes']} identifier codes pending"
    )


@inventory.command()
@click.option("--kind", type=click.Choice(UNIT_KINDS), multiple=True, help="Only units of this kind (repeatable).")
@click.option("--province", type=click.Choice(PROVINCES), multiple=True, help="Only units of this former province (repeatable).")
@click.option("--district", multiple=True, help="Only units formed (partly) from this old district, e.g. 'Quận 1'.")
@click.option("--blocked", is_flag=True, help="Only units that cannot be cut over yet.")
@click.option("--pending", "pending", is_flag=True, help="Only units whose identifier code is pending.")
@click.option("--commune-level", is_flag=True, help="Only wards, communes and the special zone.")
@pass_session
def units(session: Session, kind: tuple[str, ...], province: tuple[str, ...], district: tuple[str, ...], blocked: bool, pending: bool, commune_level: bool) -> None:
    """List units, filtered."""
    from unicodedata import normalize

    districts = {normalize("NFC", d) for d in district}
    selected = [
        u
        for u in session.estate.units.values()
        if (not kind or u.kind in kind)
        and (not province or u.province in province)
        and (not districts or districts & set(u.districts))
        and (not blocked or u.blocked)
        and (not pending or u.identifier is None)
        and (not commune_level or u.kind in COMMUNE_KINDS)
    ]
    if session.output == "json":
        session.emit_json({"env": session.env, "count": len(selected), "units": [u.as_dict() for u in selected]})
        return
    rows = [[u.code, u.name, u.kind, u.province, "; ".join(u.districts), len(u.lineage), u.identifier_code, "; ".join(u.blockers)] for u in selected]
    session.table(f"{len(selected)} units ({session.env})", ["code", "name", "kind", "province", "districts", "old units", "identifier", "blocked by"], rows)


@inventory.command()
@click.argument("unit")
@pass_session
def show(session: Session, unit: str) -> None:
    """One unit: its lineage (old units and districts), split partners, identifier code, blockers."""
    estate = session.estate
    u = estate.unit(unit)
    partners = estate.split_partners(u)
    if session.output == "json":
        data = u.as_dict()
        data["split_partners"] = [{"old_unit": {"name": k[0], "district": k[1]}, "other_successors": v} for k, v in partners.items()]
        session.emit_json(data)
        return
    session.say(f"{u.code}: {u.name} ({u.kind}, former {u.province}, site {u.site})")
    session.say(f"identifier code: {u.identifier_code}" + (f" ({u.identifier.decision}, {u.identifier.date})" if u.identifier else ""))
    if u.districts:
        session.say(f"former district(s): {'; '.join(u.districts)}")
    rows = []
    for o in u.lineage:
        others = partners.get(o.key, [])
        rows.append([o.name, o.district, "split" if o.split else "whole", ", ".join(others)])
    if rows:
        session.table("lineage", ["old unit", "district", "", "other successors"], rows)
    for b in u.blockers:
        session.say(f"blocked: {b}")


@inventory.command()
@pass_session
def stats(session: Session) -> None:
    """Counts: units by kind and former province, old units, splits, blocked, pending codes."""
    s = session.estate.stats()
    if session.output == "json":
        session.emit_json(s)
        return
    rows = [
        ["commune-level units", s["commune_level_units"]],
        *[[f"  {k}", v] for k, v in s["by_kind"].items()],
        *[[f"  former {k}", v] for k, v in s["by_former_province"].items()],
        ["departments and boards", s["departments"]],
        ["old units", s["old_units"]],
        ["  split", s["split_old_units"]],
        ["partition rules", s["partition_rules"]],
        ["blocked units", s["blocked_units"]],
        ["identifier codes pending", s["pending_identifier_codes"]],
        ["sites / shared systems", f"{s['sites']} / {s['systems']}"],
    ]
    session.table(f"estate {s['env']}", ["", "count"], rows)


@inventory.group()
def codes() -> None:
    """Electronic identifier codes assigned during the cutover."""


@codes.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate and show the changes; write nothing.")
@pass_session
def import_(session: Session, file: Path, dry_run: bool) -> None:
    """Validate FILE (unit,identifier_code,decision,date) and merge it into identifier_codes.csv.

    Any problem (malformed code, unknown unit, a code given to two units) exits 2 and
    changes nothing; otherwise the merge is written atomically.
    """
    from cutover.codes import import_codes

    if not file.is_file():
        raise InvalidInput([Problem(str(file), "", "file not found")])
    changes = import_codes(session.estate, file, dry_run=dry_run)
    changed = [c for c in changes if c.kind != "unchanged"]
    if changed and not dry_run:
        from cutover.audit import digest_bytes
        from cutover.journal import open_journal

        with open_journal(session.state) as journal:
            journal.append_event("inventory.codes_imported", actor=session.actor, data={
                "env": session.env, "file_digest": digest_bytes(file.read_bytes()),
                "units": [c.unit for c in changed], "changes": [c.as_dict() for c in changed]})
    if session.output == "json":
        session.emit_json({"dry_run": dry_run, "changes": [c.as_dict() for c in changes]})
        return
    rows = [[c.unit, c.kind, c.before or "pending", c.after, c.decision] for c in changes]
    session.table(f"{'would change' if dry_run else 'imported'}: {sum(c.kind != 'unchanged' for c in changes)} of {len(changes)}", ["unit", "change", "before", "after", "decision"], rows)


@inventory.command()
@click.option("--list", "list_", is_flag=True, help="The whole inventory (Ansible's dynamic-inventory JSON).")
@click.option("--host", default=None, help="One host's variables.")
@pass_session
def ansible(session: Session, list_: bool, host: str | None) -> None:
    """The estate as Ansible inventory JSON (sites and units as hosts). Always JSON."""
    from cutover.ansible_inventory import build_inventory

    inv = build_inventory(session.estate)
    if host:
        session.emit_json(inv["_meta"]["hostvars"].get(host, {}))
    else:
        session.emit_json(inv)
