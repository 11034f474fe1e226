"""The `stack` action: run `up` (or another operation) on a Pulumi stack with config overrides.

A runbook includes platform stages with it, e.g. widening the units a shared system serves on
the unified platform as a wave's units are cut over:

    do:   {stack: {env: production, config: {units: {docs: [phuong-sai-gon, ...]}}}}

The overrides apply to this run only (the committed Pulumi.<env>.yaml is not rewritten). The
stack is rendered and checked under mocks first; where no Pulumi engine exists the action
refuses with the same clear InvalidInput as `cutover stack up` (nothing is executed). Like
every action it knows nothing of the engine that calls it: it returns an outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cutover.errors import RunFailed
from cutover.stacks import Engine


@dataclass(frozen=True)
class StackOutcome:
    env: str
    operation: str
    ok: bool
    message: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0

    def as_evidence(self) -> dict[str, Any]:
        return {"env": self.env, "operation": self.operation, "ok": self.ok, "message": self.message, "changes": self.summary.get("changes", {}), "elapsed": round(self.elapsed, 3)}


def serving(config: Mapping[str, Any], systems: Iterable[str], units: Iterable[str]) -> dict[str, Any]:
    """`config` with `units` added to what each of `systems` serves (order kept, no repeats)."""
    out = dict(config)
    served = {k: list(v) for k, v in (out.get("units") or {}).items()}
    for system in systems:
        current = served.setdefault(system, [])
        current += [u for u in units if u not in current]
    out["units"] = served
    return out


def run_stack(
    env: str,
    config: Mapping[str, Any] | None = None,
    *,
    root: Path,
    work_dir: Path,
    operation: str = "up",
    on_output: Callable[[str], None] | None = None,
) -> StackOutcome:
    """Run `operation` on stack `env` with `config` overrides.

    Raises InvalidInput (no engine, bad config: nothing ran) and LockHeld (another update of
    the stack is in progress); a failed check or engine run is a failed outcome.
    """
    started = time.perf_counter()
    engine = Engine(root=Path(root), env=env, work_dir=Path(work_dir), overrides=dict(config or {}))
    try:
        summary = engine.run(operation, on_output=on_output)
    except RunFailed as exc:
        return StackOutcome(env=env, operation=operation, ok=False, message=str(exc), elapsed=time.perf_counter() - started)
    result = summary.get("result", "succeeded")
    return StackOutcome(env=env, operation=operation, ok=result in ("succeeded", None), message=str(result), summary=summary, elapsed=time.perf_counter() - started)
