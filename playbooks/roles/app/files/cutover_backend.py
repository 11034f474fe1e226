#!/usr/bin/env python3
"""A site's back end for the shared systems: a unit's documents and dossiers over HTTP.

    cutover_backend.py --config /etc/cutover/backend-legacy-hcm.json

Standard library HTTP server over the site's PostgreSQL database (psycopg 3 or psycopg2).
Every response carries `X-Cutover-Backend` (`legacy-hcm`, `unified`, ...) and `X-Cutover-Site`.

    GET  /healthz                                   200 {"status": "ok", ...} or 503
    GET  /units                                     the units this back end serves
    GET  /units/<unit>/documents[?limit=N]          a unit's documents, newest first
    POST /units/<unit>/documents                    201 the stored document
    GET  /units/<unit>/documents/<id>               with recipients, attachments, history
    POST /units/<unit>/documents/<id>/history       201 a processing step
    GET  /units/<unit>/documents/<id>/attachments/<attachment id>   the file's bytes
    GET  /units/<unit>/dossiers[?limit=N]
    POST /units/<unit>/dossiers                     201 the stored dossier
    GET  /units/<unit>/dossiers/<id>                with its events
    POST /units/<unit>/dossiers/<id>/events         201 an event

`<unit>` is a new unit's code. On a legacy site the data is filed under the old units' keys
(`phuong-da-kao--quan-1`), so the back end maps the unit to its old units and, for a split old
unit, to the residential quarters its partition rule gives the unit; an old unit's key is
accepted as `<unit>` too. A write for a frozen unit is refused by the database's trigger and
answered 423 with that message. Bad input is 400, an unknown unit or record 404.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import unicodedata
import uuid
from datetime import date, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

try:  # psycopg 3 where installed, else Debian's python3-psycopg2
    import psycopg as pg

    def _sqlstate(error: Exception) -> str | None:
        return getattr(error, "sqlstate", None)

except ImportError:  # pragma: no cover - depends on the host
    import psycopg2 as pg
    import psycopg2.extras

    psycopg2.extras.register_uuid()

    def _sqlstate(error: Exception) -> str | None:
        return getattr(error, "pgcode", None)


FROZEN_SQLSTATE = "CU423"
MAX_BODY = 64 * 1024 * 1024
log = logging.getLogger("cutover-backend")


# --- unit keys ----------------------------------------------------------------------------------


def ascii_slug(text: str) -> str:
    """`Phường Đa Kao` -> `phuong-da-kao` (the rule of cutover.estate.ascii_slug)."""
    text = text.replace("đ", "d").replace("Đ", "D")
    text = unicodedata.normalize("NFD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def legacy_unit_key(name: str, district: str) -> str:
    return f"{ascii_slug(name)}--{ascii_slug(district)}"


class Scope:
    """Where a unit's rows are filed here: (key, quarters or None for the whole key) pairs."""

    def __init__(self, unit: str, parts: list[tuple[str, list[str] | None]]):
        self.unit = unit
        self.parts = parts

    def sql(self, alias: str = "") -> tuple[str, list]:
        prefix = f"{alias}." if alias else ""
        clauses, params = [], []
        for key, quarters in self.parts:
            if quarters is None:
                clauses.append(f"{prefix}unit = %s")
                params.append(key)
            else:
                clauses.append(f"({prefix}unit = %s AND {prefix}residential_quarter = ANY(%s))")
                params.extend([key, list(quarters)])
        return "(" + " OR ".join(clauses) + ")", params

    def holds(self, key: str, quarter: str | None) -> bool:
        return any(k == key and (qs is None or quarter in qs) for k, qs in self.parts)

    def target(self, body: dict) -> tuple[str, str | None]:
        """The (key, quarter) a new record of this unit is filed under."""
        wanted_key = body.get("old_unit")
        quarter = body.get("residential_quarter")
        candidates = [p for p in self.parts if wanted_key in (None, p[0])]
        if not candidates:
            raise BadRequest(f"old_unit {wanted_key!r} is not one of unit {self.unit}'s old units: {[p[0] for p in self.parts]}")
        if quarter is not None:
            # a quarter named by a split old unit's rule goes there, else to a whole old unit
            for key, quarters in sorted(candidates, key=lambda p: p[1] is None):
                if quarters is None or quarter in quarters:
                    return key, quarter
            raise BadRequest(f"residential quarter {quarter!r} does not belong to unit {self.unit}")
        whole = [p for p in candidates if p[1] is None]
        if whole:
            return whole[0][0], None
        key, quarters = candidates[0]
        return key, quarters[0] if quarters else None


