"""The lab: a local rehearsal estate, built by the same hosting playbook as production.

`up` applies ``playbooks/hosting.yml`` to ``inventories/lab/`` through ansible-runner (the lab
is one more inventory), then seeds the legacy sites' databases and attachment stores with
deterministic synthetic records for every old unit. Each site lives under
``<project>/.cutover/lab/<site>/`` on its own loopback address (``inventories/lab/group_vars``):

    postgres/data/      the site's PostgreSQL cluster (postmaster.pid), run as the postgres user
    postgres/socket/    its unix socket
    files/              the attachment stores (file_store role)
    app/backend.pid     the application back end (app role)
    nginx/nginx.pid     the front proxy's own nginx master (front_proxy role)

`down` stops exactly those processes by the pids in those files, `status` reads them, and
`reset` puts back the seeded state: the seed is a pure function of the estate and the size,
so it is rewritten rather than restored from a copy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import yaml

from cutover.actions.ansible import mitogen_strategy_dir, resolve_strategy
from cutover.errors import CutoverError, InvalidInput, Problem, RunFailed
from cutover.estate import Estate, OldUnit, ascii_slug, load_estate

SITES = ("hcm", "bd", "brvt", "unified")
LEGACY_SITES = ("hcm", "bd", "brvt")
SITE_OF_PROVINCE = {"HCM": "hcm", "BD": "bd", "BRVT": "brvt"}
SECRETS = ("postgres_app_password", "postgres_migration_password")
DATABASE = "shared_systems"
SUPERUSER = "postgres"
POSTGRES_PORT = 5432
SEED = "cutover-lab-1"
# A residential quarter that no partition rule names: such records go to quarantine.
UNMATCHED_QUARTER = "Khu phố không rõ"
UNIT_TABLES = {
    "docs": ("documents", "recipients", "attachments", "processing_history"),
    "procedures": ("dossiers", "dossier_events"),
}
# Where the seeded window of records lies (the legacy systems kept running after the merger).
WINDOW_START = datetime(2024, 7, 1, 7, 30, tzinfo=timezone(timedelta(hours=7)))
WINDOW_DAYS = 520


class LabError(CutoverError):
    """The lab could not be built, seeded or stopped."""

    exit_code = 1
    status = "failed"


# --- sizes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSize:
    """How much a legacy site holds per old unit (departments hold `department_factor` times it)."""

    name: str
    documents: int  # per old unit, +-30 %
    dossiers: int
    attachment_share: float  # documents that carry an attachment file
    attachment_median_bytes: int  # log-normal sizes, like scanned or signed PDFs
    attachment_sigma: float
    attachment_max_bytes: int
    unmatched_share: float  # records of a split old unit in a quarter no rule names
    department_factor: float
    all_old_units: bool  # every old unit of production's old_units.csv, not only the lab's


SIZES = {
    "small": SeedSize("small", documents=24, dossiers=12, attachment_share=0.5, attachment_median_bytes=24_000,
                      attachment_sigma=0.8, attachment_max_bytes=400_000, unmatched_share=0.04,
                      department_factor=2.0, all_old_units=False),
    "full": SeedSize("full", documents=220, dossiers=110, attachment_share=0.45, attachment_median_bytes=64_000,
                     attachment_sigma=0.9, attachment_max_bytes=4_000_000, unmatched_share=0.02,
                     department_factor=4.0, all_old_units=True),
}


# --- layout --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabSite:
    """One site of the lab: its address and the files its services leave under its folder."""

    code: str
    address: str
    dir: Path

    @property
    def role(self) -> str:
        return "unified" if self.code == "unified" else "legacy"

    @property
    def postgres_data(self) -> Path:
        return self.dir / "postgres" / "data"

    @property
    def postgres_socket(self) -> Path:
        return self.dir / "postgres" / "socket"

    @property
    def attachment_store(self) -> Path:
        return self.dir / "files" / "docs" / "attachments"

    def pidfiles(self) -> dict[str, Path]:
        """Service -> pidfile, in the order `down` stops them (front door first)."""
        return {
            "nginx": self.dir / "nginx" / "nginx.pid",
            "app": self.dir / "app" / "run" / "backend.pid",
            "postgres": self.postgres_data / "postmaster.pid",
        }


# What a pid must be running for `down` to signal it (guards against a recycled pid).
PROCESS_NAMES = {"nginx": "nginx", "app": "cutover_backend", "postgres": "postgres"}
STOP_SIGNALS = {"nginx": signal.SIGQUIT, "app": signal.SIGTERM, "postgres": signal.SIGINT}


@dataclass
class Lab:
    """The lab of one project folder: `root/inventories/lab` built under `root/.cutover/lab`."""

    root: Path
    env: str = "lab"

    @property
    def env_dir(self) -> Path:
        return self.root / "inventories" / self.env

    @property
    def dir(self) -> Path:
        return self.root / ".cutover" / "lab"

    @property
    def runs_dir(self) -> Path:
        return self.dir / "runs"

    @property
    def secrets_dir(self) -> Path:
        return self.dir / "secrets"

    @property
    def seed_file(self) -> Path:
        return self.dir / "seed.json"

    def sites(self) -> dict[str, LabSite]:
        path = self.env_dir / "group_vars" / "all.yml"
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise InvalidInput([Problem(str(path), "", "file not found: the lab inventory's shared settings")]) from None
        addresses = raw.get("lab_site_addresses") or {}
        missing = [s for s in SITES if s not in addresses]
        if missing:
            raise InvalidInput([Problem(str(path), "lab_site_addresses", f"no address for site(s) {', '.join(missing)}")])
        return {s: LabSite(s, str(addresses[s]), self.dir / s) for s in SITES}

    def estate(self) -> Estate:
        return load_estate(self.env_dir)


# --- secrets -------------------------------------------------------------------------------


def ensure_secrets(lab: Lab) -> None:
    """The database passwords the lab's group_vars read: generated once, mode 0600."""
    lab.secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(lab.secrets_dir, 0o700)
    for name in SECRETS:
        path = lab.secrets_dir / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))


