#!/usr/bin/env bash
# Purpose: install everything cutover and its tests need on a fresh Debian 12 machine (as root):
# Debian packages (PostgreSQL 15, nginx, Docker, debootstrap, Chromium), then the project's
# virtual environment (.venv) with the package and its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(postgresql-15 nginx docker.io debootstrap chromium python3-venv python3-psycopg2 rsync ca-certificates)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages (${missing[*]}); run as root to install them" >&2
    exit 2
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's policy-rc.d keeps packages from starting their services; cutover starts its own.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The distribution's nginx and PostgreSQL services are not used: the lab runs its own.

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cutover-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,speed,molecule]' 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import cutover, ansible_runner, pulumi, kubernetes_validate, psycopg' 
  touch "$stamp"
fi
echo "setup: ready (.venv)"
