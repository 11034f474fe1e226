"""The audit chain: append-only records, each holding the previous record's hash.

A record says who did what, when and why: sequence number, UTC time, actor, host, the
command line with secrets redacted, reason, run, runbook, plan hash, event, outcome and the
digests of its evidence. Its `hash` is the SHA-256 of its canonical JSON (every field but
`hash` and `signature`); with a signing key (ed25519, `cutover audit keygen`, the key file
named by `CUTOVER_SIGNING_KEY`) it also carries a signature over that hash.

A chain alone cannot see its last records deleted, so the head is also written as a
*checkpoint* outside the journal (with the run's artifacts and in every exported bundle):
verification fails when the chain is shorter than a checkpoint says or its record there
differs.

Records are appended by the journal itself, in the transaction of what they record
(`cutover.journal.chain`, both backends); this module holds the record, signing, checkpoints,
verification and bundles.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cutover.errors import AuditFailed, InvalidInput, Problem

GENESIS = "0" * 64
SECRET_NAME = re.compile(  # command-line flags; mapping keys go through cutover.journal.records.redact
    r"(pass(word|phrase)?|secret|token|api[_-]?key|private[_-]?key|credential|signing[_-]?key)", re.I)
REDACTED = "***"


# --- redaction -------------------------------------------------------------------------------


def redact_argv(argv: Iterable[str]) -> list[str]:
    """The command line with secret values replaced: `--password X`, `--token=X`, `KEY=X`."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        m = re.match(r"^(--?[\w.-]+|[\w.-]+)=(.*)$", arg, re.S)
        if m and SECRET_NAME.search(m[1]):
            out.append(f"{m[1]}={REDACTED}")
        elif arg.startswith("-") and SECRET_NAME.search(arg):
            out.append(arg)
            hide_next = True
        else:
            out.append(arg)
    return out


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_json(value: Any) -> str:
    return digest_bytes(canonical(value))


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


# --- records ---------------------------------------------------------------------------------


@dataclass
class AuditRecord:
    seq: int
    at: str
    actor: str
    host: str
    event: str
    command: list[str] = field(default_factory=list)
    reason: str = ""
    run: str = ""
    runbook: str = ""
    plan_hash: str = ""
    unit: str = ""
    outcome: str = ""
    evidence: dict[str, str] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""
    signature: str = ""
    key_id: str = ""

    def body(self) -> dict[str, Any]:
        """Every field but `hash` and `signature` (built directly: `asdict` deep-copies)."""
        return {name: getattr(self, name) for name in _BODY_FIELDS}

    def compute_hash(self) -> str:
        return hashlib.sha256(canonical(self.body())).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AuditRecord":
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        return cls(**known)


_BODY_FIELDS = tuple(f for f in AuditRecord.__dataclass_fields__ if f not in ("hash", "signature"))


