{{/* Common names and labels. */}}
{{/* `orb` for a release named orb (so the signaling Service is orb-signaling), else `<release>-orb`. */}}
{{- define "orb.fullname" -}}
{{- if contains "orb" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-orb" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "orb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: orb-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "orb.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/name: {{ .component }}
{{- end -}}

{{- define "orb.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .repository (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}

{{- define "orb.signingSecret" -}}
{{- default (printf "%s-signing-key" (include "orb.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* The Secret with the summary webhook's HMAC key: the given one, else the chart's. */}}
{{- define "orb.summaryWebhookSecret" -}}
{{- default (printf "%s-summary-webhook" (include "orb.fullname" .)) .Values.signaling.summaryWebhook.existingSecret -}}
{{- end -}}

{{- define "orb.signalingName" -}}
{{- printf "%s-signaling" (include "orb.fullname" .) -}}
{{- end -}}

{{- define "orb.operatorName" -}}
{{- printf "%s-operator" (include "orb.fullname" .) -}}
{{- end -}}

{{/* The restricted security context every container of the chart runs with. */}}
{{- define "orb.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "orb.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A map as key=value pairs joined by commas (the operator's --orb-node-selector format). */}}
{{- define "orb.keyValues" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* Seconds in a duration written as 30s, 5m or 2h. */}}
{{- define "orb.seconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "h" $d -}}{{- mul (trimSuffix "h" $d | int) 3600 -}}
{{- else if hasSuffix "m" $d -}}{{- mul (trimSuffix "m" $d | int) 60 -}}
{{- else -}}{{- trimSuffix "s" $d | int -}}
{{- end -}}
{{- end -}}

{{- define "orb.redisName" -}}
{{- printf "%s-redis" (include "orb.fullname" .) -}}
{{- end -}}

{{/* Whether signaling shares rooms through a Redis (its own, or the chart's). */}}
{{- define "orb.redisConfigured" -}}
{{- if or .Values.signaling.redis.url .Values.signaling.redis.existingSecret .Values.redis.enabled -}}true{{- end -}}
{{- end -}}

{{/* The Secret with the chart's Redis password: the given one, else the chart's. */}}
{{- define "orb.redisSecret" -}}
{{- default (include "orb.redisName" .) .Values.redis.existingSecret -}}
{{- end -}}

{{/* The one namespace the operator watches (its Role's), or "" when it watches every namespace. */}}
{{- define "orb.watchedNamespace" -}}
{{- if .Values.operator.clusterWide -}}
{{- if .Values.operator.watchNamespace -}}
{{- fail "operator.clusterWide watches every namespace: leave operator.watchNamespace empty" -}}
{{- end -}}
{{- else -}}
{{- default .Release.Namespace .Values.operator.watchNamespace -}}
{{- end -}}
{{- end -}}

{{/* The Prometheus that scrapes the pods, as a NetworkPolicy peer: its namespace when given, else its pods anywhere. */}}
{{- define "orb.prometheusPeer" -}}
{{- with .Values.networkPolicy.prometheusNamespaceSelector -}}
- namespaceSelector:
    matchLabels:
      {{- toYaml . | nindent 6 }}
{{- else -}}
- namespaceSelector: {}
  podSelector:
    matchLabels:
      {{- toYaml .Values.networkPolicy.prometheusPodSelector | nindent 6 }}
{{- end }}
{{- end -}}
