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
An image reference from {repository, tag, digest}: repository@digest when a digest is set, else
repository:tag. Call with (dict "image" <map> "tag" <default tag>).
*/}}
{{- define "ssd-detector.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (toString (.image.tag | default .tag)) }}
{{- end }}
{{- end }}

{{/*
Pull policy for an image: the value when set, else IfNotPresent for a digest (immutable) and Always for a
tag (mutable: a node must not keep serving whatever it pulled first). Call with (dict "image" <map> "policy" <value>).
*/}}
{{- define "ssd-detector.pullPolicy" -}}
{{- .policy | default (ternary "IfNotPresent" "Always" (not (empty .image.digest))) }}
{{- end }}

{{/*
Predictor image reference: repository@digest, or repository:tag where the tag defaults to the
appVersion (with "-cpu" for the CPU-only image when gpu.enabled is false).
*/}}
{{- define "ssd-detector.image" -}}
{{- $tag := printf "%s%s" .Chart.AppVersion (ternary "" "-cpu" .Values.gpu.enabled) }}
{{- include "ssd-detector.imageRef" (dict "image" .Values.image "tag" $tag) }}
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
Predictor flags set from predictor.* values: [value key, flag, kind]; kind int prints an integer, num the
value as given. A null value leaves the flag out (the server's default). Adding a flag is one line here, one
key in values.yaml and one in values.schema.json. A value key is its flag in camelCase with the unit spelled as
Kubernetes does (request_timeout_s -> requestTimeoutSeconds, like terminationGracePeriodSeconds); the flags'
defaults live in predictor.serving.options.ServingOptions. tests/test_deploy_chart.py checks both.
*/}}
{{- define "ssd-detector.flagTable" -}}
- [scoreThreshold, --score_threshold, num]
- [nmsThreshold, --nms_threshold, num]
- [topK, --top_k, int]
- [maxDetections, --max_detections, int]
- [maxBatchSize, --max_batch_size, int]
- [batchWaitMs, --batch_wait_ms, num]
- [maxImageBytes, --max_image_bytes, int]
- [maxImagePixels, --max_image_pixels, int]
- [maxRequestBytes, --max_request_bytes, int]
- [grpcMaxMessageBytes, --grpc_max_receive_message_length, int]
- [requestTimeoutSeconds, --request_timeout_s, num]
- [maxQueueImages, --max_queue_images, int]
- [shutdownGraceSeconds, --shutdown_grace_s, num]
- [decodeThreads, --decode_threads, int]
- [computeNice, --compute_nice, int]
- [tfIntraOpThreads, --tf_intra_op_threads, int]
- [tfInterOpThreads, --tf_inter_op_threads, int]
- [maxInflightBytes, --max_inflight_bytes, int]
- [mallocMmapThresholdBytes, --malloc_mmap_threshold_bytes, int]
- [mallocTrimIdleSeconds, --malloc_trim_idle_s, num]
- [maxQueueDelayMs, --max_queue_delay_ms, num]
- [driftWindowImages, --drift_window_images, int]
- [mixedPrecision, --mixed_precision, num]
{{- end }}

{{/*
Command-line arguments of the predictor server. Every flag must be known to
predictor.serving.options.build_parser(): the chart's tests parse these arguments with it.
*/}}
{{- define "ssd-detector.args" -}}
{{- $p := .Values.predictor -}}
- --model_name={{ .Values.model.name }}
- --http_port={{ .Values.httpPort }}
- --grpc_port={{ .Values.grpcPort }}
{{- if .Values.model.storageUri }}
- --model_dir={{ include "ssd-detector.modelMountPath" . }}
{{- end }}
{{- range (include "ssd-detector.flagTable" . | fromYamlArray) }}
{{- $v := get $p (index . 0) }}
{{- if not (or (kindIs "invalid" $v) (and (kindIs "string" $v) (eq $v ""))) }}
- {{ index . 1 }}={{ if eq (index . 2) "int" }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- end }}
{{- end }}
- {{ ternary "--xla" "--no-xla" $p.xla }}
- {{ ternary "--shed_standing_queue" "--no-shed_standing_queue" $p.shedStandingQueue }}
{{- range $key, $flag := dict "tracing" "--tracing" "jpegDraft" "--jpeg_draft" }}
{{- if get $p $key }}
- {{ $flag }}
{{- end }}
{{- end }}
{{- range $p.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Images per model call: predictor.maxBatchSize, or the server's default (32).
*/}}
{{- define "ssd-detector.batchSize" -}}
{{- .Values.predictor.maxBatchSize | default 32 | int64 }}
{{- end }}

