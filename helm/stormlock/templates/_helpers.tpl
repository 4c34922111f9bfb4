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
Where the client CA (mutual TLS) comes from, "" without mutual TLS:
  secret     tls.clientAuth.caSecretName: a CA certificate you manage; the
             chart issues no client certificates.
  dedicated  cert-manager: the release's own client CA, in
             tls.certManager.clientCA.secretName (created by the chart unless
             clientCA.create is false), with a CA Issuer for client certificates.
  server     the ca.crt of the server's Secret: without cert-manager (a Secret
             you create), or with tls.certManager.clientCA.dangerouslyUseServerIssuer.
*/}}
{{- define "stormlock.clientCAMode" -}}
{{- if include "stormlock.mutualTLS" . }}
{{- if .Values.tls.clientAuth.caSecretName }}secret
{{- else if and .Values.tls.certManager.enabled (not .Values.tls.certManager.clientCA.dangerouslyUseServerIssuer) }}dedicated
{{- else }}server
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the Secret with the client CA (mutual TLS).
*/}}
{{- define "stormlock.clientCASecretName" -}}
{{- $mode := include "stormlock.clientCAMode" . }}
{{- if eq $mode "secret" }}{{ .Values.tls.clientAuth.caSecretName }}
{{- else if eq $mode "dedicated" }}{{ include "stormlock.clientCAKeyPairSecretName" . }}
{{- else }}{{ include "stormlock.tlsSecretName" . }}
{{- end }}
{{- end }}

{{/*
Key of the client CA certificate in that Secret: the CA's own tls.crt for the
dedicated client CA (a CA key pair), else tls.clientAuth.caKey.
*/}}
{{- define "stormlock.clientCAKey" -}}
{{- if eq (include "stormlock.clientCAMode" .) "dedicated" }}tls.crt{{ else }}{{ .Values.tls.clientAuth.caKey }}{{ end }}
{{- end }}

{{/*
Secret with the dedicated client CA's key pair (tls.crt, tls.key).
*/}}
{{- define "stormlock.clientCAKeyPairSecretName" -}}
{{- .Values.tls.certManager.clientCA.secretName | default (include "stormlock.suffixedName" (list . "client-ca")) }}
{{- end }}

{{/*
The cert-manager issuer of client certificates, as an issuerRef (YAML), or
"" when the chart issues none (tls.clientAuth.caSecretName: your own CA).
*/}}
{{- define "stormlock.clientIssuerRef" -}}
{{- $mode := include "stormlock.clientCAMode" . }}
{{- if and .Values.tls.certManager.enabled (eq $mode "dedicated") -}}
name: {{ include "stormlock.suffixedName" (list . "client-ca") }}
kind: Issuer
group: cert-manager.io
{{- else if and .Values.tls.certManager.enabled (eq $mode "server") -}}
name: {{ .Values.tls.certManager.issuerRef.name }}
kind: {{ .Values.tls.certManager.issuerRef.kind }}
group: {{ .Values.tls.certManager.issuerRef.group }}
{{- end }}
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
set tls.clientAuth.enabled: true (mutual TLS: client certificates signed by the client CA: with cert-manager the release's own, tls.certManager.clientCA; otherwise tls.clientAuth.caSecretName, default the ca.crt of the server's Secret), or add bearer tokens to auth.tokens ({principal, sha256} as printed by `stormlockd new-token NAME`, or {principal, sha256Secret: {name, key}})
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
{{- if and .Values.tests.enabled (include "stormlock.clientIssuerRef" .) (not .Values.tests.tls.clientSecretName) }}true{{ end }}
{{- end }}

