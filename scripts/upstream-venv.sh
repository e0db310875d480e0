#!/usr/bin/env bash
# Creates target/upstream-venv with upstream Patroni (for interoperability tests).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/upstream-venv
if [ ! -x "$venv/bin/patronictl" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'patroni[etcd3]>=4.1,<4.2' 'psycopg[binary]'
fi
echo "$venv/bin/patronictl"
