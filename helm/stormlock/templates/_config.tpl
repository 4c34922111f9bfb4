{{/*
stormlockd's config.toml, rendered from .Values.config, .Values.backends and
.Values.tls and .Values.auth. Keys are the daemon's (snake_case); secrets
appear only as ${ENV_VAR} references that the daemon expands from the pod's
environment.
*/}}
{{- define "stormlock.config" -}}
{{- $ports := .Values.containerPorts -}}
{{- $bind := .Values.bindAddress -}}
# stormlockd configuration, rendered by the {{ include "stormlock.chart" . }} Helm chart from its values.
listen = {{ printf "%s:%d" $bind (int $ports.grpc) | include "stormlock.tomlString" }}
metrics_listen = {{ printf "%s:%d" $bind (int $ports.metrics) | include "stormlock.tomlString" }}
health_listen = {{ printf "%s:%d" $bind (int $ports.health) | include "stormlock.tomlString" }}
data_dir = "/var/lib/stormlock"
shutdown_grace = "{{ int .Values.config.shutdownGraceSeconds }}s"
{{- if not .Values.tls.dangerouslyDisableTLS }}

[tls]
cert = "/etc/stormlock/tls/tls.crt"
key = "/etc/stormlock/tls/tls.key"
{{- if include "stormlock.mutualTLS" . }}
client_ca = "/etc/stormlock/client-ca/ca.crt"
{{- end }}
{{- end }}

[auth]
admins = {{ include "stormlock.admins" . }}
{{- with .Values.config.auth }}
{{- if .default }}
default = {{ include "stormlock.tomlString" .default }}
{{- end }}
{{- if .identity }}
identity = {{ include "stormlock.tomlString" .identity }}
{{- end }}
{{- range .rules }}

[[auth.rules]]
principals = {{ toJson .principals }}
resources = {{ toJson .resources }}
actions = {{ toJson .actions }}
{{- if .effect }}
effect = {{ include "stormlock.tomlString" .effect }}
{{- end }}
{{- end }}
{{- end }}
{{- range $i, $t := .Values.auth.tokens }}

[[auth.tokens]]
principal = {{ include "stormlock.tomlString" $t.principal }}
{{- if $t.sha256Secret }}
sha256 = {{ printf "${%s}" (include "stormlock.tokenEnv" $i) | include "stormlock.tomlString" }}
{{- else }}
sha256 = {{ include "stormlock.tomlString" $t.sha256 }}
{{- end }}
{{- end }}

[defaults]
{{- with .Values.config.defaults }}
ttl = {{ include "stormlock.tomlString" .ttl }}
max_ttl = {{ include "stormlock.tomlString" .maxTtl }}
backend = {{ include "stormlock.tomlString" .backend }}
backend_timeout = {{ include "stormlock.tomlString" .backendTimeout }}
{{- end }}
{{- range $name, $b := .Values.backends }}

[backends.{{ $name }}]
type = {{ include "stormlock.tomlString" $b.type }}
{{- if eq $b.type "embedded" }}
path = {{ $b.path | default "locks.redb" | include "stormlock.tomlString" }}
{{- else if has $b.type (list "redis" "postgres" "mysql") }}
{{- if $b.urlSecret }}
url = {{ printf "${%s}" (include "stormlock.backendEnv" (list $name "URL")) | include "stormlock.tomlString" }}
{{- else }}
url = {{ include "stormlock.tomlString" $b.url }}
{{- end }}
{{- if eq $b.type "redis" }}
{{- if hasKey $b "prefix" }}
prefix = {{ include "stormlock.tomlString" $b.prefix }}
{{- end }}
{{- else }}
{{- if $b.table }}
table = {{ include "stormlock.tomlString" $b.table }}
{{- end }}
{{- if hasKey $b "createTable" }}
create_table = {{ $b.createTable }}
{{- end }}
{{- if $b.poolSize }}
pool_size = {{ int $b.poolSize }}
{{- end }}
{{- with include "stormlock.sqlTLSMode" $b }}
tls = {{ include "stormlock.tomlString" . }}
{{- end }}
{{- end }}
{{- else if eq $b.type "etcd" }}
endpoints = {{ toJson $b.endpoints }}
{{- if $b.username }}
username = {{ include "stormlock.tomlString" $b.username }}
{{- end }}
{{- if $b.passwordSecret }}
password = {{ printf "${%s}" (include "stormlock.backendEnv" (list $name "PASSWORD")) | include "stormlock.tomlString" }}
{{- end }}
{{- if hasKey $b "prefix" }}
prefix = {{ include "stormlock.tomlString" $b.prefix }}
{{- end }}
{{- else if eq $b.type "dynamodb" }}
table = {{ include "stormlock.tomlString" $b.table }}
{{- if $b.region }}
region = {{ include "stormlock.tomlString" $b.region }}
{{- end }}
{{- if $b.endpoint }}
endpoint = {{ include "stormlock.tomlString" $b.endpoint }}
{{- end }}
{{- if hasKey $b "createTable" }}
create_table = {{ $b.createTable }}
{{- end }}
{{- end }}
{{- if include "stormlock.backendCA" $b }}
ca_file = "/etc/stormlock/backends/{{ $name }}/ca.crt"
{{- end }}
{{- if include "stormlock.backendClientCert" $b }}
cert_file = "/etc/stormlock/backends/{{ $name }}/tls.crt"
key_file = "/etc/stormlock/backends/{{ $name }}/tls.key"
{{- end }}
{{- with $b.connectTimeout }}
connect_timeout = {{ include "stormlock.tomlString" . }}
{{- end }}
{{- end }}
{{- range .Values.config.resources }}

[[resources]]
match = {{ include "stormlock.tomlString" .match }}
{{- if .backend }}
backend = {{ include "stormlock.tomlString" .backend }}
{{- end }}
{{- if .ttl }}
ttl = {{ include "stormlock.tomlString" .ttl }}
{{- end }}
{{- if .maxTtl }}
max_ttl = {{ include "stormlock.tomlString" .maxTtl }}
{{- end }}
{{- end }}
{{- with .Values.config.extraToml }}

{{ . }}
{{- end }}
{{ end }}
