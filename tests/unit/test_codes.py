"""Importing identifier codes: all-or-nothing, atomic, exactly the units named."""

from __future__ import annotations

import json
from pathlib import Path

from cutover.estate import load_estate

HEADER = "unit,identifier_code,decision,date\n"


def _codes(root: Path, env: str = "production") -> Path:
    return root / "inventories" / env / "identifier_codes.csv"


def test_good_file_changes_exactly_the_units_it_names(project_copy: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    before = {u.code: u.identifier_code for u in load_estate(project_copy / "inventories/production").units.values()}
    new = tmp_path / "codes.csv"
    new.write_text(HEADER + "phuong-sai-gon,000.01.01.H29,QD-12/2025,2025-07-10\nxa-can-gio,H29.2.122,QD-12/2025,2025-07-10\n", encoding="utf-8")
    result = cli("--env", "production", "--output", "json", "inventory", "codes", "import", str(new), root=project_copy)
    assert result.exit_code == 0, result.output
    changes = json.loads(result.stdout)["changes"]
    assert {(c["unit"], c["change"]) for c in changes} == {("phuong-sai-gon", "assigned"), ("xa-can-gio", "assigned")}
    after = {u.code: u.identifier_code for u in load_estate(project_copy / "inventories/production").units.values()}
    assert {k for k in after if after[k] != before[k]} == {"phuong-sai-gon", "xa-can-gio"}
    assert after["phuong-sai-gon"] == "000.01.01.H29"
    # The import is in the audit chain, with who did it and a digest of the file.
    history = json.loads(cli("--output", "json", "history", "--event", "inventory.codes_imported", root=project_copy).stdout)
    assert history["count"] == 1 and history["records"][0]["detail"]["units"] == ["phuong-sai-gon", "xa-can-gio"]
    assert history["records"][0]["evidence"]["file_digest"].startswith("sha256:")
    # Importing the same file again changes nothing.
    again = json.loads(cli("--env", "production", "--output", "json", "inventory", "codes", "import", str(new), root=project_copy).stdout)
    assert {c["change"] for c in again["changes"]} == {"unchanged"}


def test_malformed_code_changes_nothing(project_copy: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    original = _codes(project_copy).read_bytes()
    new = tmp_path / "codes.csv"
    new.write_text(HEADER + "phuong-sai-gon,000.01.01.H29,QD,2025-07-10\nphuong-tan-dinh,000.01.02.h29,QD,2025-07-10\n", encoding="utf-8")
    result = cli("--env", "production", "inventory", "codes", "import", str(new), root=project_copy)
    assert result.exit_code == 2
    assert "codes.csv: row 3.identifier_code" in result.stderr
    assert _codes(project_copy).read_bytes() == original


def test_code_given_to_two_units_changes_nothing(project_copy: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    original = _codes(project_copy).read_bytes()
    new = tmp_path / "codes.csv"
    new.write_text(HEADER + "phuong-sai-gon,000.01.01.H29,QD,2025-07-10\nphuong-tan-dinh,000.01.01.H29,QD,2025-07-10\n", encoding="utf-8")
    result = cli("--env", "production", "inventory", "codes", "import", str(new), root=project_copy)
    assert result.exit_code == 2
    assert "given to two units" in result.stderr and "row 3" in result.stderr
    assert _codes(project_copy).read_bytes() == original


def test_code_clashing_with_an_existing_assignment_changes_nothing(project_copy: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    original = _codes(project_copy, "lab").read_bytes()
    new = tmp_path / "codes.csv"
    new.write_text(HEADER + "xa-long-son,H29.LAB.001,QD,2025-07-10\n", encoding="utf-8")  # phuong-sai-gon holds it
    result = cli("--env", "lab", "inventory", "codes", "import", str(new), root=project_copy)
    assert result.exit_code == 2
    assert "phuong-sai-gon" in result.stderr and "xa-long-son" in result.stderr
    assert _codes(project_copy, "lab").read_bytes() == original


def test_unknown_unit_and_dry_run(project_copy: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    original = _codes(project_copy).read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "phuong-atlantis,000.01.01.H29,QD,2025-07-10\n", encoding="utf-8")
    result = cli("--env", "production", "inventory", "codes", "import", str(bad), root=project_copy)
    assert result.exit_code == 2 and "unknown unit 'phuong-atlantis'" in result.stderr
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "phuong-sai-gon,000.01.01.H29,QD,2025-07-10\n", encoding="utf-8")
    result = cli("--env", "production", "inventory", "codes", "import", "--dry-run", str(good), root=project_copy)
    assert result.exit_code == 0 and "would change" in result.stdout
    assert _codes(project_copy).read_bytes() == original
