#!/usr/bin/env bash
# Set up everything paracle-nb needs, then run one job:
#   scripts/dev.sh setup | demo | test [pytest args] | lab [--sandbox] [--incident NAME]
#   scripts/dev.sh bench [--only NAME] [--repeat N]   (results in artifacts/bench/)
# Debian packages are installed with apt when running as root; Python
# packages go into .venv. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${PARACLE_NB_VENV:-.venv}
PY="$VENV/bin/python"

say() { printf '==> %s\n' "$*" >&2; }

have() { command -v "$1" >/dev/null 2>&1; }

pg_bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install_debian_packages() {
  local wanted=()
  [ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/initdb" ] || wanted+=(postgresql-15 postgresql-contrib)
  have redis-server || wanted+=(redis-server)
  have prometheus || wanted+=(prometheus)
  [ -x /usr/sbin/pgbouncer ] || have pgbouncer || wanted+=(pgbouncer)
  have kubectl || wanted+=(kubernetes-client)
  have chromium || wanted+=(chromium)
  have python3 || wanted+=(python3)
  python3 -c 'import venv, ensurepip' 2>/dev/null || wanted+=(python3-venv)
  [ ${#wanted[@]} -eq 0 ] && return 0

  if [ "$(id -u)" != 0 ] || ! have apt-get; then
    say "missing: ${wanted[*]} (install them, e.g. with apt-get or from environment.yml)"
    return 0
  fi
  say "installing Debian packages: ${wanted[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
  # Debian starts packaged services on install where it can; the lab runs
  # its own servers on free ports, so these are not needed.
}

install_python_packages() {
  local stamp="$VENV/.paracle-nb-installed"
  if [ ! -x "$PY" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing Python packages into $VENV"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -e ".[test]"
    touch "$stamp"
  fi
}

setup() {
  install_debian_packages
  install_python_packages
}

job=${1:-setup}
shift || true
case "$job" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/paracle-nb" demo "$@" ;;
  test) setup; exec "$PY" -m pytest "$@" ;;
  bench) setup; exec "$PY" -m bench.run "$@" ;;
  # JupyterLab on 127.0.0.1 in notebooks/, until Ctrl-C; --sandbox starts
  # the incident lab first and points the runbooks at it.
  lab) setup; exec "$PY" -m paracle_nb.jupyter "$@" ;;
  *) echo "usage: scripts/dev.sh setup|demo|test|lab|bench" >&2; exit 2 ;;
esac
