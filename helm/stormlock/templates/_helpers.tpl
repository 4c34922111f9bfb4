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
{{- if not .Values.image.repository }}
{{- fail "image.repository is empty: set it to where you pushed the image built from the repository's Dockerfile (docker build -t REGISTRY/stormlock:TAG . && docker push REGISTRY/stormlock:TAG), e.g. --set image.repository=registry.example.com/stormlock. No public image is published." }}
{{- end }}
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
"true" when callers must present a client certificate (mutual TLS):
tls.clientAuth on a TLS listener. Client certificates need TLS, so
tls.clientAuth is ignored with tls.dangerouslyDisableTLS.
*/}}
{{- define "stormlock.mutualTLS" -}}
{{- if and .Values.tls.clientAuth.enabled (not .Values.tls.dangerouslyDisableTLS) }}true{{ end }}
{{- end }}

{{/*
"true" when bearer tokens are configured: auth.tokens, or [[auth.tokens]]
tables in config.extraToml.
*/}}
{{- define "stormlock.tokens" -}}
{{- if or .Values.auth.tokens (regexMatch "(?m)^[ \t]*\\[\\[[ \t]*auth\\.tokens[ \t]*\\]\\]" (.Values.config.extraToml | default "")) }}true{{ end }}
{{- end }}

{{/*
"true" when the daemon authenticates its callers (client certificates or
bearer tokens); otherwise every caller only declares a name.
*/}}
{{- define "stormlock.authenticates" -}}
{{- if and (not .Values.tls.dangerouslyDisableTLS) (or (include "stormlock.mutualTLS" .) (include "stormlock.tokens" .)) }}true{{ end }}
{{- end }}

{{/*
Why nothing authenticates callers, for messages.
*/}}
{{- define "stormlock.unauthenticatedReason" -}}
{{- if .Values.tls.dangerouslyDisableTLS -}}
tls.dangerouslyDisableTLS is true, so there are no client certificates, and bearer tokens are refused over plaintext
{{- else -}}
tls.clientAuth.enabled is false and auth.tokens is empty
{{- end }}
{{- end }}