{{/*
Whether cert-manager issues the administrator's client certificate
(tls.certManager.adminClient; mutual TLS only).
*/}}
{{- define "stormlock.issuesAdminClientCert" -}}
{{- if and (include "stormlock.clientIssuerRef" .) .Values.tls.certManager.adminClient.enabled }}true{{ end }}
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
Environment variable that carries config.notify[i]'s URL or signing secret
when it comes from a Secret: STORMLOCK_NOTIFY_<i>_<WHAT>. Call with (list i WHAT).
*/}}
{{- define "stormlock.notifyEnv" -}}
{{- printf "STORMLOCK_NOTIFY_%d_%s" (index . 0) (index . 1) }}
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
"true" when a backend's URL carries a literal password: in its user
information, or in a password/secret/token query parameter, anything but
${VAR} references (which stormlockd expands from the environment, set from a
Secret). A `$` is no way around it: `pa$$word`, `$${X}` (a literal ${X}) and
an unterminated `${X` are literal. The same patterns as values.schema.json's
backendUrl. Call with the URL.
*/}}
{{- define "stormlock.literalPassword" -}}
{{- if or (regexMatch `^[A-Za-z][A-Za-z0-9+.-]*://[^/?#:]*:(\$\{[A-Za-z0-9_]+\})*(\$(\{([A-Za-z0-9_]+([^A-Za-z0-9_}/?#][^/?#]*)?|[^A-Za-z0-9_/?#][^/?#]*)?|[^{/?#][^/?#]*)?|[^$/?#][^/?#]*)@[^/?#@]*([/?#]|$)` .) (regexMatch `[?&][^=&#]*(?i:pass|pwd|secret|token)[^=&#]*=(\$\{[A-Za-z0-9_]+\})*(\$(\{([A-Za-z0-9_]+([^A-Za-z0-9_}&#][^&#]*)?|[^A-Za-z0-9_&#][^&#]*)?|[^{&#][^&#]*)?|[^$&#][^&#]*)(&|#|$)` .) }}true{{ end }}
{{- end }}

{{/*
"true" when backend $b gets its engine's CA from a Secret (tls.secretName;
for etcd unless tls.ca is false). Call with the backend's values.
*/}}
{{- define "stormlock.backendCA" -}}
{{- if and . (kindIs "map" .tls) .tls.secretName (hasKey .tls "ca" | ternary .tls.ca true) }}true{{ end }}
{{- end }}

{{/*
"true" when backend $b gets a client certificate from a Secret
(tls.clientCert: tls.crt and tls.key from tls.clientCertSecretName, default
tls.secretName), rendered as cert_file and key_file: redis, postgres, mysql
and etcd (DynamoDB authenticates with AWS credentials instead).
*/}}
{{- define "stormlock.backendClientCert" -}}
{{- if and . (has .type (list "redis" "postgres" "mysql" "etcd")) (kindIs "map" .tls) .tls.clientCert }}true{{ end }}
{{- end }}

{{/*
The Secret a backend's client certificate comes from: tls.clientCertSecretName,
default tls.secretName. Call with the backend's values.
*/}}
{{- define "stormlock.backendClientCertSecretName" -}}
{{- .tls.clientCertSecretName | default .tls.secretName | default "" }}
{{- end }}

{{/*
The TLS mode rendered for a postgres/mysql backend: tls.mode, verify-full
when `tls` is set without one, "" without `tls` (the URL decides).
*/}}
{{- define "stormlock.sqlTLSMode" -}}
{{- if and . (has .type (list "postgres" "mysql")) (hasKey . "tls") }}
{{- (.tls | default dict).mode | default "verify-full" }}
{{- end }}
{{- end }}

{{/*
A security context (pod or container) with the user and group ids left out
when the platform assigns them (openshift: true). Call with (list $ context).
*/}}
{{- define "stormlock.securityContext" -}}
{{- $ctx := index . 1 | default dict }}
{{- if (index . 0).Values.openshift }}
{{- $ctx = omit $ctx "runAsUser" "runAsGroup" "fsGroup" }}
{{- end }}
{{- toYaml $ctx }}
{{- end }}

{{/*
The claim the embedded backend's data dir uses in this rendering, "" when the
data dir is not persistent (no embedded backend, or persistence off).
*/}}
{{- define "stormlock.dataClaim" -}}
{{- if and (include "stormlock.embedded" .) .Values.persistence.enabled }}
{{- .Values.persistence.existingClaim | default (include "stormlock.suffixedName" (list . "data")) }}
{{- end }}
{{- end }}

