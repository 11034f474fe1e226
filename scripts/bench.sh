#!/usr/bin/env bash
# Purpose: run every benchmark under tests/benchmarks/ and print their figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
status=0
for bench in tests/benchmarks/bench_*.py; do
  echo "== $(basename "$bench" .py)"
  .venv/bin/python "$bench" "$@" || { echo "   (failed: exit $?)"; status=1; }
done
exit $status
