"""The plan: what a runbook will do to the estate, wave by wave, batch by batch, unit by unit.

`compile_plan(estate, runbook)` is pure and deterministic: the same estate and runbook give the
same plan and the same `Plan.hash`. The hash covers the canonical JSON of what will run
(waves, batches, blocked units, steps, final gates) and the content of its inputs (the
estate's digest, the runbook file's bytes, the referenced playbooks' bytes). The forecast and
the calendar conflicts are advice derived from the same inputs and are left out of the hash,
so that filling in measured batch durations later never changes the identity of a run.

Units a wave selects but that cannot be cut over (an estate blocker such as a missing
partition rule; a pending identifier code when the runbook requires one) are in the wave's
`blocked` list, with every reason, and in no batch. Batches are cut in a stable unit order
(departments and boards, then wards and communes by their units.csv sequence) and never hold
more than `max_parallel_per_site` units of one site.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from cutover.errors import InvalidInput, Problem
from cutover.estate import Estate, Unit
from cutover.runbook import FinalGate, Runbook, Step, Wave, Window, resolve_share, select_units, unit_order

PLAN_FORMAT = 1
PENDING_CODE_REASON = "identifier code pending: this runbook requires an assigned identifier code"


@dataclass(frozen=True)
class BlockedUnit:
    code: str
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class PlanBatch:
    id: str
    wave: str
    units: tuple[str, ...]
    sites: tuple[tuple[str, int], ...] = ()  # (site, units of it in the batch), by site code

    def __len__(self) -> int:
        return len(self.units)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "wave": self.wave, "units": list(self.units), "sites": dict(self.sites)}


@dataclass(frozen=True)
class Forecast:
    """Whether a wave's batches fit in its window, from a per-batch duration.

    Waves run in order, so a wave starts on its `not_before` or on the day after the previous
    wave's forecast finish, whichever is later. A day holds as many whole batches as fit in
    the window's hours.
    """

    batch_minutes: float | None
    source: str  # "measured", "declared" (wave or runbook), or "none"
    batches: int
    minutes_per_day: int
    batches_per_day: int | None = None
    start: date | None = None
    finish: date | None = None
    days_needed: int | None = None
    days_available: int | None = None
    fits: bool | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_minutes": self.batch_minutes,
            "source": self.source,
            "batches": self.batches,
            "minutes_per_day": self.minutes_per_day,
            "batches_per_day": self.batches_per_day,
            "start": self.start.isoformat() if self.start else None,
            "finish": self.finish.isoformat() if self.finish else None,
            "days_needed": self.days_needed,
            "days_available": self.days_available,
            "fits": self.fits,
            "note": self.note,
        }


@dataclass(frozen=True)
class Conflict:
    """A calendar or scope problem the plan found: advice, not a load error."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "message": self.message}


@dataclass(frozen=True)
class PlanWave:
    id: str
    index: int
    description: str
    window: Window
    batch_size: int
    batch_spec: int | str
    max_parallel_per_site: int
    max_failed: int | str
    timeout_factor: float
    batches: tuple[PlanBatch, ...]
    blocked: tuple[BlockedUnit, ...]
    approve_before: str | None = None
    approve_after: str | None = None
    forecast: Forecast | None = None

    @property
    def units(self) -> list[str]:
        """The units this wave will cut over, batch by batch (blocked ones left out)."""
        return [u for b in self.batches for u in b.units]

    @property
    def deadline(self) -> date:
        return self.window.deadline

    def max_failed_for(self, batch: PlanBatch | int) -> int:
        """How many failed units the batch tolerates; one more and the whole batch rolls back.
        A percentage is of the batch's units, rounded down."""
        size = batch if isinstance(batch, int) else len(batch)
        return resolve_share(self.max_failed, size, round_up=False)

    def timeout_for(self, step: Step) -> int:
        """The step's timeout in this wave, in seconds (`timeout_factor` for slow links)."""
        return int(math.ceil(step.timeout * self.timeout_factor))

    def batch(self, batch_id: str) -> PlanBatch:
        for b in self.batches:
            if b.id == batch_id:
                return b
        raise InvalidInput([Problem("plan", f"waves.{self.id}", f"no batch {batch_id!r} (batches: {', '.join(b.id for b in self.batches)})")])

    def to_dict(self, *, forecast: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "description": self.description,
            "window": {
                "not_before": self.window.not_before.isoformat(),
                "deadline": self.window.deadline.isoformat(),
                "hours": self.window.hours,
                "timezone": "Asia/Ho_Chi_Minh",
            },
            "batch": self.batch_spec,
            "batch_size": self.batch_size,
            "max_parallel_per_site": self.max_parallel_per_site,
            "max_failed": self.max_failed,
            "timeout_factor": self.timeout_factor,
            "approve_before": self.approve_before,
            "approve_after": self.approve_after,
            "units": len(self.units),
            "batches": [b.to_dict() for b in self.batches],
            "blocked": [b.to_dict() for b in self.blocked],
        }
        if forecast:
            data["forecast"] = self.forecast.to_dict() if self.forecast else None
        return data


