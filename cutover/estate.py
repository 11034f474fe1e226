"""The estate: sites, shared systems, units of the merged city with their lineage.

Loaded from ``inventories/<env>/``:

- ``estate.yml``: sites, shared systems, pilot sets, the partition-rules file;
- ``units.csv``: the new commune-level units (seq, name, kind, former_province,
  former_district, merged_from);
- ``old_units.csv``: the old units and their successors (old_name, old_district,
  old_province, successors, split);
- ``departments.csv``: the city's departments and boards (name, english, kind, since, note);
- ``identifier_codes.csv``: identifier codes assigned so far (unit, identifier_code,
  decision, date);
- the partition-rules file named by ``estate.yml``.

Everything is validated whole: every problem is collected with its file and row or key path
and raised together as one ``InvalidInput``. Nothing here has side effects.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cutover.errors import InvalidInput, Problem

PROVINCES = ("HCM", "BD", "BRVT")
PROVINCE_NAMES = {
    "HCM": "Thành phố Hồ Chí Minh",
    "BD": "Bình Dương",
    "BRVT": "Bà Rịa – Vũng Tàu",
}
COMMUNE_KINDS = ("phuong", "xa", "dac_khu")
DEPARTMENT_KINDS = ("office", "department", "inspectorate", "board", "center")
UNIT_KINDS = COMMUNE_KINDS + DEPARTMENT_KINDS
PENDING = "pending"

UNITS_COLUMNS = ("seq", "name", "kind", "former_province", "former_district", "merged_from")
OLD_UNITS_COLUMNS = ("old_name", "old_district", "old_province", "successors", "split")
DEPARTMENTS_COLUMNS = ("name", "english", "kind", "since", "note")
CODES_COLUMNS = ("unit", "identifier_code", "decision", "date")

_IDENTIFIER_RE = re.compile(r"^[A-Z0-9]+(\.[A-Z0-9]+)+$")
_TAGGED_RE = re.compile(r"^(?P<name>.*?)\s*\((?P<district>[^()]*)\)$")


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def ascii_slug(text: str) -> str:
    """`Sài Gòn` -> `sai-gon`: diacritics dropped, đ -> d, lower case, dashes."""
    text = text.replace("đ", "d").replace("Đ", "D")
    text = unicodedata.normalize("NFD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def unit_code(kind: str, name: str) -> str:
    """The stable ASCII code of a unit: `phuong-sai-gon`, `dac-khu-con-dao`, `so-noi-vu`."""
    if kind in COMMUNE_KINDS:
        return f"{kind.replace('_', '-')}-{ascii_slug(name)}"
    return ascii_slug(name)


def identifier_code_problem(code: str) -> str | None:
    """Why `code` is not a well-formed electronic identifier code, or None if it is.

    Capital letters A-Z, digits and dots; dot-separated groups (two or more), none empty; at
    most 35 characters. Both `000.00.00.H29` and level-1-first `H29.0.162` are accepted.
    """
    if len(code) > 35:
        return f"identifier code {code!r} is longer than 35 characters"
    if not _IDENTIFIER_RE.match(code):
        return (
            f"identifier code {code!r} is malformed: use A-Z, 0-9 and dots, "
            "in two or more dot-separated groups"
        )
    return None


# --- declarations in estate.yml (pydantic) -------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(_Strict):
    code: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    role: Literal["legacy", "unified"]
    province: Literal["HCM", "BD", "BRVT"] | None = None
    name_vi: str
    name_en: str


class SystemData(_Strict):
    tables: list[str] = []
    file_stores: list[str] = []


class SharedSystem(_Strict):
    code: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    name_vi: str
    name_en: str
    legacy_sites: list[str]
    data: SystemData = SystemData()


class EstateFile(_Strict):
    sites: list[Site]
    systems: list[SharedSystem]
    pilot_sets: dict[str, list[str]] = {}
    partition_rules: str | None = None


class OldUnitKey(_Strict):
    name: str
    district: str


class PartitionRule(_Strict):
    old_unit: OldUnitKey
    by: str = "residential_quarter"
    successors: dict[str, list[str]]


class PartitionRulesFile(_Strict):
    rules: list[PartitionRule] = []


# --- the loaded estate ---------------------------------------------------------------------


@dataclass(frozen=True)
class OldUnit:
    name: str
    district: str
    province: str
    successors: tuple[str, ...]  # new unit codes
    split: bool

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.district)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "district": self.district,
            "province": self.province,
            "successors": list(self.successors),
            "split": self.split,
        }


@dataclass(frozen=True)
class IdentifierAssignment:
    unit: str
    identifier_code: str
    decision: str
    date: str


@dataclass
class Unit:
    code: str
    name: str
    kind: str
    province: str
    site: str
    seq: int | None = None
    districts: tuple[str, ...] = ()
    lineage: tuple[OldUnit, ...] = ()
    english: str = ""
    identifier: IdentifierAssignment | None = None
    blockers: list[str] = field(default_factory=list)

    @property
    def is_commune_level(self) -> bool:
        return self.kind in COMMUNE_KINDS

    @property
    def identifier_code(self) -> str:
        return self.identifier.identifier_code if self.identifier else PENDING

    @property
    def blocked(self) -> bool:
        return bool(self.blockers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "kind": self.kind,
            "province": self.province,
            "site": self.site,
            "seq": self.seq,
            "districts": list(self.districts),
            "lineage": [o.as_dict() for o in self.lineage],
            "english": self.english,
            "identifier_code": self.identifier_code,
            "blockers": list(self.blockers),
        }


@dataclass
class Estate:
    env: str
    root: Path
    sites: dict[str, Site]
    systems: dict[str, SharedSystem]
    units: dict[str, Unit]
    old_units: dict[tuple[str, str], OldUnit]
    rules: dict[tuple[str, str], PartitionRule]
    pilot_sets: dict[str, list[str]]
    digest: str

    def unit(self, code: str) -> Unit:
        try:
            return self.units[code]
        except KeyError:
            raise InvalidInput([Problem(str(self.root), "units", f"unknown unit {code!r}")]) from None

    def commune_units(self) -> list[Unit]:
        return [u for u in self.units.values() if u.is_commune_level]

    def split_partners(self, unit: Unit) -> dict[tuple[str, str], list[str]]:
        """For each split old unit of `unit`, its other successors."""
        return {
            old.key: [s for s in old.successors if s != unit.code]
            for old in unit.lineage
            if old.split
        }

    def legacy_site_of(self, province: str) -> str:
        for site in self.sites.values():
            if site.role == "legacy" and site.province == province:
                return site.code
        raise InvalidInput(f"no legacy site for former province {province}")

    def stats(self) -> dict[str, Any]:
        communes = self.commune_units()
        by_kind = {k: sum(1 for u in communes if u.kind == k) for k in COMMUNE_KINDS}
        by_province = {p: sum(1 for u in communes if u.province == p) for p in PROVINCES}
        departments = [u for u in self.units.values() if not u.is_commune_level]
        return {
            "env": self.env,
            "commune_level_units": len(communes),
            "by_kind": by_kind,
            "by_former_province": by_province,
            "departments": len(departments),
            "old_units": len(self.old_units),
            "old_units_by_province": {
                p: sum(1 for o in self.old_units.values() if o.province == p) for p in PROVINCES
            },
            "split_old_units": sum(1 for o in self.old_units.values() if o.split),
            "partition_rules": len(self.rules),
            "blocked_units": sum(1 for u in self.units.values() if u.blocked),
            "pending_identifier_codes": sum(1 for u in communes if u.identifier is None),
            "sites": len(self.sites),
            "systems": len(self.systems),
            "digest": self.digest,
        }


# --- loading -------------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, file: Path | str, where: str, message: str) -> None:
        self.problems.append(Problem(str(file), where, message))

    def pydantic(self, file: Path, err: ValidationError, prefix: str = "") -> None:
        for e in err.errors():
            path = prefix + _loc_path(e["loc"])
            message = e["msg"]
            if e["type"] == "extra_forbidden":
                message = "unknown key"
            self.add(file, path or "(top)", message)


def _loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def read_csv(path: Path, columns: tuple[str, ...], problems: _Collector) -> list[tuple[int, dict[str, str]]] | None:
    """Rows of a CSV as (line number, NFC-normalised values); None if it cannot be used."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        problems.add(path, "", "file not found")
        return None
    except UnicodeDecodeError as exc:
        problems.add(path, "", f"not UTF-8: {exc.reason} at byte {exc.start}")
        return None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [nfc(h) for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        problems.add(path, "header", f"not valid CSV: {exc}")
        return None
    missing = [c for c in columns if c not in header]
    if missing:
        problems.add(path, "header", f"missing column(s): {', '.join(missing)}")
        return None
    reader.fieldnames = header
    rows = []
    try:
        for row in reader:
            values = {k: nfc(v) if isinstance(v, str) else "" for k, v in row.items() if k is not None}
            rows.append((reader.line_num, values))
    except csv.Error as exc:
        problems.add(path, f"row {reader.line_num}", f"not valid CSV: {exc}")
        return None
    return rows


def _read_yaml(path: Path, problems: _Collector) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.add(path, "", "file not found")
    except UnicodeDecodeError as exc:
        problems.add(path, f"byte {exc.start}", f"not UTF-8: {exc.reason}")
    except yaml.reader.ReaderError as exc:
        problems.add(path, f"character {exc.position}", f"not valid YAML: unacceptable character #x{exc.character:04x}" if isinstance(exc.character, int) else "not valid YAML: unreadable text")
    except (ValueError, TypeError) as exc:  # a scalar YAML cannot construct, e.g. the date 2025-13-45
        problems.add(path, "(document)", f"not a valid value: {exc}")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        problems.add(path, where, f"not valid YAML: {' '.join(str(getattr(exc, 'problem', None) or exc).split())}")
    return None


def _nfc_tree(value: Any) -> Any:
    if isinstance(value, str):
        return nfc(value)
    if isinstance(value, list):
        return [_nfc_tree(v) for v in value]
    if isinstance(value, dict):
        return {_nfc_tree(k) if isinstance(k, str) else k: _nfc_tree(v) for k, v in value.items()}
    return value


def load_estate(env_dir: Path | str) -> Estate:
    """Load and validate `inventories/<env>/`; raise InvalidInput listing every problem."""
    root = Path(env_dir)
    problems = _Collector()
    if not root.is_dir():
        raise InvalidInput([Problem(str(root), "", "inventory folder not found")])
    digest = hashlib.sha256()

    def file_digest(path: Path) -> None:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")

    # estate.yml
    estate_path = root / "estate.yml"
    file_digest(estate_path)
    raw = _nfc_tree(_read_yaml(estate_path, problems))
    if isinstance(raw, dict) and "extends" in raw:
        # `extends: ../production/estate.yml`: that file's top-level keys, replaced by ours.
        base_path = (root / str(raw.pop("extends"))).resolve()
        file_digest(base_path)
        base = _nfc_tree(_read_yaml(base_path, problems))
        if isinstance(base, dict):
            raw = {**base, **raw}
    declared: EstateFile | None = None
    if raw is not None:
        try:
            declared = EstateFile.model_validate(raw)
        except ValidationError as err:
            problems.pydantic(estate_path, err)

    sites: dict[str, Site] = {}
    systems: dict[str, SharedSystem] = {}
    if declared:
        for i, site in enumerate(declared.sites):
            if site.code in sites:
                problems.add(estate_path, f"sites[{i}].code", f"duplicate site code {site.code!r}")
            if site.role == "legacy" and site.province is None:
                problems.add(estate_path, f"sites[{i}].province", "a legacy site needs its former province")
            sites[site.code] = site
        for p in PROVINCES:
            if not any(s.role == "legacy" and s.province == p for s in sites.values()):
                problems.add(estate_path, "sites", f"no legacy site for former province {p}")
        if not any(s.role == "unified" for s in sites.values()):
            problems.add(estate_path, "sites", "no unified site")
        for i, system in enumerate(declared.systems):
            if system.code in systems:
                problems.add(estate_path, f"systems[{i}].code", f"duplicate system code {system.code!r}")
            for j, s in enumerate(system.legacy_sites):
                if s not in sites:
                    problems.add(estate_path, f"systems[{i}].legacy_sites[{j}]", f"unknown site {s!r}")
            systems[system.code] = system

    site_of = {s.province: s.code for s in sites.values() if s.role == "legacy" and s.province}

    # units.csv
    units_path = root / "units.csv"
    file_digest(units_path)
    units: dict[str, Unit] = {}
    by_seq: dict[str, Unit] = {}
    merged_from: dict[str, tuple[int, str]] = {}
    rows = read_csv(units_path, UNITS_COLUMNS, problems) or []
    candidates: list[tuple[int, dict[str, str], str]] = []
    for line, row in rows:
        ok = True
        if row["kind"] not in COMMUNE_KINDS:
            problems.add(units_path, f"row {line}.kind", f"unknown kind {row['kind']!r} (expected one of {', '.join(COMMUNE_KINDS)})")
            ok = False
        if row["former_province"] not in PROVINCES:
            problems.add(units_path, f"row {line}.former_province", f"unknown province {row['former_province']!r} (expected one of {', '.join(PROVINCES)})")
            ok = False
        if not row["name"]:
            problems.add(units_path, f"row {line}.name", "empty name")
            ok = False
        if not row["seq"].isdigit():
            problems.add(units_path, f"row {line}.seq", f"seq {row['seq']!r} is not a number")
            ok = False
        elif row["seq"] in merged_from:
            problems.add(units_path, f"row {line}.seq", f"duplicate seq {row['seq']} (first on row {merged_from[row['seq']][0]})")
            ok = False
        if ok:
            merged_from[row["seq"]] = (line, row["merged_from"])
            candidates.append((line, row, unit_code(row["kind"], row["name"])))
    # Names that differ only in diacritics (Thanh An, Thạnh An) share a slug: such units take
    # their former province as a suffix, so each code stays stable and unique.
    slug_count: dict[str, int] = {}
    for _, _, code in candidates:
        slug_count[code] = slug_count.get(code, 0) + 1
    first_row: dict[str, int] = {}
    for line, row, code in candidates:
        if slug_count[code] > 1:
            code = f"{code}-{row['former_province'].lower()}"
        if code in first_row:
            problems.add(units_path, f"row {line}.name", f"duplicate unit code {code!r} (first on row {first_row[code]})")
            continue
        first_row[code] = line
        unit = Unit(
            code=code,
            name=row["name"],
            kind=row["kind"],
            province=row["former_province"],
            site=site_of.get(row["former_province"], ""),
            seq=int(row["seq"]),
            districts=tuple(d.strip() for d in row["former_district"].split(";") if d.strip()),
        )
        units[code] = unit
        by_seq[row["seq"]] = unit

    # old_units.csv
    old_path = root / "old_units.csv"
    file_digest(old_path)
    old_units: dict[tuple[str, str], OldUnit] = {}
    old_rows = read_csv(old_path, OLD_UNITS_COLUMNS, problems) or []
    lineage: dict[str, list[OldUnit]] = {}
    for line, row in old_rows:
        key = (row["old_name"], row["old_district"])
        where = f"row {line}"
        if not row["old_name"] or not row["old_district"]:
            problems.add(old_path, f"{where}.old_name", "an old unit needs both its name and its district")
            continue
        if key in old_units:
            problems.add(old_path, f"{where}.old_name", f"duplicate old unit {key[0]} ({key[1]})")
            continue
        if row["old_province"] not in PROVINCES:
            problems.add(old_path, f"{where}.old_province", f"unknown province {row['old_province']!r} (expected one of {', '.join(PROVINCES)})")
        seqs = [s.strip() for s in row["successors"].split(";") if s.strip()]
        if not seqs:
            problems.add(old_path, f"{where}.successors", f"old unit {key[0]} ({key[1]}) has no successor")
            continue
        successors: list[str] = []
        for s in seqs:
            if s not in by_seq:
                problems.add(old_path, f"{where}.successors", f"unknown successor {s!r} (no unit with that seq in {units_path.name})")
            else:
                successors.append(by_seq[s].code)
        split_flag = row["split"].lower()
        if split_flag not in ("yes", "no"):
            problems.add(old_path, f"{where}.split", f"split must be yes or no, not {row['split']!r}")
        elif (split_flag == "yes") != (len(seqs) > 1):
            problems.add(old_path, f"{where}.split", f"split is {split_flag} but the old unit has {len(seqs)} successor(s)")
        old = OldUnit(key[0], key[1], row["old_province"], tuple(successors), len(seqs) > 1)
        old_units[key] = old
        for code in successors:
            lineage.setdefault(code, []).append(old)

    # Cross-check merged_from (units.csv) against successors (old_units.csv).
    for seq, unit in by_seq.items():
        line, text = merged_from[seq]
        sent_here = {o.key: o for o in lineage.get(unit.code, [])}
        ordered: list[OldUnit] = []
        for entry in (e.strip() for e in text.split(";")):
            if not entry:
                continue
            m = _TAGGED_RE.match(entry)
            if m:
                key = (m["name"], m["district"])
            else:
                names = [k for k in sent_here if k[0] == entry]
                key = names[0] if len(names) == 1 else (entry, unit.districts[0] if unit.districts else "")
            if key not in sent_here:
                problems.add(units_path, f"row {line}.merged_from", f"{key[0]} ({key[1]}) is not an old unit whose successors include seq {seq} in {old_path.name}")
                continue
            ordered.append(sent_here.pop(key))
        for key in sent_here:
            problems.add(units_path, f"row {line}.merged_from", f"does not name {key[0]} ({key[1]}), which {old_path.name} sends to seq {seq}")
        unit.lineage = tuple(ordered) + tuple(sent_here.values())
        if not unit.lineage and not text.strip():
            problems.add(units_path, f"row {line}.merged_from", f"unit {unit.code} is formed from no old unit")

    # departments.csv
    dep_path = root / "departments.csv"
    file_digest(dep_path)
    for line, row in read_csv(dep_path, DEPARTMENTS_COLUMNS, problems) or []:
        if row["kind"] not in DEPARTMENT_KINDS:
            problems.add(dep_path, f"row {line}.kind", f"unknown kind {row['kind']!r} (expected one of {', '.join(DEPARTMENT_KINDS)})")
            continue
        code = unit_code(row["kind"], row["name"])
        if code in units:
            problems.add(dep_path, f"row {line}.name", f"duplicate unit code {code!r}")
            continue
        units[code] = Unit(code=code, name=row["name"], kind=row["kind"], province="HCM", site=site_of.get("HCM", ""), english=row["english"])

    # identifier_codes.csv (optional: absent means every unit is pending)
    codes_path = root / "identifier_codes.csv"
    if codes_path.exists():
        file_digest(codes_path)
        for a in parse_identifier_codes(codes_path, units, problems):
            units[a.unit].identifier = a

    # partition rules
    rules: dict[tuple[str, str], PartitionRule] = {}
    if declared and declared.partition_rules:
        rules_path = root / declared.partition_rules
        file_digest(rules_path)
        raw_rules = _nfc_tree(_read_yaml(rules_path, problems))
        parsed: PartitionRulesFile | None = None
        if raw_rules is not None:
            try:
                parsed = PartitionRulesFile.model_validate(raw_rules)
            except ValidationError as err:
                problems.pydantic(rules_path, err)
        for i, rule in enumerate(parsed.rules if parsed else []):
            key = (rule.old_unit.name, rule.old_unit.district)
            where = f"rules[{i}]"
            old = old_units.get(key)
            if old is None:
                problems.add(rules_path, f"{where}.old_unit", f"unknown old unit {key[0]} ({key[1]})")
                continue
            if not old.split:
                problems.add(rules_path, f"{where}.old_unit", f"{key[0]} ({key[1]}) is not split: it needs no rule")
            if key in rules:
                problems.add(rules_path, f"{where}.old_unit", f"a second rule for {key[0]} ({key[1]})")
            for succ in rule.successors:
                if succ not in old.successors:
                    problems.add(rules_path, f"{where}.successors.{succ}", f"{succ!r} is not a successor of {key[0]} ({key[1]}): expected {', '.join(old.successors)}")
            for succ in old.successors:
                if succ not in rule.successors:
                    problems.add(rules_path, f"{where}.successors", f"no values for successor {succ!r}")
            seen: dict[str, str] = {}
            for succ, values in rule.successors.items():
                for v in values:
                    if v in seen and seen[v] != succ:
                        problems.add(rules_path, f"{where}.successors.{succ}", f"{v!r} is given to both {seen[v]} and {succ}")
                    seen[v] = succ
            rules[key] = rule

    pilot_sets = declared.pilot_sets if declared else {}
    for name, codes in pilot_sets.items():
        for j, code in enumerate(codes):
            if code not in units:
                problems.add(estate_path, f"pilot_sets.{name}[{j}]", f"unknown unit {code!r}")

    if problems.problems:
        raise InvalidInput(problems.problems)

    # A split old unit without a rule blocks each of its successors (not a load error).
    for old in old_units.values():
        if old.split and old.key not in rules:
            for code in old.successors:
                units[code].blockers.append(f"no partition rule for split old unit {old.name} ({old.district})")

    return Estate(
        env=root.name,
        root=root,
        sites=sites,
        systems=systems,
        units=units,
        old_units=old_units,
        rules=rules,
        pilot_sets=pilot_sets,
        digest=digest.hexdigest(),
    )


def parse_identifier_codes(path: Path, units: dict[str, Unit], problems: _Collector) -> list[IdentifierAssignment]:
    """Parse an identifier-codes CSV against the known units, collecting every problem."""
    assignments: list[IdentifierAssignment] = []
    given: dict[str, tuple[int, str]] = {}
    named: dict[str, int] = {}
    for line, row in read_csv(path, CODES_COLUMNS, problems) or []:
        where = f"row {line}"
        unit, code = row["unit"], row["identifier_code"]
        bad = False
        if unit not in units:
            problems.add(path, f"{where}.unit", f"unknown unit {unit!r}")
            bad = True
        elif unit in named:
            problems.add(path, f"{where}.unit", f"unit {unit} is listed twice (first on row {named[unit]})")
            bad = True
        reason = identifier_code_problem(code)
        if reason:
            problems.add(path, f"{where}.identifier_code", reason)
            bad = True
        elif code in given and given[code][1] != unit:
            problems.add(path, f"{where}.identifier_code", f"code {code} is given to two units: {given[code][1]} (row {given[code][0]}) and {unit}")
            bad = True
        if bad:
            continue
        named[unit] = line
        given[code] = (line, unit)
        assignments.append(IdentifierAssignment(unit, code, row["decision"], row["date"]))
    return assignments
