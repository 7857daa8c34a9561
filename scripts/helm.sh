#!/usr/bin/env bash
# Helm and the helm-unittest plugin, built from their Go modules into the
# dependency cache (once per version), for the chart's tests and for local use.
#
#   scripts/helm.sh build   build helm and helm-unittest, install the plugin (cached, idempotent)
#   scripts/helm.sh env     print HELM=..., HELM_PLUGINS=..., HELM_DATA_HOME=... for the cached tools
#   scripts/helm.sh run ARGS...   run the cached helm with the cached plugin
#
# Environment:
#   HELM_VERSION           helm version                    (default 3.22.0)
#   HELM_UNITTEST_VERSION  helm-unittest version           (default 1.1.2)
#   HELM_KUBE_MINOR        Kubernetes 1.N helm assumes offline (default 37)
#   OSMOSIS_CACHE          dependency cache                (default ~/.cache/osmosis)
#
# A plain `go install` of helm assumes Kubernetes v1.20 when no cluster is
# asked (helm template, lint): the chart's `kubeVersion` would refuse it, so
# the version ldflags are set. helm-unittest cannot be `go install`ed (its
# go.mod has replace directives) and its plugin.yaml downloads a release in a
# hook: it is built from the module's source and installed from a directory
# holding the binary and a plugin.yaml of our own.
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-3.22.0}
HELM_UNITTEST_VERSION=${HELM_UNITTEST_VERSION:-1.1.2}
HELM_KUBE_MINOR=${HELM_KUBE_MINOR:-37}
OSMOSIS_CACHE=${OSMOSIS_CACHE:-$HOME/.cache/osmosis}
HELM_DIR="$OSMOSIS_CACHE/helm/v$HELM_VERSION-unittest$HELM_UNITTEST_VERSION"
HELM_BIN="$HELM_DIR/bin/helm"
# Helm's own state (plugins, repositories, cache) is kept beside the binary so
# the tests never read or write the user's helm configuration.
export HELM_PLUGINS="$HELM_DIR/plugins"
export HELM_DATA_HOME="$HELM_DIR/data"
export HELM_CONFIG_HOME="$HELM_DIR/config"
export HELM_CACHE_HOME="$HELM_DIR/cache"

log() { echo "helm.sh: $*" >&2; }

build_helm() {
  [ -x "$HELM_BIN" ] && return 0
  log "building helm v$HELM_VERSION from its Go module (several minutes)"
  local work
  work=$(mktemp -d)
  (
    cd "$work"
    go mod init osmosis.dev/helm-build >/dev/null 2>&1
    go get "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
    local p=helm.sh/helm/v3
    CGO_ENABLED=0 go build -trimpath -ldflags "-X $p/internal/version.version=v$HELM_VERSION \
      -X $p/pkg/lint/rules.k8sVersionMajor=1 -X $p/pkg/lint/rules.k8sVersionMinor=$HELM_KUBE_MINOR \
      -X $p/pkg/chartutil.k8sVersionMajor=1 -X $p/pkg/chartutil.k8sVersionMinor=$HELM_KUBE_MINOR" \
      -o "$HELM_BIN.tmp" helm.sh/helm/v3/cmd/helm
  ) || { rm -rf "$work"; log "building helm failed"; exit 1; }
  rm -rf "$work"
  mv "$HELM_BIN.tmp" "$HELM_BIN"
}

build_unittest() {
  [ -f "$HELM_PLUGINS/.unittest-$HELM_UNITTEST_VERSION" ] && return 0
  log "building helm-unittest v$HELM_UNITTEST_VERSION from its Go module"
  local module=github.com/helm-unittest/helm-unittest src work
  src=$(go mod download -json "$module@v$HELM_UNITTEST_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  work=$(mktemp -d)
  cp -r "$src/." "$work/src"
  chmod -R u+w "$work/src"
  (
    cd "$work/src"
    CGO_ENABLED=0 go build -trimpath -o "$work/plugin/untt" ./cmd/helm-unittest
    # A plugin manifest of our own: the module's names a binary per
    # platform and install hooks that download a release.
    cat >"$work/plugin/plugin.yaml" <<MANIFEST
name: "unittest"
version: "$HELM_UNITTEST_VERSION"
usage: "unittest for helm charts"
description: "helm-unittest $HELM_UNITTEST_VERSION, built from its Go module"
ignoreFlags: false
command: "\$HELM_PLUGIN_DIR/untt"
MANIFEST
  ) || { rm -rf "$work"; log "building helm-unittest failed"; exit 1; }
  mkdir -p "$HELM_PLUGINS" "$HELM_DATA_HOME" "$HELM_CONFIG_HOME" "$HELM_CACHE_HOME"
  "$HELM_BIN" plugin uninstall unittest >/dev/null 2>&1 || true
  local dest="$HELM_DIR/unittest-plugin"
  rm -rf "$dest"
  mv "$work/plugin" "$dest"
  rm -rf "$work"
  "$HELM_BIN" plugin install "$dest" >/dev/null
  touch "$HELM_PLUGINS/.unittest-$HELM_UNITTEST_VERSION"
}

build() {
  command -v go >/dev/null || { log "Go is required to build helm"; exit 1; }
  mkdir -p "$HELM_DIR/bin"
  build_helm
  build_unittest
}

case "${1:-}" in
  build) build ;;
  env)
    echo "HELM=$HELM_BIN"
    echo "HELM_PLUGINS=$HELM_PLUGINS"
    echo "HELM_DATA_HOME=$HELM_DATA_HOME"
    echo "HELM_CONFIG_HOME=$HELM_CONFIG_HOME"
    echo "HELM_CACHE_HOME=$HELM_CACHE_HOME"
    ;;
  run) shift; build; exec "$HELM_BIN" "$@" ;;
  *) echo "usage: $0 build|env|run ARGS..." >&2; exit 2 ;;
esac
