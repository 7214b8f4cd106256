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

{{/* TURN: the relay's objects, its Secret, the ICE servers signaling hands out. */}}
{{- define "orb.turnName" -}}
{{- printf "%s-turn" (include "orb.fullname" .) -}}
{{- end -}}

{{/* The Secret (key `secret`) with the TURN REST shared secret signaling mints credentials from: the managed service's, the given one, else the chart's; "" without TURN. */}}
{{- define "orb.turnSecret" -}}
{{- if .Values.turn.external.urls -}}
{{- .Values.turn.external.existingSecret -}}
{{- else if .Values.turn.enabled -}}
{{- default (printf "%s-secret" (include "orb.turnName" .)) .Values.turn.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The port coturn's TLS listener binds: 443 itself on the host network, else 5349 behind the Service's 443 (no privileged port in the pod). */}}
{{- define "orb.turnTLSPort" -}}
{{- ternary 443 5349 .Values.turn.hostNetwork -}}
{{- end -}}

{{/* The TURN servers' URLs: the managed service's, or the in-cluster relay's at turn.publicHost. */}}
{{- define "orb.turnURLs" -}}
{{- $urls := list -}}
{{- if .Values.turn.external.urls -}}
{{- $urls = .Values.turn.external.urls -}}
{{- else if .Values.turn.enabled -}}
{{- $host := .Values.turn.publicHost -}}
{{- $urls = list (printf "turn:%s:3478?transport=udp" $host) (printf "turn:%s:3478?transport=tcp" $host) -}}
{{- if .Values.turn.tls.secretName -}}
{{- $urls = append $urls (printf "turns:%s:443?transport=tcp" $host) -}}
{{- end -}}
{{- end -}}
{{- toJson $urls -}}
{{- end -}}

{{/* The TCP ports of TURN URLs (turn: 3478 and turns: 5349 when a URL names none), as a JSON list. */}}
{{- define "orb.turnURLPorts" -}}
{{- $ports := list -}}
{{- range include "orb.turnURLs" . | fromJsonArray -}}
{{- $hostPort := regexReplaceAll "\\?.*$" (regexReplaceAll "^turns?:" . "") "" -}}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $hostPort) -}}
{{- $ports = append $ports (int (default (ternary "5349" "3478" (hasPrefix "turns:" .)) $port)) -}}
{{- end -}}
{{- toJson ($ports | uniq) -}}
{{- end -}}

{{/*
Addresses the relay never relays to: the cluster's ranges, loopback, link-local (the cloud
metadata address), "this network", unique-local and IPv4-mapped IPv6, CGNAT and multicast. A relay
that forwards to pod, service or node addresses is the classic TURN hole into a cluster.
Not `::/128`: coturn refuses the all-zero addresses itself (since 4.5.2), and its range check
reads a range starting at the all-zero address as "from anything": `::` to `::` matches every
address, and an IPv6 range from `::` every IPv4 address too. Such cluster ranges are refused.
*/}}
{{- define "orb.turnDeniedPeerCIDRs" -}}
{{- $fixed := list "0.0.0.0/8" "127.0.0.0/8" "169.254.0.0/16" "100.64.0.0/10" "224.0.0.0/4" "240.0.0.0/4" "::1/128" "::ffff:0:0/96" "fe80::/10" "fc00::/7" "ff00::/8" -}}
{{- range .Values.networkPolicy.clusterCIDRs -}}
{{- $range := include "orb.cidrRange" . -}}
{{- if or (eq $range "0.0.0.0-0.0.0.0") (hasPrefix "0:0:0:0:0:0:0:0-" $range) -}}
{{- fail (printf "networkPolicy.clusterCIDRs: coturn would read %q, a range from the all-zero address, as more than it is (every address, or every IPv4 address too)" .) -}}
{{- end -}}
{{- end -}}
{{- toJson (concat $fixed .Values.networkPolicy.clusterCIDRs | uniq) -}}
{{- end -}}

