"""The lab's load generator: civil servants writing through the front doors during a cutover.

It writes documents, dossiers and dossier events for the given units through their legacy
sites' front proxies, over HTTP, as a browser would (`POST /units/<unit>/documents`, ...), at a
declared rate, for a duration or until stopped, and keeps a record of every answer:

    <out>                 one JSON line per acknowledged write (HTTP 201): id, kind, unit, at,
                          the answering back end (X-Cutover-Backend) and route
    <out>.refused.jsonl   writes refused with HTTP 423 (the unit is frozen for its cutover),
                          with the answer's message
    <out>.errors.jsonl    any other answer or failure (a test wants this file empty)

`verify_acknowledged` then proves that no acknowledged write was lost: each one's id must be
found in the unified database once its unit is switched.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cutover.errors import InvalidInput, Problem

KINDS = ("document", "dossier", "dossier_event")
# Where each kind of write lands (schema.table), to look it up afterwards.
TABLE_OF = {"document": "docs.documents", "dossier": "procedures.dossiers", "dossier_event": "procedures.dossier_events"}


@dataclass(frozen=True)
class LoadSpec:
    """What to write: units and their front doors (base URLs), how fast, how long, where to record."""

    front_doors: Mapping[str, str]  # unit code -> http://<front proxy>
    rate: float  # writes per second, all units together
    out: Path
    duration: float | None = None  # seconds; None: until stopped
    actor: str = "lab-loadgen"
    timeout: float = 10.0

    def problems(self) -> list[Problem]:
        found = []
        if not self.front_doors:
            found.append(Problem("--units", "", "no unit to write for"))
        if not self.rate > 0:
            found.append(Problem("--rate", "", f"the rate must be positive (got {self.rate})"))
        if self.duration is not None and not self.duration > 0:
            found.append(Problem("--duration", "", f"the duration must be positive (got {self.duration})"))
        for unit, url in self.front_doors.items():
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                found.append(Problem("--units", unit, f"front door {url!r} is not an http:// URL"))
        return found


@dataclass
class LoadReport:
    acknowledged: int = 0
    refused: int = 0
    errors: int = 0
    seconds: float = 0.0
    by_backend: Counter = field(default_factory=Counter)
    by_unit: Counter = field(default_factory=Counter)
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"acknowledged": self.acknowledged, "refused": self.refused, "errors": self.errors, "seconds": round(self.seconds, 2),
                "rate": round(self.acknowledged / self.seconds, 2) if self.seconds else 0.0,
                "by_backend": dict(self.by_backend), "by_unit": dict(self.by_unit), "files": self.files}


def refused_path(out: Path) -> Path:
    return out.with_name(out.name + ".refused.jsonl")


def errors_path(out: Path) -> Path:
    return out.with_name(out.name + ".errors.jsonl")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class _FrontDoor:
    """One keep-alive HTTP connection to a front proxy (reconnects after a failure)."""

    def __init__(self, base: str, timeout: float):
        parts = urlsplit(base)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: Mapping[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json", "User-Agent": "cutover-lab-loadgen"}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                try:
                    payload = json.loads(raw or b"{}")
                except ValueError:
                    payload = {"raw": raw[:500].decode("utf-8", "replace")}
                return resp.status, hdrs, payload if isinstance(payload, dict) else {"body": payload}
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the proxy closed (e.g. its reload): the write was not
                # delivered; send it again on a fresh connection, once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class LoadGenerator:
    """Writes at `spec.rate` until `duration` passes or `stop()` is called (from any thread)."""

    def __init__(self, spec: LoadSpec, *, clock: Callable[[], float] = time.monotonic):
        problems = spec.problems()
        if problems:
            raise InvalidInput(problems)
        self.spec = spec
        self.clock = clock
        self._stop = threading.Event()
        self._doors = {u: _FrontDoor(url, spec.timeout) for u, url in spec.front_doors.items()}
        self._dossiers: dict[str, list[str]] = {u: [] for u in spec.front_doors}
        self.report = LoadReport(files={"acknowledged": str(spec.out), "refused": str(refused_path(spec.out)), "errors": str(errors_path(spec.out))})
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._stop.set()

    def _next(self, n: int) -> tuple[str, str]:
        units = list(self.spec.front_doors)
        unit = units[n % len(units)]
        kind = KINDS[(n // len(units)) % len(KINDS)]
        if kind == "dossier_event" and not self._dossiers[unit]:
            kind = "dossier"
        return unit, kind

    def _request(self, unit: str, kind: str, n: int) -> tuple[str, dict[str, Any]]:
        stamp = f"{self.spec.actor} #{n} {_now()}"
        if kind == "document":
            return f"/units/{unit}/documents", {"title": f"Văn bản thử tải {stamp}", "direction": "incoming", "actor": self.spec.actor,
                                                "body": f"load generator write {n}"}
        if kind == "dossier":
            return f"/units/{unit}/dossiers", {"procedure_code": "1.001612", "applicant_name": f"Người nộp {n}", "actor": self.spec.actor}
        dossier = self._dossiers[unit][n % len(self._dossiers[unit])]
        return f"/units/{unit}/dossiers/{dossier}/events", {"actor": self.spec.actor, "event": "processing", "note": stamp}

    def run(self) -> LoadReport:
        spec = self.spec
        spec.out.parent.mkdir(parents=True, exist_ok=True)
        started = self.clock()
        interval = 1.0 / spec.rate
        n = 0
        with open(spec.out, "a", encoding="utf-8") as acks, open(refused_path(spec.out), "a", encoding="utf-8") as refused, \
                open(errors_path(spec.out), "a", encoding="utf-8") as errors:
            while not self._stop.is_set():
                now = self.clock()
                if spec.duration is not None and now - started >= spec.duration:
                    break
                due = started + n * interval
                if due > now:
                    self._stop.wait(due - now)
                    continue
                unit, kind = self._next(n)
                path, body = self._request(unit, kind, n)
                self._write_one(unit, kind, path, body, acks, refused, errors)
                n += 1
        for door in self._doors.values():
            door.close()
        self.report.seconds = self.clock() - started
        return self.report

    def _write_one(self, unit: str, kind: str, path: str, body: dict, acks, refused, errors) -> None:  # noqa: ANN001
        at = _now()
        record: dict[str, Any] = {"unit": unit, "kind": kind, "at": at, "path": path}
        try:
            status, headers, payload = self._doors[unit].post(path, body)
        except (OSError, http.client.HTTPException) as exc:
            record.update(status=None, error=f"{type(exc).__name__}: {exc}")
            self._doors[unit].close()
            self._append(errors, record, "errors")
            return
        record.update(status=status, backend=headers.get("x-cutover-backend"), route=headers.get("x-cutover-route"),
                      front_proxy=headers.get("x-cutover-front-proxy"))
        if status == 201 and payload.get("id"):
            record["id"] = str(payload["id"])
            if kind == "dossier_event":
                record["dossier_id"] = path.split("/")[4]
            if kind == "dossier":
                self._dossiers[unit].append(record["id"])
            self._append(acks, record, "acknowledged")
            self.report.by_backend[record["backend"] or "?"] += 1
            self.report.by_unit[unit] += 1
        elif status == 423:
            record.update(message=payload.get("error"), sqlstate=payload.get("sqlstate"))
            self._append(refused, record, "refused")
        else:
            record.update(message=payload.get("error") or payload)
            self._append(errors, record, "errors")

    def _append(self, fh, record: dict, counter: str) -> None:  # noqa: ANN001
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        with self._lock:
            setattr(self.report, counter, getattr(self.report, counter) + 1)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a load generator file (missing file: none)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class WriteCheck:
    acknowledged: int
    found: int
    missing: list[dict[str, Any]]
    by_kind: dict[str, int]

    @property
    def lost(self) -> int:
        return len(self.missing)

    def as_dict(self) -> dict[str, Any]:
        return {"acknowledged": self.acknowledged, "found": self.found, "lost": self.lost, "by_kind": self.by_kind, "missing": self.missing[:20]}


def verify_acknowledged(records: Iterable[Mapping[str, Any]], existing_ids: Callable[[str, list[str]], set[str]]) -> WriteCheck:
    """Every acknowledged write's id looked up where it must be now (`existing_ids(table, ids)`
    answers which of `ids` that table holds, e.g. in the unified database)."""
    records = list(records)
    by_table: dict[str, list[str]] = {}
    for r in records:
        by_table.setdefault(TABLE_OF[r["kind"]], []).append(r["id"])
    present: set[str] = set()
    for table, ids in by_table.items():
        present |= existing_ids(table, ids)
    missing = [dict(r) for r in records if r["id"] not in present]
    return WriteCheck(len(records), len(records) - len(missing), missing, dict(Counter(r["kind"] for r in records)))


def front_doors_for(units: Iterable[str], unit_sites: Mapping[str, str], site_addresses: Mapping[str, str], port: int = 80) -> dict[str, str]:
    """Each unit's front door: its legacy site's front proxy (the address civil servants use)."""
    doors, problems = {}, []
    for unit in units:
        site = unit_sites.get(unit)
        if site is None:
            problems.append(Problem("--units", unit, "not a unit of this estate"))
        elif site not in site_addresses:
            problems.append(Problem("--units", unit, f"its site {site} has no lab address"))
        else:
            doors[unit] = f"http://{site_addresses[site]}:{port}"
    if problems:
        raise InvalidInput(problems)
    return doors


def pid_file_note(out: Path) -> Path:
    """Where a background load generator notes its pid (for the caller that stops it)."""
    return out.with_name(out.name + ".pid")


def write_pid(out: Path) -> None:
    path = pid_file_note(out)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(path)
