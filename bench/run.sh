#!/usr/bin/env bash
# One command for the whole benchmark: our daemon against upstream Patroni 4.1, same YAML,
# same timing, alternating runs. Results: bench/results/latest.json and latest.md.
#
#   bench/run.sh                              # 3 runs, profile fast (ttl 20 / loop_wait 2 / retry_timeout 5)
#   bench/run.sh --runs 5 --profiles fast,default
#   bench/run.sh --profiles quick=6/1/2 --impls ours
#   BENCH_LOCK=/tmp/patroni-test.lock bench/run.sh    # hold a flock around each cluster (the test lock)
#
# Any option is passed on to the harness (bench --help lists them). Run as root on Debian:
# PostgreSQL and both daemons run as the `postgres` user.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the daemons run as the postgres user)" >&2; exit 2; }

need=0
for c in wrk haproxy etcd; do command -v "$c" >/dev/null || need=1; done
[ -x /usr/lib/postgresql/15/bin/postgres ] || need=1
[ "$need" = 0 ] || scripts/install-deps.sh

echo "building our release binary..." >&2
cargo build --release --quiet --bin patroni
echo "preparing the upstream venv..." >&2
scripts/bench-venv.sh >/dev/null
echo "building the harness..." >&2
# Same target dir as the package: the harness links the patroni library (timing floors), and
# its lock file follows the root one, so the dependencies compiled for the package are reused.
cargo build --quiet --manifest-path bench/Cargo.toml --target-dir target

export BENCH_OURS_VERSION="patroni-rs $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+dirty')"
lock=()
# BENCH_LOCK, or the test suite's PATRONI_TEST_LOCK: clusters never overlap with test scenarios.
lock_file="${BENCH_LOCK:-${PATRONI_TEST_LOCK:-}}"
[ -n "$lock_file" ] && lock=(--lock "$lock_file")
exec target/debug/bench \
  --ours-bin target/release/patroni \
  --upstream-bin target/bench-venv/bin/patroni \
  --out bench/results --logs target/bench-logs \
  "${lock[@]}" "$@"
