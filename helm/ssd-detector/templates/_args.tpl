{{/* Command line of the predictor server. */}}

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
