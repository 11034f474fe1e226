"""The run lock: one active run per (runbook, env), a lease kept alive by a heartbeat thread.

`Journal.lock(runbook, env, actor=...)` returns a `RunLock`; entering it (or `.acquire()`)
takes the lock or raises `cutover.errors.LockHeld` naming the holder (actor, host, pid,
since). While held, a daemon thread renews the lease every `heartbeat` seconds (default a
third of the lease). If the lease is lost (broken by `cutover unlock --force`, or the
database unreachable for longer than the lease) `lock.lost` is set and `lock.ensure_held()`
raises `LockHeld`; the engine should call it between segments.

How each backend decides who holds the lock:
- SQLite: a row in `locks`, taken in a `BEGIN IMMEDIATE` transaction. An existing row is
  stale (and taken over, recorded as a `lock.taken_over` event) when its holder runs on this
  host and its pid is dead (or reused: the process start time is compared), or when it runs on
  another host and its heartbeat is older than its lease.
- PostgreSQL: `pg_try_advisory_lock` on a dedicated connection (key derived from runbook+env);
  the server frees it when the holder's connection dies. The same `locks` row is kept for
  display and for `LockHeld`'s message.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from cutover.errors import LockHeld
from cutover.journal.records import LockHolder, utcnow

if TYPE_CHECKING:
    from cutover.journal.store import Journal

DEFAULT_LEASE = 30.0


def this_host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    # after the command name: state is field 3 (index 0 here), starttime is field 22 (index 19)
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether `pid` runs on this host (a zombie counts as dead; a different start time too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().decode("ascii", "replace").rsplit(")", 1)[-1].split()
    except OSError:
        return True  # no /proc: os.kill said it exists
    if fields and fields[0] in ("Z", "X"):
        return False
    if start is not None and len(fields) > 19 and fields[19] != start:
        return False
    return True


def holder_is_stale(holder: LockHolder, lease: float, now: datetime | None = None) -> bool:
    """The SQLite rule: dead pid on this host; heartbeat older than the lease on another host."""
    if holder.host == this_host():
        return not process_alive(holder.pid, holder.pid_start)
    return ((now or utcnow()) - holder.heartbeat_at) > timedelta(seconds=lease)


def advisory_key(runbook: str, env: str) -> int:
    """A signed 64-bit key for pg advisory locks, stable for (runbook, env)."""
    digest = hashlib.sha256(f"cutover-run-lock\0{runbook}\0{env}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_held_error(runbook: str, env: str, holder: LockHolder | None, extra: str = "") -> LockHeld:
    if holder is None:
        text = f"run lock for runbook {runbook!r} in env {env!r} is held by another session (holder unknown)"
    else:
        text = f"run lock for runbook {runbook!r} in env {env!r} is held by {holder.describe()}"
    err = LockHeld(text + (f"; {extra}" if extra else ""))
    err.holder = holder  # type: ignore[attr-defined]
    return err


class Lease(Protocol):
    """A backend's hold on the lock (see sqlite.py / postgres.py)."""

    holder: LockHolder

    def heartbeat(self) -> bool: ...  # False: the lease was lost

    def attach(self, run_id: str) -> None: ...

    def release(self) -> None: ...


@dataclass
class LockRequest:
    runbook: str
    env: str
    actor: str
    run_id: str | None
    lease: float

    def new_holder(self, token: str) -> LockHolder:
        now = utcnow()
        pid = os.getpid()
        return LockHolder(
            runbook=self.runbook, env=self.env, actor=self.actor, host=this_host(), pid=pid,
            since=now, heartbeat_at=now, run_id=self.run_id, token=token, pid_start=process_start(pid),
        )


class RunLock:
    """The lock on (runbook, env) for one process. Use as a context manager.

        with journal.lock("docs", "lab", actor="alice") as lock:
            run = journal.create_run(...)
            lock.attach(run.id)          # shows the run id to whoever finds the lock held
            ...
            lock.ensure_held()           # between segments: raises LockHeld if the lease was lost

    `acquire()` raises `LockHeld` (exit 3) naming the holder. `release()` is idempotent.
    """

    def __init__(self, journal: "Journal", runbook: str, env: str, *, actor: str, run_id: str | None = None,
                 lease: float = DEFAULT_LEASE, heartbeat: float | None = None):
        if not runbook or not env:
            raise ValueError("a run lock needs a runbook and an env")
        self.journal = journal
        self.request = LockRequest(runbook, env, actor, run_id, float(lease))
        self.heartbeat_interval = float(heartbeat) if heartbeat else max(0.05, lease / 3.0)
        self.lost = threading.Event()
        self._lease: Lease | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    runbook = property(lambda self: self.request.runbook)
    env = property(lambda self: self.request.env)

    @property
    def held(self) -> bool:
        return self._lease is not None and not self.lost.is_set()

    @property
    def holder(self) -> LockHolder | None:
        return self._lease.holder if self._lease else None

    def acquire(self) -> "RunLock":
        if self._lease is not None:
            return self
        self._lease = self.journal._acquire_lease(self.request)  # noqa: SLF001 - backend hook
        self.lost.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"run-lock-{self.runbook}-{self.env}", daemon=True)
        self._thread.start()
        return self

    def attach(self, run_id: str) -> None:
        """Record the run that holds the lock (after `create_run`, which comes after `acquire`)."""
        self.request.run_id = run_id
        if self._lease is not None:
            self._lease.attach(run_id)

    def ensure_held(self) -> None:
        if self._lease is None:
            raise lock_held_error(self.runbook, self.env, None, "this process does not hold the lock")
        if self.lost.is_set():
            current = self.journal.lock_holder(self.runbook, self.env)
            raise lock_held_error(self.runbook, self.env, current, "this process lost its lease (lock broken or database unreachable)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.heartbeat_interval * 2))
            self._thread = None
        if self._lease is not None:
            lease, self._lease = self._lease, None
            lease.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _beat(self) -> None:
        failing_since: datetime | None = None
        while not self._stop.wait(self.heartbeat_interval):
            lease = self._lease
            if lease is None:
                return
            try:
                ok = lease.heartbeat()
            except Exception:  # noqa: BLE001 - a flaky database must not kill the thread silently
                failing_since = failing_since or utcnow()
                if (utcnow() - failing_since).total_seconds() > self.request.lease:
                    self.lost.set()
                    return
                continue
            failing_since = None
            if not ok:
                self.lost.set()
                return