class UnitMap:
    """A legacy site's new units -> old unit keys (and quarters of split old units)."""

    def __init__(self, config: dict):
        self.site_role = config.get("site_role", "legacy")
        self.scopes: dict[str, Scope] = {}
        rules = {
            (r["old_unit"]["name"], r["old_unit"]["district"]): r.get("successors", {})
            for r in config.get("partition_rules") or []
        }
        for unit, old_units in (config.get("units") or {}).items():
            if self.site_role == "unified" or not old_units:
                self.scopes[unit] = Scope(unit, [(unit, None)])
                continue
            parts = []
            for old in old_units:
                key = legacy_unit_key(old["name"], old["district"])
                successors = rules.get((old["name"], old["district"]))
                quarters = successors.get(unit) if (old.get("split") and successors) else None
                parts.append((key, list(quarters) if quarters is not None else None))
            self.scopes[unit] = Scope(unit, parts)
        self.old_keys = {key for s in self.scopes.values() for key, _ in s.parts}

    def scope(self, unit: str) -> Scope:
        if unit in self.scopes:
            return self.scopes[unit]
        if self.site_role == "unified" or not self.scopes or unit in self.old_keys:
            return Scope(unit, [(unit, None)])
        raise NotFound(f"unit {unit} is not served by this back end")


# --- errors ---------------------------------------------------------------------------------------


class HTTPError(Exception):
    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.extra = extra


class BadRequest(HTTPError):
    status = HTTPStatus.BAD_REQUEST


class NotFound(HTTPError):
    status = HTTPStatus.NOT_FOUND


class Frozen(HTTPError):
    status = HTTPStatus.LOCKED


class Unavailable(HTTPError):
    status = HTTPStatus.SERVICE_UNAVAILABLE


# --- the database ---------------------------------------------------------------------------------

DOCUMENT_COLUMNS = ["id", "unit", "residential_quarter", "number", "title", "direction", "sender_code",
                    "issued_on", "body", "status", "created_at", "updated_at"]
DOSSIER_COLUMNS = ["id", "unit", "residential_quarter", "code", "procedure_code", "applicant_name",
                   "received_at", "due_at", "status", "created_at", "updated_at"]
PROVENANCE = ["source_site", "source_unit"]


class Database:
    def __init__(self, settings: dict, unified: bool):
        self.settings = {k: settings[k] for k in ("host", "port", "dbname", "user", "password")}
        self.provenance = PROVENANCE if unified else []
        self._local = threading.local()

    def _connect(self):
        return pg.connect(connect_timeout=5, application_name="cutover-backend", **self.settings)

    def run(self, work):
        """`work(cursor)` in one transaction on this thread's connection; reconnects once."""
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            try:
                if conn is None or conn.closed:
                    conn = self._local.conn = self._connect()
                with conn.cursor() as cur:
                    result = work(cur)
                conn.commit()
                return result
            except pg.Error as error:
                if _sqlstate(error) == FROZEN_SQLSTATE:
                    conn.rollback()
                    message = getattr(error.diag, "message_primary", None) or str(error).strip()
                    raise Frozen(message, sqlstate=FROZEN_SQLSTATE) from error
                if isinstance(error, pg.OperationalError):
                    self._local.conn = None
                    if conn is not None and not conn.closed:
                        conn.close()
                    if attempt == 2:
                        raise Unavailable(f"database unavailable: {str(error).strip()}") from error
                    continue
                if conn is not None and not conn.closed:
                    conn.rollback()
                raise
            except BaseException:
                if conn is not None and not conn.closed:
                    conn.rollback()
                raise


