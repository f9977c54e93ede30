{{/*
The service's config file from .Values.config: the structured keys as a map, config.extra
merged into it, printed as TOML. One map rather than hand-written sections, so that a key of
config.extra lands in its own table however deep (TOML allows each table header once).
*/}}
{{- define "cio-gateway.configMap" -}}
{{- $c := .Values.config }}
{{- $customerio := dict
  "region" $c.customerio.region
  "track_rps" (int $c.customerio.track_rps)
  "app_rps" (int $c.customerio.app_rps)
  "broadcast_interval_ms" (int ($c.customerio.broadcast_interval_ms | default 10000))
  "timeout_ms" (int $c.customerio.timeout_ms)
  "api" ($c.customerio.api | default "track")
}}
{{- with $c.customerio.pipelines_url }}{{ $_ := set $customerio "pipelines_url" . }}{{ end }}
{{- with $c.customerio.pipelines_rps }}{{ $_ := set $customerio "pipelines_rps" (int .) }}{{ end }}
{{- with $c.customerio.track_url }}{{ $_ := set $customerio "track_url" . }}{{ end }}
{{- with $c.customerio.app_url }}{{ $_ := set $customerio "app_url" . }}{{ end }}
{{- $broker := dict "partitions" (int $c.broker.partitions) "prefetch" (int $c.broker.prefetch) }}
{{- with $c.broker.url }}{{ $_ := set $broker "url" . }}{{ end }}
{{- $webhooks := dict "tolerance_secs" (int $c.webhooks.tolerance_secs) }}
{{- with $c.webhooks.rules }}{{ $_ := set $webhooks "rules" (deepCopy .) }}{{ end }}
{{- $bigquery := dict "table" $c.warehouse.bigquery.table }}
{{- with $c.warehouse.bigquery.project }}{{ $_ := set $bigquery "project" . }}{{ end }}
{{- with $c.warehouse.bigquery.dataset }}{{ $_ := set $bigquery "dataset" . }}{{ end }}
{{- $conf := dict
  "app" (dict "environment" $c.app.environment "data_dir" "/app/data")
  "customerio" $customerio
  "broker" $broker
  "http" (dict "addr" "0.0.0.0:8080")
  "webhooks" $webhooks
  "warehouse" (dict "sink" $c.warehouse.sink "path" $c.warehouse.path "bigquery" $bigquery)
  "delivery" (dict "max_attempts" (int $c.delivery.max_attempts))
  "shutdown" (dict "drain_secs" (int $c.shutdown.drain_secs))
}}
{{- with $c.templates }}{{ $_ := set $conf "templates" (deepCopy .) }}{{ end }}
{{- $extra := $c.extra | default dict }}
{{- $conflicts := include "cio-gateway.extraConflicts" (dict "chart" $conf "extra" $extra "path" "") | trim }}
{{- if $conflicts }}
{{- fail (printf "config.extra sets keys the chart renders itself: %s. Set them under config.<section> instead (http.addr and app.data_dir are fixed: the Service, probes and volumes rely on them)" $conflicts) }}
{{- end }}
{{- $secrets := include "cio-gateway.extraSecrets" $extra | trim }}
{{- if $secrets }}
{{- fail (printf "config.extra holds secrets, which would land in a ConfigMap: %s. Put them in the Secret instead (secrets.*, or secrets.extra as GATEWAY__SECTION__KEY)" $secrets) }}
{{- end }}
{{- toYaml (merge $conf (deepCopy $extra)) }}
{{- end }}

{{/*
Paths that config.extra sets and the chart already renders (a leaf in both, or a table in one
and a value in the other), space-separated. Merging lets new keys in; it must not let a second
value of a structured key in silently.
*/}}
{{- define "cio-gateway.extraConflicts" -}}
{{- $chart := .chart }}
{{- $path := .path }}
{{- range $key, $value := .extra }}
{{- $here := ternary $key (printf "%s.%s" $path $key) (eq $path "") }}
{{- if hasKey $chart $key }}
{{- $theirs := index $chart $key }}
{{- if and (kindIs "map" $value) (kindIs "map" $theirs) }}
{{- include "cio-gateway.extraConflicts" (dict "chart" $theirs "extra" $value "path" $here) }}
{{- else }}
{{- printf " config.extra.%s" $here }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Secret keys of the service's config (docs/reference.md §3) found in config.extra.
*/}}
{{- define "cio-gateway.extraSecrets" -}}
{{- $paths := list
  "customerio.site_id" "customerio.api_key" "customerio.app_api_key" "broker.url"
  "webhooks.signing_secrets" "warehouse.database_url" "warehouse.bigquery.token"
  "admin.token" "ingest.token" "preferences.database_url" "user_source.database_url"
}}
{{- range $paths }}
{{- $node := $ }}
{{- $found := true }}
{{- range splitList "." . }}
{{- if and $found (kindIs "map" $node) (hasKey $node .) }}
{{- $node = index $node . }}
{{- else }}
{{- $found = false }}
{{- end }}
{{- end }}
{{- if $found }}
{{- printf " config.extra.%s" . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A map as TOML: its plain keys first, then one [table] per map value, recursively (TOML wants
a table's keys before its sub-tables). Call with (dict "table" MAP "path" "").
*/}}
{{- define "cio-gateway.toml" -}}
{{- $path := .path }}
{{- range $key, $value := .table }}
{{- if and (not (kindIs "map" $value)) (not (kindIs "invalid" $value)) }}
{{ include "cio-gateway.tomlKey" $key }} = {{ include "cio-gateway.tomlValue" $value }}
{{- end }}
{{- end }}
{{- range $key, $value := .table }}
{{- if kindIs "map" $value }}
{{- $header := include "cio-gateway.tomlKey" $key }}
{{- if $path }}{{ $header = printf "%s.%s" $path $header }}{{ end }}
{{- /* A table of tables only needs no header of its own: [a.b] defines [a]. */}}
{{- $plain := false }}
{{- range $value }}{{ if not (kindIs "map" .) }}{{ $plain = true }}{{ end }}{{ end }}
{{- if or $plain (not $value) }}

[{{ $header }}]
{{- end }}
{{- include "cio-gateway.toml" (dict "table" $value "path" $header) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A bare key where TOML allows one, else a quoted (JSON-escaped) one. */}}
{{- define "cio-gateway.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ . | toJson }}{{ end }}
{{- end }}

{{/*
A value: strings JSON-escaped (a valid TOML basic string), whole numbers without a fraction
(YAML values arrive as float64), arrays and inline tables recursively; null is left out.
*/}}
{{- define "cio-gateway.tomlValue" -}}
{{- if kindIs "string" . }}{{ . | toJson }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if kindIs "float64" . }}{{ if eq . (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "cio-gateway.tomlValue" $v }}{{ end }}]
{{- else if kindIs "map" . }}{ {{- range $i, $k := keys . | sortAlpha }}{{ if $i }},{{ end }} {{ include "cio-gateway.tomlKey" $k }} = {{ include "cio-gateway.tomlValue" (index $ $k) }}{{ end }} }
{{- else }}{{ fail (printf "config: cannot write %v (%s) as TOML" . (kindOf .)) }}
{{- end }}
{{- end }}