# --- applying the hosting playbook ---------------------------------------------------------


@dataclass
class HostingRun:
    """What one ansible-runner invocation of playbooks/hosting.yml did."""

    status: str
    rc: int
    changed: int
    ok: int
    failed: int
    unreachable: int
    per_host: dict[str, dict[str, int]]
    artifacts: Path
    seconds: float
    strategy: str
    failures: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["artifacts"] = str(self.artifacts)
        return d


def _runner_envvars(strategy: str) -> dict[str, str]:
    """The few variables the invocation needs; the rest of the process environment stays out."""
    venv_bin = str(Path(sys.executable).parent)
    extra: dict[str, str] = {}
    if strategy == "mitogen":
        plugins = mitogen_strategy_dir()
        if plugins is None:
            raise InvalidInput([Problem("--strategy", "", "mitogen is not installed (pip install mitogen), use --strategy linear")])
        extra = {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear"}
    return {**extra,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
    }


def _strip_environment(artifacts: Path) -> None:
    """ansible-runner writes the process environment into artifacts/<ident>/command: drop it."""
    command = artifacts / "command"
    if command.is_file():
        try:
            data = json.loads(command.read_text())
        except ValueError:
            data = {}
        data.pop("env", None)
        tmp = command.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, command)
    for leftover in ("env", "envvars"):
        path = artifacts.parent.parent / "env" / leftover
        if path.exists():
            path.unlink()


def default_strategy() -> str:
    return resolve_strategy(None)


