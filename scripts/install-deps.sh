#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine (run as root).
set -euo pipefail
need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v etcd >/dev/null || need+=(etcd-server)
# Tests call etcdctl (etcd-client) to inspect and damage keys.
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v haproxy >/dev/null || need+=(haproxy)
# ZooKeeper for the zookeeper/exhibitor backend tests (run standalone from the jar; the
# package pulls in a JRE; zookeeperd, which would start a system service, is not needed).
[ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null || need+=(zookeeper)
command -v wrk >/dev/null || need+=(wrk)  # bench/run.sh: REST throughput
command -v protoc >/dev/null || need+=(protobuf-compiler)
# tests/faults.rs: nodes in network namespaces, cut off with iptables inside them.
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's postgresql package may start a default cluster on 5432; ours never uses it.
id postgres >/dev/null
