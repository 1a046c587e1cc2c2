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
Predictor image reference: repository@digest, or repository:tag where the tag defaults to the
appVersion (with "-cpu" for the CPU-only image when gpu.enabled is false).
*/}}
{{- define "ssd-detector.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary "" "-cpu" .Values.gpu.enabled)) }}
{{- printf "%s:%s" .Values.image.repository (toString $tag) }}
{{- end }}
{{- end }}

{{/*
Where KServe's storage initializer puts the model.
*/}}
{{- define "ssd-detector.modelMountPath" -}}
/mnt/models
{{- end }}

{{/*
In-cluster URL of the predictor (KServe's predictor service listens on port 80 in both modes).
*/}}
{{- define "ssd-detector.predictorUrl" -}}
{{- printf "http://%s-predictor.%s.svc.cluster.local" (include "ssd-detector.isvcName" .) .Release.Namespace }}
{{- end }}

{{/*
Command-line arguments of the predictor server. Every flag must be known to
predictor.cli_args.build_parser(): the chart's tests parse these arguments with it.
*/}}
{{- define "ssd-detector.args" -}}
{{- $p := .Values.predictor -}}
- --model_name={{ .Values.model.name }}
- --http_port={{ .Values.httpPort }}
- --grpc_port={{ .Values.grpcPort }}
{{- if .Values.model.storageUri }}
- --model_dir={{ include "ssd-detector.modelMountPath" . }}
{{- end }}
{{- if not (kindIs "invalid" $p.scoreThreshold) }}
- --score_threshold={{ $p.scoreThreshold }}
{{- end }}
{{- if not (kindIs "invalid" $p.nmsThreshold) }}
- --nms_threshold={{ $p.nmsThreshold }}
{{- end }}
{{- if not (kindIs "invalid" $p.topK) }}
- --top_k={{ int64 $p.topK }}
{{- end }}
{{- if not (kindIs "invalid" $p.maxDetections) }}
- --max_detections={{ int64 $p.maxDetections }}
{{- end }}
{{- if not (kindIs "invalid" $p.maxBatchSize) }}
- --max_batch_size={{ int64 $p.maxBatchSize }}
{{- end }}
{{- if not (kindIs "invalid" $p.batchWaitMs) }}
- --batch_wait_ms={{ $p.batchWaitMs }}
{{- end }}
{{- if not (kindIs "invalid" $p.maxImageBytes) }}
- --max_image_bytes={{ int64 $p.maxImageBytes }}
{{- end }}
{{- if not (kindIs "invalid" $p.maxImagePixels) }}
- --max_image_pixels={{ int64 $p.maxImagePixels }}
{{- end }}
{{- if not (kindIs "invalid" $p.maxRequestBytes) }}
- --max_request_bytes={{ int64 $p.maxRequestBytes }}
{{- end }}
{{- if not (kindIs "invalid" $p.requestTimeoutSeconds) }}
- --request_timeout_s={{ $p.requestTimeoutSeconds }}
{{- end }}
{{- if not (kindIs "invalid" $p.maxQueueImages) }}
- --max_queue_images={{ int64 $p.maxQueueImages }}
{{- end }}
- --shutdown_grace_s={{ $p.shutdownGraceSeconds }}
{{- if not (kindIs "invalid" $p.decodeThreads) }}
- --decode_threads={{ int64 $p.decodeThreads }}
{{- end }}
- {{ ternary "--xla" "--no-xla" $p.xla }}
- --mixed_precision={{ $p.mixedPrecision }}
{{- range $p.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Seconds the kubelet waits after SIGTERM before killing the predictor pod. Standard mode: the pod's
terminationGracePeriodSeconds, predictor.terminationGracePeriodSeconds or else 2 * shutdownGraceSeconds + 5
(the server drains REST, then gRPC, each for up to --shutdown_grace_s). Knative mode: Knative forbids the
field and uses the revision timeout (timeoutSeconds, or Knative's default revision-timeout-seconds, 300).
*/}}
{{- define "ssd-detector.terminationGracePeriodSeconds" -}}
{{- $p := .Values.predictor -}}
{{- if ne .Values.deploymentMode "Standard" }}
{{- .Values.timeoutSeconds | default 300 | int64 }}
{{- else if not (kindIs "invalid" $p.terminationGracePeriodSeconds) }}
{{- int64 $p.terminationGracePeriodSeconds }}
{{- else }}
{{- ceil (addf (mulf $p.shutdownGraceSeconds 2) 5) | int64 }}
{{- end }}
{{- end }}

{{/*
Configuration errors that the values schema cannot express.
*/}}
{{- define "ssd-detector.validate" -}}
{{- $a := .Values.autoscaling -}}
{{- if gt (int64 $a.minReplicas) (int64 $a.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%v) must not exceed autoscaling.maxReplicas (%v)" $a.minReplicas $a.maxReplicas) }}
{{- end }}
{{- if eq .Values.deploymentMode "Standard" }}
{{- if and (eq $a.autoscalerClass "hpa") (eq (int64 $a.minReplicas) 0) }}
{{- fail "autoscaling.minReplicas=0 needs deploymentMode=Knative or autoscaling.autoscalerClass=keda: an HPA cannot scale to zero" }}
{{- end }}
{{- if and (not $a.metrics) (has $a.scaleMetric (list "concurrency" "rps")) (has $a.autoscalerClass (list "hpa" "keda")) }}
{{- fail (printf "autoscaling.scaleMetric=%s needs deploymentMode=Knative; in Standard mode use cpu or memory, or autoscaling.metrics" $a.scaleMetric) }}
{{- end }}
{{- end }}
{{- $p := .Values.predictor -}}
{{- if and (ne .Values.deploymentMode "Standard") (not (kindIs "invalid" $p.terminationGracePeriodSeconds)) }}
{{- fail "predictor.terminationGracePeriodSeconds needs deploymentMode=Standard: Knative rejects the field and gives the pod the revision timeout (timeoutSeconds) as its grace period" }}
{{- end }}
{{- $grace := include "ssd-detector.terminationGracePeriodSeconds" . | float64 }}
{{- if le $grace (float64 $p.shutdownGraceSeconds) }}
{{- if eq .Values.deploymentMode "Standard" }}
{{- fail (printf "predictor.shutdownGraceSeconds (%v) must stay below the pod's terminationGracePeriodSeconds (%v): lower it or raise predictor.terminationGracePeriodSeconds" $p.shutdownGraceSeconds $grace) }}
{{- else }}
{{- fail (printf "predictor.shutdownGraceSeconds (%v) must stay below the pod's termination grace period, which Knative sets to the revision timeout (%v s: timeoutSeconds, else Knative's default): lower it or raise timeoutSeconds" $p.shutdownGraceSeconds $grace) }}
{{- end }}
{{- end }}
{{- if and .Values.logger.enabled (not .Values.logger.url) }}
{{- fail "logger.enabled=true needs logger.url" }}
{{- end }}
{{- end }}