{{/*
The embedded store of the release as it runs now, read from the cluster with
`lookup` (empty under `helm template` and client-side dry runs, which see no
cluster): JSON {"deployment", "claim", "paths": {backend: file}} of this
release's Deployment (found by Helm's release annotations, so a changed
fullname is found too), its data claim, and the embedded backends' files in
the config.toml of its ConfigMap; {} when there is none.
*/}}
{{- define "stormlock.runningStore" -}}
{{- $found := dict }}
{{- $deployments := lookup "apps/v1" "Deployment" .Release.Namespace "" }}
{{- range (get $deployments "items" | default list) }}
{{- $annotations := .metadata.annotations | default dict }}
{{- if and (eq (get $annotations "meta.helm.sh/release-name") $.Release.Name) (eq (get $annotations "meta.helm.sh/release-namespace") $.Release.Namespace) }}
{{- $claim := "" }}
{{- $configMap := "" }}
{{- range (dig "spec" "template" "spec" "volumes" list .) }}
{{- if and (eq .name "data") .persistentVolumeClaim }}{{ $claim = .persistentVolumeClaim.claimName }}{{ end }}
{{- if and (eq .name "config") .configMap }}{{ $configMap = .configMap.name }}{{ end }}
{{- end }}
{{- $paths := dict }}
{{- if $configMap }}
{{- $text := dig "data" "config.toml" "" (lookup "v1" "ConfigMap" $.Release.Namespace $configMap) }}
{{- $table := `(?m)^\[backends\.([a-z0-9_]+)\]\ntype = "embedded"\npath = "([^"\n]*)"` }}
{{- range regexFindAll $table $text -1 }}
{{- $_ := set $paths (regexReplaceAll $table . "${1}") (regexReplaceAll $table . "${2}") }}
{{- end }}
{{- end }}
{{- $found = dict "deployment" .metadata.name "claim" $claim "paths" $paths }}
{{- end }}
{{- end }}
{{- toJson $found }}
{{- end }}