def apply_hosting(lab: Lab, *, strategy: str | None = None, forks: int = 8,
                  on_event: Callable[[dict], None] | None = None) -> HostingRun:
    """Run playbooks/hosting.yml against the lab inventory in a fresh private data dir.

    Mitogen's strategy when installed (`strategy=None`), else Ansible's linear one.
    """
    strategy = strategy or default_strategy()
    import ansible_runner

    playbook = lab.root / "playbooks" / "hosting.yml"
    inventory = lab.env_dir / "inventory.py"
    for path in (playbook, inventory):
        if not path.is_file():
            raise InvalidInput([Problem(str(path), "", "file not found")])
    lab.runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    private = lab.runs_dir / f"hosting-{stamp}-{uuid.uuid4().hex[:6]}"
    private.mkdir()
    failures: list[dict[str, str]] = []
    stats: dict[str, dict[str, int]] = {}

    def handler(event: dict) -> bool:
        data = event.get("event_data") or {}
        if event.get("event") == "playbook_on_stats":
            stats.update({k: dict(data.get(k) or {}) for k in ("ok", "changed", "failures", "dark", "skipped")})
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            res = data.get("res") or {}
            failures.append({"host": data.get("host", ""), "task": data.get("task", ""),
                             "message": str(res.get("msg") or res.get("stderr") or res.get("reason") or "")[:2000]})
        if on_event:
            on_event(event)
        return True  # keep the job events in the run's artifacts

    started = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=str(private),
        playbook=str(playbook),
        inventory=str(inventory),
        envvars=_runner_envvars(strategy),
        # No fork per task here (unlike the engine's segments): a forked Mitogen child hung for good
        # in the app role's /healthz wait (a lock inherited across fork); the sites then build
        # one after the other, which is slower but has never hung.
        forks=forks,
        quiet=True,
        suppress_env_files=True,
        event_handler=handler,
        ident="hosting",
    )
    seconds = time.monotonic() - started
    artifacts = private / "artifacts" / "hosting"
    _strip_environment(artifacts)
    per_host: dict[str, dict[str, int]] = {}
    for key, label in (("ok", "ok"), ("changed", "changed"), ("failures", "failed"), ("dark", "unreachable"), ("skipped", "skipped")):
        for host, n in (stats.get(key) or {}).items():
            per_host.setdefault(host, {"ok": 0, "changed": 0, "failed": 0, "unreachable": 0, "skipped": 0})[label] = n
    total = {k: sum(h[k] for h in per_host.values()) for k in ("ok", "changed", "failed", "unreachable")}
    run = HostingRun(status=runner.status, rc=runner.rc, per_host=per_host, artifacts=artifacts, seconds=round(seconds, 2),
                     strategy=strategy, failures=failures, **total)
    if runner.status != "successful" or run.failed or run.unreachable:
        lines = [f"{f['host']}: {f['task']}: {f['message']}" for f in failures[:5]] or [f"ansible-runner status {runner.status}, rc {runner.rc}"]
        raise RunFailed("the hosting playbook failed in the lab (artifacts: " + str(artifacts) + "):\n  " + "\n  ".join(lines))
    return run


# --- the synthetic records -----------------------------------------------------------------


@dataclass(frozen=True)
class SeedUnit:
    """A legacy data owner: an old unit (its key) or a department (its unit code)."""

    key: str
    name: str
    site: str
    split: bool
    quarters: tuple[str, ...]  # residential quarters its records are spread over
    department: bool = False


def legacy_unit_key(old: OldUnit) -> str:
    """An old unit's key in the legacy systems: `phuong-da-kao--quan-1` (see postgres_server)."""
    return f"{ascii_slug(old.name)}--{ascii_slug(old.district)}"


def seed_units(lab_estate: Estate, size: SeedSize, production: Estate | None = None) -> list[SeedUnit]:
    """The old units (and departments) whose records the legacy sites hold, in a stable order."""
    source = production if (size.all_old_units and production is not None) else lab_estate
    units: list[SeedUnit] = []
    for old in sorted(source.old_units.values(), key=lambda o: (o.province, o.district, o.name)):
        rule = lab_estate.rules.get(old.key)
        if rule is not None:
            quarters = tuple(q for values in rule.successors.values() for q in values)
        else:
            count = 3 + int(hashlib.sha256(old.name.encode()).hexdigest(), 16) % 6
            quarters = tuple(f"Khu phố {i}" for i in range(1, count + 1))
        units.append(SeedUnit(legacy_unit_key(old), old.name, SITE_OF_PROVINCE[old.province], old.split, quarters))
    for unit in sorted((u for u in source.units.values() if not u.is_commune_level), key=lambda u: u.code):
        units.append(SeedUnit(unit.code, unit.name, unit.site, False, (), department=True))
    return units


