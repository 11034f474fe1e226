#!/usr/bin/env bash
# Purpose: the test command. Installs what the tests need (scripts/setup.sh), starts Docker
# for molecule, runs the unit and integration tests, and stops what it started.
# Extra arguments go to pytest (e.g. scripts/test.sh -k estate).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
started_docker=0
if ! docker info >/dev/null 2>&1; then
  bash scripts/services.sh start && started_docker=1
fi
cleanup() { if ((started_docker)); then bash scripts/services.sh stop; fi; }
trap cleanup EXIT
if [[ -x scripts/build-molecule-image.sh ]]; then bash scripts/build-molecule-image.sh; fi
if (($#)); then
  .venv/bin/python -m pytest -p no:cacheprovider -q -ra "$@"
  exit 0
fi
# Everything, the crash torture included (20 SIGKILLs of the lab rehearsal, resumed each time).
.venv/bin/python -m pytest -p no:cacheprovider -q -ra
