"""`cutover stack preview` through the real Pulumi engine against a real cluster.

Runs only where a `pulumi` binary and a Kubernetes context exist; skipped with that reason
elsewhere (our build machines have neither: there `tests/unit/test_stacks.py` covers the
program under Pulumi's mocks and the no-engine exit code). The preview runs on a copy of the
project with a throwaway file backend and passphrase, so the committed stack files and
.cutover/ stay untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def pulumi_binary() -> str | None:
    found = shutil.which("pulumi")
    home = Path.home() / ".pulumi" / "bin" / "pulumi"
    return found or (str(home) if home.exists() else None)


def kubernetes_context() -> str | None:
    """The current context of the kubeconfig (KUBECONFIG's first file, else ~/.kube/config)."""
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p] or [str(Path.home() / ".kube" / "config")]
    for path in paths:
        try:
            config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if config.get("current-context"):
            return str(config["current-context"])
    return None


def _skip_reason() -> str | None:
    if pulumi_binary() is None:
        return "no `pulumi` binary on PATH or in ~/.pulumi/bin: the Pulumi engine cannot be installed on this machine"
    if kubernetes_context() is None:
        return "no Kubernetes context (no current-context in KUBECONFIG or ~/.kube/config): no cluster to preview against"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
@pytest.mark.parametrize("env", ["lab"])
def test_stack_preview_against_the_cluster(env, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "stacks", project / "stacks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "inventories", project / "inventories")
    backend = tmp_path / "backend"
    backend.mkdir()
    child_env = {
        **os.environ,
        "PULUMI_BACKEND_URL": backend.as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": "integration-test-only",
        "CUTOVER_DATABASE_PASSWORD": "integration-test-only",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    context = kubernetes_context()
    result = subprocess.run(
        [sys.executable, "-m", "cutover", "--root", str(project), "--env", env, "--output", "json", "stack", "preview", "--config", f"kubernetes:context={context}"],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["operation"] == "preview" and summary["env"] == env
    # a fresh stack: everything the mocks render is to be created
    assert summary["changes"].get("create", 0) >= 150, summary
    assert "integration-test-only" not in result.stdout
