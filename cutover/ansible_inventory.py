"""The estate as an Ansible inventory (dynamic-inventory JSON).

Sites are hosts (the servers of `hosts.yml`, grouped `site_<code>`); every unit is a host
named by its code, connecting to its site's primary server (the first host of the site's
group), with its site, kind and former province as variables and groups:
`site_<code>`, `kind_<kind>`, `province_<code>`, `commune_level`, `departments`, `units`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cutover.errors import InvalidInput, Problem
from cutover.estate import Estate

CONNECTION_VARS = ("ansible_host", "ansible_connection", "ansible_user", "ansible_port", "ansible_python_interpreter", "ansible_ssh_common_args")


def _site_servers(estate: Estate) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    path = estate.root / "hosts.yml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise InvalidInput([Problem(str(path), "", "file not found")]) from None
    all_ = raw.get("all", {}) if isinstance(raw, dict) else {}
    children = all_.get("children", {}) or {}
    servers: dict[str, dict[str, Any]] = {}
    problems = []
    for site in estate.sites:
        group = children.get(f"site_{site}")
        hosts = (group or {}).get("hosts") or {}
        if not hosts:
            problems.append(Problem(str(path), f"all.children.site_{site}.hosts", f"site {site} has no server"))
            continue
        servers[site] = {name: dict(vars_ or {}) for name, vars_ in hosts.items()}
    if problems:
        raise InvalidInput(problems)
    return servers, dict(all_.get("vars") or {})


def build_inventory(estate: Estate) -> dict[str, Any]:
    servers, all_vars = _site_servers(estate)
    hostvars: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[str, Any]] = {"all": {"children": ["ungrouped", "sites", "units"], "vars": all_vars}}
    groups["sites"] = {"children": [f"site_{s}" for s in estate.sites]}
    for site, hosts in servers.items():
        groups[f"site_{site}"] = {"hosts": list(hosts), "children": []}
        for name, vars_ in hosts.items():
            hostvars[name] = {**vars_, "cutover_site": site, "cutover_role": "server"}
    for unit in estate.units.values():
        primary_name, primary = next(iter(servers[unit.site].items()))
        host = {k: primary[k] for k in CONNECTION_VARS if k in primary}
        host.setdefault("ansible_host", primary.get("ansible_host", primary_name))
        host.update(
            cutover_role="unit",
            cutover_unit=unit.code,
            cutover_unit_name=unit.name,
            cutover_site=unit.site,
            cutover_site_server=primary_name,
            cutover_kind=unit.kind,
            cutover_province=unit.province,
            cutover_identifier_code=unit.identifier_code,
            cutover_old_units=[{"name": o.name, "district": o.district, "split": o.split} for o in unit.lineage],
            cutover_blockers=list(unit.blockers),
        )
        hostvars[unit.code] = host
        for group in (f"site_{unit.site}", f"kind_{unit.kind}", f"province_{unit.province}", "commune_level" if unit.is_commune_level else "departments"):
            groups.setdefault(group, {"hosts": [], "children": []})["hosts"].append(unit.code)
    for name in [g for g in groups if g.startswith(("kind_", "province_")) or g in ("commune_level", "departments")]:
        groups["units"] = groups.get("units", {"children": []})
        groups["units"]["children"].append(name)
    groups["_meta"] = {"hostvars": hostvars}
    return groups


def script_main(env_dir: Path) -> None:
    """Entry point of `inventories/<env>/inventory.py`: Ansible's --list / --host protocol."""
    import json
    import sys

    from cutover.estate import load_estate

    args = sys.argv[1:]
    try:
        inventory = build_inventory(load_estate(env_dir))
    except InvalidInput as exc:
        for p in exc.problems:
            print(f"error: {p}", file=sys.stderr)
        raise SystemExit(2) from None
    if args[:1] == ["--host"] and len(args) > 1:
        print(json.dumps(inventory["_meta"]["hostvars"].get(args[1], {}), ensure_ascii=False))
    else:
        print(json.dumps(inventory, ensure_ascii=False))
