"""The plan: every unit exactly once, stable batches, blocked units with reasons, a hash that
follows its inputs, calendar conflicts and a forecast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cutover.codes import import_codes
from cutover.errors import InvalidInput
from cutover.estate import load_estate
from cutover.plan import PENDING_CODE_REASON, compile_plan
from cutover.runbook import load_runbook

DOCS = "runbooks/document-management.yml"
PROCEDURES = "runbooks/administrative-procedures.yml"


def _plan_json(cli, root: Path, runbook: str, *extra: str) -> dict:  # noqa: ANN001
    result = cli("--env", "production", "--output", "json", "plan", str(root / runbook), *extra, root=root)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _compile(root: Path, runbook: str, env: str = "production", **kw):  # noqa: ANN003, ANN202
    estate = load_estate(root / "inventories" / env)
    return compile_plan(estate, load_runbook(root / runbook, estate, root), **kw)


def _placed(plan: dict) -> list[tuple[str, str]]:
    """(unit, wave) for every unit in a batch or blocked."""
    out = []
    for w in plan["waves"]:
        out += [(u, w["id"]) for b in w["batches"] for u in b["units"]]
        out += [(b["code"], w["id"]) for b in w["blocked"]]
    return out


# --- document management on production -----------------------------------------------------------


def test_document_management_places_every_commune_level_unit_exactly_once(project_root: Path, cli) -> None:  # noqa: ANN001
    plan = _plan_json(cli, project_root, DOCS)
    estate = load_estate(project_root / "inventories/production")
    placed = _placed(plan)
    codes = [u for u, _ in placed]
    assert len(codes) == len(set(codes)), "a unit appears twice"
    communes = {u.code for u in estate.commune_units()}
    assert len(communes) == 168
    assert communes <= set(codes)
    # The departments are all in the pilot; nothing of the estate is left outside.
    assert set(codes) == set(estate.units) and plan["outside"] == []
    waves = [w["id"] for w in plan["waves"]]
    assert waves[0] == "pilot"
    where = dict(placed)
    assert where["dac-khu-con-dao"] == "special-zone"
    assert [u for u, w in placed if w == "special-zone"] == ["dac-khu-con-dao"]
    assert where["trung-tam-chuyen-doi-so"] == "pilot"
    for code in estate.pilot_sets["document-management"]:
        assert where[code] == "pilot"
    # Blocked units carry their estate blockers (no partition rules yet in production: 70).
    blocked = [b for w in plan["waves"] for b in w["blocked"]]
    assert len(blocked) == 70
    assert all(r.startswith("no partition rule for split old unit ") for b in blocked for r in b["reasons"])
    assert plan["summary"]["units"] + plan["summary"]["blocked"] == len(estate.units)
    assert len(plan["hash"]) == 64


def test_plan_hash_is_stable_and_follows_the_estate(project_copy: Path, cli) -> None:  # noqa: ANN001
    first = _plan_json(cli, project_copy, DOCS)
    second = _plan_json(cli, project_copy, DOCS)
    assert first == second
    # One unit's data changes: its name (and so its code) in units.csv; Bàu Lâm is in no pilot set.
    units = project_copy / "inventories/production/units.csv"
    text = units.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("162,"))
    name = row.split(",")[1]
    units.write_text(text.replace(row, row.replace(f",{name},", f",{name} Mới,", 1)), encoding="utf-8")
    changed = _plan_json(cli, project_copy, DOCS)
    assert changed["hash"] != first["hash"]
    assert {c for c, _ in _placed(first)} - {c for c, _ in _placed(changed)} == {"xa-bau-lam"}
    assert {c for c, _ in _placed(changed)} - {c for c, _ in _placed(first)} == {"xa-bau-lam-moi"}


def test_a_partition_rule_unblocks_its_successors_and_changes_the_hash(project_copy: Path) -> None:
    before = _compile(project_copy, DOCS)
    rules = project_copy / "inventories/production/partition_rules.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "old_unit": {"name": "Phường Cầu Ông Lãnh", "district": "Quận 1"},
                        "by": "residential_quarter",
                        "successors": {"phuong-ben-thanh": ["KP1", "KP2"], "phuong-cau-ong-lanh": ["KP3", "KP4"]},
                    }
                ]
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    after = _compile(project_copy, DOCS)
    assert after.hash != before.hash
    wave, batch, _ = after.unit("phuong-cau-ong-lanh")
    assert wave.id == "rollout" and batch is not None
    # Bến Thành still waits for Nguyễn Thái Bình's rule, and says only that.
    _, batch, _ = after.unit("phuong-ben-thanh")
    assert batch is None
    (reasons,) = [b.reasons for b in after.blocked() if b.code == "phuong-ben-thanh"]
    assert reasons == ("no partition rule for split old unit Phường Nguyễn Thái Bình (Quận 1)",)


def test_the_hash_covers_the_runbook_and_its_playbooks(project_copy: Path) -> None:
    base = _compile(project_copy, DOCS).hash
    (project_copy / "playbooks/smoke.yml").write_text((project_copy / "playbooks/smoke.yml").read_text() + "# changed\n")
    after_playbook = _compile(project_copy, DOCS).hash
    assert after_playbook != base
    rb = project_copy / DOCS
    rb.write_text(rb.read_text(encoding="utf-8") + "# a comment only\n", encoding="utf-8")
    assert _compile(project_copy, DOCS).hash != after_playbook


def test_batches_respect_size_and_per_site_limits_and_are_stable(project_root: Path) -> None:
    plan = _compile(project_root, DOCS)
    estate = load_estate(project_root / "inventories/production")
    for wave in plan.waves:
        declared = plan.runbook.wave(wave.id)
        for n, batch in enumerate(wave.batches, start=1):
            assert batch.id == f"{wave.id}-{n}" and batch.wave == wave.id
            assert 0 < len(batch.units) <= wave.batch_size
            per_site: dict[str, int] = {}
            for code in batch.units:
                per_site[estate.units[code].site] = per_site.get(estate.units[code].site, 0) + 1
            assert max(per_site.values()) <= declared.max_parallel_per_site
            assert dict(batch.sites) == per_site
    pilot = plan.wave("pilot")
    # 19 departments and boards, all on the former HCMC site, at most 3 per batch.
    assert pilot.batches[0].units[:3] == tuple(sorted(pilot.batches[0].units[:3]))
    assert sum(1 for b in pilot.batches for u in b.units if not estate.units[u].is_commune_level) == 19
    # A second compile of freshly loaded inputs gives the very same plan.
    assert _compile(project_root, DOCS).to_dict() == plan.to_dict()


def test_percentage_batches_and_failure_tolerance(project_copy: Path) -> None:
    rb = project_copy / DOCS
    rb.write_text(rb.read_text(encoding="utf-8").replace("    batch: 20\n", "    batch: 25%\n"), encoding="utf-8")
    plan = _compile(project_copy, DOCS)
    rollout = plan.wave("rollout")
    assert len(rollout.units) == 91 and rollout.batch_size == 23  # ceil(25% of 91)
    sizes = [len(b) for b in rollout.batches]
    assert sum(sizes) == 91 and sizes[0] == 23 and max(sizes) == 23
    assert all(n <= 10 for b in rollout.batches for _, n in b.sites)  # max_parallel_per_site
    assert rollout.max_failed == "10%"
    assert [rollout.max_failed_for(b) for b in rollout.batches] == [n // 10 for n in sizes]  # 10%, rounded down
    assert rollout.max_failed_for(9) == 0
    assert plan.wave("pilot").max_failed_for(5) == 0
    island = plan.wave("special-zone")
    switch = plan.runbook.step("switch")
    assert island.timeout_for(switch) == 3 * switch.timeout and rollout.timeout_for(switch) == switch.timeout


# --- administrative procedures: identifier codes -------------------------------------------------------


def test_procedures_blocks_pending_codes_and_missing_rules_each_with_its_reason(project_root: Path, cli) -> None:  # noqa: ANN001
    plan = _plan_json(cli, project_root, PROCEDURES)
    blocked = {b["code"]: b["reasons"] for w in plan["waves"] for b in w["blocked"]}
    estate = load_estate(project_root / "inventories/production")
    assert set(blocked) == {u.code for u in estate.commune_units()}  # every code is pending in production
    assert all(PENDING_CODE_REASON in r for r in blocked.values())
    rule_blocked = {c for c, r in blocked.items() if any(x.startswith("no partition rule") for x in r)}
    assert len(rule_blocked) == 70
    assert blocked["phuong-thuan-an"] == [PENDING_CODE_REASON]
    assert blocked["phuong-sai-gon"][-1] == PENDING_CODE_REASON and len(blocked["phuong-sai-gon"]) == 3
    # The departments are outside this runbook; the pilot holds the pilot set's 15 units.
    assert len(plan["outside"]) == 19
    pilot = plan["waves"][0]
    assert pilot["id"] == "pilot" and len(pilot["blocked"]) == 15
    assert any("all 15 selected units are blocked" in c["message"] for c in plan["conflicts"])


def test_importing_codes_unblocks_only_those_units(project_copy: Path, tmp_path: Path) -> None:
    before = _compile(project_copy, PROCEDURES)
    estate = load_estate(project_copy / "inventories/production")
    chosen = ["phuong-thuan-an", "xa-cu-chi", "phuong-vung-tau", "xa-bau-bang", "phuong-sai-gon", "xa-nha-be"]
    assert all(c in estate.units for c in chosen)
    new = tmp_path / "codes.csv"
    new.write_text(
        "unit,identifier_code,decision,date\n" + "".join(f"{c},000.{i:02d}.01.H29,QD-77/2025,2025-07-15\n" for i, c in enumerate(chosen, start=1)),
        encoding="utf-8",
    )
    changes = import_codes(estate, new)
    assert {c.unit for c in changes} == set(chosen)
    after = _compile(project_copy, PROCEDURES)
    assert after.hash != before.hash
    reasons = {b.code: b.reasons for b in after.blocked()}
    for code in chosen:
        assert PENDING_CODE_REASON not in reasons.get(code, ())
    others = {u.code for u in estate.commune_units()} - set(chosen)
    assert all(PENDING_CODE_REASON in reasons[c] for c in others)
    # Units with no other blocker are now in a batch; Sài Gòn and Bàu Bàng still wait for
    # their split rules, and say only that.
    for code in ("phuong-thuan-an", "xa-cu-chi", "phuong-vung-tau"):
        wave, batch, steps = after.unit(code)
        assert wave.id == "pilot" and batch is not None and [s.id for s in steps][0] == "precheck"
    assert after.unit("xa-nha-be")[0].id == "rollout" and after.unit("xa-nha-be")[1] is not None
    for code in ("phuong-sai-gon", "xa-bau-bang"):
        assert after.unit(code)[1] is None
        assert reasons[code] and all(r.startswith("no partition rule") for r in reasons[code])
    assert len(after.wave("pilot").units) == 3


# --- calendar conflicts and the forecast -------------------------------------------------------------


def test_a_wave_due_after_the_next_one_and_after_a_final_gate_is_a_conflict(project_copy: Path) -> None:
    rb = project_copy / DOCS
    text = rb.read_text(encoding="utf-8")
    text = text.replace("window: {not_before: 2025-06-16, deadline: 2025-08-15", "window: {not_before: 2025-06-16, deadline: 2025-08-30")
    rb.write_text(text, encoding="utf-8")
    conflicts = [str(c) for c in _compile(project_copy, DOCS).conflicts]
    assert "waves[1].window.deadline: wave 'rollout' is due 2025-08-30, after the next wave 'special-zone' (2025-08-15)" in conflicts
    assert "waves[1].window.deadline: wave 'rollout' is due 2025-08-30, after final gate 'training' (deadline 2025-08-28)" in conflicts
    assert not any(c.startswith("waves[0]") or c.startswith("waves[2]") for c in conflicts)


def test_the_shipped_plans_have_no_calendar_conflict(project_root: Path) -> None:
    assert _compile(project_root, DOCS).conflicts == ()


def test_forecast_from_declared_and_measured_batch_durations(project_root: Path) -> None:
    plan = _compile(project_root, DOCS)
    rollout = plan.wave("rollout").forecast
    assert rollout.source == "declared (runbook)" and rollout.batch_minutes == 40
    assert rollout.batches_per_day == 7 and rollout.days_needed == 1 and rollout.fits
    island = plan.wave("special-zone").forecast
    assert island.source == "declared (wave)" and island.batches_per_day == 3  # 540 min / 150
    # Measured: 61 minutes per batch of 20 fits 4 a day; 301 minutes cannot fit in 18:00-23:00.
    measured = _compile(project_root, DOCS, measured_batch_minutes={"rollout": 301.0, "pilot": 61.0})
    assert measured.hash == plan.hash  # the forecast is advice: the run's identity is unchanged
    slow = measured.wave("rollout").forecast
    assert slow.source == "measured" and slow.fits is False and slow.batches_per_day == 0
    assert "longer than the daily window" in slow.note
    assert measured.wave("pilot").forecast.batches_per_day == 4
    assert any(c.where == "waves[1]" and "forecast" in c.message for c in measured.conflicts)


def test_forecast_counts_days_and_chains_waves(project_copy: Path) -> None:
    rb = project_copy / DOCS
    text = rb.read_text(encoding="utf-8")
    text = text.replace("window: {not_before: 2025-06-16, deadline: 2025-08-15", "window: {not_before: 2025-06-16, deadline: 2025-06-17")
    rb.write_text(text, encoding="utf-8")
    plan = _compile(project_copy, DOCS, measured_batch_minutes={"rollout": 100.0, "pilot": 300.0})
    pilot = plan.wave("pilot").forecast
    assert (pilot.batches_per_day, pilot.days_needed, str(pilot.start), str(pilot.finish), pilot.fits) == (1, 7, "2025-06-02", "2025-06-08", True)
    late = plan.wave("rollout").forecast  # 6 batches, 3 a day, only 2 days
    assert (late.days_needed, late.days_available, str(late.finish), late.fits) == (2, 2, "2025-06-17", True)
    plan = _compile(project_copy, DOCS, measured_batch_minutes={"rollout": 150.0})
    late = plan.wave("rollout").forecast  # 2 a day: 3 days needed
    assert late.fits is False and str(late.finish) == "2025-06-18" and "1 day(s) late" in late.note


def test_a_wave_starts_after_the_previous_wave_finishes(project_copy: Path) -> None:
    rb = project_copy / DOCS
    text = rb.read_text(encoding="utf-8")
    # The special zone may start as early as the rollout; the forecast still runs them in order.
    text = text.replace("window: {not_before: 2025-08-04, deadline: 2025-08-15", "window: {not_before: 2025-06-16, deadline: 2025-08-15")
    rb.write_text(text, encoding="utf-8")
    plan = _compile(project_copy, DOCS, measured_batch_minutes={"rollout": 300.0})
    assert str(plan.wave("rollout").forecast.finish) == "2025-06-21"  # 6 batches, one a day
    assert str(plan.wave("special-zone").forecast.start) == "2025-06-22"


# --- segments, units, the CLI views -------------------------------------------------------------------


def test_segments_split_before_each_approval_step(project_copy: Path) -> None:
    rb = project_copy / DOCS
    data = yaml.safe_load(rb.read_text(encoding="utf-8"))
    data["steps"].insert(5, {"id": "go-live", "do": {"approval": {"gate": "go-live", "prompt": "Switch this batch?"}}})
    rb.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    plan = _compile(project_copy, DOCS)
    assert [[s.id for s in seg] for seg in plan.segments()] == [["precheck", "pre_copy", "freeze", "export", "import"], ["go-live", "switch"]]
    assert plan.to_dict()["segments"] == [["precheck", "pre_copy", "freeze", "export", "import"], ["go-live", "switch"]]


def test_unit_lookup(project_root: Path) -> None:
    plan = _compile(project_root, PROCEDURES)
    with pytest.raises(InvalidInput, match="not in this runbook"):
        plan.unit("so-y-te")
    with pytest.raises(InvalidInput, match="unknown unit"):
        plan.unit("phuong-atlantis")


def test_cli_text_summary(project_root: Path, cli) -> None:  # noqa: ANN001
    result = cli("--env", "production", "plan", str(project_root / DOCS), root=project_root)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("pilot", "rollout", "special-zone", "2025-06-15", "2025-08-15", "70 blocked units", "no partition rule", "plan hash ", "final gate training: approval training-attested by 2025-08-28", "not before 2025-09-01"):
        assert text in out


def test_cli_wave_and_unit_views(project_root: Path, cli) -> None:  # noqa: ANN001
    plan = _compile(project_root, DOCS)
    wave = _plan_json(cli, project_root, DOCS, "--wave", "special-zone")
    assert wave["plan_hash"] == plan.hash
    assert wave["wave"]["batches"] == [{"id": "special-zone-1", "wave": "special-zone", "units": ["dac-khu-con-dao"], "sites": {"brvt": 1}}]
    unit = _plan_json(cli, project_root, DOCS, "--unit", "dac-khu-con-dao")
    assert (unit["wave"], unit["batch"], unit["blocked"]) == ("special-zone", "special-zone-1", [])
    assert [s["id"] for s in unit["steps"]] == ["precheck", "pre_copy", "freeze", "export", "import", "switch"]
    assert unit["steps"][5]["timeout_in_wave"] == 900 and unit["steps"][5]["undo"] == {"playbook": "switch_back.yml", "vars": {}}
    text = cli("--env", "production", "plan", str(project_root / DOCS), "--unit", "phuong-sai-gon", root=project_root).stdout
    assert "phuong-sai-gon: wave rollout, blocked" in text and "no partition rule" in text and "switch_back.yml" in text
    text = cli("--env", "production", "plan", str(project_root / DOCS), "--wave", "rollout", root=project_root).stdout
    assert "rollout-6" in text and "max failed 10%" in text
    bad = cli("--env", "production", "plan", str(project_root / DOCS), "--wave", "islands", root=project_root)
    assert bad.exit_code == 2 and "no wave 'islands'" in bad.stderr


def test_cli_finds_a_runbook_by_name_under_the_root(project_root: Path, cli) -> None:  # noqa: ANN001
    result = cli("--env", "lab", "--output", "json", "plan", "document-management", root=project_root)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    estate = load_estate(project_root / "inventories/lab")
    assert sorted(u for u, _ in _placed(plan)) == sorted(estate.units)
    assert dict(_placed(plan))["dac-khu-con-dao"] == "special-zone"


def test_cli_invalid_runbook_prints_problems_as_json(project_copy: Path, cli) -> None:  # noqa: ANN001
    rb = project_copy / DOCS
    rb.write_text(rb.read_text(encoding="utf-8").replace("    batch: 20\n", "    batch: 0%\n"), encoding="utf-8")
    result = cli("--env", "production", "--output", "json", "plan", str(rb), root=project_copy)
    assert result.exit_code == 2
    problems = json.loads(result.stdout)["error"]["problems"]
    assert [p["where"] for p in problems] == ["waves[1].batch"]
