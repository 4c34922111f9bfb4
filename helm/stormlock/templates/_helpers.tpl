{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "stormlock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, at most 63 characters (DNS label). A release name
that already contains the chart name is used as is.
*/}}
{{- define "stormlock.fullname" -}}
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
The fullname with a suffix, still at most 63 characters: the fullname is cut
to make room. Call with (list $ "suffix").
*/}}
{{- define "stormlock.suffixedName" -}}
{{- $suffix := index . 1 }}
{{- $room := sub 62 (len $suffix) | int }}
{{- printf "%s-%s" (include "stormlock.fullname" (index . 0) | trunc $room | trimSuffix "-") $suffix }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "stormlock.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "stormlock.labels" -}}
helm.sh/chart: {{ include "stormlock.chart" . }}
{{ include "stormlock.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stormlock
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: what the Deployment, Service, PodDisruptionBudget,
ServiceMonitor and NetworkPolicy select the daemon's pods by.
*/}}
{{- define "stormlock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stormlock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of the helm test pod: deliberately not the selector labels, so the
Service never routes to it and the PodDisruptionBudget never counts it.
*/}}
{{- define "stormlock.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "stormlock.name" . | trunc 58 | trimSuffix "-" }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "stormlock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stormlock.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: digest wins over tag; the tag defaults to appVersion.
*/}}
{{- define "stormlock.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret with the server certificate.
*/}}
{{- define "stormlock.tlsSecretName" -}}
{{- .Values.tls.secretName | default (include "stormlock.suffixedName" (list . "tls")) }}
{{- end }}

{{/*
Name of the Secret with the client CA (mutual TLS).
*/}}
{{- define "stormlock.clientCASecretName" -}}
{{- .Values.tls.clientAuth.caSecretName | default (include "stormlock.tlsSecretName" .) }}
{{- end }}

{{/*
Name of the Secret with the helm test's client certificate (mutual TLS), or ""
when the test has none.
*/}}
{{- define "stormlock.testClientSecretName" -}}
{{- if .Values.tests.tls.clientSecretName }}
{{- .Values.tests.tls.clientSecretName }}
{{- else if .Values.tls.certManager.enabled }}
{{- include "stormlock.suffixedName" (list . "test-client") }}
{{- end }}
{{- end }}

{{/*
Whether the chart's Certificate issues the test's client certificate.
*/}}
{{- define "stormlock.issuesTestClientCert" -}}
{{- if and .Values.tests.enabled .Values.tls.clientAuth.enabled (not .Values.tls.dangerouslyDisableTLS) .Values.tls.certManager.enabled (not .Values.tests.tls.clientSecretName) }}true{{ end }}
{{- end }}

{{/*
Fully qualified DNS name of the Service.
*/}}
{{- define "stormlock.serviceFQDN" -}}
{{- printf "%s.%s.svc.%s" (include "stormlock.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/*
"true" when a backend is single-writer (embedded: one file under an exclusive
lock; memory: one process's memory), which pins the daemon to one replica.
*/}}
{{- define "stormlock.singleWriter" -}}
{{- range $name, $b := .Values.backends }}
{{- if and $b (has $b.type (list "embedded" "memory")) }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Names of the single-writer backends, for error messages.
*/}}
{{- define "stormlock.singleWriterBackends" -}}
{{- $names := list }}
{{- range $name, $b := .Values.backends }}
{{- if and $b (has $b.type (list "embedded" "memory")) }}
{{- $names = append $names (printf "%s (%s)" $name $b.type) }}
{{- end }}
{{- end }}
{{- join ", " $names }}
{{- end }}

{{/*
"true" when a backend keeps its state in the data dir (embedded).
*/}}
{{- define "stormlock.embedded" -}}
{{- range $name, $b := .Values.backends }}
{{- if and $b (eq $b.type "embedded") }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Environment variable that carries a backend's secret value:
STORMLOCK_BACKEND_<NAME>_<WHAT>. Call with (list $name "URL").
*/}}
{{- define "stormlock.backendEnv" -}}
{{- printf "STORMLOCK_BACKEND_%s_%s" (index . 0 | upper) (index . 1) }}
{{- end }}

{{/*
A TOML basic string. JSON string escapes (\" \\ \n \uXXXX …) are all valid
TOML escapes, so toJson quotes any value safely.
*/}}
{{- define "stormlock.tomlString" -}}
{{- toString . | toJson }}
{{- end }}

{{/*
Refuse values the daemon cannot run with, each with a message that says what
to change. values.schema.json rejects most of these too; these checks also
hold when schema validation is skipped.
*/}}
{{- define "stormlock.validate" -}}
{{- $single := include "stormlock.singleWriter" . }}
{{- if and $single (gt (int .Values.replicaCount) 1) (not .Values.autoscaling.enabled) }}
{{- fail (printf "replicaCount is %d, but backend %s is single-writer: stormlockd must run exactly one replica with it. Set replicaCount: 1, or move every backend to a shared one (redis, postgres, mysql, etcd, dynamodb) to scale out." (int .Values.replicaCount) (include "stormlock.singleWriterBackends" .)) }}
{{- end }}
{{- if and $single .Values.autoscaling.enabled }}
{{- fail (printf "autoscaling.enabled is true, but backend %s is single-writer: stormlockd must run exactly one replica with it. Set autoscaling.enabled: false, or move every backend to a shared one (redis, postgres, mysql, etcd, dynamodb) to scale out." (include "stormlock.singleWriterBackends" .)) }}
{{- end }}
{{- with .Values.autoscaling }}
{{- if and .enabled (lt (int .maxReplicas) (int .minReplicas)) }}
{{- fail (printf "autoscaling.maxReplicas (%d) is below autoscaling.minReplicas (%d)." (int .maxReplicas) (int .minReplicas)) }}
{{- end }}
{{- if and .enabled (not .targetCPUUtilizationPercentage) (not .targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling.enabled needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage." }}
{{- end }}
{{- end }}
{{- if not .Values.backends }}
{{- fail "backends is empty: define at least one backend (see values.yaml)." }}
{{- end }}
{{- if not (hasKey .Values.backends .Values.config.defaults.backend) }}
{{- fail (printf "config.defaults.backend is %q, which is not a key of backends (%s)." .Values.config.defaults.backend (keys .Values.backends | sortAlpha | join ", ")) }}
{{- end }}
{{- range $i, $r := .Values.config.resources }}
{{- if and $r.backend (not (hasKey $.Values.backends $r.backend)) }}
{{- fail (printf "config.resources[%d] (match %q) routes to backend %q, which is not a key of backends (%s)." $i $r.match $r.backend (keys $.Values.backends | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}
{{- range $name, $b := .Values.backends }}
{{- if has $b.type (list "redis" "postgres" "mysql") }}
{{- if and $b.url $b.urlSecret }}
{{- fail (printf "backends.%s: set url or urlSecret, not both." $name) }}
{{- end }}
{{- if not (or $b.url $b.urlSecret) }}
{{- fail (printf "backends.%s (%s) needs url, or urlSecret {name, key} when the URL carries credentials." $name $b.type) }}
{{- end }}
{{- end }}
{{- if and (eq $b.type "etcd") (not $b.endpoints) }}
{{- fail (printf "backends.%s (etcd) needs endpoints." $name) }}
{{- end }}
{{- if and (eq $b.type "dynamodb") (not $b.table) }}
{{- fail (printf "backends.%s (dynamodb) needs table." $name) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) (not .Values.tls.dangerouslyDisableTLS) }}
{{- fail "tls.certManager.enabled is true but tls.certManager.issuerRef.name is empty: name the cert-manager Issuer or ClusterIssuer that signs the server certificate." }}
{{- end }}
{{- if and .Values.tests.enabled .Values.tls.clientAuth.enabled (not .Values.tls.dangerouslyDisableTLS) (not (include "stormlock.testClientSecretName" .)) }}
{{- fail "tls.clientAuth.enabled requires a client certificate for the helm test: set tests.tls.clientSecretName to a Secret with tls.crt/tls.key, enable tls.certManager so the chart issues one, or set tests.enabled: false." }}
{{- end }}
{{- if and .Values.tls.dangerouslyDisableTLS .Values.tls.clientAuth.enabled }}
{{- fail "tls.clientAuth.enabled needs TLS, but tls.dangerouslyDisableTLS is true." }}
{{- end }}
{{- end }}
