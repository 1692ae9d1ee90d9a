{{/*
Names, labels and the values every component shares.
*/}}

{{- define "mcp-cluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-cluster.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of a component's objects: (dict "ctx" $ "component" "gateway"). */}}
{{- define "mcp-cluster.componentName" -}}
{{- printf "%s-%s" (include "mcp-cluster.fullname" .ctx | trunc 45 | trimSuffix "-") .component }}
{{- end }}

{{- define "mcp-cluster.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-cluster.labels" -}}
helm.sh/chart: {{ include "mcp-cluster.chart" . }}
app.kubernetes.io/name: {{ include "mcp-cluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mcp-cluster
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "gateway"). */}}
{{- define "mcp-cluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-cluster.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects. */}}
{{- define "mcp-cluster.componentLabels" -}}
{{ include "mcp-cluster.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mcp-cluster.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mcp-cluster.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mcp-cluster.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The public origin, without a trailing slash. */}}
{{- define "mcp-cluster.publicUrl" -}}
{{- required "publicUrl is required: the public origin clients connect to, e.g. https://mcp.example.com" .Values.publicUrl | trimSuffix "/" }}
{{- end }}

{{/* Host name of the public origin (no port). */}}
{{- define "mcp-cluster.publicHost" -}}
{{- (urlParse (include "mcp-cluster.publicUrl" .)).hostname }}
{{- end }}

{{/* RESOURCE_IDENTIFIER: the MCP endpoint's URL. */}}
{{- define "mcp-cluster.resource" -}}
{{- printf "%s/mcp" (include "mcp-cluster.publicUrl" .) }}
{{- end }}

{{/* NATS_URL of the three services: the existing NATS JetStream cluster. */}}
{{- define "mcp-cluster.natsUrl" -}}
{{- required "nats.url is required: the NATS JetStream server(s) the services connect to (nats:// or tls:// URLs, comma-separated), e.g. nats://nats.mcp.svc:4222; deploy/helm/nats-values.yaml installs the official NATS chart" .Values.nats.url }}
{{- end }}

{{/* Env vars every binary reads: NATS. */}}
{{- define "mcp-cluster.natsEnv" -}}
- name: NATS_URL
  value: {{ include "mcp-cluster.natsUrl" . | quote }}
- name: NATS_REPLICAS
  value: {{ .Values.nats.streamReplicas | quote }}
{{- end }}

{{/* OTLP trace export of one service (dict "ctx" $ "service" "gateway"); nothing when
     tracing.endpoint is empty. */}}
{{- define "mcp-cluster.otelEnv" -}}
{{- with .ctx.Values.tracing }}
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ $.service | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .samplerArg | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "service.namespace=%s,k8s.namespace.name=%s" $.ctx.Release.Name $.ctx.Release.Namespace | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret holding a key the chart makes or the operator names:
     (dict "ctx" $ "ref" .Values.auth.vaultKeys "made" "auth-keys" "key" "AUTH_VAULT_KEYS"). */}}
{{- define "mcp-cluster.secretKeyRef" -}}
{{- if .ref.existingSecret }}
name: {{ .ref.existingSecret }}
key: {{ .ref.existingSecretKey }}
{{- else }}
name: {{ include "mcp-cluster.componentName" (dict "ctx" .ctx "component" .made) }}
key: {{ .key }}
{{- end }}
{{- end }}

{{/* Soft spread of a component's pods over nodes. */}}
{{- define "mcp-cluster.spread" -}}
{{- if .values.spreadAcrossNodes }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "mcp-cluster.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 8 }}
{{- end }}
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
{{- end }}

{{/* Pod-level settings shared by the three Deployments. */}}
{{- define "mcp-cluster.podCommon" -}}
serviceAccountName: {{ include "mcp-cluster.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Probes on the admin port (telemetry: /healthz, /readyz). */}}
{{- define "mcp-cluster.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{/* preStop: wait before SIGTERM so endpoints are removed first (Kubernetes' own sleep
     action: the image needs no shell). */}}
{{- define "mcp-cluster.preStop" -}}
{{- if gt (int .) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int . }}
{{- end }}
{{- end }}
