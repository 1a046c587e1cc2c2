{{/* Names and labels (the `helm create` scaffold's helpers). The other helpers, by concern: _pod.tpl (image,
pod fields), _args.tpl (server command line), _autoscaling.tpl, _validation.tpl. */}}

{{/*
Chart name, cut to 63 characters (the DNS label limit).
*/}}
{{- define "ssd-detector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, cut to 63 characters. When the release name already contains the chart name
it is used as is.
*/}}
{{- define "ssd-detector.fullname" -}}
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
InferenceService name: the full name cut to 45 characters, so that the names KServe and Knative derive
from it (<name>-predictor, <name>-predictor-00001-deployment) stay within 63.
*/}}
{{- define "ssd-detector.isvcName" -}}
{{- include "ssd-detector.fullname" . | trunc 45 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "ssd-detector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "ssd-detector.labels" -}}
helm.sh/chart: {{ include "ssd-detector.chart" . }}
{{ include "ssd-detector.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: predictor
app.kubernetes.io/part-of: ssd-detector
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "ssd-detector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ssd-detector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the service account the predictor runs as.
*/}}
{{- define "ssd-detector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ssd-detector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
In-cluster URL of the predictor (KServe's predictor service listens on port 80 in both modes).
*/}}
{{- define "ssd-detector.predictorUrl" -}}
{{- printf "http://%s-predictor.%s.svc.cluster.local" (include "ssd-detector.isvcName" .) .Release.Namespace }}
{{- end }}
