"""Fixtures shared by every test: the source project, a writable copy of it, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The checkout itself (read-only use)."""
    return PROJECT


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A writable copy of the declarations (inventories/, runbooks/, playbooks/, stacks/)."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("inventories", "runbooks", "playbooks", "stacks"):
        src = PROJECT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", ".cutover"))
    return root


def run_cli(*args: str, root: Path | None = None, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """Invoke `cutover` in-process; exceptions other than SystemExit propagate to the test."""
    from cutover.cli import main

    argv = (["--root", str(root)] if root else []) + list(args)
    return CliRunner().invoke(main, argv, env=env, input=input, catch_exceptions=False)


@pytest.fixture
def cli():
    return run_cli
