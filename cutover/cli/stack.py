"""`cutover stack ...`: the unified platform's Pulumi stack of one environment (`--env`).

`render` and `check` run the program under Pulumi's mocks: no engine, no cluster.
`preview`, `up`, `refresh`, `destroy` and `outputs` go through the Automation API and need
the `pulumi` binary (exit 2 with an install hint without it) and PULUMI_CONFIG_PASSPHRASE.
"""

from __future__ import annotations

from pathlib import Path

import click

from cutover.cli.context import Session, pass_session
from cutover.errors import InvalidInput, RunFailed

config_option = click.option(
    "--config",
    "config",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key for this run only (VALUE is YAML/JSON), e.g. units='{docs: [phuong-sai-gon]}'. Repeatable; wins over Pulumi.<env>.yaml.",
)


@click.group()
def stack() -> None:
    """The unified platform's Pulumi stack (stacks/, one stack per --env)."""


def _render(session: Session, config: tuple[str, ...]):  # noqa: ANN202
    from cutover.stacks import parse_overrides, render

    session.env_dir  # noqa: B018 - the environment must exist (exit 2 otherwise)
    return render(session.root, session.env, parse_overrides(config))


@stack.command("render")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the manifests (replaced if it holds a previous render).")
@config_option
@pass_session
def render_(session: Session, out: Path, config: tuple[str, ...]) -> None:
    """Run the program under Pulumi's mocks; write one manifest per resource and kustomization.yaml."""
    from cutover.stacks import write_manifests

    rendering = _render(session, config)
    files = write_manifests(rendering, out)
    counts = {k: len(v) for k, v in sorted(rendering.by_kind().items())}
    if session.output == "json":
        session.emit_json({"env": session.env, "out": str(out), "manifests": len(rendering.manifests), "by_kind": counts, "seconds": round(rendering.seconds, 3)})
        return
    session.say(f"{len(rendering.manifests)} manifests for stack {session.env} in {out} ({len(files)} files with kustomization.yaml, {rendering.seconds:.2f} s)")
    session.table(None, ["kind", "count"], [[k, v] for k, v in counts.items()])


@stack.command("check")
@click.option("--k8s-version", default=None, help="Kubernetes version whose OpenAPI schema the manifests must pass (strict).  [default: 1.33]")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False, path_type=Path), help="Also write the rendered manifests here.")
@config_option
@pass_session
def check_(session: Session, k8s_version: str | None, out: Path | None, config: tuple[str, ...]) -> None:
    """Render, validate every manifest strictly, apply the policies; exit 1 listing each violation.

    Policies: limits (requests and limits), probes (liveness and readiness), non-root
    (runAsNonRoot, read-only root, no privilege escalation), pinned-image (no `latest`, no
    untagged image), secret-in-env (no literal secret in env), default-deny (a default-deny
    NetworkPolicy in every namespace); and schema (kubernetes-validate, strict).
    """
    from cutover.stacks import DEFAULT_K8S_VERSION, check, write_manifests

    rendering = _render(session, config)
    if out:
        write_manifests(rendering, out)
    report = check(rendering, k8s_version or DEFAULT_K8S_VERSION)
    if session.output == "json":
        session.emit_json(report.as_dict())
        if not report.passed:
            click.get_current_context().exit(RunFailed.exit_code)
        return
    if report.passed:
        session.say(f"stack {session.env}: {report.manifests} manifests pass strict schema validation (Kubernetes {report.k8s_version}) and every policy")
        return
    session.table(f"{len(report.violations)} violations", ["rule", "resource", "field", "problem"], [[v.rule, v.resource, v.field, v.message] for v in report.violations])
    raise RunFailed(f"stack {session.env}: {len(report.violations)} violations in {report.manifests} manifests")


def _engine(session: Session, operation: str, config: tuple[str, ...]) -> None:
    from cutover.stacks import Engine, parse_overrides

    session.env_dir  # noqa: B018
    engine = Engine(root=session.root, env=session.env, work_dir=session.work_dir, overrides=parse_overrides(config))
    summary = engine.run(operation, on_output=lambda line: click.echo(line.rstrip("\n"), err=True))
    if operation in ("up", "destroy", "refresh"):
        # A change to the platform itself: into the audit chain, with the overrides' digest.
        from cutover.audit import digest_json
        from cutover.journal import open_journal

        with open_journal(session.state) as journal:
            journal.append_event(f"stack.{operation}", actor=session.actor, data={
                "env": session.env, "result": summary.get("result", ""), "changes": summary.get("changes") or {},
                "config_digest": digest_json(sorted(config))})
    if session.output == "json":
        session.emit_json(summary)
        return
    changes = summary.get("changes") or {}
    if changes:
        session.table(f"{operation} {session.env}", ["change", "resources"], [[k, v] for k, v in sorted(changes.items())])
    for key, value in (summary.get("outputs") or {}).items():
        session.say(f"{key}: {value}")
    if "result" in summary:
        session.say(f"{operation} {session.env}: {summary['result']}")


@stack.command()
@config_option
@pass_session
def preview(session: Session, config: tuple[str, ...]) -> None:
    """Check under mocks, then show what `up` would change (Automation API)."""
    _engine(session, "preview", config)


@stack.command()
@config_option
@pass_session
def up(session: Session, config: tuple[str, ...]) -> None:
    """Check under mocks, then create or update the stack's resources (Automation API)."""
    _engine(session, "up", config)


@stack.command()
@config_option
@pass_session
def refresh(session: Session, config: tuple[str, ...]) -> None:
    """Bring the stack's state in line with the cluster (Automation API)."""
    _engine(session, "refresh", config)


@stack.command()
@click.option("--yes", is_flag=True, help="Really delete every resource of the stack.")
@config_option
@pass_session
def destroy(session: Session, yes: bool, config: tuple[str, ...]) -> None:
    """Delete every resource of the stack (Automation API); needs --yes."""
    if not yes:
        raise InvalidInput(f"destroy deletes every resource of stack {session.env}: add --yes")
    _engine(session, "destroy", config)


@stack.command()
@pass_session
def outputs(session: Session) -> None:
    """The stack's outputs (secrets shown as [secret])."""
    _engine(session, "outputs", ())
