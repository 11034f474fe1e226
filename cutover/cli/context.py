"""The one context object every command receives in `ctx.obj`, and output helpers."""

from __future__ import annotations

import getpass
import json
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cutover.errors import InvalidInput, Problem

# CI systems' own user variables, in the order they are tried.
CI_USER_VARIABLES = ("GITLAB_USER_LOGIN", "GITHUB_ACTOR", "BUILD_REQUESTEDFOR", "CI_USER")


def resolve_actor(given: str | None) -> str:
    """--actor, else CUTOVER_ACTOR (click fills it through auto_envvar_prefix), else CI's user, else the OS user."""
    if given:
        return given
    for var in ("CUTOVER_ACTOR", *CI_USER_VARIABLES):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def find_root(given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    cwd = Path.cwd()
    if (cwd / "inventories").is_dir():
        return cwd
    return Path(__file__).resolve().parents[2]


@dataclass
class Session:
    env: str
    state: str
    actor: str
    output: str
    root: Path
    debug: bool = False
    console: Console = field(default_factory=lambda: Console(width=None if sys.stdout.isatty() else 200))

    @classmethod
    def create(cls, *, env: str, state: str | None, actor: str, output: str, root: str | None, debug: bool) -> "Session":
        base = find_root(root)
        return cls(env=env, state=state or f"sqlite:///{base / '.cutover' / 'state.db'}", actor=actor, output=output, root=base, debug=debug)

    @property
    def env_dir(self) -> Path:
        path = self.root / "inventories" / self.env
        if not path.is_dir():
            known = sorted(p.name for p in (self.root / "inventories").glob("*") if p.is_dir())
            raise InvalidInput([Problem("--env", "", f"no inventory {self.env!r} under {self.root / 'inventories'} (known: {', '.join(known) or 'none'})")])
        return path

    @property
    def work_dir(self) -> Path:
        """`.cutover/` under the project: the default journal, runs' artifacts, the lab."""
        return self.root / ".cutover"

    def checkpoint_paths(self) -> list[Path]:
        """Where the audit chain's head is kept outside the journal: one file per journal,
        and one in each run's artifacts folder."""
        import hashlib

        from cutover.journal.store import redact_url

        journal_id = hashlib.sha256(redact_url(self.state).encode()).hexdigest()[:12]
        main = self.work_dir / "audit" / f"{journal_id}.checkpoint.json"
        return [main, *sorted((self.work_dir / "runs").glob("*/audit-checkpoint.json"))]

    def start_audit(self, argv: list[str]) -> None:
        """Tell the journal who this process is, for every audit record it appends."""
        from cutover.audit import Signer
        from cutover.journal.chain import set_audit_context

        set_audit_context(command=argv, actor=self.actor, signer=Signer.from_environment(), checkpoint_paths=self.checkpoint_paths()[:1], runs_dir=self.work_dir / "runs")

    @cached_property
    def estate(self):  # noqa: ANN201 - avoids importing pydantic for --help
        from cutover.estate import load_estate

        return load_estate(self.env_dir)

    @property
    def interactive(self) -> bool:
        return sys.stdin.isatty() and sys.stdout.isatty()

    # -- rendering ---------------------------------------------------------------------

    def emit_json(self, payload: Any) -> None:
        click.echo(json.dumps(payload, ensure_ascii=False, indent=2, default=str))

    def table(self, title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
        table = Table(title=title, show_lines=False, header_style="bold")
        for c in columns:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*["" if v is None else str(v) for v in r])
        self.console.print(table)

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)


pass_session = click.make_pass_decorator(Session)
