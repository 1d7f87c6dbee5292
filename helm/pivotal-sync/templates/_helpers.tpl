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
{{- $s := .Values.kafka.security }}
{{- if and (has $s.protocol (list "SASL_PLAINTEXT" "SASL_SSL")) (not $s.mechanism) }}
{{- fail "kafka.security.mechanism: SASL protocols need a mechanism" }}
{{- end }}
{{- if and $s.mechanism (not (has $s.protocol (list "SASL_PLAINTEXT" "SASL_SSL"))) }}
{{- fail "kafka.security.protocol: must be SASL_SSL or SASL_PLAINTEXT to use a SASL mechanism" }}
{{- end }}
{{- if and (has $s.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) (not $s.sasl.existingSecret) }}
{{- fail "kafka.security.sasl.existingSecret: PLAIN and SCRAM need the Secret with the username and password" }}
{{- end }}
{{- if and (eq $s.mechanism "OAUTHBEARER") (not (and $s.oauth.tokenUrl $s.oauth.existingSecret)) }}
{{- fail "kafka.security.oauth: OAUTHBEARER needs tokenUrl and existingSecret (client id and secret)" }}
{{- end }}
{{- if and (or $s.tls.existingSecret $s.tls.caSecret) (not (has $s.protocol (list "SSL" "SASL_SSL"))) }}
{{- fail "kafka.security.protocol: must be SSL or SASL_SSL when kafka.security.tls Secrets are set" }}
{{- end }}
{{- if and $s.tls.certKey (not $s.tls.existingSecret) }}
{{- fail "kafka.security.tls.existingSecret: the Secret with the client certificate and key is needed for certKey" }}
{{- end }}
{{- if ne (empty $s.tls.certKey) (empty $s.tls.keyKey) }}
{{- fail "kafka.security.tls: a client certificate needs both certKey and keyKey" }}
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
{{- /* Mounted Secrets (TLS keys, mode 0440) belong to this group, so the daemon can read them. */}}
{{- if hasKey $context "runAsGroup" }}
{{- $_ := set $context "fsGroup" $context.runAsGroup }}
{{- end }}
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
Kafka security as PIVOTAL_SYNC_KAFKA_* variables: plain values for the protocol, mechanism and
file paths; secretKeyRef for every credential, so none is ever in the pod spec.
*/}}
{{- define "pivotal-sync.kafkaSecurityEnv" -}}
{{- $s := .Values.kafka.security }}
{{- if ne $s.protocol "PLAINTEXT" }}
- name: PIVOTAL_SYNC_KAFKA_SECURITY_PROTOCOL
  value: {{ $s.protocol | quote }}
{{- end }}
{{- with $s.mechanism }}
- name: PIVOTAL_SYNC_KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
{{- end }}
{{- if has $s.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512") }}
- name: PIVOTAL_SYNC_KAFKA_SASL_USERNAME
{{- if $s.sasl.username }}
  value: {{ $s.sasl.username | quote }}
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ $s.sasl.existingSecret }}
      key: {{ $s.sasl.usernameKey }}
{{- end }}
- name: PIVOTAL_SYNC_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $s.sasl.existingSecret }}
      key: {{ $s.sasl.passwordKey }}
{{- end }}
{{- if eq $s.mechanism "OAUTHBEARER" }}
- name: PIVOTAL_SYNC_KAFKA_OAUTH_TOKEN_URL
  value: {{ $s.oauth.tokenUrl | quote }}
{{- with $s.oauth.scope }}
- name: PIVOTAL_SYNC_KAFKA_OAUTH_SCOPE
  value: {{ . | quote }}
{{- end }}
- name: PIVOTAL_SYNC_KAFKA_OAUTH_CLIENT_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s.oauth.existingSecret }}
      key: {{ $s.oauth.clientIdKey }}
- name: PIVOTAL_SYNC_KAFKA_OAUTH_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $s.oauth.existingSecret }}
      key: {{ $s.oauth.clientSecretKey }}
{{- end }}
{{- if $s.tls.caSecret }}
- name: PIVOTAL_SYNC_KAFKA_SSL_CA_FILE
  value: {{ printf "/etc/pivotal-sync/kafka-ca/%s" $s.tls.caKey | quote }}
{{- end }}
{{- with $s.tls.existingSecret }}
{{- if $s.tls.certKey }}
- name: PIVOTAL_SYNC_KAFKA_SSL_CERT_FILE
  value: {{ printf "/etc/pivotal-sync/kafka-tls/%s" $s.tls.certKey | quote }}
