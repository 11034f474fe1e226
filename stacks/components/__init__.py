"""Components of the unified platform's stack; `compose` puts them together for an estate."""

from __future__ import annotations

from typing import Any

import pulumi

from components.front_door import FrontDoor
from components.platform import Platform
from components.settings import StackSettings
from components.shared_system import SharedSystemService


def served_units(settings: StackSettings, estate: Any, system: str) -> list:
    """The units a system serves on the unified platform: the `units` override, else all."""
    if system in settings.units:
        return [estate.units[c] for c in settings.units[system]]
    return list(estate.units.values())


def compose(settings: StackSettings, estate: Any) -> dict[str, Any]:
    """Declare every resource of the platform for `estate`; return the stack's outputs."""
    systems = list(estate.systems)
    platform = Platform("platform", settings, systems)
    services = {}
    for code in systems:
        ns = platform.namespaces[code]
        services[code] = SharedSystemService(
            estate.systems[code], settings, served_units(settings, estate, code), opts=pulumi.ResourceOptions(depends_on=[ns])
        )
    front_door = FrontDoor("front-door", settings, systems)
    return {
        "url": front_door.url,
        "namespaces": {code: settings.namespace(code) for code in systems},
        "routes": {code: f"{front_door.url}{settings.route(code)}" for code in systems},
        "units_served": {code: len(s.units) for code, s in services.items()},
        "estate_digest": estate.digest,
    }