{{/*
Knative concurrency target per replica: autoscaling.scaleTarget, or with scaleMetric=concurrency the batch
size (one batch of single-image requests keeps the GPU busy).
*/}}
{{- define "ssd-detector.scaleTarget" -}}
{{- $a := .Values.autoscaling -}}
{{- if not (kindIs "invalid" $a.scaleTarget) }}
{{- int64 $a.scaleTarget }}
{{- else if eq $a.scaleMetric "concurrency" }}
{{- include "ssd-detector.batchSize" . }}
{{- else }}
{{- fail (printf "autoscaling.scaleTarget must be set for scaleMetric=%s (it is derived from the batch size only for concurrency)" $a.scaleMetric) }}
{{- end }}
{{- end }}

{{/*
Knative hard limit of in-flight requests per replica: autoscaling.containerConcurrency, or twice the batch
size (one batch in the model, the next one forming).
*/}}
{{- define "ssd-detector.containerConcurrency" -}}
{{- $cc := .Values.autoscaling.containerConcurrency -}}
{{- if not (kindIs "invalid" $cc) }}
{{- int64 $cc }}
{{- else }}
{{- mul 2 (include "ssd-detector.batchSize" . | int64) }}
{{- end }}
{{- end }}

{{/*
Value of the serving.kserve.io/deploymentMode annotation (KServe 0.16+ names, or the legacy ones).
*/}}
{{- define "ssd-detector.modeAnnotation" -}}
{{- if .Values.kserveLegacyModeNames }}
{{- ternary "RawDeployment" "Serverless" (eq .Values.deploymentMode "Standard") }}
{{- else }}
{{- .Values.deploymentMode }}
{{- end }}
{{- end }}

{{/*
"true" when a pod-spec field guarded by the Knative feature flag may be rendered: always in Standard mode,
in Knative mode only when knative.features lists the flag. Call with (list $ "<flag>").
*/}}
{{- define "ssd-detector.podFieldAllowed" -}}
{{- $root := index . 0 -}}
{{- if or (eq $root.Values.deploymentMode "Standard") (has (index . 1) ($root.Values.knative.features | default list)) }}true{{ end }}
{{- end }}

{{/*
Fail when a pod-spec value is set in Knative mode without its feature flag. Call with (list $ <value> "<value name>" "<flag>").
*/}}
{{- define "ssd-detector.requireKnativeFeature" -}}
{{- $root := index . 0 -}}
{{- if and (index . 1) (not (include "ssd-detector.podFieldAllowed" (list $root (index . 3)))) }}
{{- fail (printf "%s needs the Knative feature flag %s (config-features in knative-serving, disabled by default): enable it and add it to knative.features, or use deploymentMode=Standard" (index . 2) (index . 3)) }}
{{- end }}
{{- end }}

{{/*
Prometheus query of the KEDA trigger built from autoscaling.keda: the server's images in progress, or the
DCGM GPU utilisation, summed over this release's predictor pods (KServe names them <isvc>-predictor-...).
*/}}
{{- define "ssd-detector.kedaQuery" -}}
{{- $k := .Values.autoscaling.keda -}}
{{- $pods := printf "%s-predictor-.*" (include "ssd-detector.isvcName" .) -}}
{{- if eq $k.trigger "gpu" }}
{{- printf "sum(DCGM_FI_DEV_GPU_UTIL{%s=%q,%s=~%q})" $k.gpuNamespaceLabel .Release.Namespace $k.gpuPodLabel $pods }}
{{- else }}
{{- printf "sum(ssd_queue_images{namespace=%q,pod=~%q})" .Release.Namespace $pods }}
{{- end }}
{{- end }}

