#!/usr/bin/env bash
# Purpose: run every benchmark under tests/benchmarks/ and print their figures as one table
# (tests/benchmarks/run_all.py; --quick for the smallest settings, --only NAME ... for some).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
exec .venv/bin/python tests/benchmarks/run_all.py "$@"
