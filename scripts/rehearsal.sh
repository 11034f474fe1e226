#!/usr/bin/env bash
# Purpose: the main job. Sets up the machine, brings the lab up (or back to its seeded state),
# runs runbooks/document-management.yml on it through every wave (pilot, rollout, special
# zone) while the load generator writes through the front doors, gives each approval as a
# second lab identity, and ends with the rehearsal's summary (cutover lab summary RUN).
#
#   bash scripts/rehearsal.sh [--size small|full] [--rate WRITES_PER_S] [--no-load] [--root DIR]
#
# Exit code: the run's (0 done; 1 a batch failed and was rolled back; 5 rollback failed ...).
# Evidence: .cutover/lab/rehearsals/<run>/ (summary.json, writes.jsonl), the run's journal
# (.cutover/state.db: `cutover status RUN`, `cutover history`), and per unit
# .cutover/lab/migrations/<unit>/ (manifest.json, reconcile.json, freeze.json, switch.json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

SIZE=small
RATE=${CUTOVER_LOAD_RATE:-4}
LOAD=1
ROOT=$PWD
while (($#)); do
  case $1 in
    --size) SIZE=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --no-load) LOAD=0; shift ;;
    --root) ROOT=$(cd "$2" && pwd); shift 2 ;;
    *) echo "rehearsal: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

RUNBOOK=runbooks/document-management.yml
REASON="lab rehearsal"
cutover() { "$PWD/.venv/bin/cutover" --root "$ROOT" --env lab "$@"; }
STARTER=(--actor lab-rehearsal)
APPROVER=(--actor lab-approver)
LAB_DIR=$ROOT/.cutover/lab
started=$(date +%s)

lab_running() {
  cutover --output json lab status | "$PWD/.venv/bin/python" -c '
import json, sys
sites = json.load(sys.stdin)["sites"]
sys.exit(0 if all(s["up"] for site in sites for s in site["services"].values()) else 1)'
}
# A lab a previous rehearsal cut over goes back to its seeded state (reset re-applies the
# hosting playbook too); otherwise `lab up` builds it, or brings it up to date, and seeds it.
if [[ -n $(ls -A "$LAB_DIR/migrations" 2>/dev/null) ]]; then
  lab_running || cutover lab up --size "$SIZE"
  echo "== lab reset ($SIZE): a previous rehearsal left its mark"
  cutover lab reset --size "$SIZE"
  rm -rf "$LAB_DIR/migrations"
else
  echo "== lab up ($SIZE)"
  cutover lab up --size "$SIZE"
fi
cutover lab status

OUT=$LAB_DIR/rehearsals/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
LOAD_PID=
if ((LOAD)); then
  UNITS=$("$PWD/.venv/bin/python" - "$ROOT" <<'PY'
import sys
from pathlib import Path
from cutover.estate import load_estate
estate = load_estate(Path(sys.argv[1]) / "inventories" / "lab")
print(",".join(sorted(estate.units)))
PY
)
  echo "== load generator: $RATE writes/s for $UNITS"
  # Started directly (not through the shell function), so that $! is the load generator itself
  # and stop_load's signal reaches it.
  "$PWD/.venv/bin/cutover" --root "$ROOT" --env lab lab load --units "$UNITS" --rate "$RATE" --out "$OUT/writes.jsonl" > "$OUT/loadgen.log" 2>&1 &
  LOAD_PID=$!
fi
stop_load() {
  if [[ -n $LOAD_PID ]] && kill -0 "$LOAD_PID" 2>/dev/null; then
    kill -TERM "$LOAD_PID"
    wait "$LOAD_PID" || true
  fi
  LOAD_PID=
}
trap stop_load EXIT

echo "== run $RUNBOOK (every wave)"
set +e
cutover "${STARTER[@]}" run "$RUNBOOK" --non-interactive --yes --ignore-window --reason "$REASON"
rc=$?
set -e
RUN=$(cutover --output json status --runbook document-management | "$PWD/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["run"]["id"])')
# Exit 4: the run waits for an approval. A second identity gives it, then the run resumes.
while ((rc == 4)); do
  GATE=$(cutover --output json status "$RUN" | "$PWD/.venv/bin/python" -c '
import json, sys
pending = [a["gate"] for a in json.load(sys.stdin).get("approvals", []) if a["status"] == "requested"]
print(pending[0] if pending else "")')
  if [[ -z $GATE ]]; then
    echo "rehearsal: run $RUN waits, but for no approval (a closed window?)" >&2
    break
  fi
  echo "== approval $GATE, given by lab-approver"
  cutover "${APPROVER[@]}" approve "$RUN" --gate "$GATE" --reason "$REASON: reviewed by a second lab identity"
  set +e
  cutover "${STARTER[@]}" resume "$RUN" --non-interactive
  rc=$?
  set -e
done
stop_load

echo "== summary of $RUN (rehearsal took $(( $(date +%s) - started )) s)"
LOADGEN_ARGS=()
((LOAD)) && LOADGEN_ARGS=(--loadgen "$OUT/writes.jsonl")
cutover --output json lab summary "$RUN" "${LOADGEN_ARGS[@]}" > "$OUT/summary.json"
cutover lab summary "$RUN" "${LOADGEN_ARGS[@]}"
echo "evidence: $OUT"
exit "$rc"
