{{/* Predictor pod: images, the model mount, deployment mode, termination grace, Knative-guarded pod fields. */}}

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