{{/* The ranges of a JSON list of CIDRs of one family ("4" or "6"), as a JSON list. */}}
{{- define "orb.cidrsOfFamily" -}}
{{- $out := list -}}
{{- range fromJsonArray .cidrs -}}
{{- if eq (ternary "6" "4" (contains ":" .)) $.family -}}
{{- $out = append $out . -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
An IPv4 or IPv6 CIDR as coturn's "first-last" address range (coturn's denied-peer-ip takes
ranges, not CIDRs). IPv6 addresses come out uncompressed, in lower case.
*/}}
{{- define "orb.cidrRange" -}}
{{- $cidr := toString . -}}
{{- $parts := splitList "/" $cidr -}}
{{- if or (ne (len $parts) 2) (not (regexMatch "^[0-9]{1,3}$" (index $parts 1))) -}}
{{- fail (printf "%q is not an address range like 10.96.0.0/12 or fd00:10:96::/112" $cidr) -}}
{{- end -}}
{{- $addr := lower (index $parts 0) -}}
{{- $bits := atoi (index $parts 1) -}}
{{- $first := list -}}
{{- $last := list -}}
{{- if regexMatch "^[0-9]{1,3}(\\.[0-9]{1,3}){3}$" $addr -}}
{{- if gt $bits 32 -}}{{- fail (printf "%q: an IPv4 prefix is at most 32 bits" $cidr) -}}{{- end -}}
{{- range $i, $octet := splitList "." $addr -}}
{{- $value := atoi $octet -}}
{{- if gt $value 255 -}}{{- fail (printf "%q is not an IPv4 address range" $cidr) -}}{{- end -}}
{{- /* This octet's bits inside the prefix, and the size of the block they leave free. */ -}}
{{- $fixed := min 8 (max 0 (sub $bits (mul $i 8))) -}}
{{- $size := index (list 256 128 64 32 16 8 4 2 1) $fixed -}}
{{- $low := mul (div $value $size) $size -}}
{{- $first = append $first $low -}}
{{- $last = append $last (sub (add $low $size) 1) -}}
{{- end -}}
{{- printf "%s-%s" (join "." $first) (join "." $last) -}}
{{- else if and (contains ":" $addr) (regexMatch "^[0-9a-f:]+$" $addr) -}}
{{- if gt $bits 128 -}}{{- fail (printf "%q: an IPv6 prefix is at most 128 bits" $cidr) -}}{{- end -}}
{{- $halves := splitList "::" $addr -}}
{{- if gt (len $halves) 2 -}}{{- fail (printf "%q is not an IPv6 address range" $cidr) -}}{{- end -}}
{{- $groups := list -}}
{{- if eq (len $halves) 2 -}}
{{- $head := ternary list (splitList ":" (index $halves 0)) (eq (index $halves 0) "") -}}
{{- $tail := ternary list (splitList ":" (index $halves 1)) (eq (index $halves 1) "") -}}
{{- $groups = $head -}}
{{- range until (int (sub 8 (add (len $head) (len $tail)))) -}}
{{- $groups = append $groups "0" -}}
{{- end -}}
{{- $groups = concat $groups $tail -}}
{{- else -}}
{{- $groups = splitList ":" $addr -}}
{{- end -}}
{{- if ne (len $groups) 8 -}}{{- fail (printf "%q is not an IPv6 address range" $cidr) -}}{{- end -}}
{{- $hex := dict "0" 0 "1" 1 "2" 2 "3" 3 "4" 4 "5" 5 "6" 6 "7" 7 "8" 8 "9" 9 "a" 10 "b" 11 "c" 12 "d" 13 "e" 14 "f" 15 -}}
{{- $powers := list 65536 32768 16384 8192 4096 2048 1024 512 256 128 64 32 16 8 4 2 1 -}}
{{- range $i, $group := $groups -}}
{{- if not (regexMatch "^[0-9a-f]{1,4}$" $group) -}}{{- fail (printf "%q is not an IPv6 address range" $cidr) -}}{{- end -}}
{{- $value := 0 -}}
{{- range splitList "" $group -}}
{{- $value = add (mul $value 16) (index $hex .) -}}
{{- end -}}
{{- $fixed := min 16 (max 0 (sub $bits (mul $i 16))) -}}
{{- $size := index $powers $fixed -}}
{{- $low := mul (div $value $size) $size -}}
{{- $first = append $first (printf "%x" $low) -}}
{{- $last = append $last (printf "%x" (sub (add $low $size) 1)) -}}
{{- end -}}
{{- printf "%s-%s" (join ":" $first) (join ":" $last) -}}
{{- else -}}
{{- fail (printf "%q is not an address range like 10.96.0.0/12 or fd00:10:96::/112" $cidr) -}}
{{- end -}}
{{- end -}}

