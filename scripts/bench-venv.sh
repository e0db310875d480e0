#!/usr/bin/env bash
# Creates target/bench-venv with upstream Patroni 4.1 for bench/run.sh.
# Unlike scripts/upstream-venv.sh (used by tests that run patronictl as root) the daemons here
# run as the `postgres` user, so the venv is built on the system Python (/usr/bin/python3):
# an interpreter under /root (pyenv) is not reachable for that user.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/bench-venv
py=/usr/bin/python3
if [ ! -x "$venv/bin/patroni" ] || ! runuser -u postgres -- "$venv/bin/patroni" --version >/dev/null 2>&1; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  # psycopg (binary wheel) is the driver upstream uses to talk to PostgreSQL.
  "$venv/bin/pip" install -q 'patroni[etcd3]>=4.1,<4.2' 'psycopg[binary]'
fi
runuser -u postgres -- "$venv/bin/patroni" --version >&2
echo "$venv/bin/patroni"
