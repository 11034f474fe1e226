"""The `cutover` command line: global options, the shared context, error rendering.

Command groups live one per module beside this file and are registered in `COMMANDS`.
Only this package prints, prompts or exits.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import traceback

import click

from cutover.cli.context import Session, resolve_actor
from cutover.errors import CutoverError, InvalidInput

# module name -> command name(s) it defines; imported lazily so `--help` stays fast.
COMMANDS: dict[str, tuple[str, ...]] = {
    "inventory": ("inventory",),
    "plan": ("plan",),
    "run": ("run", "status", "resume", "rollback", "abort", "approve", "unlock"),
    "lab": ("lab",),
    "stack": ("stack",),
    "audit": ("audit", "history", "report"),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(f"cutover.cli.{module}") is not None


class CutoverGroup(click.Group):
    """A group that loads command modules lazily and turns CutoverErrors into exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = [n for module, names in COMMANDS.items() if _available(module) for n in names]
        return sorted(set(names) | set(super().list_commands(ctx)))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        for module, names in COMMANDS.items():
            if name in names and _available(module):
                mod = importlib.import_module(f"cutover.cli.{module}")
                return getattr(mod, name.replace("-", "_"))
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except CutoverError as exc:
            session = ctx.obj if isinstance(ctx.obj, Session) else None
            render_error(exc, session)
            ctx.exit(exc.exit_code)


def render_error(exc: CutoverError, session: Session | None) -> None:
    debug = session.debug if session else False
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    problems = getattr(exc, "problems", None)
    if session and session.output == "json":
        payload = {"error": {"status": exc.status, "exit_code": exc.exit_code, "message": str(exc)}}
        if problems:
            payload["error"]["problems"] = [p.as_dict() for p in problems]
        if getattr(exc, "detail", None):
            payload["error"]["detail"] = exc.detail
        click.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    if isinstance(exc, InvalidInput) and len(exc.problems) > 1:
        click.echo(f"error: {len(exc.problems)} problems:", err=True)
        for p in exc.problems:
            click.echo(f"  {p}", err=True)
    else:
        click.echo(f"error: {exc}", err=True)


@click.group(cls=CutoverGroup, context_settings={"auto_envvar_prefix": "CUTOVER", "help_option_names": ["-h", "--help"]})
@click.option("--env", "env", default="lab", show_default=True, help="Inventory folder under inventories/ (lab, production, ...).")
@click.option("--state", default=None, help="Journal URL: sqlite:///path or postgresql://...  [default: sqlite under .cutover/]")
@click.option("--actor", default=None, help="Who is acting (recorded in the journal and audit). Else CUTOVER_ACTOR, the CI's user, the OS user.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Text for people, JSON for machines.")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Project folder holding inventories/, runbooks/, playbooks/.  [default: the current folder if it has inventories/, else the source checkout]")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="cutover")
@click.pass_context
def main(ctx: click.Context, env: str, state: str | None, actor: str | None, output: str, root: str | None, debug: bool) -> None:
    """Move a merged city's shared government systems onto one platform, unit by unit.

    Exit codes: 0 done; 1 failed (the batch's changes were rolled back); 2 invalid input or
    usage; 3 lock held by another run; 4 waiting (approval or window) without a terminal;
    5 rollback failed, a person must act; 6 audit verification failed.
    """
    ctx.obj = Session.create(env=env, state=state, actor=resolve_actor(actor), output=output, root=root, debug=debug)
    if ctx.invoked_subcommand and not ctx.resilient_parsing:
        ctx.obj.start_audit(["cutover", *sys.argv[1:]])
