#!/usr/bin/python
"""Ansible module: move one unit's rows and files from its legacy site to the unified platform.

One action per call, run on the unit host (the server of the site holding the unit's data);
it reaches the legacy database of its own site and the unified database over TCP as the
migration role, and both file stores by path. Never loops over units: one unit per call.

Actions (each idempotent; `changed` says whether anything was written):
  precheck   legacy and unified answer, the unit tables exist, split old units have rules
  pre_copy   bulk copy of the unit's rows and files while legacy still takes writes; the
             change-log mark (max id + snapshot) is kept in <work_dir>/pre_copy.json
  freeze     the unit's legacy keys (or a split old unit's quarters) go read-only; waits until
             the transactions that began before the freeze have ended; <work_dir>/freeze.json
  unfreeze   the freeze rows removed
  export     the catch-up since the mark (from the change log) to <work_dir>/catchup/, then the
             manifest of counts and content hashes of the whole unit, <work_dir>/manifest.json
  import     the catch-up applied to unified (deleted/changed ids replaced), files copied
  reconcile  unified's counts and hashes against the manifest; <work_dir>/reconcile.json; fails
             when anything differs
  purge      the unit's imported rows (by provenance: unit, source_site, source_unit) and files
             removed from unified; quarantined rows of a split old unit too when no other
             successor holds rows of it

Row content hash: sha256 of the row as jsonb without `unit`, `source_site`, `source_unit` and
with a file path reduced to its file name (the unified store files by new unit), in UTC; a
table's hash is the sha256 of its rows' hashes in id order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

try:
    import psycopg as _pg

    PSYCOPG = 3
except ImportError:  # pragma: no cover - a server with Debian's python3-psycopg2
    import psycopg2 as _pg

    PSYCOPG = 2

DOCUMENTATION = r"""
module: cutover_unit_data
short_description: Move one unit's data from its legacy site to the unified platform
description: See the module's docstring and the unit_data role's defaults.
options:
  action: {required: true, type: str}
  unit: {required: true, type: str}
  site: {required: true, type: str}
