{{/*
Names, labels and small computed values shared by the templates.
*/}}

{{- define "trackgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "trackgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A child name: <fullname>-<suffix>, kept within 63 characters. */}}
{{- define "trackgate.child" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "trackgate.fullname" $root | trunc (int (sub 62 (len $suffix)))) $suffix | trimSuffix "-" -}}
{{- end -}}

{{- define "trackgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "trackgate.labels" -}}
helm.sh/chart: {{ include "trackgate.chart" . }}
app.kubernetes.io/name: {{ include "trackgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trackgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (list $ "ingest"). */}}
{{- define "trackgate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "trackgate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "trackgate.componentLabels" -}}
{{ include "trackgate.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Image reference from an image block: digest wins over tag. */}}
{{- define "trackgate.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "trackgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "trackgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "trackgate.operatorNamespace" -}}
{{- default .Release.Namespace .Values.operator.namespace -}}
{{- end -}}

{{- define "trackgate.operatorServiceAccountName" -}}
{{- include "trackgate.child" (list . "operator") -}}
{{- end -}}

{{- define "trackgate.agentServiceAccountName" -}}
{{- default (include "trackgate.child" (list . "agent")) .Values.operator.agent.serviceAccountName -}}
{{- end -}}

{{/* Secret holding the Redis URL, and its key. */}}
{{- define "trackgate.redisSecretName" -}}
{{- default (include "trackgate.child" (list . "redis-url")) .Values.redis.existingSecret -}}
{{- end -}}

{{- define "trackgate.redisSecretKey" -}}
{{- if .Values.redis.existingSecret -}}
{{- .Values.redis.existingSecretKey -}}
{{- else -}}
redis-url
{{- end -}}
{{- end -}}

{{/*
The URL written into the chart's Secret: the bundled Redis when it is
enabled and redis.url still has its default, else redis.url.
*/}}
{{- define "trackgate.redisUrl" -}}
{{- if and .Values.redis.bundled.enabled (eq .Values.redis.url "redis://redis:6379/0") -}}
{{- printf "redis://%s:6379/0" (include "trackgate.child" (list . "redis")) -}}
{{- else -}}
{{- .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{- define "trackgate.tokensSecretName" -}}
{{- default (include "trackgate.child" (list . "api-tokens")) .Values.apiTokens.existingSecret -}}
{{- end -}}

{{- define "trackgate.tokensSecretKey" -}}
{{- if .Values.apiTokens.existingSecret -}}
{{- .Values.apiTokens.existingSecretKey -}}
{{- else -}}
tokens
{{- end -}}
{{- end -}}

{{/* Seconds the kubelet waits after SIGTERM; must exceed the drain time. */}}
{{- define "trackgate.ingestGracePeriod" -}}
{{- $i := .Values.ingest -}}
{{- add (int $i.preStopSleepSeconds) (int (ceil $i.drainSeconds)) (int $i.terminationGraceMarginSeconds) -}}
{{- end -}}

{{/* Environment every trackgate process gets. */}}
{{- define "trackgate.commonEnv" -}}
- name: TRACKGATE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "trackgate.redisSecretName" . }}
      key: {{ include "trackgate.redisSecretKey" . }}
- name: TRACKGATE_KEY_PREFIX
  value: {{ .Values.config.keyPrefix | quote }}
- name: TRACKGATE_STREAM_SHARDS
  value: {{ .Values.config.streamShards | quote }}
- name: TRACKGATE_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: TRACKGATE_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: TRACKGATE_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}
