{{/*
The predictor's kserve-container, from a context with .Values, .Chart and .Release: the release's own
(spec.predictor) or the canary's (values with canary.* laid over them, see ssd-detector.canaryContext).
*/}}
{{- define "ssd-detector.container" -}}
{{- $standard := eq .Values.deploymentMode "Standard" }}
{{- $h2c := and (not $standard) (eq .Values.knative.protocol "h2c") -}}
- name: kserve-container
  image: {{ include "ssd-detector.image" . | quote }}
  imagePullPolicy: {{ include "ssd-detector.pullPolicy" (dict "image" .Values.image "policy" .Values.image.pullPolicy) }}
  args:
    {{- include "ssd-detector.args" . | nindent 4 }}
    {{- if .Values.auth.tokenSecret }}
    - --auth_token_file=/var/run/secrets/ssd-detector/auth/{{ .Values.auth.tokenKey }}
    {{- end }}
  env:
    {{- if .Values.model.storageUri }}
    # KServe's storage initializer downloads this URI to /mnt/models before the server starts.
    - name: STORAGE_URI
      value: {{ .Values.model.storageUri | quote }}
    {{- end }}
    - name: TF_FORCE_GPU_ALLOW_GROWTH
      value: "true"
    - name: TF_CPP_MIN_LOG_LEVEL
      value: {{ .Values.predictor.tfLogLevel | quote }}
    - name: HOME
      value: /tmp
    - name: TMPDIR
      value: /tmp
    - name: KERAS_HOME
      value: /tmp/.keras
    - name: MPLCONFIGDIR
      value: /tmp/matplotlib
    - name: PYTHONDONTWRITEBYTECODE
      value: "1"
    {{- with .Values.predictor.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- if $h2c }}
    # Knative routes to the one port; named h2c it carries HTTP/2 cleartext: V2 gRPC.
    - name: h2c
      containerPort: {{ int64 .Values.grpcPort }}
      protocol: TCP
    {{- else }}
    # V1 and V2 REST (HTTP/1.1); Knative routes to the one port named http1.
    - name: http1
      containerPort: {{ int64 .Values.httpPort }}
      protocol: TCP
    {{- if and $standard .Values.exposeGrpc }}
    # Standard mode: KServe's predictor Service exposes this port too (appProtocol kubernetes.io/h2c).
    - name: grpc
      containerPort: {{ int64 .Values.grpcPort }}
      protocol: TCP
    {{- end }}
    {{- end }}
  startupProbe:
    httpGet:
      path: /v2/models/{{ .Values.model.name }}/ready
      port: {{ int64 .Values.httpPort }}
    periodSeconds: {{ int64 .Values.probes.startup.periodSeconds }}
    timeoutSeconds: {{ int64 .Values.probes.startup.timeoutSeconds }}
    failureThreshold: {{ int64 .Values.probes.startup.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /v2/models/{{ .Values.model.name }}/ready
      port: {{ int64 .Values.httpPort }}
    periodSeconds: {{ int64 .Values.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ int64 .Values.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ int64 .Values.probes.readiness.failureThreshold }}
  livenessProbe:
    httpGet:
      path: /v2/health/live
      port: {{ int64 .Values.httpPort }}
    periodSeconds: {{ int64 .Values.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ int64 .Values.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ int64 .Values.probes.liveness.failureThreshold }}
  resources:
    {{- $resources := deepCopy (.Values.resources | default dict) }}
    {{- if .Values.gpu.enabled }}
    {{- $limits := get $resources "limits" | default dict }}
    {{- $_ := set $limits .Values.gpu.resourceName (toString (int64 .Values.gpu.count)) }}
    {{- $_ = set $resources "limits" $limits }}
    {{- end }}
    {{- toYaml $resources | nindent 4 }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if .Values.auth.tokenSecret }}
    # The accepted bearer tokens (auth.tokenSecret); Knative requires secret mounts read-only.
    - name: auth-token
      mountPath: /var/run/secrets/ssd-detector/auth
      readOnly: true
    {{- end }}
{{- end }}


{{/*
Canary values the schema cannot check, and the rules KServe's webhook applies to spec.canary
(kserve/kserve pkg/apis/serving/v1beta1/inference_service_validation.go, validateCanarySpecs, 0.20+).
*/}}
{{- define "ssd-detector.validateCanary" -}}
{{- $c := .Values.canary -}}
{{- if $c.enabled }}
{{- range $key, $_ := $c.predictor }}
{{- if not (hasKey $.Values.predictor $key) }}
{{- fail (printf "canary.predictor.%s: not a key of predictor (the canary's server flags use the same names)" $key) }}
{{- end }}
{{- end }}
{{- if eq .Values.deploymentMode "Standard" }}
{{- if .Values.kserveLegacyModeNames }}
{{- fail "canary.enabled in Standard mode writes spec.canary, which needs KServe 0.20+; kserveLegacyModeNames is for 0.14/0.15, where the field is dropped: use deploymentMode=Knative, or a second release behind a weighted route (docs/rollout.md)" }}
{{- end }}
{{- if not .Values.model.storageUri }}
{{- fail "canary.enabled in Standard mode needs model.storageUri: KServe refuses a canary beside a predictor without a model (\"canary requires a stable predictor with a model\")" }}
{{- end }}
{{- if gt (int64 $c.replicas) (int64 .Values.autoscaling.minReplicas) }}
{{- fail (printf "canary.replicas (%v) must not exceed autoscaling.minReplicas (%v) (KServe: canary minReplicas must not exceed the stable predictor's)" $c.replicas .Values.autoscaling.minReplicas) }}
{{- end }}
{{- $deployment := printf "%s-%s-predictor" (include "ssd-detector.isvcName" .) $c.name }}
{{- if gt (len $deployment) 63 }}
{{- fail (printf "canary.name: the canary's Deployment name %s is longer than 63 characters; shorten canary.name or the release name" $deployment) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