{{/*
What to set so that callers are authenticated, for messages.
*/}}
{{- define "stormlock.authenticationRemedy" -}}
{{- if .Values.tls.dangerouslyDisableTLS -}}
serve TLS (tls.dangerouslyDisableTLS: false) with tls.clientAuth.enabled: true, or with bearer tokens in auth.tokens ({principal, sha256} as printed by `stormlockd new-token NAME`, or {principal, sha256Secret: {name, key}})
{{- else -}}
set tls.clientAuth.enabled: true (mutual TLS: client certificates signed by the CA in tls.clientAuth.caSecretName, default the ca.crt of the server's Secret), or add bearer tokens to auth.tokens ({principal, sha256} as printed by `stormlockd new-token NAME`, or {principal, sha256Secret: {name, key}})
{{- end }}
{{- end }}

{{/*
Name of the Secret with the helm test's client certificate (mutual TLS):
tests.tls.clientSecretName, else <fullname>-test-client, which the chart's
Certificate fills with cert-manager and the operator creates otherwise.
*/}}
{{- define "stormlock.testClientSecretName" -}}
{{- .Values.tests.tls.clientSecretName | default (include "stormlock.suffixedName" (list . "test-client")) }}
{{- end }}

{{/*
Whether the chart's Certificate issues the test's client certificate.
*/}}
{{- define "stormlock.issuesTestClientCert" -}}
{{- if and .Values.tests.enabled (include "stormlock.mutualTLS" .) .Values.tls.certManager.enabled (not .Values.tests.tls.clientSecretName) }}true{{ end }}
{{- end }}

{{/*
Whether cert-manager issues the administrator's client certificate
(tls.certManager.adminClient; mutual TLS only).
*/}}
{{- define "stormlock.issuesAdminClientCert" -}}
{{- if and (include "stormlock.mutualTLS" .) .Values.tls.certManager.enabled .Values.tls.certManager.adminClient.enabled }}true{{ end }}
{{- end }}

{{/*
Name of the Secret with the administrator's client certificate.
*/}}
{{- define "stormlock.adminClientSecretName" -}}
{{- .Values.tls.certManager.adminClient.secretName | default (include "stormlock.suffixedName" (list . "admin-client")) }}
{{- end }}

{{/*
[auth] admins as a JSON (= TOML) array: config.auth.admins, plus the
administrator certificate's common name when the chart issues it with
grantAdmin.
*/}}
{{- define "stormlock.admins" -}}
{{- $admins := .Values.config.auth.admins | default list }}
{{- if and (include "stormlock.issuesAdminClientCert" .) .Values.tls.certManager.adminClient.grantAdmin }}
{{- $admins = append $admins .Values.tls.certManager.adminClient.commonName }}
{{- end }}
{{- $admins | uniq | toJson }}
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
{{/*
Pods the release runs in normal operation: 1 with a single-writer backend,
else autoscaling's minimum or replicaCount.
*/}}
{{- define "stormlock.replicas" -}}
{{- if include "stormlock.singleWriter" . }}1{{ else if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

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
Environment variable that carries the SHA-256 of auth.tokens[i] when it comes
from a Secret (sha256Secret): STORMLOCK_AUTH_TOKEN_<i>_SHA256. Call with i.
*/}}
{{- define "stormlock.tokenEnv" -}}
{{- printf "STORMLOCK_AUTH_TOKEN_%d_SHA256" (int .) }}
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
{{- if include "stormlock.embedded" . }}
{{- range .Values.persistence.accessModes }}
{{- if not (has . (list "ReadWriteOnce" "ReadWriteOncePod")) }}
{{- fail (printf "persistence.accessModes has %s: the embedded backend's file must have one writer (two daemons on one lock file would each grant the same lock). Use ReadWriteOncePod (or ReadWriteOnce)." .) }}
{{- end }}
{{- end }}
{{- if and (not .Values.persistence.enabled) (not .Values.persistence.acceptLocksLostOnRestart) }}
{{- fail "persistence.enabled is false with the embedded backend: every lock and fence counter would be lost whenever the pod is replaced (fences go back to 1, so a client holding an old token is no longer fenced off). Keep persistence.enabled: true, or set persistence.acceptLocksLostOnRestart: true to run it that way on purpose." }}
{{- end }}
{{- end }}
{{- with .Values.service }}
{{- if and (eq .type "LoadBalancer") (not .loadBalancerSourceRanges) (not .dangerouslyAllowAnySource) }}
{{- fail "service.type is LoadBalancer with no service.loadBalancerSourceRanges: the gRPC port would face every address that reaches the load balancer. List the client networks in service.loadBalancerSourceRanges (CIDRs), or set service.dangerouslyAllowAnySource: true if something else in front restricts them." }}
{{- end }}
{{- if and (eq .type "NodePort") (not .dangerouslyAllowAnySource) }}
{{- fail "service.type is NodePort: the gRPC port would be open on every node's address to whatever reaches the nodes, and a NodePort cannot be limited by source. Use ClusterIP (with an Ingress or a mesh), or LoadBalancer with service.loadBalancerSourceRanges, or set service.dangerouslyAllowAnySource: true if a firewall in front restricts the nodes' ports." }}
{{- end }}
{{- end }}
{{- $drain := add (int .Values.lifecycle.preStopDelaySeconds) (int .Values.config.shutdownGraceSeconds) }}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopDelaySeconds (%d) plus config.shutdownGraceSeconds (%d): Kubernetes would kill the daemon before in-flight calls finish. Set terminationGracePeriodSeconds to at least %d." (int .Values.terminationGracePeriodSeconds) (int .Values.lifecycle.preStopDelaySeconds) (int .Values.config.shutdownGraceSeconds) (add $drain 5)) }}
{{- end }}
{{- if regexMatch "(?m)^[ \t]*(\\[[ \t]*auth[ \t]*\\]|shutdown_grace[ \t]*=)" (.Values.config.extraToml | default "") }}
{{- fail "config.extraToml cannot set [auth] or shutdown_grace: it is appended after the last table, where they would be a duplicate table or land in the wrong one. Use config.auth (admins, default, identity, rules) and config.shutdownGraceSeconds." }}
{{- end }}
{{- if and $single (gt (int .Values.replicaCount) 1) (not .Values.autoscaling.enabled) }}
{{- fail (printf "replicaCount is %d, but backend %s is single-writer: stormlockd must run exactly one replica with it. Set replicaCount: 1, or move every backend to a shared one (redis, postgres, mysql, etcd, dynamodb) to scale out." (int .Values.replicaCount) (include "stormlock.singleWriterBackends" .)) }}
{{- end }}
{{- if and $single .Values.autoscaling.enabled }}
{{- fail (printf "autoscaling.enabled is true, but backend %s is single-writer: stormlockd must run exactly one replica with it. Set autoscaling.enabled: false, or move every backend to a shared one (redis, postgres, mysql, etcd, dynamodb) to scale out." (include "stormlock.singleWriterBackends" .)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.targetCPUUtilizationPercentage }}
{{- $cpu := toString (dig "requests" "cpu" "" .Values.resources) }}
{{- $millicores := 0 }}
{{- if hasSuffix "m" $cpu }}{{ $millicores = trimSuffix "m" $cpu | int }}{{ else if $cpu }}{{ $millicores = mulf (float64 $cpu) 1000 | int }}{{ end }}
{{- if lt $millicores 100 }}
{{- fail (printf "autoscaling.targetCPUUtilizationPercentage is set, but resources.requests.cpu is %s: the target is a share of the request, so a request under 100m scales out on idle noise. Set resources.requests.cpu to what one daemon uses under its normal load (at least 100m), or scale on memory only." (default "unset" $cpu)) }}
{{- end }}
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
{{- if eq $b.type "etcd" }}
{{- $secure := 0 }}
{{- range $b.endpoints }}{{ if hasPrefix "https://" . }}{{ $secure = add1 $secure }}{{ end }}{{ end }}
{{- if and (gt $secure 0) (lt $secure (len $b.endpoints)) }}
{{- fail (printf "backends.%s (etcd): endpoints must be all http:// or all https:// (stormlockd talks to every member the same way): %s." $name (join ", " $b.endpoints)) }}
{{- end }}
{{- $ca := and $b.tls (hasKey $b.tls "ca" | ternary $b.tls.ca true) }}
{{- range $b.endpoints }}
{{- if and (hasPrefix "https://" .) (not $ca) }}
{{- fail (printf "backends.%s (etcd): endpoint %s is https://, so stormlockd needs the CA that signed the members' certificates (ca_file: required with https:// endpoints): set backends.%s.tls.secretName to a Secret with ca.crt (and tls.crt/tls.key with tls.clientCert: true)." $name . $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (eq $b.type "dynamodb") (not $b.table) }}
{{- fail (printf "backends.%s (dynamodb) needs table." $name) }}
{{- end }}
{{- if and (eq $b.type "dynamodb") (not $b.region) }}
{{- $envRegion := false }}
{{- range $.Values.extraEnv }}{{ if has .name (list "AWS_REGION" "AWS_DEFAULT_REGION") }}{{ $envRegion = true }}{{ end }}{{ end }}
{{- if and (not $envRegion) (not $.Values.extraEnvFrom) }}
{{- fail (printf "backends.%s (dynamodb) needs region (or AWS_REGION in extraEnv): stormlockd refuses to start without one." $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) (not .Values.tls.dangerouslyDisableTLS) }}
{{- fail "tls.certManager.enabled is true but tls.certManager.issuerRef.name is empty: name the cert-manager Issuer or ClusterIssuer that signs the server certificate." }}
{{- end }}
{{- range $i, $t := .Values.auth.tokens }}
{{- if not $t.principal }}
{{- fail (printf "auth.tokens[%d] needs a principal: the name the token authenticates as." $i) }}
{{- end }}
{{- if and $t.sha256 $t.sha256Secret }}
{{- fail (printf "auth.tokens[%d] (principal %q): set sha256 or sha256Secret, not both." $i $t.principal) }}
{{- end }}
{{- if not (or $t.sha256 $t.sha256Secret) }}
{{- fail (printf "auth.tokens[%d] (principal %q) needs sha256 (64 hex digits, from `stormlockd new-token NAME`), or sha256Secret {name, key} naming a Secret that holds it." $i $t.principal) }}
{{- end }}
{{- if and $t.sha256 (not (regexMatch "^[0-9a-f]{64}$" (toString $t.sha256))) }}
{{- fail (printf "auth.tokens[%d] (principal %q): sha256 must be the token's SHA-256 as 64 lowercase hex digits (`stormlockd new-token NAME` prints it; `stormlockd hash-token` hashes an existing token), never the token itself." $i $t.principal) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.dangerouslyDisableTLS (include "stormlock.tokens" .) }}
{{- fail "auth.tokens (or [[auth.tokens]] in config.extraToml) is set with tls.dangerouslyDisableTLS: bearer tokens would cross the network readable by anyone on the path, so stormlockd refuses to start this way. Serve TLS (tls.dangerouslyDisableTLS: false), or remove the tokens." }}
{{- end }}
{{- if not (include "stormlock.authenticates" .) }}
{{- $admins := .Values.config.auth.admins | default list }}
{{- if $admins }}
{{- fail (printf "config.auth.admins is set (%s), but nothing authenticates callers (%s): any caller could claim an administrator's name, so stormlockd refuses to start this way (auth.dangerouslyAllowUnauthenticated does not change that). To have administrators, %s; otherwise remove config.auth.admins." (join ", " $admins) (include "stormlock.unauthenticatedReason" .) (include "stormlock.authenticationRemedy" .)) }}
{{- end }}
{{- if .Values.config.auth.rules }}
{{- fail (printf "config.auth.rules is set, but nothing authenticates callers (%s): any caller could pass a rule by declaring another name, so stormlockd refuses to start this way (auth.dangerouslyAllowUnauthenticated does not change that). To use access rules, %s." (include "stormlock.unauthenticatedReason" .) (include "stormlock.authenticationRemedy" .)) }}
{{- end }}
{{- if regexMatch "(?m)^[ \t]*\\[\\[[ \t]*auth\\.rules[ \t]*\\]\\]" (.Values.config.extraToml | default "") }}
{{- fail (printf "config.extraToml has [[auth.rules]], but nothing authenticates callers (%s): any caller could pass a rule by declaring another name, so stormlockd refuses to start this way (auth.dangerouslyAllowUnauthenticated does not change that). To use access rules, %s." (include "stormlock.unauthenticatedReason" .) (include "stormlock.authenticationRemedy" .)) }}
{{- end }}
{{- if not .Values.auth.dangerouslyAllowUnauthenticated }}
{{- fail (printf "Nothing would authenticate callers (%s): anyone who can reach the gRPC port could list, take and release any lock under any name. To authenticate them, %s. Only for a throwaway test cluster, set auth.dangerouslyAllowUnauthenticated: true to run without authentication." (include "stormlock.unauthenticatedReason" .) (include "stormlock.authenticationRemedy" .)) }}
{{- end }}
{{- end }}
{{- end }}
