"""The estate on the real data, and on broken copies of it."""

from __future__ import annotations

import csv
import json
import unicodedata
from pathlib import Path

import pytest

from cutover.errors import InvalidInput
from cutover.estate import ascii_slug, identifier_code_problem, load_estate, unit_code


def test_production_counts(project_root: Path) -> None:
    stats = load_estate(project_root / "inventories" / "production").stats()
    assert stats["commune_level_units"] == 168
    assert stats["by_kind"] == {"phuong": 113, "xa": 54, "dac_khu": 1}
    assert stats["by_former_province"] == {"HCM": 102, "BD": 36, "BRVT": 30}
    assert stats["old_units"] == 442
    assert stats["old_units_by_province"] == {"HCM": 273, "BD": 91, "BRVT": 78}
    assert stats["split_old_units"] == 47
    assert stats["departments"] == 19


def test_every_old_unit_reaches_its_successors(project_root: Path) -> None:
    estate = load_estate(project_root / "inventories" / "production")
    for old in estate.old_units.values():
        for code in old.successors:
            assert old in estate.units[code].lineage
    # Every new unit is formed from at least one old unit, identified by name and district.
    assert all(u.lineage for u in estate.commune_units())
    assert len({o.key for o in estate.old_units.values()}) == 442


def test_codes_are_unique_ascii_and_derived_from_kind_and_name(project_root: Path) -> None:
    estate = load_estate(project_root / "inventories" / "production")
    codes = list(estate.units)
    assert len(codes) == len(set(codes))
    assert all(c.isascii() and c == c.lower() for c in codes)
    assert "phuong-sai-gon" in codes and "dac-khu-con-dao" in codes and "trung-tam-chuyen-doi-so" in codes
    # Thanh An (BD) and Thạnh An (HCM) differ only by a tone mark: each keeps a unique code.
    assert {"xa-thanh-an-bd", "xa-thanh-an-hcm"} <= set(codes)


def test_sai_gon_lineage(project_root: Path) -> None:
    estate = load_estate(project_root / "inventories" / "production")
    unit = estate.unit("phuong-sai-gon")
    assert [(o.name, o.district, o.split) for o in unit.lineage] == [
        ("Phường Bến Nghé", "Quận 1", False),
        ("Phường Đa Kao", "Quận 1", True),
        ("Phường Nguyễn Thái Bình", "Quận 1", True),
    ]
    partners = estate.split_partners(unit)
    assert partners[("Phường Đa Kao", "Quận 1")] == ["phuong-tan-dinh"]
    assert partners[("Phường Nguyễn Thái Bình", "Quận 1")] == ["phuong-ben-thanh"]


def test_production_without_rules_blocks_successors_of_split_units(project_root: Path) -> None:
    estate = load_estate(project_root / "inventories" / "production")
    split_successors = {c for o in estate.old_units.values() if o.split for c in o.successors}
    blocked = {u.code for u in estate.units.values() if u.blocked}
    assert blocked == split_successors
    assert any("Phường Đa Kao (Quận 1)" in b for b in estate.unit("phuong-tan-dinh").blockers)


def test_lab_subset(project_root: Path) -> None:
    estate = load_estate(project_root / "inventories" / "lab")
    stats = estate.stats()
    assert 12 <= stats["commune_level_units"] <= 20
    assert all(v > 0 for v in stats["by_former_province"].values())
    assert stats["split_old_units"] >= 2
    assert "dac-khu-con-dao" in estate.units
    assert stats["blocked_units"] == 0
    assert 0 < stats["pending_identifier_codes"] < stats["commune_level_units"]
    # Sites and systems come from production (extends).
    assert set(estate.sites) == {"hcm", "bd", "brvt", "unified"}
    assert len(estate.systems) == 9


def test_removing_a_partition_rule_blocks_only_its_successors(project_copy: Path) -> None:
    rules = project_copy / "inventories" / "lab" / "partition_rules.yml"
    text = rules.read_text(encoding="utf-8")
    start = text.index("  - old_unit: {name: Thị trấn Lai Uyên")
    rules.write_text(text[:start], encoding="utf-8")
    estate = load_estate(project_copy / "inventories" / "lab")
    blocked = {u.code: u.blockers for u in estate.units.values() if u.blocked}
    assert set(blocked) == {"xa-tru-van-tho", "xa-bau-bang"}
    assert blocked["xa-bau-bang"] == ["no partition rule for split old unit Thị trấn Lai Uyên (Huyện Bàu Bàng)"]


