{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "cio-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, with the chart name appended unless the release
name already contains it.
*/}}
{{- define "cio-gateway.fullname" -}}
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

{{- define "cio-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object: the chart's own, then commonLabels (values.schema.json keeps those
off the chart's keys). Built as a map and printed with toYaml, so a value such as a numeric
release name stays a string.
*/}}
{{- define "cio-gateway.labels" -}}
{{- include "cio-gateway.labelsWith" (dict "ctx" . "extra" dict) }}
{{- end }}

{{/*
The labels above plus `extra` (podLabels, serviceMonitor.labels, ...), which win over
commonLabels but never over the chart's own. Call with (dict "ctx" . "extra" MAP).
*/}}
{{- define "cio-gateway.labelsWith" -}}
{{- $ctx := .ctx }}
{{- $own := dict
  "helm.sh/chart" (include "cio-gateway.chart" $ctx)
  "app.kubernetes.io/name" (include "cio-gateway.name" $ctx)
  "app.kubernetes.io/instance" $ctx.Release.Name
  "app.kubernetes.io/version" ($ctx.Values.image.tag | default $ctx.Chart.AppVersion | toString)
  "app.kubernetes.io/managed-by" $ctx.Release.Service
}}
{{- toYaml (merge $own (deepCopy (.extra | default dict)) (deepCopy ($ctx.Values.commonLabels | default dict))) }}
{{- end }}

{{/*
Labels of the `helm test` pod: not the selector labels, so that it joins no Service, PDB or
NetworkPolicy selection of the gateway's pods; commonLabels as everywhere.
*/}}
{{- define "cio-gateway.testLabels" -}}
{{- $own := dict
  "helm.sh/chart" (include "cio-gateway.chart" .)
  "app.kubernetes.io/instance" .Release.Name
  "app.kubernetes.io/managed-by" .Release.Service
  "app.kubernetes.io/component" "helm-test"
}}
{{- toYaml (merge $own (deepCopy (.Values.commonLabels | default dict))) }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (a Deployment's selector is immutable).
*/}}
{{- define "cio-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cio-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cio-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cio-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The keys of the chart's own Secret (secrets.existingSecret empty), as YAML: the conventional
names the service reads, then secrets.extra. Empty values are left out: an empty token
variable would otherwise turn an admin or ingest route on with an empty token.
*/}}
{{- define "cio-gateway.secretData" -}}
{{- $s := .Values.secrets }}
{{- $all := dict
  "CUSTOMERIO_SITE_ID" $s.customerio.siteId
  "CUSTOMERIO_API_KEY" $s.customerio.apiKey
  "CUSTOMERIO_APP_API_KEY" $s.customerio.appApiKey
  "CUSTOMERIO_PIPELINES_API_KEY" ($s.customerio.pipelinesApiKey | default "")
  "CUSTOMERIO_WEBHOOK_SECRET" $s.customerio.webhookSecret
  "AMQP_URL" $s.amqpUrl
  "DATABASE_URL" $s.databaseUrl
  "GATEWAY__ADMIN__TOKEN" $s.adminToken
  "GATEWAY__INGEST__TOKEN" $s.ingestToken
}}
{{- $all = merge $all ($s.extra | default dict) }}
{{- $set := dict }}
{{- range $key, $value := $all }}
{{- if $value }}
{{- $_ := set $set $key ($value | toString) }}
{{- end }}
{{- end }}
{{- toYaml $set }}
{{- end }}

{{/*
Without secrets.existingSecret the chart creates the Secret, and refuses to render one the
gateway cannot start with (GATEWAY_ENV=production needs Track credentials and a broker): a
clear error now rather than pods in CrashLoopBackOff later.
*/}}
{{- define "cio-gateway.validateSecrets" -}}
{{- $s := .Values.secrets }}
{{- if not $s.existingSecret }}
{{- $missing := list }}
{{- if eq (.Values.config.customerio.api | default "track") "pipelines" }}
{{- if not $s.customerio.pipelinesApiKey }}{{ $missing = append $missing "secrets.customerio.pipelinesApiKey" }}{{ end }}
{{- else }}
{{- if not $s.customerio.siteId }}{{ $missing = append $missing "secrets.customerio.siteId" }}{{ end }}
{{- if not $s.customerio.apiKey }}{{ $missing = append $missing "secrets.customerio.apiKey" }}{{ end }}
{{- end }}
{{- if not (or $s.amqpUrl .Values.config.broker.url) }}{{ $missing = append $missing "secrets.amqpUrl (or config.broker.url)" }}{{ end }}
{{- if $missing }}
{{- fail (printf "secrets: the gateway cannot start without %s. Set them for the chart to create the Secret, or set secrets.existingSecret to the name of a Secret you created (docs/operations.md, \"2. Credentials\")" (join ", " $missing)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Secret the pods read their credentials from: the operator's own, or the chart's.
*/}}
{{- define "cio-gateway.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "cio-gateway.fullname" . }}
{{- end }}
{{- end }}

{{- define "cio-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Seconds between SIGTERM and SIGKILL: the optional preStop pause, then the service's own drain
deadline (shutdown.drain_secs, rendered into the config from the same value), then a margin
for the process to exit. With the defaults: 0 + 25 + 5 = 30.
*/}}
{{- define "cio-gateway.terminationGracePeriodSeconds" -}}
{{- add (int (include "cio-gateway.preStopSleepSeconds" .)) (int .Values.config.shutdown.drain_secs) (int .Values.shutdownMarginSeconds) }}
{{- end }}

{{/*
The preStop pause actually rendered: preStopSleepSeconds where the cluster has the native
`sleep` lifecycle action (on by default from Kubernetes 1.30), else 0. The image is distroless
(no /bin/sleep), so an `exec: sleep` fallback would fail at once; older clusters get no pause.
*/}}
{{- define "cio-gateway.preStopSleepSeconds" -}}
{{- if semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version }}
{{- int .Values.preStopSleepSeconds }}
{{- else }}
{{- 0 }}
{{- end }}
{{- end }}
