{{/* Configuration errors that the values schema cannot express. */}}

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
{{- if and .Values.gpu.enabled (eq (toString .Values.predictor.runtime) "onnxruntime") }}
{{- fail "predictor.runtime=onnxruntime is for CPU nodes: the GPU image does not carry ONNX Runtime, and on a GPU node TensorFlow runs the network on the GPU; set gpu.enabled=false (the CPU image) or predictor.runtime=tensorflow" }}
{{- end }}
{{- end }}
