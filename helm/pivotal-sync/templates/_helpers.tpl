{{/*
Expand the name of the chart.
*/}}
{{- define "pivotal-sync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "pivotal-sync.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "pivotal-sync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "pivotal-sync.labels" -}}
helm.sh/chart: {{ include "pivotal-sync.chart" . }}
{{ include "pivotal-sync.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pivotal-sync
{{- end }}

{{/*
Selector labels
*/}}
{{- define "pivotal-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pivotal-sync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "pivotal-sync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pivotal-sync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: by digest when image.digest is set (immutable), else by tag.
*/}}
{{- define "pivotal-sync.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Labels of pods that are not the daemon (the migration Job, the helm test): a name of their own,
so that the Deployment, PodDisruptionBudget, Service and NetworkPolicy selectors (name +
instance) never pick them up. A PDB that selects a Job's pods blocks node drains.
Call with (list . "migrate").
*/}}
{{- define "pivotal-sync.componentLabels" -}}
{{- $ := index . 0 }}
{{- $component := index . 1 -}}
helm.sh/chart: {{ include "pivotal-sync.chart" $ }}
app.kubernetes.io/name: {{ printf "%s-%s" (include "pivotal-sync.name" $) $component | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ $component }}
{{- if $.Chart.AppVersion }}
app.kubernetes.io/version: {{ $.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ $.Release.Service }}
app.kubernetes.io/part-of: pivotal-sync
{{- end }}

{{/*
The dashboard's Grafana UID: dashboard.uid, or one per release (Grafana allows 40 characters),
so that two releases' dashboards do not overwrite each other in one Grafana.
*/}}
{{- define "pivotal-sync.dashboardUid" -}}
{{- .Values.dashboard.uid | default (include "pivotal-sync.fullname" .) | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the Secret the chart creates for the values given inline (apiKey.value, database.url).
*/}}
{{- define "pivotal-sync.secretName" -}}
{{- include "pivotal-sync.fullname" . }}
{{- end }}

{{/*
Name of the short-lived Secret that carries database.url to the migration hook Job: the hook
runs before the release's own Secret exists.
*/}}
{{- define "pivotal-sync.migrateSecretName" -}}
{{- printf "%s-migrate" (include "pivotal-sync.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the migration Job.
*/}}
{{- define "pivotal-sync.migrateJobName" -}}
{{- printf "%s-migrate" (include "pivotal-sync.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the dashboard ConfigMap.
*/}}
{{- define "pivotal-sync.dashboardName" -}}
{{- printf "%s-dashboard" (include "pivotal-sync.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the PrometheusRule holding the alert-threshold recording rule.
*/}}
{{- define "pivotal-sync.thresholdsName" -}}
{{- printf "%s-thresholds" (include "pivotal-sync.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{/*
secretKeyRef for the API key: the user's existing Secret, or the one the chart creates.
*/}}
{{- define "pivotal-sync.apiKeyRef" -}}
{{- if .Values.apiKey.existingSecret }}
name: {{ .Values.apiKey.existingSecret }}
key: {{ .Values.apiKey.existingSecretKey }}
{{- else }}
name: {{ include "pivotal-sync.secretName" . }}
key: api-key
{{- end }}
{{- end }}

{{/*
secretKeyRef for the database URL. $secretName is the chart-created Secret to use when the user
gave the URL inline (the release Secret, or the migration hook's own).
*/}}
{{- define "pivotal-sync.databaseUrlRef" -}}
{{- $ := index . 0 }}
{{- $secretName := index . 1 }}
{{- if $.Values.database.existingSecret }}
name: {{ $.Values.database.existingSecret }}
key: {{ $.Values.database.existingSecretKey }}
{{- else }}
name: {{ $secretName }}
key: database-url
{{- end }}
{{- end }}

{{/*
Fail early, with a clear message, when a required secret source is missing (the schema says the
same; this also covers --skip-schema-validation).
*/}}
{{- define "pivotal-sync.validate" -}}
{{- if not (or .Values.apiKey.value .Values.apiKey.existingSecret) }}
{{- fail "apiKey: set apiKey.value or apiKey.existingSecret (the Pivotal API key is required)" }}
{{- end }}
{{- if not (or .Values.database.url .Values.database.existingSecret) }}
{{- fail "database: set database.url or database.existingSecret (the Postgres URL is required)" }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the drain timeout, rounded up, plus a margin, so that Kubernetes
never sends SIGKILL while the daemon is still draining.
*/}}
{{- define "pivotal-sync.terminationGracePeriodSeconds" -}}
{{- add (ceil .Values.config.drainTimeoutSeconds | int) .Values.terminationGracePeriodMarginSeconds }}
{{- end }}

{{/*
The daemon's environment from .Values.config: kafkaTopic → PIVOTAL_SYNC_KAFKA_TOPIC. Empty
strings are left out so that the daemon's default applies.
*/}}
{{- define "pivotal-sync.configEnv" -}}
{{- range $name, $value := .Values.config }}
{{- if ne (toString $value) "" }}
- name: {{ printf "PIVOTAL_SYNC_%s" ($name | snakecase | upper) }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
- name: PIVOTAL_SYNC_HTTP_PORT
  value: {{ .Values.service.port | toString | quote }}
{{- end }}

{{/*
The restricted container security context. runAsUser and runAsGroup can be set to null (an
OpenShift restricted SCC assigns its own UID and refuses a fixed one); anything else can be
overridden field by field through securityContext.container, e.g. for a policy engine that
wants a field spelled out.
*/}}
{{- define "pivotal-sync.containerSecurityContext" -}}
{{- $context := dict "runAsNonRoot" true "readOnlyRootFilesystem" true "allowPrivilegeEscalation" false "capabilities" (dict "drop" (list "ALL")) "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- include "pivotal-sync.ids" (list . $context) }}
{{- toYaml (mergeOverwrite $context (deepCopy (.Values.securityContext.container | default dict))) }}
{{- end }}

{{/*
The pod security context (restricted Pod Security Standard); overridable as above through
securityContext.pod.
*/}}
{{- define "pivotal-sync.podSecurityContext" -}}
{{- $context := dict "runAsNonRoot" true "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- include "pivotal-sync.ids" (list . $context) }}
{{- toYaml (mergeOverwrite $context (deepCopy (.Values.securityContext.pod | default dict))) }}
{{- end }}

{{/*
Adds runAsUser and runAsGroup to a security context dict unless they are null.
*/}}
{{- define "pivotal-sync.ids" -}}
{{- $ := index . 0 }}
{{- $context := index . 1 }}
{{- if not (kindIs "invalid" $.Values.securityContext.runAsUser) }}
{{- $_ := set $context "runAsUser" $.Values.securityContext.runAsUser }}
{{- end }}
{{- if not (kindIs "invalid" $.Values.securityContext.runAsGroup) }}
{{- $_ := set $context "runAsGroup" $.Values.securityContext.runAsGroup }}
{{- end }}
{{- end }}

{{/*
The dashboard's title: dashboard.title, or one naming the release (Grafana refuses two
dashboards with one title in a folder).
*/}}
{{- define "pivotal-sync.dashboardTitle" -}}
{{- .Values.dashboard.title | default (printf "pivotal-sync (%s/%s)" .Release.Namespace .Release.Name) }}
{{- end }}

{{/*
The ConfigMap holding the mapping file: the chart's own (mapping.inline) or an existing one;
empty when there is no mapping.
*/}}
{{- define "pivotal-sync.mappingConfigMap" -}}
{{- if .Values.mapping.inline }}
{{- printf "%s-mapping" (include "pivotal-sync.fullname" .) }}
{{- else }}
{{- .Values.mapping.existingConfigMap }}
{{- end }}
{{- end }}

{{/*
Where the mapping file is mounted in the pod (read-only, outside the read-only root's writable
paths).
*/}}
{{- define "pivotal-sync.mappingDirectory" -}}
/etc/pivotal-sync/mapping
{{- end }}
