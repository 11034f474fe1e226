"""`cutover inventory ...` as a user and a machine see it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_stats_json(cli) -> None:  # noqa: ANN001
    result = cli("--env", "production", "--output", "json", "inventory", "stats")
    assert result.exit_code == 0
    s = json.loads(result.stdout)
    assert (s["commune_level_units"], s["old_units"], s["split_old_units"]) == (168, 442, 47)
    assert s["by_kind"] == {"phuong": 113, "xa": 54, "dac_khu": 1}
    assert s["by_former_province"] == {"HCM": 102, "BD": 36, "BRVT": 30}


def test_show_sai_gon(cli) -> None:  # noqa: ANN001
    text = cli("--env", "production", "inventory", "show", "phuong-sai-gon").stdout
    for name in ("Phường Bến Nghé", "Phường Đa Kao", "Phường Nguyễn Thái Bình", "Quận 1"):
        assert name in text
    data = json.loads(cli("--env", "production", "--output", "json", "inventory", "show", "phuong-sai-gon").stdout)
    split = {p["old_unit"]["name"]: p["other_successors"] for p in data["split_partners"]}
    assert split == {"Phường Đa Kao": ["phuong-tan-dinh"], "Phường Nguyễn Thái Bình": ["phuong-ben-thanh"]}
    assert [o["split"] for o in data["lineage"]] == [False, True, True]


def test_units_filters(cli) -> None:  # noqa: ANN001
    def codes(*args: str) -> set[str]:
        return {u["code"] for u in json.loads(cli("--env", "production", "--output", "json", "inventory", "units", *args).stdout)["units"]}

    assert len(codes("--kind", "phuong")) == 113
    assert codes("--kind", "dac_khu") == {"dac-khu-con-dao"}
    assert len(codes("--province", "BD", "--commune-level")) == 36
    quan1 = codes("--district", "Quận 1")
    assert {"phuong-sai-gon", "phuong-tan-dinh", "phuong-ben-thanh", "phuong-cau-ong-lanh"} == quan1
    assert len(codes("--blocked")) == 70
    assert len(codes("--pending", "--commune-level")) == 168
    lab = {u["code"] for u in json.loads(cli("--output", "json", "inventory", "units", "--pending", "--commune-level").stdout)["units"]}
    assert lab == {"phuong-thoi-hoa", "xa-long-son"}


def test_unknown_unit_and_env_exit_2(cli) -> None:  # noqa: ANN001
    r = cli("--env", "production", "inventory", "show", "phuong-nowhere")
    assert r.exit_code == 2 and "unknown unit 'phuong-nowhere'" in r.stderr
    r = cli("--env", "staging", "inventory", "stats")
    assert r.exit_code == 2 and "no inventory 'staging'" in r.stderr
    r = cli("--env", "production", "inventory", "units", "--kind", "thi_tran")
    assert r.exit_code == 2


def test_debug_shows_traceback_only_when_asked(project_copy: Path) -> None:
    (project_copy / "inventories" / "production" / "units.csv").write_text("seq,name\n1,x\n", encoding="utf-8")
    base = [sys.executable, "-m", "cutover", "--root", str(project_copy), "--env", "production", "inventory", "validate"]
    plain = subprocess.run(base, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.count("\n") >= 2 and "missing column(s)" in plain.stderr
    debug = subprocess.run(base[:3] + ["--debug"] + base[3:], capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_actor_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    from cutover.cli.context import resolve_actor

    for var in ("CUTOVER_ACTOR", "GITLAB_USER_LOGIN", "GITHUB_ACTOR", "BUILD_REQUESTEDFOR", "CI_USER"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_actor("alice") == "alice"
    monkeypatch.setenv("GITHUB_ACTOR", "ci-bot")
    assert resolve_actor(None) == "ci-bot"
    monkeypatch.setenv("CUTOVER_ACTOR", "bob")
    assert resolve_actor(None) == "bob"


def test_ansible_inventory_graph_of_production(project_root: Path) -> None:
    """A plain `ansible-inventory` over the inventory script lists every unit in its site group."""
    exe = Path(sys.executable).parent / "ansible-inventory"
    if not exe.exists():
        exe = Path(shutil.which("ansible-inventory") or "ansible-inventory")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = project_root / "inventories" / "production" / "inventory.py"
    out = subprocess.run([str(exe), "-i", str(script), "--list"], capture_output=True, text=True, env=env, check=True)
    inv = json.loads(out.stdout)
    hostvars = inv["_meta"]["hostvars"]
    communes = inv["commune_level"]["hosts"]
    assert len(communes) == 168
    for code in communes:
        site = {"HCM": "hcm", "BD": "bd", "BRVT": "brvt"}[hostvars[code]["cutover_province"]]
        assert code in inv[f"site_{site}"]["hosts"]
        assert hostvars[code]["ansible_host"].startswith(f"{site}-app-01")
    assert len(inv["departments"]["hosts"]) == 19 and "trung-tam-chuyen-doi-so" in inv["site_hcm"]["hosts"]
    graph = subprocess.run([str(exe), "-i", str(script), "--graph"], capture_output=True, text=True, env=env, check=True).stdout
    assert "@site_brvt:" in graph and "dac-khu-con-dao" in graph
    # The CLI prints the same inventory.
    cli_out = subprocess.run([sys.executable, "-m", "cutover", "--root", str(project_root), "--env", "production", "inventory", "ansible", "--list"], capture_output=True, text=True, check=True)
    assert json.loads(cli_out.stdout)["commune_level"]["hosts"] == communes
