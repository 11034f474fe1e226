#!/usr/bin/env bash
# Purpose: the main job. Sets up the machine, validates both inventories and shows what the
# cutover will move (the production estate's figures). The full staged rehearsal on the
# local lab replaces this once the lab and the migration playbooks exist.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/cutover --env lab inventory validate
.venv/bin/cutover --env production inventory validate
.venv/bin/cutover --env production inventory stats
