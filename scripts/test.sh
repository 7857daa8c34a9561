#!/usr/bin/env bash
# The whole suite: formatting, lints, unit tests and end-to-end tests against
# a real Kafka broker and a real kube-apiserver (with etcd) that this script
# starts on free loopback ports and stops on exit, whatever the outcome.
# The broker also has a SASL_SSL listener (SCRAM-SHA-512 over TLS, a CA made
# for the run): the tests get its address, CA and credentials as
# OSMOSIS_TEST_KAFKA_SASL_SSL, OSMOSIS_TEST_KAFKA_CA,
# OSMOSIS_TEST_KAFKA_USERNAME and OSMOSIS_TEST_KAFKA_PASSWORD.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh

KAFKA_PORT=$(free_port)
KAFKA_CTRL_PORT=$(free_port)
KAFKA_SASL_SSL_PORT=$(free_port)
KAFKA_STATE_DIR=$(mktemp -d -t osmosis-test-kafka.XXXXXX)
KUBE_STATE_DIR=$(mktemp -d -t osmosis-test-kube.XXXXXX)
export KAFKA_PORT KAFKA_CTRL_PORT KAFKA_SASL_SSL_PORT KAFKA_STATE_DIR KUBE_STATE_DIR

cleanup() {
  local status=$?
  if [ $status -ne 0 ] && [ -d "$KAFKA_STATE_DIR/logs" ]; then
    echo "test.sh: failed (exit $status); the broker's log follows" >&2
    tail -n 50 "$KAFKA_STATE_DIR/logs/server.log" >&2 2>/dev/null || true
  fi
  scripts/kafka.sh down || true
  scripts/kube.sh down || true
  rm -rf "$KAFKA_STATE_DIR" "$KUBE_STATE_DIR"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> module cycles"
for crate in protocol support gateway workers autoscaler; do
  python3 scripts/module-cycles.py "$crate/src" >/dev/null || {
    python3 scripts/module-cycles.py "$crate/src"
    exit 1
  }
done

echo "==> build"
cargo build --workspace --bins --examples --locked

echo "==> browser (Debian's chromium, for the page test)"
scripts/browser.sh install

echo "==> Kafka"
scripts/kafka.sh up
# The SASL_SSL listener's client settings, as the tests name them.
while IFS='=' read -r name value; do
  case "$name" in
    KAFKA_SASL_SSL_BOOTSTRAP) export OSMOSIS_TEST_KAFKA_SASL_SSL="$value" ;;
    KAFKA_CA_LOCATION) export OSMOSIS_TEST_KAFKA_CA="$value" ;;
    KAFKA_SASL_USERNAME) export OSMOSIS_TEST_KAFKA_USERNAME="$value" ;;
    KAFKA_SASL_PASSWORD) export OSMOSIS_TEST_KAFKA_PASSWORD="$value" ;;
  esac
done < <(scripts/kafka.sh env)

echo "==> Kubernetes API (etcd + kube-apiserver)"
scripts/kube.sh up

echo "==> Helm chart (scripts/chart-test.sh)"
KUBECONFIG="$KUBE_STATE_DIR/kubeconfig" scripts/chart-test.sh
# The chart's end-to-end tests (tests/tests/helm_chart.rs) take the tools from here.
OSMOSIS_TEST_HELM=$(scripts/helm.sh env | sed -n 's/^HELM=//p')
OSMOSIS_TEST_PROMETHEUS=$(scripts/monitoring.sh env | sed -n 's/^PROMETHEUS=//p')
OSMOSIS_TEST_PROMTOOL=$(scripts/monitoring.sh env | sed -n 's/^PROMTOOL=//p')
export OSMOSIS_TEST_HELM OSMOSIS_TEST_PROMETHEUS OSMOSIS_TEST_PROMTOOL

echo "==> tests"
OSMOSIS_TEST_KAFKA="127.0.0.1:$KAFKA_PORT" \
  OSMOSIS_TEST_KUBECONFIG="$KUBE_STATE_DIR/kubeconfig" \
  RUST_BACKTRACE=0 cargo test --workspace --locked