- name: PIVOTAL_SYNC_KAFKA_SSL_KEY_FILE
  value: {{ printf "/etc/pivotal-sync/kafka-tls/%s" $s.tls.keyKey | quote }}
{{- end }}
{{- if $s.tls.keyPasswordKey }}
- name: PIVOTAL_SYNC_KAFKA_SSL_KEY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $s.tls.keyPasswordKey }}
{{- end }}
{{- end }}
{{- if not $s.tls.checkHostname }}
- name: PIVOTAL_SYNC_KAFKA_SSL_CHECK_HOSTNAME
  value: "false"
{{- end }}
{{- end }}

{{/*
Postgres TLS as PIVOTAL_SYNC_DATABASE_SSL* variables (the daemon, the init container and the
migration Job all need them).
*/}}
{{- define "pivotal-sync.databaseTlsEnv" -}}
{{- $t := .Values.databaseTls }}
{{- with $t.sslmode }}
- name: PIVOTAL_SYNC_DATABASE_SSLMODE
  value: {{ . | quote }}
{{- end }}
{{- with $t.existingSecret }}
{{- if $t.caKey }}
- name: PIVOTAL_SYNC_DATABASE_SSLROOTCERT
  value: {{ printf "/etc/pivotal-sync/postgres-tls/%s" $t.caKey | quote }}
{{- end }}
{{- if $t.certKey }}
- name: PIVOTAL_SYNC_DATABASE_SSLCERT
  value: {{ printf "/etc/pivotal-sync/postgres-tls/%s" $t.certKey | quote }}
- name: PIVOTAL_SYNC_DATABASE_SSLKEY
  value: {{ printf "/etc/pivotal-sync/postgres-tls/%s" $t.keyKey | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pivotal-sync.apiCaEnv" -}}
{{- with .Values.apiCa.existingSecret }}
- name: PIVOTAL_SYNC_API_CA_FILE
  value: {{ printf "/etc/pivotal-sync/api-ca/%s" $.Values.apiCa.key | quote }}
{{- end }}
{{- end }}

{{/*
Where the mapping file is mounted in the pod (read-only, outside the read-only root's writable
paths).
*/}}
{{- define "pivotal-sync.mappingDirectory" -}}
/etc/pivotal-sync/mapping
{{- end }}

{{/*
Secret volumes for the TLS files. Mode 0440 with the pod's fsGroup: readable by the daemon's
group only (Postgres client keys must not be world-readable).
*/}}
{{- define "pivotal-sync.tlsVolumes" -}}
{{- with .Values.kafka.security.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with .Values.kafka.security.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with .Values.databaseTls.existingSecret }}
- name: postgres-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with .Values.apiCa.existingSecret }}
- name: api-ca
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "pivotal-sync.tlsVolumeMounts" -}}
{{- if .Values.kafka.security.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/pivotal-sync/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.kafka.security.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/pivotal-sync/kafka-tls
  readOnly: true
{{- end }}
{{- if .Values.databaseTls.existingSecret }}
- name: postgres-tls
  mountPath: /etc/pivotal-sync/postgres-tls
  readOnly: true
{{- end }}
{{- if .Values.apiCa.existingSecret }}
- name: api-ca
  mountPath: /etc/pivotal-sync/api-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "pivotal-sync.databaseTlsVolumeMounts" -}}
{{- if .Values.databaseTls.existingSecret }}
- name: postgres-tls
  mountPath: /etc/pivotal-sync/postgres-tls
  readOnly: true
{{- end }}
{{- end }}

{{/*
Whether the KEDA Kafka scaler needs a TriggerAuthentication made by the chart.
*/}}
{{- define "pivotal-sync.kedaNeedsAuth" -}}
{{- if and .Values.keda.enabled (not .Values.keda.authenticationRef) (or .Values.kafka.security.mechanism .Values.kafka.security.tls.existingSecret .Values.kafka.security.tls.caSecret) }}true{{- end }}
{{- end }}

{{/*
The AWS region of an MSK bootstrap address (b-1.x.y.c2.kafka.eu-west-1.amazonaws.com:9098).
*/}}
{{- define "pivotal-sync.mskRegion" -}}
{{- $found := regexFind "\\.kafka(-serverless)?\\.[a-z0-9-]+\\.amazonaws\\.com" .Values.config.kafkaBootstrapServers }}
{{- regexReplaceAll "^\\.kafka(-serverless)?\\.|\\.amazonaws\\.com$" $found "" }}
{{- end }}
