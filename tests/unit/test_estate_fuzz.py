"""Property: any damage to an inventory ends in a clean load or InvalidInput naming a file
and a field — never another exception. Examples: CUTOVER_FUZZ_EXAMPLES (default 60)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cutover.errors import InvalidInput
from cutover.estate import load_estate

SOURCE = Path(__file__).resolve().parents[2] / "inventories"
FILES = ["units.csv", "old_units.csv", "departments.csv", "identifier_codes.csv", "partition_rules.yml", "estate.yml"]
JUNK = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)

mutation = st.tuples(
    st.sampled_from(FILES),
    st.sampled_from(["cell", "drop_line", "dup_line", "truncate", "junk_line", "bytes", "header"]),
    st.integers(min_value=0, max_value=10_000),
    JUNK,
)


def _apply(path: Path, op: str, n: int, junk: str) -> None:
    data = path.read_bytes()
    if op == "bytes":
        pos = n % (len(data) + 1)
        path.write_bytes(data[:pos] + bytes([n % 256]) + data[pos:])
        return
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    if not lines:
        return
    i = n % len(lines)
    if op == "cell":
        sep = "," if path.suffix == ".csv" else ":"
        parts = lines[i].split(sep)
        parts[n % len(parts)] = junk
        lines[i] = sep.join(parts)
    elif op == "drop_line":
        del lines[i]
    elif op == "dup_line":
        lines.insert(i, lines[i])
    elif op == "truncate":
        lines = lines[: i + 1]
        lines[-1] = lines[-1][: n % (len(lines[-1]) + 1)]
    elif op == "junk_line":
        lines.insert(i, junk + "\n")
    elif op == "header":
        lines[0] = lines[0].replace(lines[0].split(",")[0] if "," in lines[0] else lines[0][:3], junk, 1)
    path.write_text("".join(lines), encoding="utf-8")


@settings(max_examples=int(os.environ.get("CUTOVER_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutations=st.lists(mutation, min_size=1, max_size=3), env=st.sampled_from(["lab", "production"]))
def test_damaged_inventory_fails_cleanly(tmp_path_factory, mutations, env) -> None:  # noqa: ANN001
    root = tmp_path_factory.mktemp("fuzz") / "inventories"
    shutil.copytree(SOURCE, root)
    target = root / env
    for file, op, n, junk in mutations:
        path = target / file
        if path.exists():
            _apply(path, op, n, junk)
    try:
        load_estate(target)
    except InvalidInput as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.file and Path(p.file).name in FILES + ["estate.yml"], p
            assert p.message
            # A field is named: a row/column, a key path, the header, or a YAML line.
            assert p.where or "not UTF-8" in p.message or "file not found" in p.message, p