def test_nfd_csv_loads_identically(project_copy: Path, project_root: Path) -> None:
    prod = project_copy / "inventories" / "production"
    for name in ("units.csv", "old_units.csv", "departments.csv"):
        path = prod / name
        path.write_text(unicodedata.normalize("NFD", path.read_text(encoding="utf-8")), encoding="utf-8")
    assert (prod / "units.csv").read_bytes() != (project_root / "inventories/production/units.csv").read_bytes()
    nfd = load_estate(prod)
    nfc = load_estate(project_root / "inventories" / "production")
    assert [u.as_dict() for u in nfd.units.values()] == [u.as_dict() for u in nfc.units.values()]


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("000.00.00.H29", True),
        ("H29.0.162", True),
        ("000.00.00.h29", False),
        ("000..00.H29", False),
        ("H29", False),
        ("000.00.00.H29.", False),
        ("A" * 30 + ".BCDE", True),
        ("A" * 31 + ".BCDE", False),
        ("000.00.00.H-29", False),
    ],
)
def test_identifier_code_shapes(code: str, ok: bool) -> None:
    assert (identifier_code_problem(code) is None) == ok


def test_slugs() -> None:
    assert ascii_slug("Đông Hưng Thuận") == "dong-hung-thuan"
    assert unit_code("dac_khu", "Côn Đảo") == "dac-khu-con-dao"
    assert unit_code("department", "Sở Nội vụ") == "so-noi-vu"


# --- broken copies: every error kind, each naming file and row or key ----------------------


def _rewrite_csv(path: Path, edit) -> None:  # noqa: ANN001 - a small callback
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    rows = edit(rows)
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _break(root: Path, kind: str) -> tuple[str, str]:
    """Break the production copy one way; return (file name, where) expected in the error."""
    prod = root / "inventories" / "production"
    if kind == "duplicate-code":
        _rewrite_csv(prod / "units.csv", lambda r: r + [["999", r[1][1], r[1][2], r[1][3], r[1][4], r[1][5]]])
        return "units.csv", "row 170.name"
    if kind == "unknown-successor":
        def edit(r):
            r[1][3] = "142;999"
            return r
        _rewrite_csv(prod / "old_units.csv", edit)
        return "old_units.csv", "row 2.successors"
    if kind == "no-successor":
        def edit(r):
            r[3][3] = ""
            return r
        _rewrite_csv(prod / "old_units.csv", edit)
        return "old_units.csv", "row 4.successors"
    if kind == "malformed-identifier":
        (prod / "identifier_codes.csv").write_text("unit,identifier_code,decision,date\nphuong-sai-gon,000.00.00.h29,QD-1,2025-07-01\n", encoding="utf-8")
        return "identifier_codes.csv", "row 2.identifier_code"
    if kind == "unknown-kind":
        def edit(r):
            r[5][2] = "thi_tran"
            return r
        _rewrite_csv(prod / "units.csv", edit)
        return "units.csv", "row 6.kind"
    if kind == "unknown-province":
        def edit(r):
            r[7][3] = "DN"
            return r
        _rewrite_csv(prod / "units.csv", edit)
        return "units.csv", "row 8.former_province"
    if kind == "missing-column":
        _rewrite_csv(prod / "old_units.csv", lambda r: [row[:3] + row[4:] for row in r])
        return "old_units.csv", "header"
    if kind == "unknown-estate-key":
        text = (prod / "estate.yml").read_text(encoding="utf-8")
        (prod / "estate.yml").write_text(text.replace("    legacy_sites: [hcm]\n", "    legacy_sites: [hcm]\n    legacy_site: hcm\n"), encoding="utf-8")
        return "estate.yml", "systems[6].legacy_site"
    raise AssertionError(kind)


BREAKS = ["duplicate-code", "unknown-successor", "no-successor", "malformed-identifier", "unknown-kind", "unknown-province", "missing-column", "unknown-estate-key"]


@pytest.mark.parametrize("kind", BREAKS)
def test_broken_inventory_is_refused_naming_file_and_row(project_copy: Path, kind: str, cli) -> None:  # noqa: ANN001
    file, where = _break(project_copy, kind)
    with pytest.raises(InvalidInput) as err:
        load_estate(project_copy / "inventories" / "production")
    assert any(p.file.endswith(file) and p.where == where for p in err.value.problems), err.value.problems
    result = cli("--env", "production", "inventory", "validate", root=project_copy)
    assert result.exit_code == 2
    assert file in result.stderr and where in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_every_problem_is_reported_at_once(project_copy: Path, cli) -> None:  # noqa: ANN001
    expected = [_break(project_copy, k) for k in ("unknown-successor", "unknown-kind", "malformed-identifier", "unknown-estate-key")]
    result = cli("--env", "production", "--output", "json", "inventory", "validate", root=project_copy)
    assert result.exit_code == 2
    problems = json.loads(result.stdout)["error"]["problems"]
    for file, where in expected:
        assert any(p["file"].endswith(file) and p["where"] == where for p in problems), (file, where)