def rows(cur) -> list[dict]:
    names = [c.name for c in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def one(cur) -> dict | None:
    found = rows(cur)
    return found[0] if found else None


# --- the service ----------------------------------------------------------------------------------


class Backend:
    def __init__(self, config: dict):
        self.name = config["backend"]
        self.site = config.get("site", "")
        self.unified = config.get("site_role") == "unified"
        self.units = UnitMap(config)
        self.db = Database(config["database"], self.unified)
        self.attachment_store = Path(config["stores"]["docs"]) if config.get("stores", {}).get("docs") else None

    # -- health
    def health(self) -> tuple[int, dict]:
        try:
            self.db.run(lambda cur: cur.execute("SELECT 1"))
            return 200, {"status": "ok", "backend": self.name, "site": self.site, "database": "ok"}
        except (Unavailable, pg.Error) as error:
            return 503, {"status": "degraded", "backend": self.name, "site": self.site, "database": str(error).strip()}

    def served_units(self) -> dict:
        return {"backend": self.name, "units": {u: [list(p) for p in s.parts] for u, s in self.units.scopes.items()}}

    # -- documents
    def list_documents(self, unit: str, limit: int) -> dict:
        scope = self.units.scope(unit)
        where, params = scope.sql()
        cols = ", ".join(DOCUMENT_COLUMNS + self.db.provenance)

        def work(cur):
            cur.execute(f"SELECT {cols} FROM docs.documents WHERE {where} ORDER BY created_at DESC, id LIMIT %s", params + [limit])
            return rows(cur)

        return {"unit": unit, "documents": self.db.run(work)}

    def get_document(self, unit: str, doc_id: str) -> dict:
        scope = self.units.scope(unit)
        doc_uuid = parse_uuid(doc_id)
        cols = ", ".join(DOCUMENT_COLUMNS + self.db.provenance)

        def work(cur):
            cur.execute(f"SELECT {cols} FROM docs.documents WHERE id = %s", [doc_uuid])
            doc = one(cur)
            if doc is None or not scope.holds(doc["unit"], doc["residential_quarter"]):
                raise NotFound(f"unit {unit} has no document {doc_id}")
            cur.execute("SELECT id, recipient_code, recipient_name, sent_at, status FROM docs.recipients WHERE document_id = %s ORDER BY created_at, id", [doc_uuid])
            doc["recipients"] = rows(cur)
            cur.execute("SELECT id, file_name, size_bytes, sha256, content_type FROM docs.attachments WHERE document_id = %s ORDER BY created_at, id", [doc_uuid])
            doc["attachments"] = rows(cur)
            cur.execute("SELECT id, at, actor, action, note FROM docs.processing_history WHERE document_id = %s ORDER BY at, id", [doc_uuid])
            doc["history"] = rows(cur)
            return doc

        return self.db.run(work)

    def create_document(self, unit: str, body: dict) -> dict:
        scope = self.units.scope(unit)
        title = require_text(body, "title")
        key, quarter = scope.target(body)
        direction = body.get("direction", "incoming")
        if direction not in ("incoming", "outgoing", "internal"):
            raise BadRequest("direction must be incoming, outgoing or internal")
        recipients = body.get("recipients") or []
        attachments = [decode_attachment(a, i) for i, a in enumerate(body.get("attachments") or [])]
        if attachments and self.attachment_store is None:
            raise BadRequest("this back end has no attachment store")
        if not isinstance(recipients, list) or not all(isinstance(r, dict) and r.get("recipient_name") for r in recipients):
            raise BadRequest("recipients must be a list of objects with recipient_name")
        written: list[Path] = []

        def work(cur):
            cur.execute(
                "INSERT INTO docs.documents (unit, residential_quarter, number, title, direction, sender_code, issued_on, body)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                [key, quarter, body.get("number"), title, direction, body.get("sender_code"), body.get("issued_on"), body.get("body")],
            )
            doc_id = cur.fetchone()[0]
            for r in recipients:
                cur.execute(
                    "INSERT INTO docs.recipients (unit, residential_quarter, document_id, recipient_code, recipient_name) VALUES (%s, %s, %s, %s, %s)",
                    [key, quarter, doc_id, r.get("recipient_code"), r["recipient_name"]],
                )
            for name, content, content_type in attachments:
                att_id = uuid.uuid4()
                rel = Path(key) / f"{att_id}-{safe_file_name(name)}"
                written.append(store_file(self.attachment_store / rel, content))
                cur.execute(
                    "INSERT INTO docs.attachments (id, unit, residential_quarter, document_id, file_name, store_path, size_bytes, sha256, content_type)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [att_id, key, quarter, doc_id, name, str(rel), len(content), hashlib.sha256(content).hexdigest(), content_type],
                )
            cur.execute(
                "INSERT INTO docs.processing_history (unit, residential_quarter, document_id, actor, action, note) VALUES (%s, %s, %s, %s, %s, %s)",
                [key, quarter, doc_id, body.get("actor") or "backend", "received", None],
            )
            return doc_id

        try:
            doc_id = self.db.run(work)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return self.get_document(unit, str(doc_id))

    def add_history(self, unit: str, doc_id: str, body: dict) -> dict:
        doc = self.get_document(unit, doc_id)
        actor, action = require_text(body, "actor"), require_text(body, "action")

        def work(cur):
            cur.execute(
                "INSERT INTO docs.processing_history (unit, residential_quarter, document_id, actor, action, note)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, at, actor, action, note",
                [doc["unit"], doc["residential_quarter"], doc["id"], actor, action, body.get("note")],
            )
            return one(cur)

        return self.db.run(work)

    def attachment(self, unit: str, doc_id: str, att_id: str) -> tuple[bytes, str]:
        doc = self.get_document(unit, doc_id)
        wanted = parse_uuid(att_id)

        def work(cur):
            cur.execute("SELECT store_path, content_type, sha256 FROM docs.attachments WHERE id = %s AND document_id = %s", [wanted, doc["id"]])
            return one(cur)

        att = self.db.run(work)
        if att is None or self.attachment_store is None:
            raise NotFound(f"document {doc_id} has no attachment {att_id}")
        try:
            return (self.attachment_store / att["store_path"]).read_bytes(), att["content_type"]
        except FileNotFoundError:
            raise NotFound(f"attachment {att_id} is recorded but its file is missing from the store") from None

    # -- dossiers
    def list_dossiers(self, unit: str, limit: int) -> dict:
        where, params = self.units.scope(unit).sql()
        cols = ", ".join(DOSSIER_COLUMNS + self.db.provenance)

        def work(cur):
            cur.execute(f"SELECT {cols} FROM procedures.dossiers WHERE {where} ORDER BY received_at DESC, id LIMIT %s", params + [limit])
            return rows(cur)

        return {"unit": unit, "dossiers": self.db.run(work)}

    def get_dossier(self, unit: str, dossier_id: str) -> dict:
        scope = self.units.scope(unit)
        wanted = parse_uuid(dossier_id)
        cols = ", ".join(DOSSIER_COLUMNS + self.db.provenance)

        def work(cur):
            cur.execute(f"SELECT {cols} FROM procedures.dossiers WHERE id = %s", [wanted])
            dossier = one(cur)
            if dossier is None or not scope.holds(dossier["unit"], dossier["residential_quarter"]):
                raise NotFound(f"unit {unit} has no dossier {dossier_id}")
            cur.execute("SELECT id, at, actor, event, note FROM procedures.dossier_events WHERE dossier_id = %s ORDER BY at, id", [wanted])
            dossier["events"] = rows(cur)
            return dossier

        return self.db.run(work)

    def create_dossier(self, unit: str, body: dict) -> dict:
        scope = self.units.scope(unit)
        procedure_code, applicant = require_text(body, "procedure_code"), require_text(body, "applicant_name")
        key, quarter = scope.target(body)
        code = body.get("code") or f"{self.name.upper()}-{uuid.uuid4().hex[:12]}"

        def work(cur):
            cur.execute(
                "INSERT INTO procedures.dossiers (unit, residential_quarter, code, procedure_code, applicant_name, due_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                [key, quarter, code, procedure_code, applicant, body.get("due_at")],
            )
            dossier_id = cur.fetchone()[0]
            cur.execute(
                "INSERT INTO procedures.dossier_events (unit, residential_quarter, dossier_id, actor, event) VALUES (%s, %s, %s, %s, %s)",
                [key, quarter, dossier_id, body.get("actor") or "backend", "received"],
            )
            return dossier_id

        return self.get_dossier(unit, str(self.db.run(work)))

    def add_event(self, unit: str, dossier_id: str, body: dict) -> dict:
        dossier = self.get_dossier(unit, dossier_id)
        actor, event = require_text(body, "actor"), require_text(body, "event")

        def work(cur):
            cur.execute(
                "INSERT INTO procedures.dossier_events (unit, residential_quarter, dossier_id, actor, event, note)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, at, actor, event, note",
                [dossier["unit"], dossier["residential_quarter"], dossier["id"], actor, event, body.get("note")],
            )
            return one(cur)

        return self.db.run(work)


def require_text(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{name} is required (a non-empty string)")
    return value


def parse_uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise NotFound(f"no record {text}") from None


def decode_attachment(item, index: int) -> tuple[str, bytes, str]:
    if not isinstance(item, dict) or not item.get("file_name") or "content_base64" not in item:
        raise BadRequest(f"attachments[{index}] needs file_name and content_base64")
    try:
        content = base64.b64decode(item["content_base64"], validate=True)
    except (ValueError, TypeError):
        raise BadRequest(f"attachments[{index}].content_base64 is not base64") from None
    return item["file_name"], content, item.get("content_type") or "application/octet-stream"


def safe_file_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_slug(Path(name).stem) or "file")
    suffix = re.sub(r"[^A-Za-z0-9.]+", "", Path(name).suffix)[:16]
    return f"{stem[:80]}{suffix}"


def store_file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def to_json(value) -> bytes:
    def default(o):
        if isinstance(o, (datetime, date)):
            return o.isoformat()
        if isinstance(o, uuid.UUID):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(value, default=default, ensure_ascii=False).encode("utf-8")


# --- HTTP -----------------------------------------------------------------------------------------

ROUTES = [
    ("GET", re.compile(r"^/healthz$"), "healthz"),
    ("GET", re.compile(r"^/units$"), "units"),
    ("GET", re.compile(r"^/units/(?P<unit>[^/]+)/documents$"), "list_documents"),
    ("POST", re.compile(r"^/units/(?P<unit>[^/]+)/documents$"), "create_document"),
    ("GET", re.compile(r"^/units/(?P<unit>[^/]+)/documents/(?P<id>[^/]+)$"), "get_document"),
    ("POST", re.compile(r"^/units/(?P<unit>[^/]+)/documents/(?P<id>[^/]+)/history$"), "add_history"),
    ("GET", re.compile(r"^/units/(?P<unit>[^/]+)/documents/(?P<id>[^/]+)/attachments/(?P<att>[^/]+)$"), "attachment"),
    ("GET", re.compile(r"^/units/(?P<unit>[^/]+)/dossiers$"), "list_dossiers"),
    ("POST", re.compile(r"^/units/(?P<unit>[^/]+)/dossiers$"), "create_dossier"),
    ("GET", re.compile(r"^/units/(?P<unit>[^/]+)/dossiers/(?P<id>[^/]+)$"), "get_dossier"),
    ("POST", re.compile(r"^/units/(?P<unit>[^/]+)/dossiers/(?P<id>[^/]+)/events$"), "add_event"),
]


def make_handler(backend: Backend):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "cutover-backend"

        def do_GET(self):
            self.dispatch("GET")

        def do_POST(self):
            self.dispatch("POST")

        def dispatch(self, method: str):
            url = urlsplit(self.path)
            try:
                for verb, pattern, name in ROUTES:
                    match = pattern.match(url.path)
                    if match:
                        if verb != method:
                            continue
                        return getattr(self, name)(match, parse_qs(url.query))
                if any(p.match(url.path) for _, p, _ in ROUTES):
                    raise HTTPError("method not allowed", status=405)
                raise NotFound(f"no route {url.path}")
            except HTTPError as error:
                status = error.extra.pop("status", error.status)
                self.send_json(status, {"error": str(error), **error.extra, **self.unit_of(url.path)})
            except pg.Error as error:
                log.warning("database error on %s %s: %s", method, url.path, str(error).strip())
                status = 400 if (_sqlstate(error) or "").startswith(("22", "23")) else 500
                self.send_json(status, {"error": (getattr(error.diag, "message_primary", None) or str(error)).strip(), "sqlstate": _sqlstate(error)})
            except Exception as error:  # the service must answer, not die
                log.exception("failure on %s %s", method, url.path)
                self.send_json(500, {"error": f"{type(error).__name__}: {error}"})

        @staticmethod
        def unit_of(path: str) -> dict:
            m = re.match(r"^/units/([^/]+)", path)
            return {"unit": m.group(1)} if m else {}

        def read_json(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise HTTPError("request body too large", status=413)
            raw = self.rfile.read(length) if length else b"{}"
            try:
                body = json.loads(raw or b"{}")
            except ValueError as error:
                raise BadRequest(f"the body is not JSON: {error}") from None
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            return body

        def send_json(self, status: int, payload, extra_headers: dict | None = None):
            self.send_bytes(int(status), to_json(payload), "application/json; charset=utf-8", extra_headers)

        def send_bytes(self, status: int, data: bytes, content_type: str, extra_headers: dict | None = None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Cutover-Backend", backend.name)
            self.send_header("X-Cutover-Site", backend.site)
            for k, v in (extra_headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        @staticmethod
        def limit(query) -> int:
            try:
                return max(1, min(1000, int(query.get("limit", ["100"])[0])))
            except ValueError:
                raise BadRequest("limit must be an integer") from None

        def healthz(self, m, q):
            self.send_json(*backend.health())

        def units(self, m, q):
            self.send_json(200, backend.served_units())

        def list_documents(self, m, q):
            self.send_json(200, backend.list_documents(m["unit"], self.limit(q)))

        def create_document(self, m, q):
            self.send_json(201, backend.create_document(m["unit"], self.read_json()))

        def get_document(self, m, q):
            self.send_json(200, backend.get_document(m["unit"], m["id"]))

        def add_history(self, m, q):
            self.send_json(201, backend.add_history(m["unit"], m["id"], self.read_json()))

        def attachment(self, m, q):
            data, content_type = backend.attachment(m["unit"], m["id"], m["att"])
            self.send_bytes(200, data, content_type)

        def list_dossiers(self, m, q):
            self.send_json(200, backend.list_dossiers(m["unit"], self.limit(q)))

        def create_dossier(self, m, q):
            self.send_json(201, backend.create_dossier(m["unit"], self.read_json()))

        def get_dossier(self, m, q):
            self.send_json(200, backend.get_dossier(m["unit"], m["id"]))

        def add_event(self, m, q):
            self.send_json(201, backend.add_event(m["unit"], m["id"], self.read_json()))

        def log_message(self, fmt, *args):
            log.info("%s %s", self.address_string(), fmt % args)

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the JSON configuration the app role writes")
    args = parser.parse_args(argv)
    config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    logging.basicConfig(
        filename=config.get("log_file") or None,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    backend = Backend(config)
    server = ThreadingHTTPServer((config["listen"], int(config["port"])), make_handler(backend))
    server.daemon_threads = True

    def stop(signum, frame):
        log.info("signal %s: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("%s listening on %s:%s", backend.name, config["listen"], config["port"])
    try:
        server.serve_forever()
    finally:
        server.server_close()
    log.info("%s stopped", backend.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
