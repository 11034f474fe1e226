"""The Ansible action: one ansible-runner invocation per batch and segment.

A *segment* is the run of consecutive steps up to the next approval. For one batch it becomes
one generated playbook with, per step, a marker play (`cutover do <step>`) followed by the
step's own playbook (`import_playbook` with the step's vars) and then, per check gate, a marker
play (`cutover gate <step> <gate>`) and the gate's playbook or `uri` tasks. Every imported play
carries `when: inventory_hostname in cutover_units`, so one invocation can run different steps
for different units (a resumed batch, units undone alone) while `--limit` holds the batch.
Units are inventory hosts: a unit that fails a task drops out of the later plays (Ansible's own
semantics) while the others go on.

The event handler reads the job events as they stream and reports one `Outcome` per unit and
step (or gate) at once: a failure when the task fails, success when the next marker play starts
(plays are barriers, so every unit has then finished the previous one).

Hygiene: a fresh private_data_dir per invocation; the child process gets a minimal environment
(never the caller's secrets), no env files, and the `command` artifact is rewritten without any
environment after the run; `ansible-playbook` is the one next to the running interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cutover.actions.http import HttpCheck, uri_tasks
from cutover.errors import InvalidInput, Problem

DO = "do"
UNDO = "undo"
GATE = "gate"
STRATEGIES = ("mitogen", "linear")

# Non-secret variables of the caller's environment the child may see (nothing else is passed).
PASSTHROUGH = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "SSH_AUTH_SOCK", "ANSIBLE_CONFIG", "ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_COLLECTIONS_PATHS")
# Every process of an invocation carries INVOCATION_MARK=<private_data_dir>/:<session id> in its
# environment; `reap_invocations` kills those left over by a conductor that died (see
# `leftover_processes` for which).
INVOCATION_MARK = "CUTOVER_INVOCATION"
# Runs ansible-playbook with PR_SET_PDEATHSIG=SIGKILL (if the conductor dies, even by SIGKILL, the
# playbook process dies with it) and adds its session id (pexpect made it a session leader) to the
# mark. PDEATHSIG does not reach the playbook's own forks (workers, Mitogen contexts, modules):
# those are what the mark is for.
DIE_WITH_PARENT = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); os.getppid() == 1 and sys.exit(137); "
                   f"os.environ['{INVOCATION_MARK}'] += ':%d' % os.getsid(0); os.execvp(sys.argv[1], sys.argv[1:])")
_MARKER = re.compile(r"^cutover (?P<phase>do|undo|gate) (?P<step>\S+)(?: (?P<gate>\S+))?$")
_EVIDENCE_LIMIT = 2000


# --- what to run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckGate:
    """A gate checked on each unit right after its step: a playbook, or an HTTP check."""

    name: str
    playbook: Path | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    http: HttpCheck | None = None


@dataclass(frozen=True)
class PlayStep:
    """One step (or one step's undo) for some of the invocation's units."""

    step: str
    units: tuple[str, ...]
    playbook: Path | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    http: HttpCheck | None = None
    phase: str = DO
    timeout: float | None = None
    gates: tuple[CheckGate, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What one unit did in one step (gate None) or one gate (gate = its name)."""

    unit: str
    step: str
    phase: str
    ok: bool
    gate: str | None = None
    changed: bool = False
    message: str = ""
    task: str | None = None
    started: float | None = None
    finished: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class InvocationResult:
    status: str  # ansible-runner's words: successful, failed, timeout, canceled
    rc: int | None
    finished: bool  # the playbook reached its end (stats event); False: it stopped short
    outcomes: list[Outcome]
    artifact_dir: Path
    elapsed: float
    error: str = ""
    stopped: bool = False  # ended early on purpose: more units failed than the failure budget

    def failed_units(self) -> set[str]:
        return {o.unit for o in self.outcomes if not o.ok}


# --- environment ----------------------------------------------------------------------------


def ansible_bin_dir() -> Path:
    """The folder of the running interpreter, where the venv's `ansible-playbook` lives."""
    folder = Path(sys.executable).parent
    if not (folder / "ansible-playbook").exists():
        raise InvalidInput([Problem(str(folder), "", "ansible-playbook not found next to the running Python; install ansible-core into this environment")])
    return folder


def mitogen_strategy_dir() -> Path | None:
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "plugins" / "strategy"
    return folder if folder.is_dir() else None


def resolve_strategy(requested: str | None) -> str:
    """`mitogen` by default when installed, else `linear`; asking for an absent Mitogen is an error."""
    if requested not in (None, *STRATEGIES):
        raise InvalidInput([Problem("--strategy", "", f"unknown strategy {requested!r} (known: {', '.join(STRATEGIES)})")])
    available = mitogen_strategy_dir() is not None
    if requested == "mitogen" and not available:
        raise InvalidInput([Problem("--strategy", "", "mitogen is not installed (pip install mitogen), use --strategy linear")])
    return requested or ("mitogen" if available else "linear")


def child_environment(runner_env: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """What the child may see: a few harmless variables, what ansible-runner itself set, `extra`."""
    env = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
    for key, value in runner_env.items():
        if key.startswith(("ANSIBLE_", "AWX_")) and os.environ.get(key) != value:
            env[key] = value
    env.update(extra)
    env["PATH"] = os.pathsep.join([str(ansible_bin_dir()), os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    return env


# --- inventory ------------------------------------------------------------------------------


def inventory_document(dynamic: Mapping[str, Any]) -> dict[str, Any]:
    """Dynamic-inventory JSON (groups + `_meta.hostvars`) as a YAML-plugin inventory document."""
    hostvars = dynamic.get("_meta", {}).get("hostvars", {})
    children: dict[str, Any] = {}
    for name, group in dynamic.items():
        if name in ("_meta", "all"):
            continue
        children[name] = {
            "hosts": {h: None for h in group.get("hosts", [])},
            "children": {c: None for c in group.get("children", [])},
            "vars": dict(group.get("vars", {})),
        }
    return {"all": {"hosts": {h: dict(v) for h, v in hostvars.items()}, "vars": dict(dynamic.get("all", {}).get("vars", {})), "children": children}}


def write_inventory(dynamic: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(inventory_document(dynamic), ensure_ascii=False), encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.rename(path)
    return path


# --- the generated playbook -----------------------------------------------------------------


STOP_TASK = "cutover stop: past the batch's failure threshold"


def _marker(name: str, failure_budget: int | None = None) -> dict[str, Any]:
    """A play that announces the next part; with a budget it first stops the whole invocation
    (every host fails, Ansible ends the playbook) once more units failed than the budget."""
    tasks: list[dict[str, Any]] = []
    if failure_budget is not None:
        tasks.append({
            "name": STOP_TASK,
            "ansible.builtin.fail": {"msg": f"more than {failure_budget} unit(s) failed in this invocation"},
            "when": f"(ansible_play_hosts_all | difference(ansible_play_hosts) | length) > {int(failure_budget)}",
            "run_once": True,
            "any_errors_fatal": True,
        })
    return {"name": name, "hosts": "all", "gather_facts": False, "tasks": tasks}


def _step_plays(body_vars: Mapping[str, Any], units: Sequence[str], playbook: Path | None, http: HttpCheck | None, label: str) -> list[dict[str, Any]]:
    variables = {**body_vars, "cutover_units": list(units)}
    if playbook is not None:
        return [{"ansible.builtin.import_playbook": str(playbook), "vars": variables, "when": "inventory_hostname in cutover_units"}]
    assert http is not None
    return [{
        "name": f"{label} http",
        "hosts": "all",
        "gather_facts": False,
        "vars": variables,
        "tasks": [{"block": uri_tasks(http, name=f"http {http.url}"), "when": "inventory_hostname in cutover_units"}],
    }]


def compose_playbook(steps: Sequence[PlayStep], failure_budget: int | None = None) -> list[dict[str, Any]]:
    """One play per step (after its marker play), its check gates as following plays on the
    same hosts; with `failure_budget`, every step after the first starts by stopping the
    invocation if more units than that failed so far."""
    plays: list[dict[str, Any]] = []
    for n, step in enumerate(steps):
        base = {**step.vars, "cutover_step": step.step, "cutover_phase": step.phase}
        label = f"cutover {step.phase} {step.step}"
        plays.append(_marker(label, failure_budget if n else None))
        plays += _step_plays(base, step.units, step.playbook, step.http, label)
        for gate in step.gates:
            gate_label = f"cutover gate {step.step} {gate.name}"
            plays.append(_marker(gate_label))
            plays += _step_plays({**base, **gate.vars, "cutover_gate": gate.name}, step.units, gate.playbook, gate.http, gate_label)
    plays.append(_marker("cutover end"))
    return plays


# --- reading the events ---------------------------------------------------------------------


class _EventReader:
    """Turns the job events of one invocation into per-unit-step outcomes, as they arrive."""

    def __init__(self, steps: Sequence[PlayStep], on_outcome: Callable[[Outcome], None],
                 on_outcomes: Callable[[list[Outcome]], None] | None = None):
        self._steps = {(s.phase, s.step): s for s in steps}
        self._on_outcome = on_outcome
        self._on_outcomes = on_outcomes
        self.alive: set[str] = {u for s in steps for u in s.units}
        self.outcomes: list[Outcome] = []
        self.finished = False
        self.stopped = False
        self._current: tuple[str, str, str | None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._started: dict[str, float] = {}
        self._changed: set[str] = set()
        self._evidence: dict[str, dict[str, Any]] = {}
        self._reported: set[str] = set()

    def _units(self) -> tuple[str, ...]:
        if self._current is None:
            return ()
        step = self._steps.get(self._current[:2])
        return step.units if step else ()

    def _gate_phase(self, step: str) -> str:
        return DO if (DO, step) in self._steps else UNDO

    def _emit(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self._on_outcome(outcome)

    def _close(self) -> None:
        """Every unit of the current part still alive and not reported has passed it."""
        if self._current is None:
            return
        phase, step, gate = self._current
        now = time.time()
        passed = [Outcome(unit, step, phase, True, gate=gate, changed=unit in self._changed, started=self._started.get(unit), finished=now,
                          evidence=self._evidence.get(unit, {}))
                  for unit in self._units() if unit in self.alive and unit not in self._reported]
        if self._on_outcomes is not None and passed:
            self.outcomes += passed
            self._on_outcomes(passed)  # all known at the same instant: one delivery (one journal transaction)
        else:
            for outcome in passed:
                self._emit(outcome)
        self._current = None
        self._reset()

    def __call__(self, event: Mapping[str, Any]) -> bool:
        """Read one event; True to keep its job_events file (plays, failures, gates, stats), False
        for the routine per-host start/ok/skipped events of steps (their outcome is journaled)."""
        self._read(event)
        kind = event.get("event")
        if kind == "runner_on_start":
            return False
        if kind in ("runner_on_ok", "runner_on_skipped"):
            return self._current is not None and self._current[2] is not None
        return True

    def _read(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            match = _MARKER.match(str(data.get("play") or data.get("name") or ""))
            if (match or data.get("play") == "cutover end") and not self.stopped:
                self._close()
            if match:
                gate = match["gate"] if match["phase"] == GATE else None
                phase = self._gate_phase(match["step"]) if gate else match["phase"]
                self._current = (phase, match["step"], gate)
        elif kind == "playbook_on_stats":
            if not self.stopped:
                self._close()
            self.finished = True
        elif kind == "runner_on_failed" and data.get("task") == STOP_TASK:
            self.stopped = True
        elif self.stopped:
            return
        elif self._current is not None and kind in ("runner_on_start", "runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped"):
            unit = data.get("host")
            if unit not in self.alive or unit not in self._units():
                return
            self._started.setdefault(unit, time.time())
            res = data.get("res") or {}
            if kind == "runner_on_ok":
                if res.get("changed"):
                    self._changed.add(unit)
                if self._current[2] is not None:
                    self._collect_evidence(unit, data.get("task"), res)
            elif kind == "runner_on_unreachable" or (kind == "runner_on_failed" and not data.get("ignore_errors")):
                self.alive.discard(unit)
                self._reported.add(unit)
                phase, step, gate = self._current
                parts = [str(res[k]).strip() for k in ("msg", "reason", "stderr") if res.get(k)]
                message = ": ".join(parts or [kind])[:_EVIDENCE_LIMIT]
                if kind == "runner_on_unreachable":
                    message = f"unreachable: {message}"
                self._emit(Outcome(unit, step, phase, False, gate=gate, changed=unit in self._changed,
                                   message=message, task=data.get("task"), started=self._started.get(unit), finished=time.time(),
                                   evidence={"task": data.get("task"), "action": data.get("task_action"), "rc": res.get("rc")}))
        return

    def _collect_evidence(self, unit: str, task: str | None, res: Mapping[str, Any]) -> None:
        facts = res.get("ansible_facts") or {}
        item = facts.get("cutover_evidence") if isinstance(facts, Mapping) else None
        if item is None:
            item = {k: res[k] for k in ("msg", "status", "rc") if k in res}
        if item:
            text = json.dumps(item, default=str)[:_EVIDENCE_LIMIT]
            self._evidence.setdefault(unit, {})[task or "task"] = json.loads(text) if len(text) < _EVIDENCE_LIMIT else text


# --- running --------------------------------------------------------------------------------


@dataclass
class AnsibleAction:
    """How to run invocations for one estate: its inventory document, strategy and options."""

    inventory: Path
    strategy: str = "linear"
    check_mode: bool = False
    forks: int = 50
    startup_margin: float = 120.0

    def run(self, steps: Sequence[PlayStep], *, private_data_dir: Path, limit: Sequence[str], on_outcome: Callable[[Outcome], None] = lambda o: None,
            on_outcomes: Callable[[list[Outcome]], None] | None = None,
            cancel: Callable[[], bool] | None = None, timeout: float | None = None, failure_budget: int | None = None) -> InvocationResult:
        from ansible_runner.config.runner import RunnerConfig
        from ansible_runner.runner import Runner

        private_data_dir = Path(private_data_dir)
        if private_data_dir.exists():
            shutil.rmtree(private_data_dir)  # fresh, always (a re-run after a crash starts clean)
        private_data_dir.mkdir(parents=True, mode=0o700)
        playbook = private_data_dir / "segment.yml"
        plays = compose_playbook(steps, failure_budget)
        if self.strategy == "mitogen":
            # Units are hosts reached through one local connection, hence one Mitogen context that
            # runs their tasks one after the other; a fork per task runs them side by side again.
            plays = [{**p, "vars": {**p.get("vars", {}), "mitogen_task_isolation": "fork"}} for p in plays]
        playbook.write_text("# Purpose: one batch's segment, generated by cutover\n" + yaml.safe_dump(plays, sort_keys=False, allow_unicode=True), encoding="utf-8")

        step_timeouts = [s.timeout for s in steps if s.timeout]
        envvars = {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_DEPRECATION_WARNINGS": "False", "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_PYTHON_INTERPRETER": "auto_silent"}
        if step_timeouts:
            envvars["ANSIBLE_TASK_TIMEOUT"] = str(int(max(step_timeouts)))
        if self.strategy == "mitogen":
            folder = mitogen_strategy_dir()
            if folder is None:
                raise InvalidInput([Problem("--strategy", "", "mitogen is not installed")])
            envvars.update(ANSIBLE_STRATEGY_PLUGINS=str(folder), ANSIBLE_STRATEGY="mitogen_linear")
        else:
            envvars["ANSIBLE_STRATEGY"] = "linear"
        if timeout is None and step_timeouts and len(step_timeouts) == len(steps):
            timeout = sum(step_timeouts) + self.startup_margin
        cmdline = "--check" if self.check_mode else None
        config = RunnerConfig(
            private_data_dir=str(private_data_dir), project_dir=str(private_data_dir), playbook=str(playbook), inventory=str(self.inventory),
            limit=",".join(limit), forks=max(1, min(self.forks, len(limit))), ident="invocation", quiet=True, suppress_env_files=True,
            envvars=envvars, cmdline=cmdline, timeout=int(timeout) if timeout else None,
            settings={"pexpect_timeout": 0.5, "suppress_ansible_output": True},
        )
        config.prepare()
        # SSH masters of this invocation only (Ansible's default ~/.ansible/cp is shared by every
        # run of the user: the reaping below must never reach another run's connections).
        ssh_dir = tempfile.mkdtemp(prefix="cutover-ssh-")  # short: a socket path holds 107 bytes
        config.env = child_environment(config.env, {**envvars, "ANSIBLE_SSH_CONTROL_PATH_DIR": ssh_dir, INVOCATION_MARK: str(private_data_dir) + os.sep})
        config.command = [sys.executable, "-c", DIE_WITH_PARENT, *config.command]
        reader = _EventReader(steps, on_outcome, on_outcomes)
        started = time.monotonic()
        try:
            runner = Runner(config, event_handler=reader, cancel_callback=cancel or (lambda: False))
            runner.run()
        finally:
            reap_invocations(str(private_data_dir) + os.sep)  # forks that outlived their playbook (none, normally)
            shutil.rmtree(ssh_dir, ignore_errors=True)
            scrub_artifacts(Path(config.artifact_dir), config.command, config.cwd)
        error = ""
        if not reader.finished and not reader.stopped:
            error = _stdout_tail(Path(config.artifact_dir)) or f"ansible-runner {runner.status}"
        return InvocationResult(runner.status, runner.rc, reader.finished, reader.outcomes, Path(config.artifact_dir), time.monotonic() - started, error, reader.stopped)


def _mark_of(pid: str, prefix: bytes) -> tuple[int, int, bool] | None:
    """(session of the mark, session of the process, is an ansible process) for a live process
    that carries an invocation mark under `prefix`; None for any other."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        if prefix not in environ:
            return None
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:  # gone, or not ours to read
        return None
    if fields[0] == b"Z":
        return None
    key = INVOCATION_MARK.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(key + prefix):
            session = item.rpartition(b":")[2]
            return (int(session) if session.isdigit() else -1), int(fields[3]), b"ansible" in cmdline
    return None


def leftover_processes(prefix: str) -> list[int]:
    """This machine's processes of invocations whose private_data_dir starts with `prefix`: those
    carrying the mark in the invocation's session, or in the session of one of its Ansible
    processes (Ansible's workers start sessions of their own). A daemon that a task started (it
    left for a session of its own) and the daemon's children are spared."""
    mark = os.fsencode(prefix)
    me = str(os.getpid())
    marked = {int(e.name): m for e in os.scandir("/proc") if e.name.isdigit() and e.name != me and (m := _mark_of(e.name, mark))}
    sessions = {m[0] for m in marked.values()} | {m[1] for m in marked.values() if m[2]}
    return sorted(pid for pid, m in marked.items() if m[1] in sessions)


def reap_invocations(prefix: str, *, wait: float = 10.0) -> list[int]:
    """Kill (SIGKILL) what is left of invocations under `prefix`, e.g. the playbook forks of a
    conductor killed mid-segment, before its run goes on; wait until they are gone. Returns their pids."""
    victims = leftover_processes(prefix)
    for pid in victims:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    mark = os.fsencode(prefix)
    while victims and time.monotonic() < deadline and any(_mark_of(str(pid), mark) for pid in victims):
        time.sleep(0.05)
    return victims


def scrub_artifacts(artifact_dir: Path, command: Sequence[str], cwd: str) -> None:
    """Leave no environment on disk: rewrite `command` without it, drop env files."""
    command_file = artifact_dir / "command"
    if command_file.exists() or artifact_dir.is_dir():
        tmp = artifact_dir / "command.tmp"
        tmp.write_text(json.dumps({"command": list(command), "cwd": cwd}), encoding="utf-8")
        os.chmod(tmp, 0o600)
        tmp.rename(command_file)
    for leftover in ("env.list",):
        (artifact_dir / leftover).unlink(missing_ok=True)
    env_dir = artifact_dir.parent.parent / "env"
    if env_dir.is_dir():
        for name in ("envvars", "settings", "cmdline", "passwords", "ssh_key"):
            (env_dir / name).unlink(missing_ok=True)


def _stdout_tail(artifact_dir: Path, lines: int = 15) -> str:
    path = artifact_dir / "stdout"
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])