@dataclass(frozen=True)
class Plan:
    runbook: Runbook
    env: str
    estate_digest: str
    waves: tuple[PlanWave, ...]
    steps: tuple[Step, ...]
    final_gates: tuple[FinalGate, ...]
    outside: tuple[str, ...]  # estate units no wave selects
    conflicts: tuple[Conflict, ...]
    hash: str = ""
    _where: dict[str, tuple[int, int | None]] = field(default_factory=dict, repr=False, compare=False)

    def wave(self, wave_id: str) -> PlanWave:
        for w in self.waves:
            if w.id == wave_id:
                return w
        raise InvalidInput([Problem(str(self.runbook.path or self.runbook.name), "waves", f"no wave {wave_id!r} (waves: {', '.join(w.id for w in self.waves)})")])

    def segments(self) -> list[list[Step]]:
        """Consecutive steps up to (and excluding) the next step whose action is an approval:
        one ansible-runner invocation per batch and segment."""
        out: list[list[Step]] = []
        for step in self.steps:
            if not out or step.is_approval:
                out.append([])
            out[-1].append(step)
        return out

    def unit(self, code: str) -> tuple[PlanWave, PlanBatch | None, list[Step]]:
        """The unit's wave, its batch (None when blocked) and the steps it goes through."""
        if code not in self._where:
            reason = "not in this runbook: no wave selects it" if code in self.outside else "unknown unit"
            raise InvalidInput([Problem(str(self.runbook.path or self.runbook.name), "waves", f"{code}: {reason}")])
        wi, bi = self._where[code]
        wave = self.waves[wi]
        return wave, (wave.batches[bi] if bi is not None else None), list(self.steps)

    def blocked(self) -> list[BlockedUnit]:
        return [b for w in self.waves for b in w.blocked]

    def executable_dict(self) -> dict[str, Any]:
        """What will run, and from which inputs: the part of the plan that the hash covers."""
        rb = self.runbook
        return {
            "format": PLAN_FORMAT,
            "runbook": {
                "name": rb.name,
                "system": rb.system,
                "requires": rb.requires.model_dump(mode="json"),
                "on_failure": rb.on_failure,
            },
            "inputs": {
                "env": self.env,
                "estate_digest": self.estate_digest,
                "runbook_digest": rb.digest,
                "playbook_digests": dict(sorted(rb.playbook_digests.items())),
            },
            "steps": [s.model_dump(mode="json", exclude_none=True) for s in self.steps],
            "waves": [w.to_dict(forecast=False) for w in self.waves],
            "final_gates": [g.model_dump(mode="json", exclude_none=True) for g in self.final_gates],
            "outside": list(self.outside),
        }

    def to_dict(self) -> dict[str, Any]:
        data = self.executable_dict()
        data["runbook"]["path"] = str(self.runbook.path) if self.runbook.path else None
        data["runbook"]["description"] = self.runbook.description
        data["waves"] = [w.to_dict() for w in self.waves]
        data["segments"] = [[s.id for s in seg] for seg in self.segments()]
        data["conflicts"] = [c.to_dict() for c in self.conflicts]
        data["summary"] = {
            "waves": len(self.waves),
            "batches": sum(len(w.batches) for w in self.waves),
            "units": sum(len(w.units) for w in self.waves),
            "blocked": sum(len(w.blocked) for w in self.waves),
            "outside": len(self.outside),
        }
        data["hash"] = self.hash
        return data


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def blocking_reasons(unit: Unit, runbook: Runbook) -> list[str]:
    """Why `unit` cannot be cut over by `runbook` (empty when it can)."""
    reasons = list(unit.blockers)
    if runbook.requires.identifier_code and unit.identifier is None:
        reasons.append(PENDING_CODE_REASON)
    return reasons


