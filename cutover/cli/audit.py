"""`cutover audit ...`, `cutover history`, `cutover report`: what auditors use."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import click

from cutover.cli.context import Session, pass_session
from cutover.errors import AuditFailed, InvalidInput, Problem


def _public_key(session: Session, given: Path | None):  # noqa: ANN202 - cryptography type
    from cutover.audit import Signer, load_public_key

    if given:
        if not given.is_file():
            raise InvalidInput([Problem(str(given), "", "public key file not found")])
        return load_public_key(given.read_bytes())
    if os.environ.get("CUTOVER_SIGNING_KEY"):
        return Signer.from_environment().public  # type: ignore[union-attr]
    default = session.work_dir / "keys" / "audit.key.pub"
    return load_public_key(default.read_bytes()) if default.is_file() else None


def verify_journal(session: Session, public_key_file: Path | None = None, require_signatures: bool = False):  # noqa: ANN201
    from cutover.audit import read_checkpoint, verify_records
    from cutover.journal import open_journal

    key = _public_key(session, public_key_file)
    with open_journal(session.state) as journal:
        records = journal.audit_records()
    checkpoints = [cp for cp in (read_checkpoint(p) for p in session.checkpoint_paths()) if cp]
    return verify_records(records, public_key=key, checkpoints=checkpoints, require_signatures=require_signatures)


@click.group()
def audit() -> None:
    """The audit chain: keys, verification, export for auditors."""


@audit.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Private key file [default: .cutover/keys/audit.key]; the public key goes beside it (.pub).")
@pass_session
def keygen(session: Session, out: Path | None) -> None:
    """Create an ed25519 signing key pair. Point CUTOVER_SIGNING_KEY at the private key to sign."""
    from cutover.audit import keygen as make_key

    private = out or session.work_dir / "keys" / "audit.key"
    public = make_key(private)
    if session.output == "json":
        session.emit_json({"private_key": str(private), "public_key": str(public)})
    else:
        session.say(f"private key: {private} (mode 0600; set CUTOVER_SIGNING_KEY={private})")
        session.say(f"public key:  {public} (give it to auditors)")


@audit.command()
@click.option("--bundle", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Verify an exported bundle, with no database.")
@click.option("--public-key", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Public key to check signatures with.")
@click.option("--require-signatures", is_flag=True, help="Fail on any unsigned record.")
@pass_session
def verify(session: Session, bundle: Path | None, public_key: Path | None, require_signatures: bool) -> None:
    """Check the chain (order, links, hashes, signatures, head checkpoints). Exit 6 naming the first bad record."""
    from cutover.audit import verify_bundle

    if bundle:
        if not bundle.is_file():
            raise InvalidInput([Problem(str(bundle), "", "bundle not found")])
        result = verify_bundle(bundle)
    else:
        result = verify_journal(session, public_key, require_signatures)
    if not result.ok:
        error = AuditFailed(f"audit verification failed: {result.problem}")
        error.detail = result.as_dict()
        raise error
    if session.output == "json":
        session.emit_json(result.as_dict())
    else:
        session.say(f"audit chain verified: {result.records} records, head {result.head_seq} ({result.head_hash[:16]}), {result.signed} signatures checked")


@audit.command("export")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Bundle file to write (.tar.gz).")
@click.option("--run", "run_id", default=None, help="Only this run's records (with the chain from its first record on).")
@pass_session
def export(session: Session, out: Path, run_id: str | None) -> None:
    """Write a bundle for auditors: records (JSON lines), public key, evidence files, checkpoint, manifest."""
    from cutover.audit import export_bundle, public_pem, read_checkpoint
    from cutover.journal import open_journal

    with open_journal(session.state) as journal:
        records = journal.audit_records()
        if run_id:
            journal.get_run(run_id)  # unknown run: exit 2
            first = next((r.seq for r in records if r.run == run_id), None)
            records = [r for r in records if first is not None and r.seq >= first]
    key = _public_key(session, None)
    checkpoint = read_checkpoint(session.checkpoint_paths()[0])
    evidence = {}
    runs_dir = session.work_dir / "runs"
    for r in records:
        for name in ("evidence",):
            folder = runs_dir / r.run / name if r.run else None
            if folder and folder.is_dir():
                for f in sorted(folder.rglob("*")):
                    if f.is_file():
                        evidence[f"{r.run}/{f.relative_to(folder)}"] = f
    manifest = export_bundle(out, records, checkpoint=checkpoint, public_key_pem=public_pem(key) if key else None, evidence_files=evidence, run=run_id)
    if session.output == "json":
        session.emit_json({"out": str(out), **manifest})
    else:
        session.say(f"wrote {out}: {manifest['records']} records (seq {manifest['first_seq']}..{manifest['head_seq']}), {len(evidence)} evidence files")


def _when(text: str | None, option: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput([Problem(option, "", f"{text!r} is not an ISO date or time (e.g. 2025-06-15 or 2025-06-15T18:00)")]) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@click.command()
@click.option("--runbook", default=None, help="Only this runbook's records.")
@click.option("--run", "run_id", default=None, help="Only this run's records.")
@click.option("--unit", default=None, help="Only records about this unit.")
@click.option("--actor", default=None, help="Only this actor's records.")
@click.option("--event", default=None, help="Only events starting with this (e.g. approval, run.status, step).")
@click.option("--since", default=None, help="From this UTC date/time (ISO).")
@click.option("--until", default=None, help="Up to this UTC date/time (ISO).")
@click.option("--limit", type=int, default=None, help="Only the last N matching records.")
@pass_session
def history(session: Session, runbook: str | None, run_id: str | None, unit: str | None, actor: str | None, event: str | None,
            since: str | None, until: str | None, limit: int | None) -> None:
    """Who did what to which unit, when and why (from the audit chain)."""
    from cutover.journal import open_journal

    t0, t1 = _when(since, "--since"), _when(until, "--until")
    with open_journal(session.state) as journal:
        records = journal.audit_records(run=run_id)
    selected = []
    for r in records:
        at = datetime.fromisoformat(r.at.replace("Z", "+00:00"))
        if (runbook and r.runbook != runbook) or (unit and r.unit != unit) or (actor and r.actor != actor):
            continue
        if (event and not r.event.startswith(event)) or (t0 and at < t0) or (t1 and at > t1):
            continue
        selected.append(r)
    if limit:
        selected = selected[-limit:]
    if session.output == "json":
        session.emit_json({"count": len(selected), "records": [r.as_dict() for r in selected]})
        return
    rows = [[r.seq, r.at[:19].replace("T", " "), r.actor, r.event, r.run, r.unit, r.outcome, r.reason] for r in selected]
    session.table(f"{len(selected)} audit records", ["seq", "at (UTC)", "actor", "event", "run", "unit", "outcome", "reason"], rows)


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="HTML file [default: .cutover/runs/RUN/report.html].")
@pass_session
def report(session: Session, run_id: str, out: Path | None) -> None:
    """Write one self-contained HTML report of RUN for auditors."""
    from cutover.journal import open_journal
    from cutover.report import write_report

    verification = verify_journal(session)
    out = out or session.work_dir / "runs" / run_id / "report.html"
    with open_journal(session.state) as journal:
        summary = write_report(journal, run_id, out, verification)
    if session.output == "json":
        session.emit_json(summary | {"audit_ok": verification.ok})
    else:
        session.say(f"wrote {out} ({summary['units']} units, {summary['approvals']} approvals, audit chain {'verified' if verification.ok else 'FAILED'})")
