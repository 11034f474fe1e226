"""Identifier codes arriving during the cutover: validate a new list, merge it atomically."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cutover.errors import InvalidInput, Problem
from cutover.estate import CODES_COLUMNS, Estate, IdentifierAssignment, _Collector, parse_identifier_codes


@dataclass(frozen=True)
class CodeChange:
    unit: str
    before: str | None
    after: str
    decision: str
    date: str

    @property
    def kind(self) -> str:
        if self.before is None:
            return "assigned"
        return "unchanged" if self.before == self.after else "changed"

    def as_dict(self) -> dict[str, str | None]:
        return {"unit": self.unit, "change": self.kind, "before": self.before, "after": self.after, "decision": self.decision, "date": self.date}


def plan_import(estate: Estate, new_file: Path) -> tuple[list[CodeChange], dict[str, IdentifierAssignment]]:
    """Validate `new_file` against the estate; return the changes and the merged assignments.

    Raises InvalidInput (nothing changed) for a malformed code, an unknown unit, a unit listed
    twice, or a code that would then belong to two units (in the file or with the codes
    already assigned).
    """
    problems = _Collector()
    incoming = parse_identifier_codes(new_file, estate.units, problems)
    if problems.problems:
        raise InvalidInput(problems.problems)
    merged = {u.code: u.identifier for u in estate.units.values() if u.identifier}
    changes = []
    for a in incoming:
        before = merged.get(a.unit)
        changes.append(CodeChange(a.unit, before.identifier_code if before else None, a.identifier_code, a.decision, a.date))
        merged[a.unit] = a
    owners: dict[str, str] = {}
    clashes = []
    for unit, a in sorted(merged.items()):
        if a.identifier_code in owners:
            clashes.append(Problem(str(new_file), f"unit {unit}", f"code {a.identifier_code} would belong to both {owners[a.identifier_code]} and {unit}"))
        owners[a.identifier_code] = unit
    if clashes:
        raise InvalidInput(clashes)
    return changes, merged


def write_codes(path: Path, merged: dict[str, IdentifierAssignment], order: list[str]) -> None:
    """Write the codes file atomically: a temp file in the same folder, fsync, rename."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CODES_COLUMNS)
    for unit in order:
        if unit in merged:
            a = merged[unit]
            w.writerow([a.unit, a.identifier_code, a.decision, a.date])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def import_codes(estate: Estate, new_file: Path, *, dry_run: bool = False) -> list[CodeChange]:
    changes, merged = plan_import(estate, new_file)
    if not dry_run and any(c.kind != "unchanged" for c in changes):
        write_codes(estate.root / "identifier_codes.csv", merged, list(estate.units))
    return changes