{{/* The in-cluster relay's container ports as NetworkPolicy ports: TURN on 3478 (UDP, TCP), TLS, the relay range. */}}
{{- define "orb.turnPorts" -}}
- {port: 3478, protocol: UDP}
- {port: 3478, protocol: TCP}
{{- if .Values.turn.tls.secretName }}
- {port: {{ include "orb.turnTLSPort" . }}, protocol: TCP}
{{- end }}
- {port: {{ .Values.turn.relayPorts.min }}, endPort: {{ .Values.turn.relayPorts.max }}, protocol: UDP}
{{- end -}}

{{/*
The port of orb.proxy.https (http://host[:port], 80 when it names none). The URL lands in the pod
spec, so a password in it is refused: a proxy for the orbs admits them by their address.
*/}}
{{- define "orb.proxyPort" -}}
{{- $url := .Values.orb.proxy.https -}}
{{- if not (regexMatch "^(http://)?(\\[[0-9a-fA-F:.]+\\]|[^/@?#\\s:\\[\\]]+)(:[0-9]{1,5})?/?$" $url) -}}
{{- fail (printf "orb.proxy.https: %q is not http://host[:port] (an HTTP proxy, no user or password: the URL is in the pod spec)" (regexReplaceAll "//[^@/]*@" $url "//..@")) -}}
{{- end -}}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" (trimSuffix "/" $url)) -}}
{{- default "80" $port -}}
{{- end -}}

{{/* The orb container's extra env: the proxy settings, then orb.extraEnv, as a JSON list. */}}
{{- define "orb.orbExtraEnv" -}}
{{- $env := list (dict "name" "ORB_BRAIN" "value" .Values.orb.brain) -}}
{{- with .Values.orb.proxy.https -}}
{{- $_ := include "orb.proxyPort" $ -}}
{{- $env = append $env (dict "name" "HTTPS_PROXY" "value" .) -}}
{{- end -}}
{{- with .Values.orb.proxy.noProxy -}}
{{- $env = append $env (dict "name" "NO_PROXY" "value" (join "," .)) -}}
{{- end -}}
{{- toJson (concat $env .Values.orb.extraEnv) -}}
{{- end -}}

{{/*
The except list of the orbs' 0.0.0.0/0 egress rules (UDP media, HTTPS to the AI service):
link-local (cloud metadata) and the IPv4 cluster ranges. An except must lie inside its cidr, so
IPv6 ranges are left out: there is no IPv6 rule to leave them out of.
*/}}
{{- define "orb.publicIPv4Except" -}}
- 169.254.0.0/16
{{- range include "orb.cidrsOfFamily" (dict "cidrs" (toJson .Values.networkPolicy.clusterCIDRs) "family" "4") | fromJsonArray }}
- {{ . }}
{{- end }}
{{- end -}}

{{/*
The local brain's models volume source as JSON for the operator ("" when none), checked.
*/}}
{{- define "orb.modelsVolume" -}}
{{- $m := .Values.orb.models -}}
{{- if not (has .Values.orb.brain (list "openai-realtime" "local" "test")) -}}
{{- fail (printf "orb.brain must be openai-realtime, local or test (got %q)" .Values.orb.brain) -}}
{{- end -}}
{{- if and $m.persistentVolumeClaim $m.image -}}
{{- fail "orb.models: set persistentVolumeClaim or image, not both" -}}
{{- end -}}
{{- if $m.persistentVolumeClaim -}}
{{- toJson (dict "persistentVolumeClaim" (dict "claimName" $m.persistentVolumeClaim "readOnly" true)) -}}
{{- else if $m.image -}}
{{- toJson (dict "image" (dict "reference" $m.image "pullPolicy" "IfNotPresent")) -}}
{{- else if eq .Values.orb.brain "local" -}}
{{- fail "orb.brain is local: set orb.models.persistentVolumeClaim or orb.models.image" -}}
{{- end -}}
{{- end -}}
