"""The lab built for real: `cutover lab up` on a copy of the project, then each site checked on
its own loopback address (PostgreSQL, the back end through its nginx front door, the freeze, the
document-exchange routing), `reset`, and `down` leaving no process behind.

One `lab up --size small` per module (about a minute with Mitogen). Needs root, PostgreSQL 15
in /usr/lib/postgresql/15/bin, Debian's nginx and python3-psycopg2, and the lab's addresses
(127.0.1.1-3, 127.0.1.10) free.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from tests.conftest import PROJECT, run_cli

ADDRESSES = {"hcm": "127.0.1.1", "bd": "127.0.1.2", "brvt": "127.0.1.3", "unified": "127.0.1.10"}
PORTS = (80, 5432, 8080)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab runs PostgreSQL as the postgres user: needs root")


def _listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((address, port)) == 0


def _request(method: str, address: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(address, 80, timeout=15)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            continue
        out[int(entry.name)] = (int(fields[1]), cmdline)
    return out


def _descendants(roots: set[int]) -> set[int]:
    procs = _processes()
    found = set(r for r in roots if r in procs)
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


@pytest.fixture(scope="module")
def lab_root() -> Path:
    busy = [f"{a}:{p}" for a in ADDRESSES.values() for p in PORTS if _listening(a, p)]
    if busy:
        pytest.fail(f"the lab's addresses are in use ({', '.join(busy)}): another lab is running; `cutover lab down` it first")
    # Not under pytest's basetemp: every pytest session that starts makes /tmp/pytest-of-<user>
    # 0700 again, and the lab's other users (postgres, the back ends') must reach the folders.
    base = Path(tempfile.mkdtemp(prefix="cutover-lab-test-"))
    base.chmod(0o755)
    root = base / "project"
    root.mkdir()
    for name in ("inventories", "playbooks"):
        shutil.copytree(PROJECT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", ".cutover", "molecule"))
    try:
        yield root
    finally:
        run_cli("--root", str(root), "lab", "down")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def lab_up(lab_root: Path) -> dict:
    return _json(run_cli("--root", str(lab_root), "--output", "json", "lab", "up", "--size", "small"))


@pytest.fixture(scope="module")
def lab(lab_root: Path, lab_up: dict):
    from cutover.lab import Lab

    return Lab(lab_root)


@pytest.fixture(scope="module")
def migration_password(lab) -> str:
    return (lab.secrets_dir / "postgres_migration_password").read_text()


def _tcp(site: str, password: str):
    import psycopg

    return psycopg.connect(host=ADDRESSES[site], port=5432, user="shared_migration", password=password,
                           dbname="shared_systems", connect_timeout=5)


def test_first_up_changes_and_seeds(lab_up):
    assert lab_up["hosting"]["changed"] > 0
    assert lab_up["hosting"]["failed"] == 0
    assert set(lab_up["hosting"]["per_host"]) == {"site-hcm", "site-bd", "site-brvt", "site-unified"}
    seed = lab_up["seed"]
    assert seed["size"] == "small"
    assert seed["units"] == 23 + 3  # the lab's old units and departments
    assert seed["files"] > 0 and seed["rows"] > 0


def test_second_up_changes_nothing(lab_root, lab_up):
    again = _json(run_cli("--root", str(lab_root), "--output", "json", "lab", "up", "--size", "small"))
    assert again["hosting"]["changed"] == 0, again["hosting"]
    assert again["hosting"]["ok"] > 0
    assert again["seed"] is None  # the sites already hold the seed


def test_artifacts_hold_no_environment_or_secret(lab, lab_up):
    artifacts = Path(lab_up["hosting"]["artifacts"])
    command = json.loads((artifacts / "command").read_text())
    assert "env" not in command
    secret = (lab.secrets_dir / "postgres_app_password").read_text()
    for path in artifacts.parent.parent.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path


def test_each_site_database_holds_the_seeded_rows_of_its_old_units(lab, migration_password):
    from cutover.lab import SIZES, legacy_unit_key, seed_units

    estate = lab.estate()
    seeded = json.loads(lab.seed_file.read_text())
    expected = {s: set() for s in ("hcm", "bd", "brvt")}
    for u in seed_units(estate, SIZES["small"]):
        expected[u.site].add(u.key)
    assert legacy_unit_key(estate.old_units[("Phường Đa Kao", "Quận 1")]) in expected["hcm"]
    for report in seeded["sites"]:
        site = report["site"]
        with _tcp(site, migration_password) as conn:
            units = {r[0] for r in conn.execute("SELECT DISTINCT unit FROM docs.documents")}
            assert units == expected[site]
            for table, n in report["rows"].items():
                schema = "docs" if table in ("documents", "recipients", "attachments", "processing_history") else "procedures"
                assert conn.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()[0] == n, (site, table)
            assert conn.execute("SELECT count(*) FROM docs.change_log").fetchone()[0] == 0  # the seed is the baseline
    with _tcp("unified", migration_password) as conn:
        assert conn.execute("SELECT count(*) FROM docs.documents").fetchone()[0] == 0


def test_split_old_units_carry_rule_quarters_and_some_match_none(lab, migration_password):
    from cutover.lab import UNMATCHED_QUARTER

    estate = lab.estate()
    with _tcp("hcm", migration_password) as conn:
        for old_key, rule in estate.rules.items():
            if estate.old_units[old_key].province != "HCM":
                continue
            from cutover.lab import legacy_unit_key

            key = legacy_unit_key(estate.old_units[old_key])
            quarters = {r[0] for r in conn.execute("SELECT DISTINCT residential_quarter FROM docs.documents WHERE unit = %s", [key])}
            named = {q for values in rule.successors.values() for q in values}
            assert UNMATCHED_QUARTER in quarters
            assert quarters - {UNMATCHED_QUARTER} <= named and quarters & named


def test_seeded_attachments_are_in_the_store_with_their_checksums(lab):
    from cutover.lab import connect

    site = lab.sites()["bd"]
    with connect(site) as conn:
        rows = conn.execute("SELECT store_path, size_bytes, sha256 FROM docs.attachments ORDER BY id LIMIT 20").fetchall()
    assert rows
    for store_path, size, sha in rows:
        content = (site.attachment_store / store_path).read_bytes()
        assert len(content) == size and hashlib.sha256(content).hexdigest() == sha


@pytest.mark.parametrize("site,unit", [("hcm", "phuong-sai-gon"), ("bd", "xa-bau-bang"), ("brvt", "dac-khu-con-dao")])
def test_document_written_through_the_front_proxy_is_stored_by_the_legacy_back_end(lab, site, unit):
    content = f"%PDF-1.4 lab test {unit}".encode()
    status, headers, body = _request("POST", ADDRESSES[site], f"/units/{unit}/documents", {
        "title": f"Công văn thử nghiệm {unit}", "direction": "incoming",
        "recipients": [{"recipient_name": "Văn phòng UBND"}],
        "attachments": [{"file_name": "cong-van.pdf", "content_base64": base64.b64encode(content).decode(), "content_type": "application/pdf"}],
    })
    assert status == 201, body
    assert headers["x-cutover-route"] == "legacy"
    assert headers["x-cutover-front-proxy"] == site
    assert headers["x-cutover-backend"] == f"legacy-{site}"
    doc = json.loads(body)
    status, _, body = _request("GET", ADDRESSES[site], f"/units/{unit}/documents/{doc['id']}")
    assert status == 200
    read = json.loads(body)
    assert read["title"] == f"Công văn thử nghiệm {unit}"
    [att] = read["attachments"]
    status, _, data = _request("GET", ADDRESSES[site], f"/units/{unit}/documents/{doc['id']}/attachments/{att['id']}")
    assert status == 200 and data == content
    # stored by that site's database, not another's
    from cutover.lab import connect

    with connect(lab.sites()[site]) as conn:
        assert conn.execute("SELECT title FROM docs.documents WHERE id = %s", [doc["id"]]).fetchone()[0] == read["title"]


def test_a_unit_of_another_site_is_refused_by_this_front_door():
    status, _, body = _request("GET", ADDRESSES["bd"], "/units/phuong-sai-gon/documents")
    assert status == 404 and b"no route" in body


def test_a_frozen_units_write_is_refused(lab, migration_password):
    from cutover.lab import legacy_unit_key

    unit = lab.estate().units["xa-long-dien"]
    keys = [legacy_unit_key(o) for o in unit.lineage]
    with _tcp("brvt", migration_password) as conn:
        for key in keys:
            conn.execute("INSERT INTO docs.frozen_units (unit, reason) VALUES (%s, 'lab test')", [key])
        conn.commit()
    try:
        status, _, body = _request("POST", ADDRESSES["brvt"], "/units/xa-long-dien/documents", {"title": "Bị chặn"})
        assert status == 423, body
        assert "frozen" in json.loads(body)["error"]
        status, _, _ = _request("POST", ADDRESSES["brvt"], "/units/xa-kim-long/documents", {"title": "Vẫn được"})
        assert status == 201  # another unit of the same site still takes writes
    finally:
        with _tcp("brvt", migration_password) as conn:
            conn.execute("DELETE FROM docs.frozen_units WHERE reason = 'lab test'")
            conn.commit()
    status, _, _ = _request("POST", ADDRESSES["brvt"], "/units/xa-long-dien/documents", {"title": "Đã mở lại"})
    assert status == 201


def test_routing_table_maps_identifier_codes_to_legacy_endpoints(lab, migration_password):
    estate = lab.estate()
    with _tcp("unified", migration_password) as conn:
        routes = {r[0]: r[1:] for r in conn.execute("SELECT identifier_code, unit, site, endpoint FROM exchange.routes")}
    expected = {
        u.identifier_code: (u.code, u.site, f"http://{ADDRESSES[u.site]}:8080/units/{u.code}/documents")
        for u in estate.units.values() if u.identifier_code != "pending"
    }
    assert routes == expected
    pending = [u.code for u in estate.units.values() if u.identifier_code == "pending"]
    assert sorted(pending) == ["phuong-thoi-hoa", "xa-long-son"]


def test_status_shows_services_and_holdings(lab_root, lab):
    result = _json(run_cli("--root", str(lab_root), "--output", "json", "lab", "status"))
    assert result["seeded_size"] == "small"
    for site in result["sites"]:
        assert all(svc["up"] and svc["pid"] for svc in site["services"].values()), site
        assert site["address"] == ADDRESSES[site["site"]]
        if site["role"] == "legacy":
            assert site["holds"]["docs.documents"] > 0
    unified = next(s for s in result["sites"] if s["site"] == "unified")
    assert sum(unified["holds"]["exchange.routes"].values()) == 13


def test_reset_restores_the_seeded_state(lab_root, lab, migration_password):
    from cutover.lab import SIZES, connect, records_for, seed_units

    def documents(site: str) -> list[tuple]:
        with connect(lab.sites()[site]) as conn:
            return conn.execute("SELECT id, unit, residential_quarter, title, created_at FROM docs.documents ORDER BY id").fetchall()

    seed = {s: [] for s in ("hcm", "bd", "brvt")}
    for unit in seed_units(lab.estate(), SIZES["small"]):
        seed[unit.site] += [(r[0], r[1], r[2], r[4], r[10]) for r in records_for(unit, SIZES["small"]).rows["documents"]]
    seed = {s: sorted(rows) for s, rows in seed.items()}
    # a rehearsal leaves traces: writes, a freeze, a unit switched at the front door and in routing
    status, _, _ = _request("POST", ADDRESSES["hcm"], "/units/phuong-tan-dinh/documents", {"title": "Dấu vết"})
    assert status == 201
    with _tcp("hcm", migration_password) as conn:
        conn.execute("INSERT INTO docs.frozen_units (unit, reason) VALUES ('phuong-tan-dinh--quan-1', 'rehearsal')")
        conn.commit()
    routes = lab.sites()["hcm"].dir / "nginx" / "routes.map"
    routes.write_text(routes.read_text().replace("phuong-tan-dinh legacy;", "phuong-tan-dinh unified;"))
    with connect(lab.sites()["unified"]) as conn:
        conn.execute("UPDATE exchange.routes SET site = 'unified' WHERE unit = 'phuong-tan-dinh'")
    assert documents("hcm") != seed["hcm"]

    result = _json(run_cli("--root", str(lab_root), "--output", "json", "lab", "reset"))
    assert result["seed"]["size"] == "small"
    for site, rows in seed.items():
        assert documents(site) == rows, site
    with _tcp("hcm", migration_password) as conn:
        assert conn.execute("SELECT count(*) FROM docs.frozen_units").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM docs.change_log").fetchone()[0] == 0
    status, headers, _ = _request("GET", ADDRESSES["hcm"], "/units/phuong-tan-dinh/documents")
    assert status == 200 and headers["x-cutover-route"] == "legacy"
    with connect(lab.sites()["unified"]) as conn:
        assert conn.execute("SELECT site FROM exchange.routes WHERE unit = 'phuong-tan-dinh'").fetchone()[0] == "hcm"


def test_down_leaves_no_lab_process(lab_root, lab):
    status = _json(run_cli("--root", str(lab_root), "--output", "json", "lab", "status"))
    started = {svc["pid"] for s in status["sites"] for svc in s["services"].values() if svc["pid"]}
    assert len(started) == 12
    tree = _descendants(started)
    assert len(tree) > len(started)  # nginx workers, PostgreSQL's background processes
    result = _json(run_cli("--root", str(lab_root), "--output", "json", "lab", "down"))
    assert {s["pid"] for s in result["stopped"]} == started
    assert not (tree & set(_processes())), "lab processes still running after down"
    assert not [p for p, (_, cmd) in _processes().items() if str(lab.dir) in cmd]
    assert not [f"{a}:{p}" for a in ADDRESSES.values() for p in PORTS if _listening(a, p)]
    again = _json(run_cli("--root", str(lab_root), "--output", "json", "lab", "down"))
    assert again["stopped"] == []
