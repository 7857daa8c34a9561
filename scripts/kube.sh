#!/usr/bin/env bash
# A real Kubernetes API for tests and local work, the way controller-runtime's
# envtest runs one: etcd and kube-apiserver on loopback, no kubelet. Both are
# built from their Go modules into the dependency cache (once per version).
#
#   scripts/kube.sh build   build etcd and kube-apiserver (cached)
#   scripts/kube.sh up      build, generate certificates, start both, wait until
#                           /readyz answers, write a kubeconfig (idempotent)
#   scripts/kube.sh down    stop both (idempotent)
#   scripts/kube.sh env     print KUBECONFIG=... for the running instance
#   scripts/kube.sh logs    print both logs
#
# Environment:
#   KUBE_VERSION     Kubernetes version of kube-apiserver   (default 1.34.4)
#   ETCD_VERSION     etcd version                          (default 3.6.16)
#   KUBE_STATE_DIR   certificates, data, pids, logs        (default ~/.cache/osmosis/run/kube)
#   KUBE_PORT        kube-apiserver secure port            (default: a free port)
#   OSMOSIS_CACHE    dependency cache                      (default ~/.cache/osmosis)
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.34.4}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
OSMOSIS_CACHE=${OSMOSIS_CACHE:-$HOME/.cache/osmosis}
BIN_DIR="$OSMOSIS_CACHE/kube/v$KUBE_VERSION-etcd$ETCD_VERSION/bin"
STATE_DIR=${KUBE_STATE_DIR:-$OSMOSIS_CACHE/run/kube}
START_TIMEOUT=${KUBE_START_TIMEOUT:-120}

log() { echo "kube.sh: $*" >&2; }

. "$(dirname "$0")/lib.sh"

build_etcd() {
  [ -x "$BIN_DIR/etcd" ] && return 0
  log "building etcd v$ETCD_VERSION from its Go module"
  local work
  work=$(mktemp -d)
  (
    cd "$work"
    go mod init osmosis.dev/etcd-build >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
    CGO_ENABLED=0 go build -trimpath -o "$BIN_DIR/etcd.tmp" go.etcd.io/etcd/server/v3
  ) || { rm -rf "$work"; log "building etcd failed"; exit 1; }
  rm -rf "$work"
  mv "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
}

build_apiserver() {
  [ -x "$BIN_DIR/kube-apiserver" ] && return 0
  log "building kube-apiserver v$KUBE_VERSION from k8s.io/kubernetes"
  local work minor
  work=$(mktemp -d)
  minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
  (
    cd "$work"
    go mod init osmosis.dev/kube-build >/dev/null 2>&1
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces
    # them with local paths that dependents cannot see: point each at its
    # published version instead (v0.N.M for Kubernetes v1.N.M).
    gomod=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    grep -oE '^\s*k8s\.io/[A-Za-z0-9._/-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u |
      while read -r module; do
        go mod edit -replace "$module=$module@v0.${KUBE_VERSION#1.}"
      done
    go get "k8s.io/kubernetes/cmd/kube-apiserver@v$KUBE_VERSION"
    local pkg=k8s.io/component-base/version
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor" \
      -o "$BIN_DIR/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  ) || { rm -rf "$work"; log "building kube-apiserver failed"; exit 1; }
  rm -rf "$work"
  mv "$BIN_DIR/kube-apiserver.tmp" "$BIN_DIR/kube-apiserver"
}

build() {
  command -v go >/dev/null || { log "Go is required to build etcd and kube-apiserver"; exit 1; }
  mkdir -p "$BIN_DIR"
  build_etcd
  build_apiserver
}

alive() { [ -f "$STATE_DIR/$1.pid" ] && kill -0 "$(cat "$STATE_DIR/$1.pid")" 2>/dev/null; }

certificates() {
  local pki="$STATE_DIR/pki"
  [ -f "$pki/admin.crt" ] && return 0
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=osmosis-test-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout serving.key -out serving.csr 2>/dev/null
    # X.509 v3 with key usages: rustls refuses v1 certificates.
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >serving.ext
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >client.ext
    openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile serving.ext -out serving.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=default" \
      -keyout admin.key -out admin.csr 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out admin.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

up() {
  build
  if alive kube-apiserver && alive etcd; then
    log "already running ($(cat "$STATE_DIR/kubeconfig.path" 2>/dev/null))"
    return 0
  fi
  down
  mkdir -p "$STATE_DIR/logs"
  certificates
  local etcd_port peer_port port
  etcd_port=$(free_port)
  peer_port=$(free_port)
  port=${KUBE_PORT:-$(free_port)}
  rm -rf "$STATE_DIR/etcd-data"
  nohup "$BIN_DIR/etcd" --data-dir "$STATE_DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync=true \
    >"$STATE_DIR/logs/etcd.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/etcd.pid"
  local pki="$STATE_DIR/pki"
  nohup "$BIN_DIR/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --secure-port "$port" \
    --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" \
    --client-ca-file "$pki/ca.crt" --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true --disable-admission-plugins=ServiceAccount --authorization-mode=RBAC \
    --service-account-issuer "https://127.0.0.1:$port/" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    >"$STATE_DIR/logs/kube-apiserver.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/kube-apiserver.pid"
  cat >"$STATE_DIR/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: osmosis-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: osmosis-test
  context: { cluster: osmosis-test, user: admin }
current-context: osmosis-test
KUBECONFIG
  echo "$STATE_DIR/kubeconfig" >"$STATE_DIR/kubeconfig.path"
  local deadline=$((SECONDS + START_TIMEOUT))
  until curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
    if ! alive etcd || ! alive kube-apiserver || [ $SECONDS -ge $deadline ]; then
      log "the API server did not become ready; logs follow"
      logs >&2
      down
      exit 1
    fi
    sleep 0.5
  done
  log "ready: KUBECONFIG=$STATE_DIR/kubeconfig"
}

down() {
  for name in kube-apiserver etcd; do
    if alive "$name"; then
      local pid
      pid=$(cat "$STATE_DIR/$name.pid")
      kill -TERM "$pid" 2>/dev/null || true
      local deadline=$((SECONDS + 20))
      while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE_DIR/$name.pid"
  done
}

logs() {
  print_logs 100 "$STATE_DIR/logs/etcd.log" "$STATE_DIR/logs/kube-apiserver.log"
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  env) echo "KUBECONFIG=$STATE_DIR/kubeconfig" ;;
  logs) logs ;;
  *) echo "usage: $0 build|up|down|env|logs" >&2; exit 2 ;;
esac
