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
Common labels.
*/}}
{{- define "cio-gateway.labels" -}}
helm.sh/chart: {{ include "cio-gateway.chart" . }}
{{ include "cio-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
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
