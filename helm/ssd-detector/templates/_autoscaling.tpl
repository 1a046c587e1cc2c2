{{/* Autoscaling: batch size, Knative concurrency target and hard limit, the KEDA trigger. */}}

{{/*
Images per model call: predictor.maxBatchSize, or the server's default (from the generated flag table).
*/}}
{{- define "ssd-detector.batchSize" -}}
{{- .Values.predictor.maxBatchSize | default (include "ssd-detector.flagDefault" (list . "predictor.maxBatchSize")) | int64 }}
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
Prometheus query of the KEDA trigger built from autoscaling.keda, over this release's predictor pods (KServe
names them <isvc>-predictor-...):
- load: the images offered to each pod per second (admitted or refused: shed demand counts) in % of the
  images per second its model does at the efficient batch size, summed: 100 per fully loaded replica;
- queue: the server's images in progress, summed;
- gpu: the DCGM GPU utilisation, summed.
*/}}
{{- define "ssd-detector.kedaQuery" -}}
{{- $k := .Values.autoscaling.keda -}}
{{- $pods := printf "%s-predictor-.*" (include "ssd-detector.isvcName" .) -}}
{{- $sel := printf "namespace=%q,pod=~%q" .Release.Namespace $pods -}}
{{- if eq $k.trigger "gpu" }}
{{- printf "sum(DCGM_FI_DEV_GPU_UTIL{%s=%q,%s=~%q})" $k.gpuNamespaceLabel .Release.Namespace $k.gpuPodLabel $pods }}
{{- else if eq $k.trigger "queue" }}
{{- printf "sum(ssd_queue_images{%s})" $sel }}
{{- else }}
{{- printf "sum(100 * sum by (pod) (rate(ssd_offered_images_total{%s}[%s])) / sum by (pod) (ssd_capacity_images_per_second{%s}))" $sel $k.window $sel }}
{{- end }}
{{- end }}

{{/*
Per-replica threshold of the KEDA trigger: autoscaling.keda.threshold, else 70 (% of a replica's capacity
for load, % GPU utilisation for gpu); queue: 2 * batch size images, only without standing-queue shedding
(which holds the queue at two efficient calls under overload, below that threshold).
*/}}
{{- define "ssd-detector.kedaThreshold" -}}
{{- $k := .Values.autoscaling.keda -}}
{{- if not (kindIs "invalid" $k.threshold) }}
{{- $k.threshold }}
{{- else if ne $k.trigger "queue" }}70
{{- else if .Values.predictor.shedStandingQueue }}
{{- fail "autoscaling.keda.trigger=queue needs autoscaling.keda.threshold below 2 x the efficient batch size while predictor.shedStandingQueue is on (the shedding holds the queue there under overload, so 2 x maxBatchSize is never crossed); prefer trigger=load (docs/operations.md)" }}
{{- else }}
{{- mul 2 (include "ssd-detector.batchSize" . | int64) }}
{{- end }}
{{- end }}
