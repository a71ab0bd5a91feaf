{{/*
Helpers shared by every template. All of them are prefixed `gyre.` so that they cannot collide
with a parent chart's helpers when Gyre is used as a subchart.
*/}}

{{/* The chart name, overridable with .Values.nameOverride. */}}
{{- define "gyre.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name prefix of every object: "<release>-gyre", or the release name alone when it
already contains the chart name. Truncated to 63 characters because some fields are DNS labels.
*/}}
{{- define "gyre.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "gyre.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "gyre.labels" -}}
helm.sh/chart: {{ include "gyre.chart" . }}
{{ include "gyre.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gyre
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select the chart's objects; immutable once a Deployment exists. */}}
{{- define "gyre.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gyre.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's labels: the common labels plus its component. */}}
{{- define "gyre.operator.labels" -}}
{{ include "gyre.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator's selector labels. */}}
{{- define "gyre.operator.selectorLabels" -}}
{{ include "gyre.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator's object names. */}}
{{- define "gyre.operator.fullname" -}}
{{- printf "%s-operator" (include "gyre.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The name of the ClusterRole (and its binding) for kopf's cluster-wide discovery; the prefix is
cut shorter so that the suffix survives truncation and never collides with the workload role.
*/}}
{{- define "gyre.operator.clusterRoleName" -}}
{{- printf "%s-cluster" (include "gyre.operator.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{/* The metrics Service's name. */}}
{{- define "gyre.metrics.fullname" -}}
{{- printf "%s-metrics" (include "gyre.operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "gyre.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gyre.operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The common annotations merged with one object's own (YAML, empty when there are none), for:
  {{- with include "gyre.annotations" (dict "extra" $own "context" $) }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
*/}}
{{- define "gyre.annotations" -}}
{{- $all := merge (deepCopy (default dict .extra)) (deepCopy (default dict .context.Values.commonAnnotations)) -}}
{{- with $all -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from {repository, tag, digest}: "repo@digest" when a digest is given,
otherwise "repo:tag" with the chart's appVersion as the default tag.
Call with: include "gyre.image" (dict "image" .Values.operator.image "context" $)
*/}}
{{- define "gyre.image" -}}
{{- $tag := default .context.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The plural resource names of Gyre's five kinds in gyre.dev/v1alpha1. */}}
{{- define "gyre.resources" -}}
- streams
- featurejobs
- experiments
- trainingjobs
- inferenceservices
{{- end -}}