def cut_batches(wave_id: str, units: list[Unit], size: int, max_per_site: int) -> list[PlanBatch]:
    """Fill batches in order; a unit whose site is already at `max_per_site` in the batch
    waits for the next batch, so every batch is as full as the limit allows."""
    remaining = list(units)
    batches: list[PlanBatch] = []
    while remaining:
        taken: list[Unit] = []
        per_site: dict[str, int] = {}
        left: list[Unit] = []
        for u in remaining:
            if len(taken) < size and per_site.get(u.site, 0) < max_per_site:
                taken.append(u)
                per_site[u.site] = per_site.get(u.site, 0) + 1
            else:
                left.append(u)
        remaining = left
        batches.append(
            PlanBatch(
                id=f"{wave_id}-{len(batches) + 1}",
                wave=wave_id,
                units=tuple(u.code for u in taken),
                sites=tuple(sorted(per_site.items())),
            )
        )
    return batches


def compile_plan(estate: Estate, runbook: Runbook, *, measured_batch_minutes: dict[str, float] | None = None) -> Plan:
    """Estate + validated runbook -> Plan. Pure: reads no file, runs nothing.

    `measured_batch_minutes` (wave id -> minutes per batch, e.g. from the journal's earlier
    runs) overrides the declared `forecast.batch_minutes` in the forecast only.
    """
    order = unit_order(estate)
    where: dict[str, tuple[int, int | None]] = {}
    waves: list[PlanWave] = []
    conflicts: list[Conflict] = []
    selected_any: set[str] = set()
    for wi, wave in enumerate(runbook.waves):
        codes = sorted(select_units(estate, wave.select) - selected_any, key=order)
        selected_any.update(codes)
        ready: list[Unit] = []
        blocked: list[BlockedUnit] = []
        for code in codes:
            unit = estate.units[code]
            reasons = blocking_reasons(unit, runbook)
            if reasons:
                blocked.append(BlockedUnit(code, tuple(reasons)))
            else:
                ready.append(unit)
        size = max(1, resolve_share(wave.batch, len(ready), round_up=True))
        batches = cut_batches(wave.id, ready, size, wave.max_parallel_per_site)
        for bi, b in enumerate(batches):
            for code in b.units:
                where[code] = (wi, bi)
        for b in blocked:
            where[b.code] = (wi, None)
        if not codes:
            conflicts.append(Conflict(f"waves[{wi}].select", f"wave {wave.id!r} selects no unit of {estate.env}"))
        elif not ready:
            conflicts.append(Conflict(f"waves[{wi}]", f"wave {wave.id!r}: all {len(codes)} selected units are blocked"))
        waves.append(
            PlanWave(
                id=wave.id,
                index=wi,
                description=wave.description,
                window=wave.window,
                batch_size=size,
                batch_spec=wave.batch,
                max_parallel_per_site=wave.max_parallel_per_site,
                max_failed=wave.max_failed,
                timeout_factor=wave.timeout_factor,
                batches=tuple(batches),
                blocked=tuple(blocked),
                approve_before=wave.approve_before,
                approve_after=wave.approve_after,
            )
        )
    waves = _with_forecasts(runbook, waves, measured_batch_minutes or {}, conflicts)
    conflicts[:0] = _calendar_conflicts(runbook)
    outside = tuple(sorted((c for c in estate.units if c not in selected_any), key=order))
    plan = Plan(
        runbook=runbook,
        env=estate.env,
        estate_digest=estate.digest,
        waves=tuple(waves),
        steps=tuple(runbook.steps),
        final_gates=tuple(runbook.final_gates),
        outside=outside,
        conflicts=tuple(conflicts),
        _where=where,
    )
    digest = hashlib.sha256(canonical_json(plan.executable_dict())).hexdigest()
    object.__setattr__(plan, "hash", digest)
    return plan


