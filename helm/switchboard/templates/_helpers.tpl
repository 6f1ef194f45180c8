{{/*
Chart name, truncated to 63 characters (DNS label).
*/}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: <release>-<chart>, or the release name when it
already contains the chart name; truncated to 63 characters.
*/}}
{{- define "switchboard.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "switchboard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "switchboard.labels" -}}
helm.sh/chart: {{ include "switchboard.chart" . }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: stable across upgrades (never add the version here).
*/}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference.
*/}}
{{- define "switchboard.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
Name of the Secret holding the JWT key and the API keys.
*/}}
{{- define "switchboard.secretName" -}}
{{- default (include "switchboard.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Whether the configured algorithm is HS256 (shared secret) rather than a public key one.
Renders "true" or "".
*/}}
{{- define "switchboard.isHmac" -}}
{{- if eq (upper (toString (.Values.config.auth.algorithm | default "HS256"))) "HS256" }}true{{ end }}
{{- end }}

{{/*
The redis URL, checked. Fails with a clear message when missing or not redis://.
*/}}
{{- define "switchboard.redisUrl" -}}
{{- $url := .Values.redis.url | default "" | toString | trim }}
{{- if not $url }}
{{- fail "redis.url is required: the Redis (>= 7) endpoint shared by every node, e.g. --set redis.url=redis://redis.default.svc:6379" }}
{{- end }}
{{- if not (or (hasPrefix "redis://" $url) (hasPrefix "rediss://" $url) (hasPrefix "redis-sentinel://" $url) (hasPrefix "rediss-sentinel://" $url) (hasPrefix "redis-cluster://" $url) (hasPrefix "rediss-cluster://" $url)) }}
{{- fail (printf "redis.url must start with redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster:// or rediss-cluster://; got %q" $url) }}
{{- end }}
{{- $url }}
{{- end }}

{{/*
Port of redis.url (6379 when the URL names none), or networkPolicy.egress.redisPort.
*/}}
{{- define "switchboard.redisPort" -}}
{{- $port := int (.Values.networkPolicy.egress.redisPort | default 0) }}
{{- if gt $port 0 }}
{{- $port }}
{{- else if include "switchboard.isSentinel" . }}
{{- 6379 }}
{{- else }}
{{- $host := (urlParse (include "switchboard.redisUrl" .)).host }}
{{- $m := regexFind ":[0-9]+$" $host }}
{{- if $m }}{{ trimPrefix ":" $m }}{{ else }}6379{{ end }}
{{- end }}
{{- end }}

{{/*
"true" when redis.url names sentinels (whose port is not the data servers').
*/}}
{{- define "switchboard.isSentinel" -}}
{{- if contains "-sentinel://" (include "switchboard.redisUrl" .) }}true{{ end }}
{{- end }}

{{/*
Graceful shutdown timing check: the kubelet must not kill a node mid-drain.
terminationGracePeriodSeconds > preStopSleepSeconds + ceil(shutdownTimeoutMs / 1000).
*/}}
{{- define "switchboard.checkShutdownTiming" -}}
{{- $g := .Values.gracefulShutdown }}
{{- $preStop := int $g.preStopSleepSeconds }}
{{- $drain := div (add (int64 $g.shutdownTimeoutMs) 999) 1000 }}
{{- $grace := int $g.terminationGracePeriodSeconds }}
{{- if le $grace (add $preStop $drain) }}
{{- fail (printf "gracefulShutdown.terminationGracePeriodSeconds (%d) must be greater than gracefulShutdown.preStopSleepSeconds (%d) + gracefulShutdown.shutdownTimeoutMs in seconds (%d); raise it to at least %d so that the kubelet does not kill the node mid-drain" $grace $preStop $drain (add $preStop $drain 1)) }}
{{- end }}
{{- end }}

{{/*
Secret checks: a usable verification key must be configured for the algorithm, and the
HS256 secret must survive SWITCHBOARD_* value parsing (numbers, booleans, arrays, tables
and quoted strings would be parsed as such).
*/}}
{{- define "switchboard.checkSecrets" -}}
{{- if not .Values.secrets.existingSecret }}
{{- if include "switchboard.isHmac" . }}
{{- /* The HS256 secret is mounted as a file and read verbatim: any string works. */}}
{{- else if not .Values.secrets.publicKeyPem }}
{{- fail (printf "config.auth.algorithm %s needs secrets.publicKeyPem (a PEM public key) or secrets.existingSecret with key %s" (toString .Values.config.auth.algorithm) .Values.secrets.keys.publicKeyPem) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
One TOML value. Helm reads every YAML number as a float, and the gateway refuses a float
where it expects an integer, so integral numbers are printed without a fraction. Strings
are JSON-quoted (valid TOML basic strings).
*/}}
{{- define "switchboard.tomlValue" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}
{{- toJson $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if kindIs "float64" $v }}
{{- if eq $v (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) }}
{{- $v }}
{{- else if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}{{ $items = append $items (include "switchboard.tomlValue" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else }}
{{- fail (printf "config: cannot render %v (%s) as a TOML value" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{/*
switchboard.toml from .Values.config: one [section] per table, [[namespaces]] per list
item; null values are left out (the gateway's default applies).
*/}}
{{- define "switchboard.toml" -}}
# Generated by the switchboard Helm chart from .Values.config; see docs/operations.md.
# Set by the chart through the environment: node.listen, node.shutdown_timeout_ms,
# broker.url, auth.hmac_secret / auth.public_key_file, api.keys.
{{- $config := .Values.config }}
{{- range $section := keys $config | sortAlpha }}
{{- $table := get $config $section }}
{{- if and (ne $section "namespaces") (kindIs "map" $table) }}

[{{ $section }}]
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "switchboard.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $ns := $config.namespaces }}

[[namespaces]]
name = {{ toJson (toString ($ns.name | default "")) }}
{{- range $key := omit $ns "name" | keys | sortAlpha }}
{{- $value := get $ns $key }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "switchboard.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
