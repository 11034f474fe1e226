"""The Ansible action with real ansible-runner, real playbooks (tests/fixtures/engine/playbooks), local connection."""

from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path

import pytest

from cutover.actions.ansible import AnsibleAction, CheckGate, PlayStep, compose_playbook, resolve_strategy, write_inventory
from cutover.actions.http import HttpCheck

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "engine" / "playbooks"
UNITS = ("unit-a", "unit-b", "unit-c")
STRATEGIES = ["linear"] + (["mitogen"] if resolve_strategy(None) == "mitogen" else [])


@pytest.fixture
def estate_dir(tmp_path: Path) -> Path:
    log = tmp_path / "side_effects.log"
    dynamic = {
        "all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}", "side_effect_log": str(log)}},
        "units": {"hosts": list(UNITS)},
        "_meta": {"hostvars": {u: {"cutover_unit": u} for u in UNITS}},
    }
    write_inventory(dynamic, tmp_path / "inventory.json")
    return tmp_path


def lines(root: Path) -> list[str]:
    path = root / "side_effects.log"
    return path.read_text().splitlines() if path.exists() else []


def fail(root: Path, what: str, *units: str) -> None:
    (root / f"side_effects.log.fail.{what}").write_text("".join(u + "\n" for u in units))


def step(name: str, units=UNITS, **kw) -> PlayStep:
    return PlayStep(step=name, units=tuple(units), playbook=FIXTURES / "step.yml", **kw)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_failing_unit_drops_out_of_later_steps_and_outcomes_stream(estate_dir: Path, strategy: str) -> None:
    fail(estate_dir, "do-copy", "unit-b")
    seen: list[tuple[float, str, str, str | None, bool]] = []
    action = AnsibleAction(inventory=estate_dir / "inventory.json", strategy=strategy)
    steps = [step("precheck"), step("copy", gates=(CheckGate("reconcile", playbook=FIXTURES / "check.yml"),)), step("switch", vars={"sleep": 1})]
    result = action.run(steps, private_data_dir=estate_dir / "pd", limit=UNITS,
                        on_outcome=lambda o: seen.append((time.monotonic(), o.unit, o.step, o.gate, o.ok)))
    ended = time.monotonic()
    assert result.finished and result.status == "failed"
    got = {(u, s, g): ok for _, u, s, g, ok in seen}
    assert got == {
        ("unit-a", "precheck", None): True, ("unit-b", "precheck", None): True, ("unit-c", "precheck", None): True,
        ("unit-a", "copy", None): True, ("unit-b", "copy", None): False, ("unit-c", "copy", None): True,
        ("unit-a", "copy", "reconcile"): True, ("unit-c", "copy", "reconcile"): True,
        ("unit-a", "switch", None): True, ("unit-c", "switch", None): True,
    }
    log = lines(estate_dir)
    assert sorted(log) == sorted([f"{u} do {s}" for u in UNITS for s in ("precheck", "copy")] + [f"{u} gate copy reconcile" for u in ("unit-a", "unit-c")]
                                 + [f"{u} do switch" for u in ("unit-a", "unit-c")])
    # streamed: the precheck outcomes were reported while the invocation still ran (switch sleeps 1 s)
    first_precheck = min(t for t, _, s, _, _ in seen if s == "precheck")
    assert ended - first_precheck > 0.8
    failure = next(o for o in result.outcomes if not o.ok)
    assert failure.unit == "unit-b" and "told to fail" in failure.message
    evidence = next(o for o in result.outcomes if o.gate == "reconcile" and o.unit == "unit-a").evidence
    assert evidence["evidence"] == {"rows_legacy": 10, "rows_unified": 10}


def test_steps_can_hold_different_units_in_one_invocation(estate_dir: Path) -> None:
    action = AnsibleAction(inventory=estate_dir / "inventory.json")
    steps = [step("copy", units=("unit-b",)), step("switch"), PlayStep("switch", ("unit-a",), FIXTURES / "step.yml", phase="undo")]
    result = action.run(steps, private_data_dir=estate_dir / "pd", limit=UNITS)
    assert result.status == "successful"
    log = lines(estate_dir)
    assert log[0] == "unit-b do copy" and sorted(log[1:4]) == [f"{u} do switch" for u in UNITS] and log[4:] == ["unit-a undo switch"]
    assert {(o.unit, o.step, o.phase) for o in result.outcomes} == {("unit-b", "copy", "do"), *{(u, "switch", "do") for u in UNITS}, ("unit-a", "switch", "undo")}


