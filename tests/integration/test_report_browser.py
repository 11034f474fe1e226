"""The auditors' report opened in a real browser (Debian's Chromium, headless, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()), None)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _seed_run(state: str) -> str:
    from cutover.journal import open_journal

    with open_journal(state) as j:
        plan = {"steps": [{"id": "freeze"}, {"id": "import"}, {"id": "switch"}], "waves": [{"id": "pilot"}, {"id": "rollout"}]}
        run = j.create_run(runbook="document-management", env="lab", plan_hash="a" * 64, plan=plan, started_by="alice", params={"db_password": "canary-9f1"})
        j.set_run_status(run.id, "running", actor="alice")
        for wave, batch, units in (("pilot", "pilot-1", ["phuong-sai-gon", "xa-long-dien"]), ("rollout", "rollout-1", ["xa-bau-bang"])):
            j.record_intent(run.id, wave=wave, batch=batch, units=units, steps=["freeze", "import", "switch"])
            for u in units:
                for s in ("freeze", "import", "switch"):
                    j.record_outcome(run.id, unit=u, step=s, status="failed" if (u == "xa-bau-bang" and s == "import") else "done")
                    if u == "xa-bau-bang" and s == "import":
                        break
                j.record_gate(run.id, gate="reconcile", status="failed" if u == "xa-bau-bang" else "passed", wave=wave, batch=batch, unit=u,
                              evidence={"rows": 40 if u != "xa-bau-bang" else 0, "files": 4, "quarantined": 2 if u == "phuong-sai-gon" else 0})
            if wave == "pilot":
                j.request_approval(run.id, "pilot-review", actor="alice")
                j.record_approval(run.id, "pilot-review", actor="bob", reason="pilot units reconciled and smoke-tested")
        j.set_run_status(run.id, "failed", actor="alice", reason="reconcile failed for xa-bau-bang")
        return run.id


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_report_in_headless_chromium(project_copy: Path, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    state = f"sqlite:///{tmp_path / 'state.db'}"
    run_cli("--state", state, "inventory", "validate", root=project_copy)  # sets the audit context
    run_id = _seed_run(state)
    out = tmp_path / "report.html"
    result = run_cli("--state", state, "report", run_id, "--out", str(out), root=project_copy)
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    assert "canary-9f1" not in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # self-contained

    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        page.wait_for_timeout(300)
        units = page.locator("#units tbody tr").evaluate_all("rows => rows.map(r => r.dataset.unit)")
        approvals = page.locator("#approvals tbody tr").all_inner_texts()
        audit_status = page.locator("#audit-status").inner_text()
        bars = page.locator("#timeline rect").count()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert sorted(units) == ["phuong-sai-gon", "xa-bau-bang", "xa-long-dien"]
    assert len(approvals) == 1 and "bob" in approvals[0] and "pilot units reconciled" in approvals[0]
    assert audit_status == "verified"
    assert bars == 2
