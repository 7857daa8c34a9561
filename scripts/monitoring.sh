#!/usr/bin/env bash
# The tools that check the chart's operator view, in the dependency cache
# (once per version, idempotent):
#
#   scripts/monitoring.sh prometheus   Prometheus and promtool from Debian's package, extracted
#   scripts/monitoring.sh crds         the Prometheus Operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule)
#   scripts/monitoring.sh grafana      npm @grafana/schema + typescript, to type-check dashboards
#   scripts/monitoring.sh all          all three
#   scripts/monitoring.sh env          print PROMETHEUS=, PROMTOOL=, PROMETHEUS_OPERATOR_CRDS=, GRAFANA_SCHEMA_DIR=
#
# Environment:
#   PROMETHEUS_DEB_VERSION      Debian package version       (default: the candidate apt knows)
#   PROMETHEUS_OPERATOR_VERSION Prometheus Operator version  (default 0.85.0)
#   GRAFANA_SCHEMA_VERSION      npm @grafana/schema version  (default 13.2.3)
#   TYPESCRIPT_VERSION          npm typescript version       (default 5.9.3)
#   OSMOSIS_CACHE               dependency cache             (default ~/.cache/osmosis)
#
# Prometheus is not installed system-wide: `apt-get download` fetches the
# .deb (from the machine's configured Debian mirror) and `dpkg-deb -x`
# unpacks it into the cache, so no root and no service is needed.
set -euo pipefail

PROMETHEUS_OPERATOR_VERSION=${PROMETHEUS_OPERATOR_VERSION:-0.85.0}
GRAFANA_SCHEMA_VERSION=${GRAFANA_SCHEMA_VERSION:-13.2.3}
TYPESCRIPT_VERSION=${TYPESCRIPT_VERSION:-5.9.3}
OSMOSIS_CACHE=${OSMOSIS_CACHE:-$HOME/.cache/osmosis}
CRDS_DIR="$OSMOSIS_CACHE/prometheus-operator/v$PROMETHEUS_OPERATOR_VERSION/crds"
GRAFANA_DIR="$OSMOSIS_CACHE/grafana-schema/$GRAFANA_SCHEMA_VERSION-ts$TYPESCRIPT_VERSION"

log() { echo "monitoring.sh: $*" >&2; }

prometheus_version() {
  if [ -n "${PROMETHEUS_DEB_VERSION:-}" ]; then
    echo "$PROMETHEUS_DEB_VERSION"
  else
    apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}'
  fi
}

prometheus_dir() {
  local version
  version=$(prometheus_version)
  [ -n "$version" ] && [ "$version" != "(none)" ] || {
    log "apt knows no prometheus package: run apt-get update (Debian bookworm has 2.42)"
    exit 1
  }
  echo "$OSMOSIS_CACHE/prometheus/${version//[:+~]/_}"
}

prometheus() {
  local dir
  dir=$(prometheus_dir)
  [ -x "$dir/usr/bin/promtool" ] && return 0
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    { log "apt-get and dpkg-deb are needed to fetch Debian's prometheus package"; exit 1; }
  log "fetching Debian's prometheus $(prometheus_version) into $dir"
  local work
  work=$(mktemp -d)
  chmod 777 "$work"  # apt fetches as its own user (_apt)
  (cd "$work" && apt-get download -q "prometheus=$(prometheus_version)" >/dev/null) ||
    { rm -rf "$work"; log "apt-get download prometheus failed"; exit 1; }
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  dpkg-deb -x "$work"/prometheus_*.deb "$dir.tmp"
  rm -rf "$work" "$dir"
  mv "$dir.tmp" "$dir"
}

crds() {
  [ -f "$CRDS_DIR/.complete" ] && return 0
  command -v go >/dev/null || { log "Go is required to fetch the Prometheus Operator module"; exit 1; }
  log "fetching the Prometheus Operator v$PROMETHEUS_OPERATOR_VERSION CRDs from its Go module"
  local dir
  dir=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$CRDS_DIR"
  mkdir -p "$CRDS_DIR"
  local kind
  for kind in servicemonitors podmonitors prometheusrules; do
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$CRDS_DIR/"
  done
  chmod -R u+w "$CRDS_DIR"
  touch "$CRDS_DIR/.complete"
}

grafana() {
  [ -f "$GRAFANA_DIR/.complete" ] && return 0
  command -v npm >/dev/null || { log "npm is required to fetch @grafana/schema"; exit 1; }
  log "fetching @grafana/schema $GRAFANA_SCHEMA_VERSION and typescript $TYPESCRIPT_VERSION with npm"
  rm -rf "$GRAFANA_DIR"
  mkdir -p "$GRAFANA_DIR"
  (cd "$GRAFANA_DIR" && echo '{"private": true}' >package.json &&
    npm install --no-audit --no-fund --silent "@grafana/schema@$GRAFANA_SCHEMA_VERSION" "typescript@$TYPESCRIPT_VERSION") ||
    { log "npm install failed"; exit 1; }
  touch "$GRAFANA_DIR/.complete"
}

case "${1:-}" in
  prometheus) prometheus ;;
  crds) crds ;;
  grafana) grafana ;;
  all) prometheus; crds; grafana ;;
  env)
    dir=$(prometheus_dir)
    echo "PROMETHEUS=$dir/usr/bin/prometheus"
    echo "PROMTOOL=$dir/usr/bin/promtool"
    echo "PROMETHEUS_OPERATOR_CRDS=$CRDS_DIR"
    echo "GRAFANA_SCHEMA_DIR=$GRAFANA_DIR"
    ;;
  *) echo "usage: $0 prometheus|crds|grafana|all|env" >&2; exit 2 ;;
esac