FAMILY = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý")
MIDDLE = ("Văn", "Thị", "Hữu", "Minh", "Ngọc", "Thanh", "Đức", "Thu", "Quốc", "Kim")
GIVEN = ("An", "Bình", "Châu", "Dũng", "Giang", "Hà", "Hải", "Hạnh", "Hùng", "Khánh", "Lan", "Linh", "Long", "Mai",
         "Nam", "Nga", "Phúc", "Quân", "Sơn", "Tâm", "Thảo", "Trang", "Tuấn", "Vy", "Yến")
SUBJECTS = ("Về việc triển khai kế hoạch chuyển đổi số", "Về việc báo cáo tình hình kinh tế - xã hội tháng",
            "Về việc tổ chức tiếp công dân định kỳ", "Về việc rà soát hộ nghèo, hộ cận nghèo",
            "Về việc phòng, chống thiên tai và tìm kiếm cứu nạn", "Về việc cấp giấy chứng nhận quyền sử dụng đất",
            "Về việc thực hiện chính sách bảo hiểm xã hội", "Về việc chỉnh trang đô thị và trật tự lòng đường, vỉa hè",
            "Về việc tổng kết công tác cải cách hành chính", "Về việc tuyển chọn nghĩa vụ quân sự",
            "Về việc quản lý trật tự xây dựng", "Về việc kiện toàn tổ dân phố")
RECIPIENTS = ("Văn phòng UBND", "Phòng Kinh tế", "Phòng Văn hóa - Xã hội", "Công an", "Ban Chỉ huy Quân sự",
              "Mặt trận Tổ quốc", "Trạm Y tế", "Trường Tiểu học", "Ban điều hành khu phố", "Sở Nội vụ")
PROCEDURES = (("1.001612", "Chứng thực bản sao từ bản chính"), ("1.004227", "Đăng ký khai sinh"),
              ("1.001193", "Đăng ký kết hôn"), ("1.003583", "Xác nhận tình trạng hôn nhân"),
              ("2.000908", "Cấp giấy phép xây dựng nhà ở riêng lẻ"), ("1.005461", "Đăng ký thường trú"))
ACTIONS = ("received", "assigned", "reviewed", "approved", "forwarded", "archived")
EVENTS = ("received", "verified", "processing", "supplement_requested", "approved", "returned")


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FAMILY)} {rng.choice(MIDDLE)} {rng.choice(GIVEN)}"


def _at(rng: random.Random, after: datetime | None = None) -> datetime:
    if after is not None:
        return after + timedelta(minutes=rng.randint(10, 60 * 24 * 5))
    return WINDOW_START + timedelta(days=rng.randrange(WINDOW_DAYS), minutes=rng.randrange(9 * 60))


def _content(rng: random.Random, size: int, header: str) -> bytes:
    """A PDF-shaped file of exactly `size` bytes, deterministic from `rng`."""
    head = f"%PDF-1.4\n% {header}\n".encode()
    body = rng.randbytes(max(0, size - len(head) - 6))
    return (head + body + b"\n%%EOF")[:size] if size >= len(head) + 6 else head[:size]


@dataclass
class UnitRecords:
    """The rows of one legacy data owner, table by table, and its attachment files."""

    rows: dict[str, list[tuple]]
    files: list[tuple[str, bytes]]  # (store_path relative to the attachment store, content)


