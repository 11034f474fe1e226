"""Tampering with the audit chain in the journal (SQLite and PostgreSQL) and in an exported
bundle: `cutover audit verify` exits 6 and names the first bad record."""

from __future__ import annotations

import gzip
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest

from cutover.cli.context import Session
from cutover.journal import open_journal
from tests.conftest import run_cli

CANARY = "canary-7d3e-secret"


def _populate(root: Path, url: str) -> str:
    session = Session.create(env="lab", state=url, actor="alice", output="text", root=str(root), debug=False)
    session.start_audit(["cutover", "run", "runbooks/document-management.yml", f"--password={CANARY}"])
    with open_journal(url) as j:
        run = j.create_run(runbook="document-management", env="lab", plan_hash="b" * 64, plan={"steps": []}, started_by="alice",
                           params={"api_token": CANARY, "units": ["phuong-sai-gon"]})
        j.set_run_status(run.id, "running", actor="alice")
        j.record_intent(run.id, wave="pilot", batch="pilot-1", units=["phuong-sai-gon", "xa-long-dien"], steps=["freeze"])
        j.record_outcome(run.id, unit="phuong-sai-gon", step="freeze", status="done", detail={"db_password": CANARY})
        j.record_outcome(run.id, unit="xa-long-dien", step="freeze", status="done")
        j.request_approval(run.id, "pilot-review", actor="alice")
        j.record_approval(run.id, "pilot-review", actor="bob", reason="looks right")
        j.set_run_status(run.id, "succeeded", actor="alice")
        assert len(j.audit_records()) >= 8
    return run.id


def _sql(url: str, statements: list[str]) -> None:
    if url.startswith("sqlite:"):
        con = sqlite3.connect(url.removeprefix("sqlite:///").removeprefix("sqlite://"))
        with con:
            for s in statements:
                con.execute(s)
        con.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=False) as con:
            for s in statements:
                con.execute(s)


TAMPER = {
    "edit": (["UPDATE audit SET reason = 'nothing happened' WHERE seq = 4"], 4),
    "delete": (["DELETE FROM audit WHERE seq = 4"], 4),
    "reorder": (["UPDATE audit SET seq = -1 WHERE seq = 4", "UPDATE audit SET seq = 4 WHERE seq = 5", "UPDATE audit SET seq = 5 WHERE seq = -1"], 4),
    "insert": (["UPDATE audit SET seq = seq + 1000 WHERE seq >= 4", "UPDATE audit SET seq = seq - 999 WHERE seq >= 1004",
                "INSERT INTO audit SELECT 4, at, actor, host, event, command, 'forged', run, runbook, plan_hash, unit, outcome, evidence,"
                " detail, prev_hash, hash, signature, key_id FROM audit WHERE seq = 3"], 4),
    "delete_last": (["DELETE FROM audit WHERE seq > (SELECT MAX(seq) - 2 FROM audit)"], None),
}


@pytest.mark.parametrize("tamper", list(TAMPER))
def test_tampered_journal_fails_verification(journal_url: str, project_copy: Path, tamper: str) -> None:
    _populate(project_copy, journal_url)
    ok = run_cli("--state", journal_url, "audit", "verify", root=project_copy)
    assert ok.exit_code == 0, ok.output
    with open_journal(journal_url) as j:
        head = j.audit_head().seq
    statements, bad = TAMPER[tamper]
    _sql(journal_url, statements)
    result = run_cli("--state", journal_url, "--output", "json", "audit", "verify", root=project_copy)
    assert result.exit_code == 6, result.output
    expected = bad if bad is not None else head  # the checkpoint names the deleted head
    assert json.loads(result.stdout)["error"]["detail"]["first_bad"] == expected
    assert f"record {expected}" in result.stderr


def test_signed_chain_bundle_and_canary(journal_url: str, project_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "keys" / "audit.key"
    assert run_cli("audit", "keygen", "--out", str(key), root=project_copy).exit_code == 0
    monkeypatch.setenv("CUTOVER_SIGNING_KEY", str(key))
    run_id = _populate(project_copy, journal_url)
    result = run_cli("--state", journal_url, "--output", "json", "audit", "verify", "--require-signatures", root=project_copy)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["signed"] == json.loads(result.stdout)["records"]

    bundle = tmp_path / "audit.tar.gz"
    assert run_cli("--state", journal_url, "audit", "export", "--out", str(bundle), "--run", run_id, root=project_copy).exit_code == 0
    monkeypatch.delenv("CUTOVER_SIGNING_KEY")
    # Offline: no journal, no key but the bundle's own.
    assert run_cli("--state", "sqlite:////nonexistent/none.db", "audit", "verify", "--bundle", str(bundle), root=tmp_path).exit_code == 0
    assert CANARY.encode() not in gzip.decompress(bundle.read_bytes())

    # A record edited inside the bundle, or the last one dropped, is named.
    with tarfile.open(bundle) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    lines = files["records.jsonl"].splitlines(keepends=True)
    for name, records in (("edited", lines[:2] + [lines[2].replace(b"alice", b"mallory")] + lines[3:]), ("truncated", lines[:-1])):
        out = tmp_path / f"{name}.tar.gz"
        with tarfile.open(out, "w:gz") as tar:
            import io

            for fname, data in {**files, "records.jsonl": b"".join(records)}.items():
                info = tarfile.TarInfo(fname)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        r = run_cli("audit", "verify", "--bundle", str(out), root=tmp_path)
        assert r.exit_code == 6 and "record" in r.stderr, (name, r.stderr)

    # The canary is nowhere in the journal either.
    if journal_url.startswith("sqlite:"):
        db = Path(journal_url.removeprefix("sqlite:///").removeprefix("sqlite://"))
        blob = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        assert CANARY.encode() not in blob
    else:
        import psycopg

        with psycopg.connect(journal_url) as con:
            dump = json.dumps([list(map(str, r)) for t in ("runs", "attempts", "events", "audit") for r in con.execute(f"SELECT * FROM {t}").fetchall()])
        assert CANARY not in dump
    for path in (project_copy / ".cutover").rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
