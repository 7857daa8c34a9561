#!/usr/bin/env bash
# The Helm chart's tests (helm/osmosis), against the real kube-apiserver of
# scripts/kube.sh. `make test` runs it; alone:
#
#   scripts/kube.sh up && KUBECONFIG=$(scripts/kube.sh env | cut -d= -f2) scripts/chart-test.sh
#
# What each step proves:
#   static      the chart's README documents every value and no other; the
#               CRD in crds/ is the committed, drift-tested one
#   lint        `helm lint --strict` on the defaults and each ci/*-values.yaml
#   unit        helm-unittest suites: every toggle, the RBAC rules, the
#               values schema refusing bad values (helm/osmosis/tests)
#   alerts      `promtool check rules` and `promtool test rules`: each alert
#               fires on its series and stays silent on the others
#   dashboards  the three dashboards type-check against Grafana's published
#               schema (@grafana/schema, tsc --noEmit)
#   server      every rendering (defaults and each ci/ file) passes
#               `kubectl apply --dry-run=server --validate=strict` with the
#               Prometheus Operator's CRDs installed: unknown fields, wrong
#               types and CEL violations are refused by the API server itself
#   install     helm install; helm upgrade with a changed route rolls the
#               gateway (its config checksum changes); helm uninstall leaves
#               nothing of the release but the CRD
#
# Needs KUBECONFIG (a test API server: the script creates and deletes
# namespaces in it). Tools come from scripts/helm.sh and
# scripts/monitoring.sh (built or fetched into the cache on first use).
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=helm/osmosis
log() { echo "chart-test.sh: $*" >&2; }
step() { echo "==> chart: $*"; }

[ -n "${KUBECONFIG:-}" ] && [ -f "$KUBECONFIG" ] || {
  log "KUBECONFIG must name a kubeconfig of a test API server (scripts/kube.sh up; scripts/kube.sh env)"
  exit 1
}
command -v kubectl >/dev/null || { log "kubectl is required"; exit 1; }

scripts/helm.sh build
scripts/monitoring.sh all
eval "$(scripts/helm.sh env | sed 's/^/export /')"
eval "$(scripts/monitoring.sh env | sed 's/^/export /')"
export KUBECONFIG

