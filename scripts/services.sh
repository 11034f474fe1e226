#!/usr/bin/env bash
# Purpose: start or stop the services the tests need that are not started per test: the
# Docker daemon (for molecule). Only a daemon this script started is stopped, by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cutover/services
pidfile=.cutover/services/dockerd.pid
case "${1:-}" in
  start)
    if docker info >/dev/null 2>&1; then echo "services: docker already answering"; exit 0; fi
    command -v dockerd >/dev/null || { echo "services: dockerd not installed (run scripts/setup.sh)" >&2; exit 2; }
    dockerd --data-root "${CUTOVER_DOCKER_ROOT:-/var/lib/docker}" >.cutover/services/dockerd.log 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && { echo "services: dockerd started (pid $(cat "$pidfile"))"; exit 0; }; sleep 0.5; done
    echo "services: dockerd did not answer; see .cutover/services/dockerd.log" >&2; exit 1 ;;
  stop)
    if [[ -f $pidfile ]]; then
      pid=$(cat "$pidfile")
      if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done; fi
      rm -f "$pidfile"; echo "services: dockerd stopped"
    fi ;;
  *) echo "usage: scripts/services.sh start|stop" >&2; exit 2 ;;
esac