class Signer:
    def __init__(self, key: Ed25519PrivateKey):
        self.key = key
        self.public = key.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def from_file(cls, path: Path | str) -> "Signer":
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except FileNotFoundError:
            raise InvalidInput([Problem(str(path), "", "signing key file not found (CUTOVER_SIGNING_KEY)")]) from None
        except ValueError as exc:
            raise InvalidInput([Problem(str(path), "", f"not a PEM private key: {exc}")]) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidInput([Problem(str(path), "", "signing key must be ed25519")])
        return cls(key)

    @classmethod
    def from_environment(cls) -> "Signer | None":
        path = os.environ.get("CUTOVER_SIGNING_KEY")
        return cls.from_file(path) if path else None

    def sign(self, digest_hex: str) -> str:
        return base64.b64encode(self.key.sign(bytes.fromhex(digest_hex))).decode()

    def public_pem(self) -> bytes:
        return public_pem(self.public)


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(data: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput("audit public key must be ed25519")
    return key


def keygen(private_path: Path) -> Path:
    """Write a new ed25519 key pair: PRIVATE (mode 0600) and PRIVATE.pub; return the .pub path."""
    if private_path.exists():
        raise InvalidInput([Problem(str(private_path), "", "exists already: refusing to overwrite a signing key")])
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = private_path.with_name(private_path.name + ".pub")
    atomic_write(pub, public_pem(key.public_key()))
    return pub


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` whole (a reader sees the old or the new content); `durable` also waits
    for the disk (fsync) before the rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- appending -------------------------------------------------------------------------------


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def checkpoint_of(record: AuditRecord, signer: Signer | None) -> dict[str, Any]:
    body = {"seq": record.seq, "hash": record.hash, "at": record.at}
    cp: dict[str, Any] = dict(body)
    if signer:
        cp["key_id"] = signer.key_id
        cp["signature"] = base64.b64encode(signer.key.sign(canonical(body))).decode()
    return cp


def write_checkpoint(path: Path, record: AuditRecord, signer: Signer | None, *, durable: bool = True) -> None:
    """Keep the highest head seen: a checkpoint never moves backwards."""
    current = read_checkpoint(path)
    if current and int(current.get("seq", 0)) > record.seq:
        return
    atomic_write(path, canonical(checkpoint_of(record, signer)) + b"\n", durable=durable)


def read_checkpoint(path: Path | None) -> dict[str, Any] | None:
    if not path or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"seq": -1, "hash": "unreadable"}


# --- verification ----------------------------------------------------------------------------


@dataclass
class Verification:
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    signed: int
    first_bad: int | None = None
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_records(
    records: list[AuditRecord],
    *,
    public_key: Ed25519PublicKey | None = None,
    checkpoints: Iterable[dict[str, Any]] = (),
    require_signatures: bool = False,
    start_seq: int = 1,
    start_prev: str = GENESIS,
) -> Verification:
    """Check the chain: consecutive seqs, each prev_hash, each hash, each signature, checkpoints."""
    expected_prev = start_prev
    signed = 0

    def bad(seq: int, why: str) -> Verification:
        head = records[-1] if records else None
        return Verification(False, len(records), head.seq if head else 0, head.hash if head else "", signed, seq, why)

    for i, r in enumerate(records):
        want_seq = start_seq + i
        if r.seq != want_seq:
            return bad(want_seq, f"record {want_seq}: missing or out of order (found seq {r.seq} in its place)")
        if r.prev_hash != expected_prev:
            return bad(r.seq, f"record {r.seq}: previous-hash link broken (a record before it was changed, removed or inserted)")
        if r.compute_hash() != r.hash:
            return bad(r.seq, f"record {r.seq}: content does not match its hash (edited)")
        if r.signature:
            if public_key is None:
                if require_signatures:
                    return bad(r.seq, f"record {r.seq}: signed, but no public key to check it with")
            else:
                try:
                    public_key.verify(base64.b64decode(r.signature), bytes.fromhex(r.hash))
                except (InvalidSignature, ValueError):
                    return bad(r.seq, f"record {r.seq}: bad signature")
                signed += 1
        elif require_signatures:
            return bad(r.seq, f"record {r.seq}: not signed")
        expected_prev = r.hash
    by_seq = {r.seq: r for r in records}
    head = records[-1] if records else None
    for cp in checkpoints:
        seq = int(cp.get("seq", -1))
        if public_key is not None and cp.get("signature"):
            body = {"seq": cp.get("seq"), "hash": cp.get("hash"), "at": cp.get("at")}
            try:
                public_key.verify(base64.b64decode(cp["signature"]), canonical(body))
            except (InvalidSignature, ValueError):
                return bad(seq, f"checkpoint at record {seq}: bad signature")
        if seq < start_seq:
            continue
        if seq not in by_seq:
            return bad(seq, f"record {seq}: missing — the checkpoint names it as the head, the chain ends at {head.seq if head else 0} (records deleted)")
        if by_seq[seq].hash != cp.get("hash"):
            return bad(seq, f"record {seq}: differs from the checkpoint's hash")
    return Verification(True, len(records), head.seq if head else 0, head.hash if head else GENESIS, signed)


def verify_or_raise(result: Verification) -> Verification:
    if not result.ok:
        raise AuditFailed(f"audit verification failed: {result.problem}")
    return result


# --- export bundle ---------------------------------------------------------------------------


BUNDLE_FORMAT = "cutover-audit-bundle/1"


def export_bundle(
    out: Path,
    records: list[AuditRecord],
    *,
    checkpoint: dict[str, Any] | None,
    public_key_pem: bytes | None,
    evidence_files: dict[str, Path] | None = None,
    run: str | None = None,
) -> dict[str, Any]:
    """Write a tar.gz bundle: records.jsonl, checkpoint.json, public key, evidence/, manifest.json.

    For an export limited to one run, the records of that run come with the chain from the
    first of them to the head, so that the bundle verifies alone.
    """
    files: dict[str, bytes] = {}
    files["records.jsonl"] = b"".join(canonical(r.as_dict()) + b"\n" for r in records)
    if checkpoint:
        files["checkpoint.json"] = canonical(checkpoint) + b"\n"
    if public_key_pem:
        files["audit-public-key.pem"] = public_key_pem
    for name, path in sorted((evidence_files or {}).items()):
        files[f"evidence/{name}"] = Path(path).read_bytes()
    manifest = {
        "format": BUNDLE_FORMAT,
        "created_at": utc_now(),
        "run": run,
        "records": len(records),
        "first_seq": records[0].seq if records else 0,
        "first_prev_hash": records[0].prev_hash if records else GENESIS,
        "head_seq": records[-1].seq if records else 0,
        "head_hash": records[-1].hash if records else GENESIS,
        "files": {name: digest_bytes(data) for name, data in sorted(files.items())},
    }
    files["manifest.json"] = json.dumps(manifest, indent=2, ensure_ascii=False).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    atomic_write(out, buf.getvalue())
    return manifest


def verify_bundle(path: Path) -> Verification:
    """Verify an exported bundle with no database: file digests, chain, signatures, checkpoint."""
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    except (OSError, tarfile.TarError) as exc:
        raise InvalidInput([Problem(str(path), "", f"not a readable audit bundle: {exc}")]) from None
    if "manifest.json" not in files or "records.jsonl" not in files:
        raise InvalidInput([Problem(str(path), "", "not an audit bundle: manifest.json or records.jsonl missing")])
    manifest = json.loads(files["manifest.json"])
    for name, want in manifest.get("files", {}).items():
        if name not in files:
            return Verification(False, 0, 0, "", 0, None, f"bundle file {name} missing")
        if digest_bytes(files[name]) != want:
            if name == "records.jsonl":
                break  # the chain check below names the record
            return Verification(False, 0, 0, "", 0, None, f"bundle file {name} does not match the manifest")
    try:
        records = [AuditRecord.from_dict(json.loads(line)) for line in files["records.jsonl"].splitlines() if line.strip()]
    except (ValueError, TypeError) as exc:
        return Verification(False, 0, 0, "", 0, None, f"records.jsonl unreadable: {exc}")
    key = load_public_key(files["audit-public-key.pem"]) if "audit-public-key.pem" in files else None
    checkpoints = [json.loads(files["checkpoint.json"])] if "checkpoint.json" in files else []
    checkpoints.append({"seq": manifest.get("head_seq"), "hash": manifest.get("head_hash")})
    result = verify_records(
        records,
        public_key=key,
        checkpoints=checkpoints,
        start_seq=int(manifest.get("first_seq") or 1),
        start_prev=manifest.get("first_prev_hash") or GENESIS,
    )
    if result.ok and digest_bytes(files["records.jsonl"]) != manifest["files"].get("records.jsonl"):
        return Verification(False, result.records, result.head_seq, result.head_hash, result.signed, None, "records.jsonl does not match the manifest")
    return result