{{/*
Per-replica threshold of the KEDA trigger: autoscaling.keda.threshold, else 2 * batch size images (queue)
or 70 % (gpu).
*/}}
{{- define "ssd-detector.kedaThreshold" -}}
{{- $k := .Values.autoscaling.keda -}}
{{- if not (kindIs "invalid" $k.threshold) }}
{{- $k.threshold }}
{{- else if eq $k.trigger "gpu" }}70
{{- else }}
{{- mul 2 (include "ssd-detector.batchSize" . | int64) }}
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
{{- $p := .Values.predictor -}}
{{- $standard := eq .Values.deploymentMode "Standard" -}}
{{- if gt (int64 $a.minReplicas) (int64 $a.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%v) must not exceed autoscaling.maxReplicas (%v)" $a.minReplicas $a.maxReplicas) }}
{{- end }}
{{- if $standard }}
{{- if eq (int64 $a.minReplicas) 0 }}
{{- fail "autoscaling.minReplicas=0 needs deploymentMode=Knative: in Standard mode nothing scales the predictor up again (no pod, no metric, no activator); use minReplicas >= 1" }}
{{- end }}
{{- if and (not $a.metrics) (has $a.scaleMetric (list "concurrency" "rps")) (eq $a.autoscalerClass "hpa") }}
{{- fail (printf "autoscaling.scaleMetric=%s needs deploymentMode=Knative; in Standard mode use cpu or memory, KEDA (autoscalerClass=keda), or autoscaling.metrics" $a.scaleMetric) }}
{{- end }}
{{- if eq $a.autoscalerClass "hpa" }}
{{- range $a.metrics }}
{{- if ne .type "Resource" }}
{{- fail (printf "autoscaling.metrics: KServe's HPA class accepts only Resource metrics, not %v; use autoscalerClass=keda" .type) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (eq $a.autoscalerClass "keda") (not $a.metrics) (not $a.keda.serverAddress) }}
{{- fail "autoscalerClass=keda needs autoscaling.keda.serverAddress (the Prometheus that scrapes the predictor) or autoscaling.metrics" }}
{{- end }}
{{- else }}
{{- $cc := include "ssd-detector.containerConcurrency" . | int64 }}
{{- if and (eq $a.scaleMetric "concurrency") (gt (include "ssd-detector.scaleTarget" . | int64) $cc) }}
{{- fail (printf "autoscaling.scaleTarget (%v) must not exceed the hard limit autoscaling.containerConcurrency (%v)" (include "ssd-detector.scaleTarget" .) $cc) }}
{{- end }}
{{- if and (not (kindIs "invalid" $p.maxQueueImages)) (lt (int64 $p.maxQueueImages) $cc) }}
{{- fail (printf "predictor.maxQueueImages (%v) must be at least autoscaling.containerConcurrency (%v): the server would refuse with 503 what Knative lets through" $p.maxQueueImages $cc) }}
{{- end }}
{{- if gt (int64 .Values.timeoutSeconds) 600 }}
{{- fail (printf "timeoutSeconds (%v) exceeds Knative's max-revision-timeout-seconds (600 by default, config-defaults): raise that first, or use deploymentMode=Standard" .Values.timeoutSeconds) }}
{{- end }}
{{- if and (eq .Values.knative.protocol "h2c") .Values.tests.enabled }}
{{- fail "knative.protocol=h2c routes only gRPC to the predictor, and the helm test posts REST: set tests.enabled=false" }}
{{- end }}
{{- end }}
{{- if and (ne .Values.deploymentMode "Standard") (not (kindIs "invalid" $p.terminationGracePeriodSeconds)) }}
{{- fail "predictor.terminationGracePeriodSeconds needs deploymentMode=Standard: Knative rejects the field and gives the pod the revision timeout (timeoutSeconds) as its grace period" }}
{{- end }}
{{- $grace := include "ssd-detector.terminationGracePeriodSeconds" . | float64 }}
{{- if le $grace (float64 $p.shutdownGraceSeconds) }}
{{- if $standard }}
{{- fail (printf "predictor.shutdownGraceSeconds (%v) must stay below the pod's terminationGracePeriodSeconds (%v): lower it or raise predictor.terminationGracePeriodSeconds" $p.shutdownGraceSeconds $grace) }}
{{- else }}
{{- fail (printf "predictor.shutdownGraceSeconds (%v) must stay below the pod's termination grace period, which Knative sets to the revision timeout (%v s: timeoutSeconds, else Knative's default): lower it or raise timeoutSeconds" $p.shutdownGraceSeconds $grace) }}
{{- end }}
{{- end }}
{{- if and .Values.logger.enabled (not .Values.logger.url) }}
{{- fail "logger.enabled=true needs logger.url" }}
{{- end }}
{{- end }}
