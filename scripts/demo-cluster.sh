#!/usr/bin/env bash
# Brings up etcd + 3 patroni nodes + HAProxy on loopback in ./demo (Ctrl-C stops everything).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] && scripts/install-deps.sh
cargo build --release --bins
top=$PWD
demo=$top/demo
mkdir -p "$demo"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
etcd --name demo --data-dir "$demo/etcd" --listen-client-urls http://127.0.0.1:2379 \
     --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
     >"$demo/etcd.log" 2>&1 &
pids+=($!)
sleep 2
if [ "$(id -u)" = 0 ]; then mkdir -p "$demo/data" && chown postgres: "$demo" "$demo/data"; fi
for i in 0 1 2; do
  sed "s#data_dir: data/#data_dir: $demo/data/#; s#/tmp/pgpass#$demo/pgpass#" postgres$i.yml >"$demo/postgres$i.yml"
  (cd "$demo" && exec "$top/target/release/patroni" "$demo/postgres$i.yml" >"$demo/postgres$i.log" 2>&1) &
  pids+=($!)
done
haproxy -f haproxy.cfg -db >"$demo/haproxy.log" 2>&1 &
pids+=($!)
cat <<MSG
Cluster 'batman' is starting (logs in $demo/*.log).
  writes:  psql -h 127.0.0.1 -p 5000 -U postgres   (password: patroni)
  reads:   psql -h 127.0.0.1 -p 5001 -U postgres
  status:  curl -s 127.0.0.1:8008/cluster ; HAProxy stats on http://127.0.0.1:7000/
Kill a node's daemon or postmaster and watch it heal. Ctrl-C stops everything.
MSG
wait
