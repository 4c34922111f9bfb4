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
{{- range .Values.config.freezes }}
{{- $freeze := . }}

[[freezes]]
name = {{ include "stormlock.tomlString" .name }}
match = {{ toJson .match }}
{{- range $key := list "schedule" "duration" "start" "end" "timezone" "reason" }}
{{- with index $freeze $key }}
{{ $key }} = {{ include "stormlock.tomlString" . }}
{{- end }}
{{- end }}
{{- with .exempt }}
exempt = {{ toJson . }}
{{- end }}
{{- end }}
{{- range $i, $n := .Values.config.notify }}

[[notify]]
name = {{ include "stormlock.tomlString" $n.name }}
{{- if $n.urlSecret }}
url = {{ printf "${%s}" (include "stormlock.notifyEnv" (list $i "URL")) | include "stormlock.tomlString" }}
{{- else }}
url = {{ include "stormlock.tomlString" $n.url }}
{{- end }}
{{- with $n.format }}
format = {{ include "stormlock.tomlString" . }}
{{- end }}
events = {{ toJson $n.events }}
{{- with $n.match }}
match = {{ toJson . }}
{{- end }}
{{- if $n.signingSecret }}
secret = {{ printf "${%s}" (include "stormlock.notifyEnv" (list $i "SECRET")) | include "stormlock.tomlString" }}
{{- end }}
{{- with $n.timeout }}
timeout = {{ include "stormlock.tomlString" . }}
{{- end }}
{{- with $n.attempts }}
attempts = {{ . }}
{{- end }}
{{- with $n.queue }}
queue = {{ . }}
{{- end }}
{{- end }}
{{- with .Values.config.extraToml }}

{{ . }}
{{- end }}
{{ end }}

{{/*
Seconds in a duration as stormlockd reads it (api/duration.rs): a bare number
of seconds, or number+unit pairs whose unit is a prefix of days, hours,
minutes or seconds ("m" is minutes). Used to compare durations the way the
daemon does.
*/}}
{{- define "stormlock.seconds" -}}
{{- $text := trim (toString .) -}}
{{- $total := 0 -}}
{{- if regexMatch "^[0-9]+$" $text -}}
{{- $total = atoi $text -}}
{{- else -}}
{{- $units := dict "d" 86400 "h" 3600 "m" 60 "s" 1 -}}
{{- range regexFindAll "[0-9]+ ?[A-Za-z]+" $text -1 -}}
{{- $unit := regexFind "[A-Za-z]+$" . | lower | trunc 1 -}}
{{- $total = add $total (mul (atoi (regexFind "^[0-9]+" .)) (get $units $unit | default 0)) -}}
{{- end -}}
{{- end -}}
{{- $total -}}
{{- end }}

{{/*
A number of seconds written as stormlockd writes durations in its messages
(format_duration): 1d2h, 30m, 0s.
*/}}
{{- define "stormlock.formatDuration" -}}
{{- $secs := int64 . -}}
{{- $out := "" -}}
{{- range $u := list (list "d" 86400) (list "h" 3600) (list "m" 60) (list "s" 1) -}}
{{- $size := int64 (index $u 1) -}}
{{- if ge $secs $size -}}
{{- $out = printf "%s%d%s" $out (div $secs $size) (index $u 0) -}}
{{- $secs = mod $secs $size -}}
{{- end -}}
{{- end -}}
{{- $out | default "0s" -}}
{{- end }}