def records_for(unit: SeedUnit, size: SeedSize) -> UnitRecords:
    """Every record of one old unit or department: a pure function of its key and the size."""
    rng = random.Random(f"{SEED}:{size.name}:{unit.site}:{unit.key}")
    factor = size.department_factor if unit.department else 1.0
    n_docs = max(1, round(size.documents * factor * rng.uniform(0.7, 1.3)))
    n_dossiers = max(1, round(size.dossiers * factor * rng.uniform(0.7, 1.3)))
    rows: dict[str, list[tuple]] = {t: [] for ts in UNIT_TABLES.values() for t in ts}
    files: list[tuple[str, bytes]] = []
    n_unmatched = 0

    def quarter() -> str | None:
        nonlocal n_unmatched
        if not unit.quarters:
            return None
        # A split old unit always gets some records no rule matches (at least one): quarantine.
        if unit.split and (n_unmatched == 0 or rng.random() < size.unmatched_share):
            n_unmatched += 1
            return UNMATCHED_QUARTER
        return rng.choice(unit.quarters)

    for i in range(n_docs):
        doc_id, q, created = _uuid(rng), quarter(), _at(rng)
        direction = rng.choice(("incoming", "incoming", "outgoing", "internal"))
        number = f"{i + 1}/{'UBND' if not unit.department else 'SO'}-{rng.choice(('VP', 'KT', 'VHXH'))}"
        title = f"{rng.choice(SUBJECTS)} ({unit.name})"
        body = " ".join(rng.choice(SUBJECTS) for _ in range(rng.randint(2, 8)))
        sender = f"000.{rng.randint(0, 99):02d}.{rng.randint(0, 99):02d}.H29"
        status = rng.choice(("received", "processing", "done", "done"))
        rows["documents"].append((doc_id, unit.key, q, number, title, direction, sender, created.date(), body, status, created, created))
        for _ in range(rng.randint(1, 4)):
            sent = _at(rng, created)
            rows["recipients"].append((_uuid(rng), unit.key, q, doc_id, f"{rng.randint(0, 999):03d}.00.00.H29",
                                       rng.choice(RECIPIENTS), sent, rng.choice(("sent", "read", "pending")), sent, sent))
        at = created
        for step in range(rng.randint(2, 5)):
            at = _at(rng, at)
            rows["processing_history"].append((_uuid(rng), unit.key, q, doc_id, at, _person(rng), ACTIONS[step], None, at, at))
        if rng.random() < size.attachment_share:
            att_id = _uuid(rng)
            n_bytes = int(min(size.attachment_max_bytes, max(2_000, rng.lognormvariate(math.log(size.attachment_median_bytes), size.attachment_sigma))))
            name = f"van-ban-{i + 1}.pdf"
            content = _content(rng, n_bytes, f"{unit.key} {doc_id}")
            store_path = f"{unit.key}/{att_id}-{name}"
            files.append((store_path, content))
            rows["attachments"].append((att_id, unit.key, q, doc_id, name, store_path, len(content),
                                        hashlib.sha256(content).hexdigest(), "application/pdf", created, created))
    for i in range(n_dossiers):
        dossier_id, q, received = _uuid(rng), quarter(), _at(rng)
        code, _title = rng.choice(PROCEDURES)
        rows["dossiers"].append((dossier_id, unit.key, q, f"H29.{unit.key[:12].upper()}-{received:%y%m%d}-{i + 1:04d}", code,
                                 _person(rng), received, received + timedelta(days=rng.choice((3, 5, 7, 15))),
                                 rng.choice(("received", "processing", "done", "returned")), received, received))
        at = received
        for step in range(rng.randint(2, 6)):
            at = _at(rng, at)
            rows["dossier_events"].append((_uuid(rng), unit.key, q, dossier_id, at, _person(rng), EVENTS[step], None, at, at))
    return UnitRecords(rows, files)