def test_no_environment_value_reaches_the_artifacts(estate_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "canary-secret-5f1c0e7d"
    monkeypatch.setenv("CUTOVER_TEST_CANARY_PASSWORD", canary)
    monkeypatch.setenv("ANSIBLE_BECOME_PASSWORD", canary)
    action = AnsibleAction(inventory=estate_dir / "inventory.json")
    result = action.run([step("copy")], private_data_dir=estate_dir / "pd", limit=UNITS)
    assert result.status == "successful"
    files = [p for p in (estate_dir / "pd").rglob("*") if p.is_file()]
    assert any(p.name == "command" for p in files) and any("job_events" in p.parts for p in files)
    leaks = [p for p in files if canary.encode() in p.read_bytes()]
    assert leaks == []


def test_each_invocation_has_its_own_ssh_control_path_and_mark(estate_dir: Path) -> None:
    """SSH masters go to a folder of the invocation's own, not the user's shared ~/.ansible/cp
    (reaping an invocation's leftovers must never reach another run's connections), and the
    mark names the invocation's folder whole (a sibling `pd2` is not `pd`)."""
    book = estate_dir / "env.yml"
    book.write_text("""# Purpose: record what the playbook's environment says of SSH masters and the mark
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        dest: "{{ side_effect_log }}.env"
        content: "{{ lookup('env', 'ANSIBLE_SSH_CONTROL_PATH_DIR') }}|{{ lookup('env', 'CUTOVER_INVOCATION') }}"
      run_once: true
""")
    action = AnsibleAction(inventory=estate_dir / "inventory.json")
    result = action.run([PlayStep("env", UNITS, book)], private_data_dir=estate_dir / "pd", limit=UNITS)
    assert result.status == "successful"
    control_dir, mark = (estate_dir / "side_effects.log.env").read_text().split("|")
    assert control_dir and ".ansible" not in control_dir and len(control_dir) < 60
    assert not Path(control_dir).exists()  # removed with the invocation
    assert mark.startswith(str(estate_dir / "pd") + os.sep + ":")


def test_check_mode_changes_nothing(estate_dir: Path) -> None:
    action = AnsibleAction(inventory=estate_dir / "inventory.json", check_mode=True)
    result = action.run([step("copy"), step("switch")], private_data_dir=estate_dir / "pd", limit=UNITS)
    assert result.status == "successful"
    assert lines(estate_dir) == []
    assert len([o for o in result.outcomes if o.ok]) == 6


def test_a_step_timeout_fails_the_unit(estate_dir: Path) -> None:
    action = AnsibleAction(inventory=estate_dir / "inventory.json")
    result = action.run([step("copy", units=("unit-a",), vars={"sleep": 30}, timeout=2)], private_data_dir=estate_dir / "pd", limit=["unit-a"])
    assert result.elapsed < 25
    [outcome] = result.outcomes
    assert not outcome.ok and "timed out" in outcome.message.lower()


def test_cancel_stops_the_invocation(estate_dir: Path) -> None:
    reported: list[str] = []
    action = AnsibleAction(inventory=estate_dir / "inventory.json")
    started = time.monotonic()
    result = action.run([step("precheck"), step("copy", vars={"sleep": 30})], private_data_dir=estate_dir / "pd", limit=UNITS,
                        on_outcome=lambda o: reported.append(o.step), cancel=lambda: "precheck" in reported and time.monotonic() - started > 1)
    assert result.status == "canceled" and not result.finished
    assert time.monotonic() - started < 20
    assert set(reported) == {"precheck"}


def test_a_broken_playbook_is_an_unfinished_invocation(estate_dir: Path) -> None:
    bad = estate_dir / "bad.yml"
    bad.write_text("- hosts: all\n  tasks:\n    - name: x\n      no_such_module_anywhere: {}\n")
    action = AnsibleAction(inventory=estate_dir / "inventory.json")
    result = action.run([PlayStep("copy", UNITS, bad)], private_data_dir=estate_dir / "pd", limit=UNITS)
    assert not result.finished and result.outcomes == [] and result.error


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        healthy = self.path.startswith("/unit-a") or self.path.startswith("/unit-c")
        body = b"documents: ok" if healthy else b"down"
        self.send_response(200 if healthy else 503)
        self.send_header("X-Site", "unified")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_http_smoke_gate_runs_per_unit(estate_dir: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{{{{ inventory_hostname }}}}/health"
        gate = CheckGate("smoke", http=HttpCheck(url=url, expect_body="ok", expect_header={"X-Site": "unified"}))
        action = AnsibleAction(inventory=estate_dir / "inventory.json")
        result = action.run([step("switch", gates=(gate,))], private_data_dir=estate_dir / "pd", limit=UNITS)
    finally:
        server.shutdown()
    gates = {o.unit: o.ok for o in result.outcomes if o.gate == "smoke"}
    assert gates == {"unit-a": True, "unit-b": False, "unit-c": True}


def test_composed_playbook_marks_every_step_and_gate() -> None:
    plays = compose_playbook([step("copy", gates=(CheckGate("reconcile", playbook=FIXTURES / "check.yml"),))])
    names = [p.get("name") for p in plays]
    assert names == ["cutover do copy", None, "cutover gate copy reconcile", None, "cutover end"]
    assert plays[1]["when"] == "inventory_hostname in cutover_units" and plays[1]["vars"]["cutover_units"] == list(UNITS)
    assert os.path.isabs(plays[1]["ansible.builtin.import_playbook"])
