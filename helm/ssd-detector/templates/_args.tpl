{{/* Command line of the predictor server. */}}

{{/*
Command-line arguments of the predictor server: the model and ports, then each flag of the generated
ssd-detector.flagTable (_flags.tpl) whose value is set (null or "": left to the server's default), then
predictor.extraArgs. Every flag must be known to predictor.serving.options.build_parser(): the chart's
tests parse these arguments with it.
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
{{- $v := $.Values }}
{{- range splitList "." .value }}
{{- $v = get $v . }}
{{- end }}
{{- if not (or (kindIs "invalid" $v) (and (kindIs "string" $v) (eq $v ""))) }}
{{- if eq .kind "bool" }}
- {{ ternary .flag (printf "--no-%s" (trimPrefix "--" .flag)) $v }}
{{- else if eq .kind "int" }}
- {{ .flag }}={{ int64 $v }}
{{- else }}
- {{ .flag }}={{ $v }}
{{- end }}
{{- end }}
{{- end }}
{{- range $p.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The server's default of a flag value, from the generated flag table. Call with (list $ "<value path>").
*/}}
{{- define "ssd-detector.flagDefault" -}}
{{- $path := index . 1 }}
{{- range (include "ssd-detector.flagTable" (index . 0) | fromYamlArray) }}
{{- if and (eq .value $path) (not (kindIs "invalid" .default)) }}
{{- if eq .kind "int" }}{{ int64 .default }}{{ else }}{{ .default }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