COLUMNS = {
    "documents": ("id", "unit", "residential_quarter", "number", "title", "direction", "sender_code", "issued_on", "body", "status", "created_at", "updated_at"),
    "recipients": ("id", "unit", "residential_quarter", "document_id", "recipient_code", "recipient_name", "sent_at", "status", "created_at", "updated_at"),
    "attachments": ("id", "unit", "residential_quarter", "document_id", "file_name", "store_path", "size_bytes", "sha256", "content_type", "created_at", "updated_at"),
    "processing_history": ("id", "unit", "residential_quarter", "document_id", "at", "actor", "action", "note", "created_at", "updated_at"),
    "dossiers": ("id", "unit", "residential_quarter", "code", "procedure_code", "applicant_name", "received_at", "due_at", "status", "created_at", "updated_at"),
    "dossier_events": ("id", "unit", "residential_quarter", "dossier_id", "at", "actor", "event", "note", "created_at", "updated_at"),
}


# --- talking to a site ---------------------------------------------------------------------


def connect(site: LabSite, **kwargs: Any):
    """The site's database as its superuser, over its own unix socket (root is mapped to postgres)."""
    import psycopg

    return psycopg.connect(host=str(site.postgres_socket), port=POSTGRES_PORT, user=SUPERUSER, dbname=DATABASE,
                           connect_timeout=5, **kwargs)


def _store_owner(site: LabSite) -> tuple[int, int]:
    st = site.attachment_store.stat()
    return st.st_uid, st.st_gid


def _write_file(path: Path, content: bytes, owner: tuple[int, int]) -> int:
    """Write a seeded file unless it is already there with that content's size; bytes written."""
    try:
        if path.stat().st_size == len(content):
            return 0
    except FileNotFoundError:
        pass
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True)
        os.chown(path.parent, *owner)
        os.chmod(path.parent, 0o2770)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(content)
    os.chown(tmp, *owner)
    os.chmod(tmp, 0o660)
    os.replace(tmp, path)
    return len(content)


@dataclass
class SiteSeed:
    site: str
    units: int
    rows: dict[str, int]
    files: int
    file_bytes: int
    quarantine_candidates: int  # records of split old units in a quarter no rule names

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_site(site: LabSite, units: list[SeedUnit], size: SeedSize) -> SiteSeed:
    """Replace the site's unit tables with the seeded records and write the attachment files.

    Runs as the superuser with triggers off (`session_replication_role = replica`): the seed is
    the baseline, so it leaves no change-log entries, and any freeze is lifted.
    """
    owner = _store_owner(site)
    counts = {t: 0 for t in COLUMNS}
    files = file_bytes = unmatched = 0
    wanted_files: set[str] = set()
    with connect(site) as conn:
        with conn.cursor() as cur:
            cur.execute("SET session_replication_role = replica")
            tables = ", ".join(f"{s}.{t}" for s, ts in UNIT_TABLES.items() for t in ts)
            logs = ", ".join(f"{s}.change_log, {s}.frozen_units" for s in UNIT_TABLES)
            cur.execute(f"TRUNCATE {tables}, {logs} RESTART IDENTITY")
            for unit in units:
                recs = records_for(unit, size)
                for schema, tables_ in UNIT_TABLES.items():
                    for table in tables_:
                        rows = recs.rows[table]
                        if not rows:
                            continue
                        with cur.copy(f"COPY {schema}.{table} ({', '.join(COLUMNS[table])}) FROM STDIN") as copy:
                            for row in rows:
                                copy.write_row(row)
                        counts[table] += len(rows)
                unmatched += sum(1 for t in ("documents", "dossiers") for r in recs.rows[t] if r[2] == UNMATCHED_QUARTER)
                for store_path, content in recs.files:
                    wanted_files.add(store_path)
                    file_bytes += len(content)
                    files += 1
                    _write_file(site.attachment_store / store_path, content, owner)
        conn.commit()
    _remove_unseeded_files(site.attachment_store, wanted_files)
    return SiteSeed(site.code, len(units), counts, files, file_bytes, unmatched)


def _remove_unseeded_files(store: Path, wanted: set[str]) -> None:
    for path in store.rglob("*"):
        if path.is_file() and str(path.relative_to(store)) not in wanted:
            path.unlink()


