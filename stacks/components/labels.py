"""The labels every workload carries; selectors are built from them, nowhere else."""

from __future__ import annotations

APP = "app"
DATABASE = "database"


def selector(system: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": system, "app.kubernetes.io/component": component}


def labels(system: str, component: str, version: str) -> dict[str, str]:
    return {**selector(system, component), "app.kubernetes.io/part-of": "cutover", "app.kubernetes.io/version": version}