{{/*
How this rendering moves the embedded store away from where the running
release keeps it (stormlock.runningStore), as a JSON list of sentences; []
when nothing moves or nothing is known.
*/}}
{{- define "stormlock.storeChanges" -}}
{{- $running := include "stormlock.runningStore" . | fromJson }}
{{- $changes := list }}
{{- if $running.claim }}
{{- $paths := list }}
{{- range $name, $b := .Values.backends }}
{{- if and $b (eq $b.type "embedded") }}{{ $paths = append $paths ($b.path | default "locks.redb") }}{{ end }}
{{- end }}
{{- $claim := include "stormlock.dataClaim" . }}
{{- if not (include "stormlock.embedded" .) }}
{{- $changes = append $changes (printf "no backend is embedded any more, so claim %s is no longer mounted" $running.claim) }}
{{- else if not $claim }}
{{- $changes = append $changes (printf "the data dir moves from claim %s to an emptyDir (persistence.enabled: false)" $running.claim) }}
{{- else if ne $claim $running.claim }}
{{- $changes = append $changes (printf "the data dir moves from claim %s to claim %s" $running.claim $claim) }}
{{- end }}
{{- if $paths }}
{{- range $name, $path := $running.paths }}
{{- $now := get $.Values.backends $name }}
{{- if and $now (eq $now.type "embedded") }}
{{- if ne ($now.path | default "locks.redb") $path }}
{{- $changes = append $changes (printf "backend %s's file moves from %s to %s" $name $path ($now.path | default "locks.redb")) }}
{{- end }}
{{- else if not (has $path $paths) }}
{{- $changes = append $changes (printf "file %s (backend %s) is no longer used: the embedded backends now use %s" $path $name (join ", " (uniq $paths))) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $changes }}
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
{{- include "stormlock.validateConfig" . }}
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
{{- if and $b.url (include "stormlock.literalPassword" (toString $b.url)) }}
{{- fail (printf "backends.%s.url carries a literal password: a password in a URL given in the values ends up in the ConfigMap, readable by whoever may read it. Put the whole URL in a Secret (backends.%s.urlSecret {name, key}), or write the password as ${VAR} with VAR set from a Secret in extraEnv (a `$` in the password does not make it a reference: only ${NAME} does)." $name $name) }}
{{- end }}
{{- end }}
{{- if and (eq $b.type "dynamodb") $b.endpoint (include "stormlock.literalPassword" (toString $b.endpoint)) }}
{{- fail (printf "backends.%s.endpoint carries a literal password: use ${VAR} with VAR set from a Secret in extraEnv." $name) }}
{{- end }}
{{- if and $b.connectTimeout (regexMatch "^(0+ ?[a-z]+ ?)+$" (toString $b.connectTimeout)) }}
{{- fail (printf "backends.%s (%s): connect_timeout: must be at least 1s (backends.%s.connectTimeout is %s)." $name $b.type $name (toString $b.connectTimeout)) }}
{{- end }}
{{- $ca := include "stormlock.backendCA" $b }}
{{- $clientCert := include "stormlock.backendClientCert" $b }}
{{- if and $clientCert (not (include "stormlock.backendClientCertSecretName" $b)) }}
{{- fail (printf "backends.%s (%s): tls.clientCert is true but no Secret is named: set tls.clientCertSecretName (or tls.secretName) to the Secret holding the client certificate (keys tls.crt and tls.key, e.g. a cert-manager Certificate's Secret)." $name $b.type) }}
{{- end }}
{{- if and (eq $b.type "redis") (hasKey $b "tls") (not $ca) (not $clientCert) }}
{{- fail (printf "backends.%s (redis): tls.secretName is empty: name the Secret holding the CA that signed Redis's certificate (key tls.caKey, default ca.crt), or a client certificate (tls.clientCert: true). A rediss:// url without a private CA needs no tls: the public web roots verify it." $name) }}
{{- end }}
{{- if and (eq $b.type "redis") (or $ca $clientCert) $b.url (not (hasPrefix "rediss://" (toString $b.url))) }}
{{- fail (printf "backends.%s (redis): %s: only used with a rediss:// url: backends.%s.url is redis:// (plaintext), so %s. Use rediss:// (TLS), or remove backends.%s.tls." $name (ternary "ca_file" "cert_file" (not (empty $ca))) $name (ternary "the CA in tls.secretName would verify nothing" "the client certificate would never be presented" (not (empty $ca))) $name) }}
{{- end }}
{{- $mode := include "stormlock.sqlTLSMode" $b }}
{{- if and $mode (not (has $mode (list "disable" "require" "verify-full"))) }}
{{- fail (printf "backends.%s (%s): tls.mode is %q: use verify-full, require or disable." $name $b.type $mode) }}
{{- end }}
{{- if and $mode $ca (ne $mode "verify-full") }}
{{- fail (printf "backends.%s (%s): ca_file: only used with tls = \"verify-full\": backends.%s.tls.mode is %s, so the CA in tls.secretName would verify nothing. Set tls.mode: verify-full (the default), or remove tls.secretName." $name $b.type $name $mode) }}
{{- end }}
{{- if and $mode $clientCert (eq $mode "disable") }}
{{- fail (printf "backends.%s (%s): cert_file: only used with tls = \"require\" or \"verify-full\": backends.%s.tls.mode is disable, so the client certificate would never be presented. Set tls.mode: verify-full (the default), or remove tls.clientCert." $name $b.type $name) }}
{{- end }}
{{- if and (eq $b.type "dynamodb") $ca (not (hasPrefix "https://" (toString $b.endpoint))) }}
{{- fail (printf "backends.%s (dynamodb): ca_file: only used with an https:// endpoint: %s, and AWS's own endpoints are verified with the system roots. Set backends.%s.endpoint to the https:// URL your private CA signed, or remove backends.%s.tls." $name (ternary (printf "backends.%s.endpoint is %s" $name (toString $b.endpoint)) (printf "backends.%s.endpoint is not set" $name) (not (empty $b.endpoint))) $name $name) }}
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
{{- if and (eq $secure 0) (or $ca (include "stormlock.backendClientCert" $b)) }}
{{- fail (printf "backends.%s (etcd): %s: only used with https:// endpoints: the endpoints are http:// (plaintext). Use https:// endpoints, or remove backends.%s.tls." $name (ternary "ca_file" "cert_file" (not (empty $ca))) $name) }}
{{- end }}
{{- if and $b.username (not $b.passwordSecret) }}
{{- fail (printf "backends.%s (etcd): password: must be set with username: set backends.%s.passwordSecret {name, key}." $name $name) }}
{{- end }}
{{- if and $b.passwordSecret (not $b.username) }}
{{- fail (printf "backends.%s (etcd): username: must be set with password: set backends.%s.username." $name $name) }}
{{- end }}
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
{{- if and .Values.tls.clientAuth.caSecretName .Values.tls.certManager.clientCA.dangerouslyUseServerIssuer }}
{{- fail "tls.clientAuth.caSecretName and tls.certManager.clientCA.dangerouslyUseServerIssuer are both set: the first names a client CA of yours, the second trusts the server issuer's CA instead. Keep one (better: neither, and let the chart create a client CA of the release's own)." }}
{{- end }}
{{- $storeChanges := include "stormlock.storeChanges" . | fromJsonArray }}
{{- if and $storeChanges (not .Values.persistence.acceptLocksLostOnChange) }}
{{- fail (printf "This upgrade would move the embedded backend's store: %s. It would start empty there: every lock would be lost and fence tokens would restart from 1, so a client holding an old token would no longer be fenced off. Keep persistence.existingClaim and the backends' path as they are, or set persistence.acceptLocksLostOnChange: true for this one upgrade (to keep the locks and fences, first scale the Deployment to 0 and copy the file to the new place)." (join "; " $storeChanges)) }}
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