def clear_unified(site: LabSite) -> None:
    """The unified platform's seeded state: no unit rows, no quarantine, no files."""
    with connect(site) as conn:
        with conn.cursor() as cur:
            cur.execute("SET session_replication_role = replica")
            cur.execute("SELECT to_regclass('docs.quarantine') IS NOT NULL")
            extra = [f"{s}.quarantine" for s in UNIT_TABLES] if cur.fetchone()[0] else []
            tables = [f"{s}.{t}" for s, ts in UNIT_TABLES.items() for t in ts]
            tables += [f"{s}.{x}" for s in UNIT_TABLES for x in ("change_log", "frozen_units")] + extra
            cur.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
        conn.commit()
    if site.attachment_store.is_dir():
        _remove_unseeded_files(site.attachment_store, set())


@dataclass
class SeedReport:
    size: str
    seconds: float
    sites: list[SiteSeed]

    @property
    def old_units(self) -> int:
        return sum(s.units for s in self.sites)

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "seconds": self.seconds, "units": self.old_units,
                "rows": sum(sum(s.rows.values()) for s in self.sites),
                "files": sum(s.files for s in self.sites), "file_bytes": sum(s.file_bytes for s in self.sites),
                "sites": [s.as_dict() for s in self.sites]}


def seed(lab: Lab, size_name: str) -> SeedReport:
    """Seed every legacy site (one process each: generating the records is CPU-bound) and
    empty the unified one."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = SIZES[size_name]
    estate = lab.estate()
    production = load_estate(lab.root / "inventories" / "production") if size.all_old_units else None
    units = seed_units(estate, size, production)
    sites = lab.sites()
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=len(LEGACY_SITES), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(seed_site, sites[s], [u for u in units if u.site == s], size) for s in LEGACY_SITES]
        clear_unified(sites["unified"])
        results = [f.result() for f in futures]
    report = SeedReport(size_name, round(time.monotonic() - started, 2), results)
    _atomic_write(lab.seed_file, json.dumps({"size": size_name, "seed": SEED, **report.as_dict()}, ensure_ascii=False, indent=2))
    return report


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def seeded_size(lab: Lab) -> str | None:
    try:
        return json.loads(lab.seed_file.read_text())["size"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


# --- up, status, down, reset ---------------------------------------------------------------


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise InvalidInput([Problem("--size", "", f"unknown size {size!r} (expected {' or '.join(SIZES)})")])


def up(lab: Lab, size: str = "small", *, strategy: str | None = None, seed_data: bool = True) -> dict[str, Any]:
    """Build the lab with the hosting playbook, then seed it (unless it already holds that seed)."""
    _check_size(size)
    lab.estate()  # validate the declarations before touching anything
    ensure_secrets(lab)
    run = apply_hosting(lab, strategy=strategy)
    report = None
    if seed_data and (seeded_size(lab) != size or not _legacy_sites_hold_records(lab)):
        report = seed(lab, size)
    return {"hosting": run.as_dict(), "seed": report.as_dict() if report else None, "seeded_size": seeded_size(lab)}


def _legacy_sites_hold_records(lab: Lab) -> bool:
    sites = lab.sites()
    for code in LEGACY_SITES:
        with connect(sites[code]) as conn:
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM docs.documents)").fetchone()[0]:
                return False
    return True


def reset(lab: Lab, size: str | None = None, *, strategy: str | None = None) -> dict[str, Any]:
    """Back to the seeded state: routes to legacy, no freeze, the seeded records and files only;
    no migration work files (`migrations/`) and no injected faults (`faults.yml`) left."""
    size = size or seeded_size(lab) or "small"
    _check_size(size)
    sites = lab.sites()
    shutil.rmtree(lab.dir / "migrations", ignore_errors=True)
    (lab.dir / "faults.yml").unlink(missing_ok=True)
    for code in LEGACY_SITES:
        (sites[code].dir / "nginx" / "routes.map").unlink(missing_ok=True)
    with connect(sites["unified"]) as conn:
        conn.execute("SELECT 1")
        if conn.execute("SELECT to_regclass('exchange.routes') IS NOT NULL").fetchone()[0]:
            conn.execute("TRUNCATE exchange.routes, exchange.route_changes RESTART IDENTITY")
    run = apply_hosting(lab, strategy=strategy)  # rewrites the routing map and table (every unit to legacy), reloads nginx
    report = seed(lab, size)
    return {"hosting": run.as_dict(), "seed": report.as_dict()}


def read_pid(pidfile: Path) -> int | None:
    try:
        first = pidfile.read_text().split("\n", 1)[0].strip()
        return int(first) if first else None
    except (FileNotFoundError, ValueError, PermissionError):
        return None


def pid_alive(pid: int | None, name: str) -> bool:
    """Is `pid` a live (not zombie) process whose command line mentions `name`?"""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and name in cmdline


def service_states(site: LabSite) -> dict[str, dict[str, Any]]:
    out = {}
    for service, pidfile in site.pidfiles().items():
        pid = read_pid(pidfile)
        alive = pid_alive(pid, PROCESS_NAMES[service])
        out[service] = {"up": alive, "pid": pid if alive else None, "pidfile": str(pidfile)}
    return out


def site_holdings(site: LabSite) -> dict[str, Any]:
    """Row counts per table (and frozen units, change-log entries) of a running site."""
    held: dict[str, Any] = {}
    try:
        with connect(site) as conn:
            for schema, tables in UNIT_TABLES.items():
                for table in tables:
                    held[f"{schema}.{table}"] = conn.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()[0]
                held[f"{schema}.change_log"] = conn.execute(f"SELECT count(*) FROM {schema}.change_log").fetchone()[0]
                held[f"{schema}.frozen_units"] = conn.execute(f"SELECT count(*) FROM {schema}.frozen_units").fetchone()[0]
            held["units"] = conn.execute("SELECT count(DISTINCT unit) FROM docs.documents").fetchone()[0]
            if site.role == "unified" and conn.execute("SELECT to_regclass('exchange.routes') IS NOT NULL").fetchone()[0]:
                held["exchange.routes"] = dict(conn.execute("SELECT site, count(*) FROM exchange.routes GROUP BY site ORDER BY site").fetchall())
    except Exception as exc:  # a stopped site answers nothing: report it, do not fail status
        held["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return held


def status(lab: Lab) -> dict[str, Any]:
    sites = []
    for site in lab.sites().values():
        services = service_states(site)
        entry = {"site": site.code, "role": site.role, "address": site.address, "services": services}
        entry["holds"] = site_holdings(site) if services["postgres"]["up"] else {}
        sites.append(entry)
    return {"lab_dir": str(lab.dir), "seeded_size": seeded_size(lab), "sites": sites}


def down(lab: Lab, only_site: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Stop the lab's processes by the pids in their pidfiles: front door, back end, database."""
    sites = lab.sites()
    if only_site is not None and only_site not in sites:
        raise InvalidInput([Problem("--site", "", f"unknown site {only_site!r} (expected one of {', '.join(sites)})")])
    stopped: list[dict[str, Any]] = []
    problems: list[str] = []
    chosen = [sites[only_site]] if only_site else list(sites.values())
    for service in ("nginx", "app", "postgres"):
        waiting: list[tuple[LabSite, int]] = []
        for site in chosen:
            pidfile = site.pidfiles()[service]
            pid = read_pid(pidfile)
            if not pid_alive(pid, PROCESS_NAMES[service]):
                continue
            os.kill(pid, STOP_SIGNALS[service])
            waiting.append((site, pid))
        deadline = time.monotonic() + timeout
        for site, pid in waiting:
            while pid_alive(pid, PROCESS_NAMES[service]) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid, PROCESS_NAMES[service]):
                problems.append(f"{site.code} {service} (pid {pid}) did not stop within {timeout:.0f} s")
            else:
                stopped.append({"site": site.code, "service": service, "pid": pid})
    if problems:
        raise LabError("; ".join(problems))
    return {"stopped": stopped}
