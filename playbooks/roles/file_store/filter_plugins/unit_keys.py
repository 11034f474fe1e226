"""The `unit` key a site's data is filed under, from the inventory's unit host vars."""

from __future__ import annotations

import re
import unicodedata


def ascii_slug(text: str) -> str:
    """`Phường Đa Kao` -> `phuong-da-kao` (the same rule as cutover.estate.ascii_slug)."""
    text = text.replace("đ", "d").replace("Đ", "D")
    text = unicodedata.normalize("NFD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def legacy_unit_key(name: str, district: str) -> str:
    """An old unit's key in the legacy systems: `phuong-da-kao--quan-1`."""
    return f"{ascii_slug(name)}--{ascii_slug(district)}"


def unit_store_keys(unit_hostvars: list[dict], site_role: str) -> list[str]:
    """Sorted unique keys: new unit codes on unified; old unit keys (or the unit code of a unit
    without old units, a department) on a legacy site."""
    keys: set[str] = set()
    for host in unit_hostvars:
        code = host.get("cutover_unit") or host.get("inventory_hostname")
        old_units = host.get("cutover_old_units") or []
        if site_role == "unified" or not old_units:
            keys.add(code)
        else:
            keys.update(legacy_unit_key(o["name"], o["district"]) for o in old_units)
    return sorted(keys)


def store_dirs(systems: dict[str, list[str]]) -> list[str]:
    """`{docs: [attachments]}` -> `["docs/attachments"]`."""
    return [f"{system}/{store}" for system, stores in systems.items() for store in stores]


class FilterModule:
    def filters(self):
        return {
            "cutover_unit_store_keys": unit_store_keys,
            "cutover_legacy_unit_key": legacy_unit_key,
            "cutover_store_dirs": store_dirs,
        }