{{/*
Refuse the config values stormlockd's Config::validate refuses (TTLs, the
backend timeout, key prefixes) and listeners it could not bind, in the
daemon's words, so that `helm upgrade` fails instead of the pods
crash-looping. Included by stormlock.validate.
*/}}
{{- define "stormlock.validateConfig" -}}
{{- $ports := .Values.containerPorts }}
{{- range $pair := list (list "metrics" "grpc") (list "health" "grpc") (list "health" "metrics") }}
{{- $a := index $pair 0 }}{{ $b := index $pair 1 }}
{{- if eq (int (index $ports $a)) (int (index $ports $b)) }}
{{- fail (printf "containerPorts.%s is %d, the same port as containerPorts.%s: stormlockd listens on each (%s_listen and %s) and could not bind the second one (address already in use), so the pod would crash-loop. Give grpc, metrics and health a port each." $a (int (index $ports $a)) $b $a (ternary "listen" (printf "%s_listen" $b) (eq $b "grpc"))) }}
{{- end }}
{{- end }}
{{- $d := .Values.config.defaults }}
{{- $ttl := include "stormlock.seconds" $d.ttl | atoi }}
{{- $max := include "stormlock.seconds" $d.maxTtl | atoi }}
{{- if lt $ttl 1 }}
{{- fail (printf "config.defaults.ttl is %s: stormlockd refuses it (defaults.ttl: must be at least 1s). Set a TTL of at least 1s, e.g. 1h." (toString $d.ttl)) }}
{{- end }}
{{- if lt $max $ttl }}
{{- fail (printf "config.defaults.maxTtl (%s) is below config.defaults.ttl (%s): stormlockd refuses it (defaults.max_ttl: %s is less than the ttl %s). Raise maxTtl to at least the ttl, or lower the ttl." (toString $d.maxTtl) (toString $d.ttl) (include "stormlock.formatDuration" $max) (include "stormlock.formatDuration" $ttl)) }}
{{- end }}
{{- if lt (include "stormlock.seconds" $d.backendTimeout | atoi) 1 }}
{{- fail (printf "config.defaults.backendTimeout is %s: stormlockd refuses it (defaults.backend_timeout: must be at least 1s): every backend call would time out at once. Set it to at least 1s, e.g. 2s." (toString $d.backendTimeout)) }}
{{- end }}
{{- range $i, $r := .Values.config.resources }}
{{- $rttl := $ttl }}
{{- if $r.ttl }}{{ $rttl = include "stormlock.seconds" $r.ttl | atoi }}{{ end }}
{{- $rmax := max $max $rttl }}
{{- if $r.maxTtl }}{{ $rmax = include "stormlock.seconds" $r.maxTtl | atoi }}{{ end }}
{{- if lt $rttl 1 }}
{{- fail (printf "config.resources[%d] (match %q): ttl is %s: stormlockd refuses it (resources[%d].ttl: must be at least 1s). Set a TTL of at least 1s, or leave ttl out to use config.defaults.ttl." $i $r.match (toString $r.ttl) $i) }}
{{- end }}
{{- if lt $rmax $rttl }}
{{- fail (printf "config.resources[%d] (match %q): maxTtl (%s) is below its ttl (%s%s): stormlockd refuses it (resources[%d].max_ttl: %s is less than the ttl %s). Raise the rule's maxTtl to at least the ttl, or lower the ttl." $i $r.match (toString $r.maxTtl) (include "stormlock.formatDuration" $rttl) (ternary "" ", from config.defaults.ttl" (not (empty $r.ttl))) $i (include "stormlock.formatDuration" $rmax) (include "stormlock.formatDuration" $rttl)) }}
{{- end }}
{{- end }}
{{- range $name, $b := .Values.backends }}
{{- if and $b (hasKey $b "prefix") (eq $b.type "redis") }}
{{- $prefix := toString $b.prefix }}
{{- if or (not $prefix) (gt (len $prefix) 128) }}
{{- fail (printf "backends.%s (redis): prefix: must be 1 to 128 bytes long (default \"stormlock:\"); backends.%s.prefix is %q. Set a prefix such as \"stormlock:\", or leave it out." $name $name $prefix) }}
{{- end }}
{{- with regexFind "[\\p{Cc}\\p{Z}[:space:]*?\\[\\]\\\\{}]" $prefix }}
{{- fail (printf "backends.%s (redis): prefix: %q contains %s; control characters, whitespace and *?[]\\{} are not allowed (they would change what SCAN MATCH prefix* finds). Use letters, digits and : / . - _." $name $prefix (printf "%q" . | replace "\"" "'")) }}
{{- end }}
{{- end }}
{{- if and $b (hasKey $b "prefix") (eq $b.type "etcd") }}
{{- $prefix := toString $b.prefix }}
{{- if or (not (hasSuffix "/" $prefix)) (gt (len $prefix) 256) }}
{{- fail (printf "backends.%s (etcd): prefix: %q must end with \"/\" and be at most 256 bytes (default \"/stormlock/\"). Set a prefix such as \"/stormlock/\", or leave it out." $name $prefix) }}
{{- end }}
{{- if regexMatch "[[:cntrl:]]" $prefix }}
{{- fail (printf "backends.%s (etcd): prefix: %q contains control characters." $name $prefix) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
