"""The audit chain as a journal (SQLite) writes it: tampering of every kind is found and named."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from cutover.audit import (
    AuditRecord,
    Signer,
    export_bundle,
    keygen,
    load_public_key,
    read_checkpoint,
    redact_argv,
    verify_bundle,
    verify_records,
)
from cutover.journal import open_journal
from cutover.journal.chain import set_audit_context
from cutover.journal.records import redact


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    key = tmp_path / "keys" / "audit.key"
    keygen(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    return Signer.from_file(key)


class Chain:
    """The audit records a journal wrote (SQLite), as the auditor reads them."""

    def __init__(self, journal) -> None:  # noqa: ANN001
        self.journal = journal

    @property
    def rows(self) -> list[AuditRecord]:
        return self.journal.audit_records()


def _log(tmp_path: Path, signer: Signer | None, n: int = 6) -> tuple[Chain, None]:
    """n events through a real journal, each process-context like a separate command line."""
    journal = open_journal(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        for i in range(n):
            set_audit_context(command=["cutover", "run", f"--token=s3cr3t-{i}"], actor="engine", signer=signer,
                              checkpoint_paths=[tmp_path / "checkpoint.json"])
            journal.append_event("unit_step", actor="alice" if i % 2 else "bob", run_id=None,
                                 data={"reason": f"reason {i}", "manifest": f"sha256:{i:064x}", "password": "s3cr3t-pw"})
    finally:
        set_audit_context()
    return Chain(journal), None


def _reload(rows: list[AuditRecord]) -> list[AuditRecord]:
    return [AuditRecord.from_dict(json.loads(json.dumps(r.as_dict()))) for r in rows]


def test_intact_chain_verifies_with_signatures(tmp_path: Path, signer: Signer) -> None:
    store, _ = _log(tmp_path, signer)
    result = verify_records(_reload(store.rows), public_key=signer.public, checkpoints=[read_checkpoint(tmp_path / "checkpoint.json")])
    assert result.ok and result.records == 6 and result.signed == 6 and result.head_seq == 6


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder", "insert", "delete_last", "resign_edit"])
def test_tampering_is_found_and_named(tmp_path: Path, signer: Signer, tamper: str) -> None:
    store, _ = _log(tmp_path, signer)
    rows = _reload(store.rows)
    expected = {"edit": 3, "delete": 3, "reorder": 3, "insert": 3, "delete_last": 6, "resign_edit": 3}[tamper]
    if tamper == "edit":
        rows[2].reason = "nothing to see"
    elif tamper == "delete":
        del rows[2]
    elif tamper == "reorder":
        rows[2], rows[3] = rows[3], rows[2]
    elif tamper == "insert":
        forged = AuditRecord.from_dict({**rows[1].as_dict(), "seq": 3, "reason": "forged"})
        rows.insert(2, forged)
        for i, r in enumerate(rows):
            r.seq = i + 1
    elif tamper == "delete_last":
        rows = rows[:-2]
    elif tamper == "resign_edit":
        # Edited and re-hashed without the key: the hash matches, the signature does not.
        rows[2].reason = "rewritten"
        rows[2].hash = rows[2].compute_hash()
    result = verify_records(rows, public_key=signer.public, checkpoints=[read_checkpoint(tmp_path / "checkpoint.json")])
    assert not result.ok
    assert result.first_bad == expected, result.problem
    assert f"record {expected}" in result.problem


def test_secrets_are_redacted() -> None:
    assert redact_argv(["cutover", "--password", "hunter2", "--token=abc", "PULUMI_CONFIG_PASSPHRASE=x", "--env", "lab"]) == ["cutover", "--password", "***", "--token=***", "PULUMI_CONFIG_PASSPHRASE=***", "--env", "lab"]
    assert redact({"db": {"password": "p", "host": "h"}, "api_key": "k"}) == {"db": {"password": "***", "host": "h"}, "api_key": "***"}


def test_canary_never_recorded(tmp_path: Path, signer: Signer) -> None:
    store, _ = _log(tmp_path, signer)
    blob = json.dumps([r.as_dict() for r in store.rows])
    assert "s3cr3t" not in blob


def test_bundle_verifies_offline_and_catches_tampering(tmp_path: Path, signer: Signer) -> None:
    store, _ = _log(tmp_path, signer)
    evidence = tmp_path / "ev.json"
    evidence.write_text('{"rows": 3}')
    bundle = tmp_path / "audit.tar.gz"
    manifest = export_bundle(bundle, store.rows, checkpoint=read_checkpoint(tmp_path / "checkpoint.json"), public_key_pem=signer.public_pem(), evidence_files={"ev.json": evidence})
    assert manifest["records"] == 6
    assert verify_bundle(bundle).ok

    def rewrite(edit) -> Path:  # noqa: ANN001
        with tarfile.open(bundle, "r:gz") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        edit(files)
        out = tmp_path / "tampered.tar.gz"
        with tarfile.open(out, "w:gz") as tar:
            import io

            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return out

    def drop_last(files: dict[str, bytes]) -> None:
        lines = files["records.jsonl"].splitlines(keepends=True)
        files["records.jsonl"] = b"".join(lines[:-1])
        m = json.loads(files["manifest.json"])
        m["head_seq"] -= 1
        m["files"].pop("records.jsonl")
        files["manifest.json"] = json.dumps(m).encode()

    result = verify_bundle(rewrite(drop_last))
    assert not result.ok and "record 6" in result.problem

    def edit_record(files: dict[str, bytes]) -> None:
        files["records.jsonl"] = files["records.jsonl"].replace(b"reason 4", b"reason X")

    result = verify_bundle(rewrite(edit_record))
    assert not result.ok and result.first_bad == 5

    def swap_key(files: dict[str, bytes]) -> None:
        other = tmp_path / "other.key"
        keygen(other)
        files["audit-public-key.pem"] = (tmp_path / "other.key.pub").read_bytes()

    result = verify_bundle(rewrite(swap_key))
    assert not result.ok and "audit-public-key.pem" in result.problem


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    from cutover.errors import InvalidInput

    key = tmp_path / "k"
    pub = keygen(key)
    assert load_public_key(pub.read_bytes())
    with pytest.raises(InvalidInput):
        keygen(key)