"""

ACTIONS = ("precheck", "pre_copy", "freeze", "unfreeze", "export", "import", "reconcile", "purge")
EXCLUDED_KEYS = ("unit", "source_site", "source_unit")
# Files are hashed or copied this many at a time (hashlib and sendfile let go of the GIL).
FILE_WORKERS = max(1, min(4, os.cpu_count() or 1))
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# --- keys and scopes ------------------------------------------------------------------------


def ascii_slug(text):
    import re
    import unicodedata

    text = text.replace("đ", "d").replace("Đ", "D")
    text = unicodedata.normalize("NFD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def legacy_key(old):
    return f"{ascii_slug(old['name'])}--{ascii_slug(old['district'])}"


def lit(value):
    """A SQL literal (standard_conforming_strings on): our own inventory values only."""
    if value is None:
        return "NULL"
    if isinstance(value, (list, tuple)):
        return "ARRAY[" + ", ".join(lit(v) for v in value) + "]::text[]"
    return "'" + str(value).replace("'", "''") + "'"


class Scope:
    """Where a new unit's rows are filed on its legacy site.

    parts: [(key, quarters or None)] -- a whole old unit, or a split old unit's quarters that
    its rule gives this unit; unmatched: {key: every quarter any rule names} for split keys.
    """

    def __init__(self, unit, old_units, rules):
        self.unit = unit
        self.parts = []
        self.unmatched = {}
        self.problems = []
        by_old = {(r["old_unit"]["name"], r["old_unit"]["district"]): r for r in rules or []}
        if not old_units:
            self.parts.append((unit, None))
        for old in old_units:
            key = legacy_key(old)
            if not old.get("split"):
                self.parts.append((key, None))
                continue
            rule = by_old.get((old["name"], old["district"]))
            successors = (rule or {}).get("successors") or {}
            if unit not in successors:
                self.problems.append(f"split old unit {old['name']} ({old['district']}) has no partition rule giving quarters to {unit}")
                continue
            self.parts.append((key, list(successors[unit])))
            self.unmatched[key] = sorted({q for qs in successors.values() for q in qs})
        self.keys = [k for k, _ in self.parts]

    def where(self, alias=""):
        p = f"{alias}." if alias else ""
        clauses = []
        for key, quarters in self.parts:
            if quarters is None:
                clauses.append(f"{p}unit = {lit(key)}")
            else:
                clauses.append(f"({p}unit = {lit(key)} AND {p}residential_quarter = ANY({lit(quarters)}))")
        return "(" + " OR ".join(clauses or ["false"]) + ")"

    def where_unmatched(self, alias=""):
        p = f"{alias}." if alias else ""
        clauses = [f"({p}unit = {lit(k)} AND ({p}residential_quarter IS NULL OR NOT {p}residential_quarter = ANY({lit(qs)})))"
                   for k, qs in self.unmatched.items()]
        return "(" + " OR ".join(clauses or ["false"]) + ")"

    def freeze_rows(self):
        return [(key, None) for key, qs in self.parts if qs is None] + [(key, q) for key, qs in self.parts if qs for q in qs]


# --- the databases ----------------------------------------------------------------------------


class Database:
    def __init__(self, settings, name):
        self.name = name
        keys = ("host", "port", "dbname", "user", "password")
        self.settings = {k: settings[k] for k in keys if settings.get(k) not in (None, "")}
        self.conn = None

    def connect(self, timeout=5):
        try:
            self.conn = _pg.connect(connect_timeout=timeout, application_name="cutover-unit-data", **self.settings)
        except _pg.Error as error:
            raise Failure(f"{self.name} database unreachable ({self.settings.get('host')}:{self.settings.get('port')}): {str(error).strip()}") from None
        with self.conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
        self.conn.commit()
        return self

    def snapshot_reads(self):
        """Every read of the next transaction sees one snapshot (REPEATABLE READ, read only)."""
        if PSYCOPG == 3:
            self.conn.isolation_level = _pg.IsolationLevel.REPEATABLE_READ
            self.conn.read_only = True
        else:  # pragma: no cover
            self.conn.set_session(isolation_level="REPEATABLE READ", readonly=True)

    def rows(self, sql):
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []

    def value(self, sql):
        found = self.rows(sql)
        return found[0][0] if found else None

    def execute(self, sql):
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.rowcount

    def commit(self):
        self.conn.commit()

    def rollback(self):
        self.conn.rollback()

    def close(self):
        if self.conn is not None:
            self.conn.close()

    def copy_out(self, sql, path):
        with open(path, "wb") as fh:
            if PSYCOPG == 3:
                with self.conn.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT") as copy:
                    for block in copy:
                        fh.write(block)
            else:  # pragma: no cover
                with self.conn.cursor() as cur:
                    cur.copy_expert(f"COPY ({sql}) TO STDOUT", fh)

    def copy_in(self, table_cols, path):
        with self.conn.cursor() as cur:
            if PSYCOPG == 3:
                with open(path, "rb") as fh, cur.copy(f"COPY {table_cols} FROM STDIN") as copy:
                    while True:
                        block = fh.read(1 << 20)
                        if not block:
                            break
                        copy.write(block)
            else:  # pragma: no cover
                with open(path, "rb") as fh:
                    cur.copy_expert(f"COPY {table_cols} FROM STDIN", fh)
            return cur.rowcount

    def stream(self, src_sql, dst, table_cols, spool):
        """legacy COPY out -> unified COPY in, block by block, both servers at work at once
        (psycopg 3; with psycopg2 through a spool file). Returns the rows copied in."""
        if PSYCOPG != 3:  # pragma: no cover
            self.copy_out(src_sql, spool)
            return dst.copy_in(table_cols, spool) if os.path.getsize(spool) else 0
        with self.conn.cursor() as src, dst.conn.cursor() as cur:
            with cur.copy(f"COPY {table_cols} FROM STDIN") as into, src.copy(f"COPY ({src_sql}) TO STDOUT") as out:
                for block in out:
                    into.write(block)
            return cur.rowcount


class Failure(Exception):
    pass


# --- the mover --------------------------------------------------------------------------------


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def each_file(fn, items):
    """[fn(item)] in the order of `items`, FILE_WORKERS at a time."""
    if len(items) < 2 or FILE_WORKERS == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=FILE_WORKERS) as pool:
        return list(pool.map(fn, items, chunksize=16))


def file_digest(path):
    """(sha256 or "missing", size)"""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing", 0
    return file_sha256(path), size


def copy_pairs(pairs):
    """Copy each (legacy file, unified file) not already there at the same size; -> (count,
    bytes). A missing legacy file fails."""
    def one(pair):
        src, dst = pair
        try:
            size = os.stat(src).st_size
        except FileNotFoundError:
            raise Failure(f"legacy file {src} is missing") from None
        try:
            there = os.stat(dst).st_size == size
        except FileNotFoundError:
            there = False
        if not there:
            copy_file(src, dst)
        return size

    return len(pairs), sum(each_file(one, pairs))


def copy_file(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class Mover:
    def __init__(self, p):
        self.p = p
        self.unit = p["unit"]
        self.site = p["site"]
        self.scope = Scope(self.unit, p["old_units"] or [], p["partition_rules"] or [])
        self.tables = [(schema, table) for schema in p["systems"] for table in p["tables"][schema]]
        self.file_tables = p["file_tables"] or {}
        self.work = Path(p["work_dir"])
        self.legacy_store = Path(p["legacy_store"])
        self.unified_store = Path(p["unified_store"])
        self.legacy = Database(p["legacy_db"], "legacy")
        self.unified = Database(p["unified_db"], "unified")
        self.stats = {}

    # -- column layouts
    def columns(self, db, schema, table):
        cols = [r[0] for r in db.rows(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            f"{lit(schema)} AND table_name = {lit(table)} ORDER BY ordinal_position")]
        if not cols:
            raise Failure(f"{db.name} database has no table {schema}.{table}")
        return cols

    def legacy_cols(self, schema, table):
        return [c for c in self.columns(self.legacy, schema, table) if c not in ("source_site", "source_unit")]

    def unified_select(self, schema, table, where):
        """Legacy rows in unified's layout: unit = the new unit, provenance, file path rewritten."""
        cols = self.legacy_cols(schema, table)
        path_col = (self.file_tables.get(f"{schema}.{table}") or {}).get("path_column")
        exprs = []
        for c in cols:
            if c == "unit":
                exprs.append(f"{lit(self.unit)} AS unit")
            elif c == path_col:
                exprs.append(f"{lit(self.unit + '/')} || regexp_replace({c}, '^.*/', '') AS {c}")
            else:
                exprs.append(c)
        exprs += [f"{lit(self.site)} AS source_site", "unit AS source_unit"]
        target = f"{schema}.{table} ({', '.join(cols + ['source_site', 'source_unit'])})"
        return f"SELECT {', '.join(exprs)} FROM {schema}.{table} WHERE {where}", target

    def quarantine_select(self, schema, table, where):
        sql = (f"SELECT {lit(table)}, {lit(self.site)}, t.unit, t.residential_quarter, t.id, to_jsonb(t), "
               f"'split old unit ' || t.unit || ': residential quarter ' || coalesce(t.residential_quarter, '(none)') || ' matches no partition rule' "
               f"FROM {schema}.{table} t WHERE {where}")
        return sql, f"{schema}.quarantine (table_name, source_site, source_unit, residential_quarter, row_id, row, reason)"

    # -- hashes
    def row_hash_expr(self, schema, table, alias, json_expr=None):
        j = json_expr or f"to_jsonb({alias})"
        j = f"({j}) - {lit(list(EXCLUDED_KEYS))}"
        path_col = (self.file_tables.get(f"{schema}.{table}") or {}).get("path_column")
        if path_col:
            j = f"jsonb_set({j}, '{{{path_col}}}', to_jsonb(regexp_replace(({j})->>{lit(path_col)}, '^.*/', '')))"
        return f"encode(sha256(convert_to(({j})::text, 'UTF8')), 'hex')"

    def aggregate(self, db, sql_from, hash_expr, order):
        return self.aggregate_by(db, None, [""], sql_from, hash_expr, order)[""]

    def aggregate_by(self, db, key_col, keys, sql_from, hash_expr, order):
        """{key: {count, sha256}} of the rows of `sql_from` for each of `keys` (values of
        `key_col`; no `key_col`: all of them under the one key), in one query: the sha256 of the
        rows' hashes in `order`, joined by commas; a key without rows gets count 0, sha256("")."""
        out = {key: {"count": 0, "sha256": EMPTY_SHA256} for key in keys}
        if not keys:
            return out
        digest = f"count(*), encode(sha256(convert_to(coalesce(string_agg({hash_expr}, ',' ORDER BY {order}), ''), 'UTF8')), 'hex')"
        if key_col is None:
            sql = f"SELECT {lit(keys[0])}, {digest} {sql_from}"
        else:
            sql = f"SELECT {key_col}, {digest} {sql_from} AND {key_col} = ANY({lit(list(keys))}) GROUP BY {key_col}"
        for key, count, sha in db.rows(sql):
            out[key] = {"count": int(count), "sha256": sha}
        return out

    # -- files
    def file_copies(self, where, quarantined=False, ids=None):
        """[(legacy file, unified file)] of the attachment rows in `where`."""
        pairs = []
        for name, spec in self.file_tables.items():
            schema, table = name.split(".")
            if schema not in self.p["systems"]:
                continue
            cond = where if ids is None else f"{where} AND t.id = ANY({lit(ids)}::uuid[])"
            for _, rel in self.legacy.rows(f"SELECT id::text, {spec['path_column']} FROM {schema}.{table} t WHERE {cond} ORDER BY id"):
                src = self.legacy_store / spec["store"] / rel
                if quarantined:
                    dst = self.unified_store / spec["store"] / "quarantine" / self.site / rel
                else:
                    dst = self.unified_store / spec["store"] / self.unit / Path(rel).name
                pairs.append((src, dst))
        return pairs

    def copy_files(self, where, quarantined=False, ids=None):
        """Legacy files of attachment rows in `where` to the unified store; returns (count, bytes)."""
        return copy_pairs(self.file_copies(where, quarantined, ids))

    def files_manifest(self, db, store_root, where, relocate):
        return self.files_manifest_by(db, store_root, where, None, [""], relocate)[""]

    def files_manifest_by(self, db, store_root, where, key_col, keys, relocate=None):
        """{key: {store: {count, bytes, sha256}}} of the files of the attachment rows in `where`,
        for each of `keys` (values of `key_col`; no `key_col`: all of them under the one key): a
        store's hash is over "<row id> <file name> <file sha256>" lines in row id order."""
        out = {key: {} for key in keys}
        if key_col is None:
            key_sql, cond, order = lit(keys[0]), where, "id"
        else:
            key_sql, cond, order = key_col, f"{where} AND {key_col} = ANY({lit(list(keys))})", f"{key_col}, id"
        for name, spec in self.file_tables.items():
            schema, table = name.split(".")
            if schema not in self.p["systems"]:
                continue
            rows = db.rows(f"SELECT {key_sql}, id::text, {spec['path_column']} FROM {schema}.{table} t WHERE {cond} ORDER BY {order}")
            digests = each_file(file_digest, [store_root / spec["store"] / (relocate(rel) if relocate else rel) for _, _, rel in rows])
            sums = {key: [hashlib.sha256(), 0, 0] for key in keys}
            for (key, row_id, rel), (digest, size) in zip(rows, digests):
                acc = sums[key]
                acc[0].update(f"{row_id} {Path(rel).name} {digest}\n".encode())
                acc[1] += 1
                acc[2] += size
            for key, (h, count, size) in sums.items():
                out[key][spec["store"]] = {"count": count, "bytes": size, "sha256": h.hexdigest()}
        return out

    # -- actions -------------------------------------------------------------------------------
    def precheck(self):
        problems = list(self.scope.problems)
        if self.p["require_identifier_code"] and self.p.get("identifier_code") in (None, "", "pending"):
            problems.append(f"unit {self.unit} has no identifier code yet (pending) and this runbook requires one")
        for db in (self.legacy, self.unified):
            try:
                db.connect()
                for schema, table in self.tables:
                    self.columns(db, schema, table)
                db.rollback()
            except Failure as error:
                problems.append(str(error))
        if problems:
            raise Failure("; ".join(problems))
        legacy_rows = {f"{s}.{t}": self.legacy.value(f"SELECT count(*) FROM {s}.{t} WHERE {self.scope.where()}") for s, t in self.tables}
        return False, {"legacy_rows": legacy_rows, "keys": self.scope.keys, "split": sorted(self.scope.unmatched)}

    def pre_copy(self):
        state = read_json(self.work / "pre_copy.json")
        self.unified.connect()
        if state is not None and self._held_in_unified() == sum(v for k, v in state["rows"].items() if ":" not in k):
            self.unified.rollback()
            return False, {"already": True, **state}
        self.unified.rollback()
        self.legacy.connect()
        self.legacy.snapshot_reads()
        marks = {}
        for schema in self.p["systems"]:
            mark, snap = self.legacy.rows(f"SELECT coalesce(max(id), 0), pg_current_snapshot()::text FROM {schema}.change_log")[0]
            marks[schema] = {"id": int(mark), "snapshot": snap}
        self._purge_unified(files=False)
        copies = self.file_copies(self.scope.where("t")) + self.file_copies(self.scope.where_unmatched("t"), quarantined=True)
        with ThreadPoolExecutor(max_workers=1) as background:  # the files copy while the rows stream
            files_copied = background.submit(copy_pairs, copies)
            rows = self._copy_rows()
            files, size = files_copied.result()
        self.unified.commit()
        self.legacy.rollback()
        state = {"at": now_iso(), "marks": marks, "rows": rows, "files": files, "bytes": size}
        write_json(self.work / "pre_copy.json", state)
        return True, state

    def _copy_rows(self):
        """The unit's rows from legacy into unified; a split old unit's unmatched rows to quarantine."""
        spool = self.work / "spool.copy"
        self.work.mkdir(parents=True, exist_ok=True)
        moved = {}
        for schema, table in self.tables:
            sql, target = self.unified_select(schema, table, self.scope.where())
            moved[f"{schema}.{table}"] = self.legacy.stream(sql, self.unified, target, spool)
            if self.scope.unmatched:
                moved[f"{schema}.quarantine:{table}"] = self._quarantine(schema, table, self.scope.where_unmatched("t"), spool)
        spool.unlink(missing_ok=True)
        return moved

    def _quarantine(self, schema, table, where, spool):
        """Unmatched legacy rows (alias t) replace their quarantine copies: reported, never dropped."""
        ids = [r[0] for r in self.legacy.rows(f"SELECT t.id::text FROM {schema}.{table} t WHERE {where}")]
        if not ids:
            return 0
        self.unified.execute(f"DELETE FROM {schema}.quarantine WHERE table_name = {lit(table)} AND source_site = {lit(self.site)} "
                             f"AND row_id = ANY({lit(ids)}::uuid[])")
        qsql, qtarget = self.quarantine_select(schema, table, where)
        self.legacy.copy_out(qsql, spool)
        return self.unified.copy_in(qtarget, spool)

    def _held_in_unified(self):
        """How many rows unified holds from this unit's legacy keys (by provenance)."""
        cond = f"unit = {lit(self.unit)} AND source_site = {lit(self.site)} AND source_unit = ANY({lit(self.scope.keys)})"
        return sum(int(self.unified.value(f"SELECT count(*) FROM {s}.{t} WHERE {cond}")) for s, t in self.tables)

    def _lock_split_units(self):
        """Successors of a split old unit share its quarantine rows: the one transaction at a
        time that rewrites them (an advisory lock per old unit, held until commit)."""
        for key in sorted(self.scope.unmatched):
            self.unified.rows(f"SELECT pg_advisory_xact_lock(hashtextextended({lit('cutover quarantine ' + self.site + ' ' + key)}, 0))")

    def _purge_unified(self, files=True, quarantine=False):
        self._lock_split_units()
        deleted = {}
        keys = lit(self.scope.keys)
        cond = f"unit = {lit(self.unit)} AND source_site = {lit(self.site)} AND source_unit = ANY({keys})"
        removed_files = 0
        if files:
            for name, spec in self.file_tables.items():
                schema, table = name.split(".")
                if schema not in self.p["systems"]:
                    continue
                for (rel,) in self.unified.rows(f"SELECT {spec['path_column']} FROM {schema}.{table} WHERE {cond}"):
                    path = self.unified_store / spec["store"] / rel
                    if path.exists():
                        path.unlink()
                        removed_files += 1
        for schema, table in reversed(self.tables):
            deleted[f"{schema}.{table}"] = self.unified.execute(f"DELETE FROM {schema}.{table} WHERE {cond}")
        if quarantine:
            for key in self.scope.unmatched:
                for schema in self.p["systems"]:
                    others = " OR ".join(f"EXISTS (SELECT 1 FROM {s}.{t} WHERE source_site = {lit(self.site)} AND source_unit = {lit(key)} AND unit <> {lit(self.unit)})"
                                         for s, t in self.tables)
                    if self.unified.value(f"SELECT {others}"):
                        continue
                    if files:
                        for name, spec in self.file_tables.items():
                            s, t = name.split(".")
                            if s != schema:
                                continue
                            for (rel,) in self.unified.rows(f"SELECT row->>{lit(spec['path_column'])} FROM {schema}.quarantine WHERE table_name = {lit(t)} AND source_site = {lit(self.site)} AND source_unit = {lit(key)}"):
                                path = self.unified_store / spec["store"] / "quarantine" / self.site / rel
                                if path.exists():
                                    path.unlink()
                                    removed_files += 1
                    deleted[f"{schema}.quarantine:{key}"] = self.unified.execute(
                        f"DELETE FROM {schema}.quarantine WHERE source_site = {lit(self.site)} AND source_unit = {lit(key)}")
        return deleted, removed_files

    def freeze(self):
        self.legacy.connect()
        inserted = 0
        for schema in self.p["systems"]:
            for key, quarter in self.scope.freeze_rows():
                inserted += self.legacy.execute(
                    f"INSERT INTO {schema}.frozen_units (unit, residential_quarter, frozen_by, reason) VALUES "
                    f"({lit(key)}, {lit(quarter)}, current_user, {lit('cutover of ' + self.unit + ' to the unified platform')}) ON CONFLICT DO NOTHING")
        self.legacy.commit()
        state = read_json(self.work / "freeze.json")
        if inserted or state is None:
            # Writes that began before the freeze must end before the catch-up reads the log.
            horizon = self.legacy.value("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
            self.legacy.commit()
            deadline = time.monotonic() + float(self.p["drain_timeout"])
            drained = False
            while time.monotonic() < deadline:
                oldest = self.legacy.value(f"SELECT pg_snapshot_xmin(pg_current_snapshot()) >= {lit(horizon)}::xid8")
                self.legacy.commit()
                if oldest:
                    drained = True
                    break
                time.sleep(0.05)
            if not drained:
                raise Failure(f"transactions that began before the freeze of {self.unit} did not end within {self.p['drain_timeout']} s")
            state = {"at": now_iso(), "rows": [list(r) for r in self.scope.freeze_rows()], "systems": self.p["systems"]}
            write_json(self.work / "freeze.json", state)
        return bool(inserted), state

    def unfreeze(self):
        self.legacy.connect()
        deleted = 0
        for schema in self.p["systems"]:
            for key, quarter in self.scope.freeze_rows():
                deleted += self.legacy.execute(
                    f"DELETE FROM {schema}.frozen_units WHERE unit = {lit(key)} AND residential_quarter IS NOT DISTINCT FROM {lit(quarter)}")
        self.legacy.commit()
        (self.work / "freeze.json").unlink(missing_ok=True)
        return bool(deleted), {"unfrozen": deleted}

    def export(self):
        pre = read_json(self.work / "pre_copy.json")
        if pre is None:
            raise Failure(f"no pre-copy of {self.unit} to catch up from ({self.work / 'pre_copy.json'} missing)")
        manifest = read_json(self.work / "manifest.json")
        if manifest is not None and manifest.get("pre_copy_at") == pre["at"]:
            return False, {"already": True, "totals": manifest["totals"]}
        self.legacy.connect()
        self.legacy.snapshot_reads()
        keys = lit(self.scope.keys)
        changed = {}
        for schema in self.p["systems"]:
            mark = pre["marks"][schema]
            for table, row_id in self.legacy.rows(
                    f"SELECT DISTINCT table_name, row_id::text FROM {schema}.change_log WHERE unit = ANY({keys}) AND "
                    f"(id > {int(mark['id'])} OR NOT pg_visible_in_snapshot(txid, {lit(mark['snapshot'])}::pg_snapshot))"):
                changed.setdefault(f"{schema}.{table}", []).append(row_id)
        catchup = self.work / "catchup"
        shutil.rmtree(catchup, ignore_errors=True)
        catchup.mkdir(parents=True)
        files = []
        for schema, table in self.tables:
            ids = sorted(changed.get(f"{schema}.{table}", []))
            if not ids:
                continue
            idcond = f"id = ANY({lit(ids)}::uuid[])"
            sql, target = self.unified_select(schema, table, f"{self.scope.where()} AND {idcond}")
            self.legacy.copy_out(sql, catchup / f"{schema}.{table}.copy")
            if self.scope.unmatched:
                qsql, _ = self.quarantine_select(schema, table, f"{self.scope.where_unmatched('t')} AND t.{idcond}")
                self.legacy.copy_out(qsql, catchup / f"{schema}.{table}.quarantine.copy")
            files.append({"table": f"{schema}.{table}", "target": target, "ids": ids})
        manifest = {"unit": self.unit, "site": self.site, "at": now_iso(), "pre_copy_at": pre["at"], "keys": self.scope.keys,
                    "catchup": {t["table"]: len(t["ids"]) for t in files}, **self.manifest_legacy()}
        self.legacy.rollback()
        write_json(catchup / "index.json", files)
        write_json(self.work / "manifest.json", manifest)
        return False, {"catchup": manifest["catchup"], "totals": manifest["totals"]}

    def manifest_legacy(self):
        out = {"rows": {}, "quarantine": {}, "files": {}}
        for schema, table in self.tables:
            h = self.row_hash_expr(schema, table, "t")
            for key, quarters in self.scope.parts:
                cond = f"t.unit = {lit(key)}" + (f" AND t.residential_quarter = ANY({lit(quarters)})" if quarters else "")
                out["rows"][f"{schema}.{table}/{key}"] = self.aggregate(self.legacy, f"FROM {schema}.{table} t WHERE {cond}", h, "t.id")
            for key, quarters in self.scope.unmatched.items():
                cond = f"t.unit = {lit(key)} AND (t.residential_quarter IS NULL OR NOT t.residential_quarter = ANY({lit(quarters)}))"
                out["quarantine"][f"{schema}.{table}/{key}"] = self.aggregate(self.legacy, f"FROM {schema}.{table} t WHERE {cond}", h, "t.id")
        for key, quarters in self.scope.parts:
            cond = f"t.unit = {lit(key)}" + (f" AND t.residential_quarter = ANY({lit(quarters)})" if quarters else "")
            for store, m in self.files_manifest(self.legacy, self.legacy_store, cond, None).items():
                out["files"][f"{store}/{key}"] = m
        out["totals"] = {
            "rows": sum(v["count"] for v in out["rows"].values()),
            "quarantined": sum(v["count"] for v in out["quarantine"].values()),
            "files": sum(v["count"] for v in out["files"].values()),
            "bytes": sum(v["bytes"] for v in out["files"].values()),
        }
        return out

    def import_(self):
        manifest = read_json(self.work / "manifest.json")
        if manifest is None:
            raise Failure(f"no export of {self.unit} to import ({self.work / 'manifest.json'} missing)")
        done = read_json(self.work / "import.json")
        if done is not None and done.get("manifest_at") == manifest["at"]:
            return False, done
        index = read_json(self.work / "catchup" / "index.json") or []
        self.legacy.connect()
        self.unified.connect()
        applied = {}
        self._lock_split_units()
        cond = f"unit = {lit(self.unit)} AND source_site = {lit(self.site)}"
        for item in reversed(index):
            applied[item["table"] + ":deleted"] = self.unified.execute(f"DELETE FROM {item['table']} WHERE {cond} AND id = ANY({lit(item['ids'])}::uuid[])")
        for item in index:
            path = self.work / "catchup" / f"{item['table']}.copy"
            applied[item["table"]] = self.unified.copy_in(item["target"], path) if path.exists() and path.stat().st_size else 0
            qpath = self.work / "catchup" / f"{item['table']}.quarantine.copy"
            schema, table = item["table"].split(".")
            if qpath.exists():
                self.unified.execute(f"DELETE FROM {schema}.quarantine WHERE table_name = {lit(table)} AND source_site = {lit(self.site)} AND row_id = ANY({lit(item['ids'])}::uuid[])")
                if qpath.stat().st_size:
                    applied[f"{schema}.quarantine:{table}"] = self.unified.copy_in(
                        f"{schema}.quarantine (table_name, source_site, source_unit, residential_quarter, row_id, row, reason)", qpath)
            if item["table"] in self.file_tables:
                self.copy_files(self.scope.where("t"), ids=item["ids"])
                self.copy_files(self.scope.where_unmatched("t"), quarantined=True, ids=item["ids"])
        if self.unit in (self.p["faults"].get("corrupt_import") or []):
            schema, table = self.tables[0]
            col = self.p["faults"].get("corrupt_column") or "status"
            applied["fault:corrupted"] = self.unified.execute(
                f"UPDATE {schema}.{table} SET {col} = {col} || ' (corrupted by lab fault)' WHERE id = "
                f"(SELECT id FROM {schema}.{table} WHERE {cond} ORDER BY id LIMIT 1)")
        self.unified.commit()
        self.legacy.rollback()
        state = {"at": now_iso(), "manifest_at": manifest["at"], "applied": applied}
        write_json(self.work / "import.json", state)
        return True, state

    def reconcile(self):
        manifest = read_json(self.work / "manifest.json")
        if manifest is None:
            raise Failure(f"no manifest for {self.unit} ({self.work / 'manifest.json'} missing): nothing to reconcile against")
        self.unified.connect()
        found = {"rows": {}, "quarantine": {}, "files": {}}
        keys = [key for key, _ in self.scope.parts]
        mine = f"t.unit = {lit(self.unit)} AND t.source_site = {lit(self.site)}"
        for schema, table in self.tables:  # one query per table: every old unit's count and hash
            h = self.row_hash_expr(schema, table, "t")
            for key, m in self.aggregate_by(self.unified, "t.source_unit", keys, f"FROM {schema}.{table} t WHERE {mine}", h, "t.id").items():
                found["rows"][f"{schema}.{table}/{key}"] = m
            qh = self.row_hash_expr(schema, table, "q", json_expr="q.row")
            for key, m in self.aggregate_by(self.unified, "q.source_unit", list(self.scope.unmatched),
                                            f"FROM {schema}.quarantine q WHERE q.table_name = {lit(table)} AND q.source_site = {lit(self.site)}",
                                            qh, "q.row_id").items():
                found["quarantine"][f"{schema}.{table}/{key}"] = m
        for key, stores in self.files_manifest_by(self.unified, self.unified_store, mine, "t.source_unit", keys).items():
            for store, m in stores.items():
                found["files"][f"{store}/{key}"] = m
        self.unified.rollback()
        differences = []
        for part in ("rows", "quarantine", "files"):
            for name, want in manifest[part].items():
                got = found[part].get(name)
                if got != want:
                    differences.append({"what": f"{part} {name}", "legacy": want, "unified": got})
        evidence = {"unit": self.unit, "site": self.site, "at": now_iso(), "equal": not differences, "differences": differences,
                    "totals": manifest["totals"], "manifest": str(self.work / "manifest.json")}
        write_json(self.work / "reconcile.json", evidence)
        if differences:
            raise Failure(f"reconcile {self.unit}: {len(differences)} difference(s) between the export manifest and unified: "
                          + "; ".join(d["what"] for d in differences[:5]))
        return False, {k: evidence[k] for k in ("unit", "equal", "totals")}

    def purge(self):
        self.unified.connect()
        deleted, files = self._purge_unified(files=True, quarantine=True)
        self.unified.commit()
        for name in ("pre_copy.json", "manifest.json", "import.json"):  # reconcile.json stays: evidence
            (self.work / name).unlink(missing_ok=True)
        shutil.rmtree(self.work / "catchup", ignore_errors=True)
        total = sum(deleted.values())
        return bool(total or files), {"deleted_rows": deleted, "deleted_files": files}

    def run(self, action):
        try:
            return getattr(self, "import_" if action == "import" else action)()
        finally:
            self.legacy.close()
            self.unified.close()


def main():
    db = dict(type="dict", required=True, no_log=False, options=dict(
        host=dict(type="str"), port=dict(type="int", default=5432), dbname=dict(type="str", required=True),
        user=dict(type="str", required=True), password=dict(type="str", no_log=True)))
    module = AnsibleModule(argument_spec=dict(
        action=dict(type="str", required=True, choices=list(ACTIONS)),
        unit=dict(type="str", required=True),
        site=dict(type="str", required=True),
        old_units=dict(type="list", elements="dict", default=[]),
        partition_rules=dict(type="list", elements="dict", default=[]),
        systems=dict(type="list", elements="str", required=True),
        tables=dict(type="dict", required=True),
        file_tables=dict(type="dict", default={}),
        legacy_db=db, unified_db=db,
        legacy_store=dict(type="path", required=True),
        unified_store=dict(type="path", required=True),
        work_dir=dict(type="path", required=True),
        identifier_code=dict(type="str", default="pending"),
        require_identifier_code=dict(type="bool", default=False),
        drain_timeout=dict(type="float", default=15.0),
        faults=dict(type="dict", default={}),
    ), supports_check_mode=True)
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="check mode: nothing moved")
    started = time.monotonic()
    try:
        changed, result = Mover(p).run(p["action"])
    except Failure as error:
        module.fail_json(msg=str(error), unit=p["unit"], action=p["action"])
    except _pg.Error as error:
        module.fail_json(msg=f"{p['action']} {p['unit']}: database error: {str(error).strip()}", unit=p["unit"], action=p["action"])
    module.exit_json(changed=changed, unit=p["unit"], action=p["action"], seconds=round(time.monotonic() - started, 3), result=result)


if __name__ == "__main__":
    main()
