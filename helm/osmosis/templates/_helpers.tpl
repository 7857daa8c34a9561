{{/* Names, labels and the pieces every component shares. */}}

{{- define "osmosis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "osmosis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every resource; call with (dict "root" $ "component" "gateway"). */}}
{{- define "osmosis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "osmosis.selectorLabels" . }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "osmosis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "osmosis.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .pool }}
osmosis.dev/worker-pool: {{ . }}
{{- end }}
{{- end -}}

{{/* The image reference; call with (dict "root" $ "image" <optional override>). */}}
{{- define "osmosis.image" -}}
{{- $image := .root.Values.image -}}
{{- $override := .image | default dict -}}
{{- $repository := $override.repository | default $image.repository -}}
{{- $tag := $override.tag | default $image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{/* The Secret holding Kafka client properties, or nothing. */}}
{{- define "osmosis.kafkaSecretName" -}}
{{- if .Values.kafka.existingSecret.name -}}
{{- .Values.kafka.existingSecret.name -}}
{{- else if .Values.kafka.properties -}}
{{- printf "%s-kafka" (include "osmosis.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Kafka property names the gateway and workers read from that Secret. */}}
{{- define "osmosis.kafkaSecretKeys" -}}
{{- if .Values.kafka.existingSecret.name -}}
{{- toJson .Values.kafka.existingSecret.keys -}}
{{- else -}}
{{- toJson (keys .Values.kafka.properties | sortAlpha) -}}
{{- end -}}
{{- end -}}

{{/* The bootstrap servers, required. */}}
{{- define "osmosis.brokers" -}}
{{- required "kafka.brokers is required: the Kafka bootstrap servers, e.g. kafka-0.kafka:9092" .Values.kafka.brokers -}}
{{- end -}}

{{/* Environment variables OSMOSIS_KAFKA_P<i>, one per Kafka property in the Secret. */}}
{{- define "osmosis.kafkaPropertyEnv" -}}
{{- $secret := include "osmosis.kafkaSecretName" . -}}
{{- range $i, $key := include "osmosis.kafkaSecretKeys" . | fromJsonArray }}
- name: OSMOSIS_KAFKA_P{{ $i }}
  valueFrom:
    secretKeyRef: { name: {{ $secret }}, key: {{ $key | quote }} }
{{- end }}
{{- end -}}

{{/* Pod-level scheduling and security shared by every component; call with (dict "root" $ "values" <component values>). */}}
{{- define "osmosis.podCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Worker pools after merging each over workerDefaults, as JSON: {name: pool}. */}}
{{- define "osmosis.workers" -}}
{{- $pools := dict -}}
{{- range $name, $pool := .Values.workers -}}
{{- $merged := mustMergeOverwrite (deepCopy $.Values.workerDefaults) (deepCopy $pool) -}}
{{- $_ := set $pools $name $merged -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{/* Deployments the controller may scale: the pools with a scaler, and the extra ones. */}}
{{- define "osmosis.scaleTargets" -}}
{{- $targets := list -}}
{{- range $name, $pool := include "osmosis.workers" . | fromJson -}}
{{- if $pool.scaler.enabled -}}
{{- $targets = append $targets (printf "%s-worker-%s" (include "osmosis.fullname" $) $name) -}}
{{- end -}}
{{- end -}}
{{- toJson (concat $targets .Values.controller.rbac.extraScaleTargets | uniq) -}}
{{- end -}}

{{/* The gateway's configuration file, built from values. */}}
{{- define "osmosis.gatewayConfig" -}}
{{- $g := .Values.gateway -}}
{{- $channels := dict -}}
{{- range $name, $channel := $g.channels -}}
{{- $_ := set $channels $name (mustMergeOverwrite (deepCopy $.Values.topicDefaults) (deepCopy ($channel | default dict))) -}}
{{- end -}}
{{- $replies := mustMergeOverwrite (omit (deepCopy .Values.topicDefaults) "partitions") (deepCopy $g.replies) -}}
{{- $config := dict "listen" "0.0.0.0:8080" "kafka" (dict "brokers" (include "osmosis.brokers" .)) "channels" $channels "replies" $replies "routes" $g.routes -}}
{{- with $g.sse -}}
{{- $_ := set $config "sse" . -}}
{{- end -}}
{{- with $g.opsPort -}}
{{- $_ := set $config "ops_listen" (printf "0.0.0.0:%v" .) -}}
{{- end -}}
{{- with $g.auth -}}
{{- $_ := set $config "auth" . -}}
{{- end -}}
{{- $config = mustMergeOverwrite $config (deepCopy $g.extraConfig) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The gateway port that serves /healthz, /readyz and /metrics. */}}
{{- define "osmosis.gatewayOpsPort" -}}
{{- ternary "ops" "http" (gt (int .Values.gateway.opsPort) 0) -}}
{{- end -}}
