#!/usr/bin/env bash
# Benchmarks (release build) against a local Kafka on a free port, started
# and stopped here. Without arguments: every benchmark; `performance`: the
# four tables of the performance issue (round trip, worker throughput,
# ingest, fan-out) in one run; otherwise `osmosis-bench <args>` (e.g.
# `scripts/bench.sh fanout --subscribers 1000`).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
KAFKA_PORT=$(free_port)
KAFKA_CTRL_PORT=$(free_port)
KAFKA_STATE_DIR=$(mktemp -d -t osmosis-bench-kafka.XXXXXX)
export KAFKA_PORT KAFKA_CTRL_PORT KAFKA_STATE_DIR
cleanup() {
  scripts/kafka.sh down || true
  rm -rf "$KAFKA_STATE_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wrk (Debian's package) loads the gateway from a process of its own.
if ! command -v wrk >/dev/null; then
  echo "bench.sh: installing wrk" >&2
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

cargo build --release --workspace --bins --examples
bin="${CARGO_TARGET_DIR:-target}/release"
scripts/kafka.sh up
# Benchmarks print the broker's version in their headers.
export KAFKA_VERSION=${KAFKA_VERSION:-$(sed -n 's/^KAFKA_VERSION=${KAFKA_VERSION:-\(.*\)}$/\1/p' scripts/kafka.sh)}
# One table against the broker: `on_broker <bench> [args]`, then a blank line.
on_broker() {
  local bench=$1
  shift
  "$bin"/osmosis-bench "$bench" --brokers "127.0.0.1:$KAFKA_PORT" "$@"
  echo
}
# The performance issue's four tables; one gateway per fan-out protocol, so
# that neither run's memory colours the other's.
performance() {
  on_broker reply
  on_broker worker
  on_broker ingest
  on_broker fanout --protocols h1
  on_broker fanout --protocols h2
}
if [ $# -eq 0 ]; then
  "$bin"/osmosis-bench autoscale
  echo
  for bench in reaction fleet auth abuse; do
    on_broker "$bench"
  done
  performance
elif [ "$1" = performance ]; then
  performance
elif [ "$1" = autoscale ]; then
  "$bin"/osmosis-bench "$@"
else
  on_broker "$@"
fi