WORK=$(mktemp -d -t osmosis-chart-test.XXXXXX)
NAMESPACES=()
cleanup() {
  local ns
  for ns in "${NAMESPACES[@]}"; do
    kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# helm prints a notice for the CRD symlink on every load; it is the point.
helm() { "$HELM" "$@" 2> >(grep -v 'found symbolic link in path' >&2); }

step "static checks"
cmp "$CHART/crds/channelscaler.yaml" autoscaler/crd/channelscaler.yaml
python3 scripts/chart-readme-check.py "$CHART"

step "helm lint --strict (defaults and ci/*-values.yaml)"
helm lint --strict "$CHART" --set kafka.brokers=kafka:9092 >/dev/null
for values in "$CHART"/ci/*-values.yaml; do
  helm lint --strict "$CHART" -f "$values" >/dev/null || { log "lint failed with $values"; exit 1; }
done

step "helm unittest"
helm unittest "$CHART" >"$WORK/unittest.log" 2>&1 || { cat "$WORK/unittest.log"; exit 1; }
grep -E '^(Tests|Test Suites):' "$WORK/unittest.log"

step "promtool check rules / test rules"
"$PROMTOOL" check rules "$CHART/files/osmosis.rules.yaml" >/dev/null
(cd "$CHART/tests/alerts" && "$PROMTOOL" test rules osmosis.rules.test.yaml) >"$WORK/promtool.log" 2>&1 ||
  { cat "$WORK/promtool.log"; exit 1; }

step "dashboards against @grafana/schema (tsc --noEmit)"
mkdir -p "$WORK/ts"
for dashboard in "$CHART"/files/dashboards/*.json; do
  name=$(basename "$dashboard" .json)
  {
    echo "import type { AnnotationQuery, Dashboard, DataQuery } from '@grafana/schema';"
    echo "// The Prometheus data source's query, as its plugin declares it."
    echo "interface PrometheusQuery extends DataQuery { expr: string; legendFormat?: string; interval?: string; range?: boolean; instant?: boolean }"
    echo "type PrometheusDashboard = Omit<Dashboard, 'annotations'> & { annotations?: { list?: AnnotationQuery<PrometheusQuery>[] } };"
    echo "// An object literal: tsc refuses unknown keys as well as wrong types."
    printf 'export const %s: PrometheusDashboard = ' "$name"
    cat "$dashboard"
    echo ";"
  } >"$WORK/ts/$name.ts"
done
cat >"$WORK/ts/tsconfig.json" <<JSON
{ "compilerOptions": { "strict": true, "noEmit": true, "skipLibCheck": true,
    "moduleResolution": "bundler", "module": "esnext", "target": "es2022",
    "typeRoots": [], "baseUrl": ".", "paths": { "@grafana/schema": ["$GRAFANA_SCHEMA_DIR/node_modules/@grafana/schema"] } },
  "include": ["*.ts"] }
JSON
(cd "$WORK/ts" && "$GRAFANA_SCHEMA_DIR/node_modules/.bin/tsc" -p tsconfig.json)

step "every rendering through kubectl apply --dry-run=server --validate=strict"
kubectl apply --server-side --force-conflicts -f "$PROMETHEUS_OPERATOR_CRDS" >/dev/null
kubectl apply --server-side --force-conflicts -f "$CHART/crds/" >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/servicemonitors.monitoring.coreos.com crd/podmonitors.monitoring.coreos.com \
  crd/prometheusrules.monitoring.coreos.com crd/channelscalers.osmosis.dev >/dev/null
NS=osmosis-chart-$$
NAMESPACES+=("$NS")
kubectl create namespace "$NS" >/dev/null
for values in default "$CHART"/ci/*-values.yaml; do
  if [ "$values" = default ]; then args=(--set kafka.brokers=kafka:9092); else args=(-f "$values"); fi
  helm template dry "$CHART" --namespace "$NS" "${args[@]}" >"$WORK/rendered.yaml"
  kubectl apply --dry-run=server --validate=strict -n "$NS" -f "$WORK/rendered.yaml" >"$WORK/apply.log" 2>&1 ||
    { cat "$WORK/apply.log"; log "the API server refused the rendering of $values"; exit 1; }
  echo "    $(basename "$values"): $(grep -c . "$WORK/apply.log") objects accepted"
done

step "helm install, upgrade with a changed route, uninstall"
NS=osmosis-release-$$
NAMESPACES+=("$NS")
kubectl create namespace "$NS" >/dev/null
checksum() {
  kubectl get deployment -n "$NS" rel-osmosis-gateway \
    -o jsonpath='{.spec.template.metadata.annotations.checksum/config}'
}
# No kubelet runs the pods: no --wait.
helm install rel "$CHART" -n "$NS" -f "$CHART/ci/full-values.yaml" >/dev/null
before=$(checksum)
kubectl get -n "$NS" deployment/rel-osmosis-gateway deployment/rel-osmosis-controller \
  deployment/rel-osmosis-worker-orders channelscaler/rel-osmosis-worker-orders >/dev/null
helm upgrade rel "$CHART" -n "$NS" -f "$CHART/ci/full-values.yaml" \
  --set 'gateway.routes[1].path=/v2/notifications' >/dev/null
after=$(checksum)
[ -n "$before" ] && [ "$before" != "$after" ] ||
  { log "the gateway's config checksum did not change on upgrade ($before → $after)"; exit 1; }
kubectl get configmap -n "$NS" rel-osmosis-gateway -o jsonpath='{.data.gateway\.yaml}' | grep -q 'path: /v2/notifications' ||
  { log "the upgraded ConfigMap lacks the new route"; exit 1; }
echo "    upgrade rolled the gateway: checksum ${before:0:12} → ${after:0:12}"
helm uninstall rel -n "$NS" >/dev/null
left=$(kubectl get -n "$NS" all,configmaps,secrets,serviceaccounts,roles,rolebindings,ingresses,poddisruptionbudgets,channelscalers,servicemonitors,podmonitors,prometheusrules \
  -l app.kubernetes.io/instance=rel -o name 2>/dev/null)
[ -z "$left" ] || { log "left after uninstall: $left"; exit 1; }
kubectl get crd channelscalers.osmosis.dev >/dev/null ||
  { log "the CRD should stay after uninstall (Helm never deletes crds/)"; exit 1; }
echo "    uninstall left only the CRD"
echo "==> chart: all passed"