def _calendar_conflicts(runbook: Runbook) -> list[Conflict]:
    """Windows that cannot hold together: a wave due after the next one or after a final
    gate, a deadline before its own start, final gates out of order."""
    found: list[Conflict] = []
    waves = runbook.waves
    for i, w in enumerate(waves):
        if w.window.deadline < w.window.not_before:
            found.append(Conflict(f"waves[{i}].window.deadline", f"deadline {w.window.deadline} is before not_before {w.window.not_before}"))
        if i + 1 < len(waves):
            nxt = waves[i + 1]
            if w.window.deadline > nxt.window.deadline:
                found.append(Conflict(f"waves[{i}].window.deadline", f"wave {w.id!r} is due {w.window.deadline}, after the next wave {nxt.id!r} ({nxt.window.deadline})"))
        for j, g in enumerate(runbook.final_gates):
            for label, day in (("deadline", g.deadline), ("not_before", g.not_before)):
                if day is not None and w.window.deadline > day:
                    found.append(Conflict(f"waves[{i}].window.deadline", f"wave {w.id!r} is due {w.window.deadline}, after final gate {g.id!r} ({label} {day})"))
    gates = runbook.final_gates
    for j in range(len(gates) - 1):
        a, b = gates[j], gates[j + 1]
        if a.deadline and b.not_before and a.deadline > b.not_before:
            found.append(Conflict(f"final_gates[{j}].deadline", f"final gate {a.id!r} is due {a.deadline}, after {b.id!r} opens ({b.not_before})"))
    return found


def _with_forecasts(runbook: Runbook, waves: list[PlanWave], measured: dict[str, float], conflicts: list[Conflict]) -> list[PlanWave]:
    out: list[PlanWave] = []
    previous_finish: date | None = None
    for pw in waves:
        declared: Wave = runbook.waves[pw.index]
        if pw.id in measured and measured[pw.id] and measured[pw.id] > 0:
            minutes, source = float(measured[pw.id]), "measured"
        elif declared.forecast is not None:
            minutes, source = declared.forecast.batch_minutes, "declared (wave)"
        elif runbook.forecast is not None:
            minutes, source = runbook.forecast.batch_minutes, "declared (runbook)"
        else:
            minutes, source = None, "none"
        fc = _forecast(pw, minutes, source, previous_finish)
        if fc.finish is not None:
            previous_finish = fc.finish
        if fc.fits is False:
            conflicts.append(Conflict(f"waves[{pw.index}]", f"forecast: wave {pw.id!r} {fc.note}"))
        out.append(replace(pw, forecast=fc))
    return out


def _forecast(pw: PlanWave, minutes: float | None, source: str, previous_finish: date | None) -> Forecast:
    window = pw.window
    n = len(pw.batches)
    per_day_minutes = window.minutes_per_day
    base = {"batch_minutes": minutes, "source": source, "batches": n, "minutes_per_day": per_day_minutes}
    if minutes is None:
        return Forecast(**base, note="no batch duration declared (forecast: {batch_minutes: N}) or measured")
    start = window.not_before
    if previous_finish is not None and previous_finish >= start:
        start = previous_finish + timedelta(days=1)
    available = (window.deadline - start).days + 1
    per_day = int(per_day_minutes // minutes)
    if n == 0:
        return Forecast(**base, batches_per_day=per_day, start=None, finish=None, days_needed=0, days_available=max(available, 0), fits=True, note="no batch to run")
    if per_day == 0:
        return Forecast(
            **base, batches_per_day=0, start=start, days_available=max(available, 0), fits=False,
            note=f"cannot finish: one batch ({minutes:g} min) is longer than the daily window {window.hours} ({per_day_minutes} min)",
        )
    days = math.ceil(n / per_day)
    finish = start + timedelta(days=days - 1)
    fits = finish <= window.deadline
    if fits:
        note = f"{n} batch(es) at {per_day}/day from {start}: done {finish}, {(window.deadline - finish).days} day(s) before the deadline {window.deadline}"
    else:
        note = f"cannot finish by {window.deadline}: {n} batch(es) at {per_day}/day from {start} need {days} day(s), done {finish} ({(finish - window.deadline).days} day(s) late)"
    return Forecast(**base, batches_per_day=per_day, start=start, finish=finish, days_needed=days, days_available=max(available, 0), fits=fits, note=note)
