"""Runbooks: validated whole at load, every problem with its key path; the shipped ones load."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from cutover.errors import InvalidInput
from cutover.estate import load_estate
from cutover.runbook import (
    PlaybookAction,
    Window,
    load_runbook,
    resolve_share,
    select_units,
    share_problem,
    valid_keys,
)

SHIPPED = ("document-management", "administrative-procedures")


@pytest.fixture(scope="module")
def production(project_root: Path):  # noqa: ANN201
    return load_estate(project_root / "inventories" / "production")


def _problems(path: Path, estate, root: Path) -> list[str]:  # noqa: ANN001
    with pytest.raises(InvalidInput) as info:
        load_runbook(path, estate, root)
    return [str(p) for p in info.value.problems]


def _edit(root: Path, name: str, old: str, new: str, count: int = 1) -> Path:
    """Replace text in a copied runbook (kept as text, so line numbers stay meaningful)."""
    path = root / "runbooks" / f"{name}.yml"
    text = path.read_text(encoding="utf-8")
    assert text.count(old) >= count, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count), encoding="utf-8")
    return path


def _rewrite(root: Path, name: str, change) -> Path:  # noqa: ANN001
    path = root / "runbooks" / f"{name}.yml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


# --- the shipped runbooks ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("env", ["production", "lab"])
def test_shipped_runbooks_load_against_both_inventories(project_root: Path, name: str, env: str) -> None:
    estate = load_estate(project_root / "inventories" / env)
    book = load_runbook(project_root / "runbooks" / f"{name}.yml", estate, project_root)
    assert book.name == name
    assert [w.id for w in book.waves] == ["pilot", "rollout", "special-zone"]
    assert [s.id for s in book.steps] == ["precheck", "pre_copy", "freeze", "export", "import", "switch"]
    assert len(book.digest) == 64
    # Every referenced playbook exists, opens with its purpose and targets the unit hosts the
    # engine limits it to.
    for _, playbook in book.playbooks():
        text = (project_root / "playbooks" / playbook).read_text(encoding="utf-8")
        assert text.startswith("# Purpose: ")
        assert "hosts: all" in text
        assert playbook in book.playbook_digests


def test_shipped_runbooks_follow_the_merger_plan(project_root: Path, production) -> None:  # noqa: ANN001
    docs = load_runbook(project_root / "runbooks/document-management.yml", production, project_root)
    assert docs.system == "docs" and not docs.requires.identifier_code
    assert docs.wave("pilot").window.deadline == date(2025, 6, 15)
    assert docs.wave("rollout").window.deadline == date(2025, 8, 15)
    island = docs.wave("special-zone")
    assert island.select.kinds == ["dac_khu"] and island.timeout_factor > 1 and island.batch == 1
    assert [(g.id, g.deadline, g.not_before) for g in docs.final_gates] == [
        ("training", date(2025, 8, 28), None),
        ("official-operation", None, date(2025, 9, 1)),
    ]
    assert docs.final_gates[0].approval is not None
    pilot = select_units(production, docs.wave("pilot").select)
    assert "trung-tam-chuyen-doi-so" in pilot
    assert {u.code for u in production.units.values() if not u.is_commune_level} <= pilot
    assert {production.units[c].province for c in pilot if production.units[c].is_commune_level} == {"HCM", "BD", "BRVT"}

    procedures = load_runbook(project_root / "runbooks/administrative-procedures.yml", production, project_root)
    assert procedures.requires.identifier_code
    precheck = procedures.step("precheck")
    assert not precheck.changes_state and isinstance(precheck.do, PlaybookAction)
    assert precheck.do.vars == {"require_identifier_code": True}
    assert len(select_units(production, procedures.wave("pilot").select)) == 15
    assert procedures.wave("rollout").window.not_before == date(2025, 5, 20)
    # Steps: the state-changing ones undo, the gates guard import and switch.
    undo = {s.id: s.undo.playbook if s.undo else None for s in procedures.steps}
    assert undo == {"precheck": None, "pre_copy": "purge.yml", "freeze": "unfreeze.yml", "export": None, "import": "purge.yml", "switch": "switch_back.yml"}
    assert [g.kind for g in procedures.step("import").gates] == ["reconcile"]
    assert [g.kind for g in procedures.step("switch").gates] == ["smoke"]


# --- broken runbooks through the CLI: exit 2, the key path named, nothing runs ------------------


def _plan(cli, root: Path, path: Path):  # noqa: ANN001, ANN202
    return cli("--env", "production", "plan", str(path), root=root)


def test_unknown_key_names_the_nearest_valid_key(project_copy: Path, cli) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "    batch: 20\n", "    batchsize: 20\n")
    result = _plan(cli, project_copy, path)
    assert result.exit_code == 2
    assert "waves[1].batchsize: unknown key 'batchsize'; did you mean 'batch'?" in result.stderr
    # The key the mistake replaced is missing too, and both are reported in one go.
    assert "waves[1].batch: missing key 'batch'" in result.stderr
    assert "document-management.yml" in result.stderr and "(line " in result.stderr


def test_unknown_top_level_and_nested_keys(project_copy: Path, cli) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "on_failure: rollback_batch", "on_failure: rollback_batch\nwavez: []")
    _edit(project_copy, "document-management", "    retries: 2\n", "    retires: 2\n")
    result = _plan(cli, project_copy, path)
    assert result.exit_code == 2
    assert "wavez: unknown key 'wavez'; did you mean 'waves'?" in result.stderr
    assert "steps[5].retires: unknown key 'retires'; did you mean 'retries'?" in result.stderr


def test_missing_undo_on_a_state_changing_step(project_copy: Path, cli) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "    undo: {playbook: unfreeze.yml}\n", "")
    result = _plan(cli, project_copy, path)
    assert result.exit_code == 2
    assert "steps[2]: step 'freeze' changes state but has no 'undo'" in result.stderr


def test_unit_in_two_waves_lists_the_units(project_copy: Path, cli) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "      exclude: {pilot: document-management}\n", "")
    result = _plan(cli, project_copy, path)
    assert result.exit_code == 2
    line = next(x for x in result.stderr.splitlines() if "waves[1].select" in x)
    assert "already in wave 'pilot'" in line
    for code in ("phuong-cho-lon", "phuong-gia-dinh", "phuong-thuan-an", "phuong-binh-duong", "phuong-vung-tau", "phuong-ba-ria"):
        assert code in line
    assert "6 unit(s)" in line


def test_excluding_on_purpose_keeps_a_unit_in_one_wave(project_copy: Path, production) -> None:  # noqa: ANN001
    def narrow(data: dict) -> None:
        data["waves"][1]["select"] = {"kinds": ["phuong", "xa"], "exclude": {"pilot": "document-management", "codes": ["xa-can-gio"]}}

    path = _rewrite(project_copy, "document-management", narrow)
    book = load_runbook(path, production, project_copy)
    assert "xa-can-gio" not in select_units(production, book.wave("rollout").select)


def test_unknown_playbook(project_copy: Path, cli) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "do: {playbook: export.yml}", "do: {playbook: exprt.yml}")
    result = _plan(cli, project_copy, path)
    assert result.exit_code == 2
    assert "steps[3].do.playbook: no playbook 'exprt.yml'" in result.stderr
    assert "did you mean 'export.yml'?" in result.stderr


def test_playbook_outside_the_playbooks_folder(project_copy: Path, production) -> None:  # noqa: ANN001
    (project_copy / "outside.yml").write_text("- hosts: all\n", encoding="utf-8")
    path = _edit(project_copy, "document-management", "do: {playbook: export.yml}", "do: {playbook: ../outside.yml}")
    assert any("steps[3].do.playbook: playbook '../outside.yml' is outside playbooks/" in p for p in _problems(path, production, project_copy))


@pytest.mark.parametrize(
    ("old", "new", "where", "says"),
    [
        ("    batch: 20\n", "    batch: 0%\n", "waves[1].batch", "between 1% and 100%"),
        ("    batch: 20\n", "    batch: 120%\n", "waves[1].batch", "between 1% and 100%"),
        ("    batch: 20\n", "    batch: twenty\n", "waves[1].batch", "neither a count nor a percentage"),
        ("    batch: 20\n", "    batch: 0\n", "waves[1].batch", "at least 1"),
        ("    max_failed: 10%\n", "    max_failed: 101%\n", "waves[1].max_failed", "between 1% and 100%"),
        ("    max_failed: 10%\n", "    max_failed: -1\n", "waves[1].max_failed", "at least 0"),
    ],
)
def test_bad_percentages(project_copy: Path, cli, old: str, new: str, where: str, says: str) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", old, new)
    result = _plan(cli, project_copy, path)
    assert result.exit_code == 2
    line = next(x for x in result.stderr.splitlines() if f"{where}:" in x)
    assert says in line


def test_deadline_before_not_before(project_copy: Path, cli) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "deadline: 2025-06-15", "deadline: 2025-05-15")
    result = _plan(cli, project_copy, path)
    assert result.exit_code == 2
    assert "waves[0].window.deadline: deadline 2025-05-15 is before not_before 2025-06-02" in result.stderr


def test_bad_hours(project_copy: Path, production) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", 'hours: "08:00-17:00"', 'hours: "8am-5pm"')
    assert any(p.startswith(f"{path}: waves[2].window.hours: hours '8am-5pm' must look like") for p in _problems(path, production, project_copy))
    path = _edit(project_copy, "document-management", 'hours: "8am-5pm"', 'hours: "24:30-05:00"')
    assert any("waves[2].window.hours" in p and "not a valid time" in p for p in _problems(path, production, project_copy))


def test_every_problem_at_once(project_copy: Path, production) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "system: docs", "system: doc")
    _edit(project_copy, "document-management", "    undo: {playbook: unfreeze.yml}\n", "")
    _edit(project_copy, "document-management", "    batch: 20\n", "    batch: 0%\n")
    _edit(project_copy, "document-management", "deadline: 2025-06-15", "deadline: 2025-05-15")
    _edit(project_copy, "document-management", "do: {playbook: export.yml}", "do: {playbook: exprt.yml}")
    _edit(project_copy, "document-management", "kinds: [dac_khu]", "kinds: [dac-khu]")
    problems = _problems(path, production, project_copy)
    wheres = [p.split(": ")[1] for p in problems]
    assert wheres == ["system", "steps[2]", "steps[3].do.playbook", "waves[0].window.deadline", "waves[1].batch", "waves[2].select.kinds[0]"]
    assert "did you mean 'docs'?" in problems[0]
    assert "did you mean 'dac_khu'?" in problems[-1]


@pytest.mark.parametrize(
    ("old", "new", "where", "says"),
    [
        ("kinds: [dac_khu]", "kinds: [island]", "waves[2].select.kinds[0]", "unknown kind 'island'"),
        ("kinds: [dac_khu]", "provinces: [VT]", "waves[2].select.provinces[0]", "unknown former province 'VT'"),
        ("kinds: [dac_khu]", "districts: [Huyện Côn Sơn]", "waves[2].select.districts[0]", "unknown district 'Huyện Côn Sơn'"),
        ("kinds: [dac_khu]", "codes: [dac-khu-con-son]", "waves[2].select.codes[0]", "did you mean 'dac-khu-con-dao'?"),
        ("exclude: {pilot: document-management}", "exclude: {pilot: docs-pilot}", "waves[1].select.exclude.pilot", "unknown pilot set 'docs-pilot'"),
    ],
)
def test_selectors_name_known_things(project_copy: Path, production, old: str, new: str, where: str, says: str) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", old, new)
    problems = _problems(path, production, project_copy)
    assert any(p.startswith(f"{path}: {where}: ") and says in p for p in problems), problems


def test_district_selector_matches_former_districts(project_copy: Path, production) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "kinds: [dac_khu]", "districts: [Huyện Côn Đảo]")
    book = load_runbook(path, production, project_copy)
    assert select_units(production, book.wave("special-zone").select) == {"dac-khu-con-dao"}


def test_yaml_errors_name_file_and_line(project_copy: Path, cli) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "    batch: 20\n", "    batch: [20\n")
    result = _plan(cli, project_copy, path)
    assert result.exit_code == 2
    assert f"{path}: line " in result.stderr and "not valid YAML" in result.stderr


def test_a_key_given_twice_is_refused_with_its_lines(project_copy: Path, production) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "    batch: 20\n", "    batch: 20\n    batch: 30\n")
    (problem,) = _problems(path, production, project_copy)
    assert "key 'batch' given twice (first on line" in problem and ": line " in problem


def test_action_and_gate_shapes(project_copy: Path, production) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "do: {playbook: freeze.yml}", "do: {playbook: freeze.yml, http: {url: 'http://127.0.0.1/'}}")
    _edit(project_copy, "document-management", "- smoke: {playbook: smoke.yml}", "- smoke: {playbok: smoke.yml}")
    _edit(project_copy, "document-management", "- reconcile: {playbook: reconcile.yml}", "- reconcile: {playbook: reconcile.yml}\n      - threshold: 5")
    problems = _problems(path, production, project_copy)
    assert any("steps[2].do: an action is exactly one of" in p and "(this one has playbook, http)" in p for p in problems), problems
    assert any("steps[5].gates[0].smoke: a smoke check is exactly one of: playbook, http; unknown key 'playbok'" in p for p in problems), problems
    assert any("steps[4].gates[1]: a gate is exactly one of" in p for p in problems), problems


def test_changes_false_needs_no_undo_and_http_or_approval_steps_are_read_only(project_copy: Path, production) -> None:  # noqa: ANN001
    def add(data: dict) -> None:
        data["steps"].insert(5, {"id": "go-live", "do": {"approval": {"gate": "go-live", "prompt": "switch?"}}})
        data["steps"].append({"id": "probe", "do": {"http": {"url": "http://127.0.0.1:8080/health", "expect_status": 200}}})

    book = load_runbook(_rewrite(project_copy, "document-management", add), production, project_copy)
    assert [s.changes_state for s in book.steps] == [False, True, True, False, True, False, True, False]
    assert book.step("go-live").is_approval


def test_approval_gate_names_are_unique(project_copy: Path, production) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "gate: training-attested", "gate: pilot-review")
    assert any("final_gates[0].approval.gate: approval gate 'pilot-review' is already used at waves[0].approve_after" in p for p in _problems(path, production, project_copy))


def test_final_gate_shape(project_copy: Path, production) -> None:  # noqa: ANN001
    path = _edit(project_copy, "document-management", "    not_before: 2025-09-01\n", "")
    assert any("final_gates[1]: a final gate needs an approval or a not_before date" in p for p in _problems(path, production, project_copy))


def test_not_a_mapping_and_missing_file(tmp_path: Path, production, project_root: Path) -> None:  # noqa: ANN001
    path = tmp_path / "list.yml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    assert _problems(path, production, project_root) == [f"{path}: (top): a runbook is a mapping with name, system, on_failure, steps, waves"]
    assert _problems(tmp_path / "absent.yml", production, project_root) == [f"{tmp_path / 'absent.yml'}: runbook file not found"]


# --- the building blocks -----------------------------------------------------------------------


def test_shares() -> None:
    assert share_problem(5, minimum=1) is None and share_problem("20%", minimum=1) is None
    assert share_problem("100%", minimum=1) is None and share_problem("0.5%", minimum=1) is not None
    assert share_problem(True, minimum=0) is not None
    assert share_problem(0, minimum=1) is not None and share_problem(0, minimum=0) is None
    assert resolve_share("20%", 95, round_up=True) == 19
    assert resolve_share("20%", 96, round_up=True) == 20
    assert resolve_share("10%", 30, round_up=False) == 3  # not 3.0000000000000004 -> 3 by luck
    assert resolve_share("10%", 19, round_up=False) == 1
    assert resolve_share(7, 1000, round_up=True) == 7


def test_window_hours_and_openings() -> None:
    w = Window(not_before=date(2025, 6, 2), deadline=date(2025, 6, 3), hours="18:00-23:00")
    assert w.minutes_per_day == 300
    hcm = timezone(timedelta(hours=7))
    assert w.is_open(datetime(2025, 6, 2, 18, 0, tzinfo=hcm))
    assert not w.is_open(datetime(2025, 6, 2, 23, 0, tzinfo=hcm))
    assert w.is_open(datetime(2025, 6, 2, 11, 30, tzinfo=timezone.utc))  # 18:30 in Hồ Chí Minh City
    assert not w.is_open(datetime(2025, 6, 4, 19, 0, tzinfo=hcm))
    assert w.next_opening(datetime(2025, 6, 1, 9, 0, tzinfo=hcm)) == datetime(2025, 6, 2, 18, 0, tzinfo=hcm)
    assert w.next_opening(datetime(2025, 6, 2, 23, 30, tzinfo=hcm)) == datetime(2025, 6, 3, 18, 0, tzinfo=hcm)
    assert w.next_opening(datetime(2025, 6, 3, 23, 30, tzinfo=hcm)) is None
    night = Window(not_before=date(2025, 6, 2), deadline=date(2025, 6, 3), hours="22:00-05:00")
    assert night.minutes_per_day == 420
    assert night.is_open(datetime(2025, 6, 3, 2, 0, tzinfo=hcm)) and not night.is_open(datetime(2025, 6, 3, 12, 0, tzinfo=hcm))
    assert Window(not_before=date(2025, 6, 2), deadline=date(2025, 6, 2)).minutes_per_day == 24 * 60


def test_valid_keys_follow_the_model() -> None:
    assert "batch" in valid_keys(("waves", 0))
    assert valid_keys(("steps", 0, "do", "<playbook>")) == ["playbook", "vars"]
    assert "expect_status" in valid_keys(("steps", 0, "gates", 1, "<smoke>", "smoke", "<http>", "http"))


def test_migration_playbooks_are_valid_and_refuse_without_site_settings(project_root: Path, tmp_path: Path) -> None:
    """Every playbook the runbooks name parses; run on a bare host (no estate inventory, so no
    site settings) each refuses before touching anything."""
    import os
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "ANSIBLE_LOCAL_TEMP": str(tmp_path), "ANSIBLE_NOCOLOR": "1"}
    names = sorted({p for n in SHIPPED for _, p in load_runbook(project_root / "runbooks" / f"{n}.yml", load_estate(project_root / "inventories/lab"), project_root).playbooks()})
    playbooks = [str(project_root / "playbooks" / n) for n in names]
    check = subprocess.run([bin_dir / "ansible-playbook", "-i", "localhost,", "--syntax-check", *playbooks], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for name in ("precheck.yml", "switch.yml"):
        run = subprocess.run(
            [bin_dir / "ansible-playbook", "-i", "phuong-sai-gon,", "-c", "local", str(project_root / "playbooks" / name)],
            env=env, capture_output=True, text=True,
        )
        assert run.returncode != 0
        assert "phuong-sai-gon is not a unit host of a legacy site" in run.stdout, run.stdout[-2000:]
