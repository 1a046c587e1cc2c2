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
