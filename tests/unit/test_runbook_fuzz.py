"""Property: a damaged runbook is refused whole — exit 2, one line per problem naming the
runbook file and a key path, no traceback — and `cutover run` on it leaves the journal empty.
Examples: CUTOVER_FUZZ_EXAMPLES (default 25)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cutover.journal import open_journal
from tests.conftest import PROJECT, run_cli

RUNBOOKS = ["document-management.yml", "administrative-procedures.yml"]
KEYS = ["batch", "max_failed", "undo", "do", "select", "window", "deadline", "not_before", "hours", "kinds", "pilot", "gates",
        "id", "steps", "waves", "on_failure", "timeout", "retries", "exclude", "playbook", "max_parallel_per_site"]
VALUES = st.one_of(st.sampled_from(["0", "-3", "150%", "abc", "[]", "{}", "null", "2025-13-45", "25:00-26:00", "nope.yml", "phuong-atlantis",
                                    "x" * 40, "''", "[a, b", "{a: 1"]), st.text(alphabet="abc%:-{}[]0123456789 ", max_size=8))
mutation = st.tuples(st.sampled_from(["value", "key", "drop", "dup", "indent"]), st.integers(0, 10_000), VALUES, st.sampled_from(KEYS))


def _mutate(text: str, op: str, n: int, value: str, key: str) -> str:
    lines = text.splitlines(keepends=True)
    body = [i for i, l in enumerate(lines) if l.strip() and not l.lstrip().startswith("#")]
    i = body[n % len(body)]
    line = lines[i]
    if op == "value" and ":" in line:
        head = line.split(":", 1)[0]
        lines[i] = f"{head}: {value}\n"
    elif op == "key" and ":" in line:
        indent = line[: len(line) - len(line.lstrip(" -"))]
        lines[i] = f"{indent}{key}x: {line.split(':', 1)[1].strip() or value}\n"
    elif op == "drop":
        del lines[i]
    elif op == "dup":
        lines.insert(i, line)
    elif op == "indent":
        lines[i] = "   " + line
    return "".join(lines)


@settings(max_examples=int(os.environ.get("CUTOVER_FUZZ_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(runbook=st.sampled_from(RUNBOOKS), mutations=st.lists(mutation, min_size=1, max_size=3))
def test_damaged_runbook_is_refused_and_nothing_runs(tmp_path_factory, runbook, mutations) -> None:  # noqa: ANN001
    root = tmp_path_factory.mktemp("rbfuzz")
    for name in ("inventories", "runbooks", "playbooks"):
        shutil.copytree(PROJECT / name, root / name, ignore=shutil.ignore_patterns("molecule", "__pycache__"))
    path = root / "runbooks" / runbook
    text = path.read_text(encoding="utf-8")
    for op, n, value, key in mutations:
        text = _mutate(text, op, n, value, key)
    path.write_text(text, encoding="utf-8")
    plan = run_cli("--env", "lab", "plan", str(path), root=root)
    assert plan.exit_code in (0, 2), plan.output
    assert "Traceback" not in plan.stderr + plan.stdout
    if plan.exit_code == 0:
        return  # the damage happened to leave a valid runbook (a renamed description, say)
    lines = [l for l in plan.stderr.splitlines() if l.strip()]
    problems = lines[1:] if lines[0].endswith("problems:") else lines
    for line in problems:
        assert runbook in line or "inventories" in line, line
    state = f"sqlite:///{root / 'state.db'}"
    run = run_cli("--env", "lab", "--state", state, "run", str(path), "--non-interactive", root=root)
    assert run.exit_code == 2, run.output
    assert "Traceback" not in run.stderr + run.stdout
    if (root / "state.db").exists():
        with open_journal(state) as journal:
            assert journal.runs() == [] and journal.audit_records() == []
