{{/*
Helpers. Most take a dict: (dict "root" $ "name" <service name> "svc" <its values>).
*/}}

{{/* The four services of the platform, in the chart's order. */}}
{{- define "ta.serviceNames" -}}
supplier-registry contract escrow dispute
{{- end -}}

{{/* The call graph (call-graph.yaml), as a dict. */}}
{{- define "ta.callGraph" -}}
{{- .Files.Get "call-graph.yaml" -}}
{{- end -}}

{{/* <release>-<service>: the name of every object of one service. */}}
{{- define "ta.objectName" -}}
{{- $n := printf "%s-%s" .root.Release.Name .name -}}
{{- if gt (len $n) 63 -}}
{{- fail (printf "object name %q is longer than 63 characters: choose a shorter release name" $n) -}}
{{- end -}}
{{- $n -}}
{{- end -}}

{{- define "ta.chartLabel" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of the release. Takes the root context. */}}
{{- define "ta.commonLabels" -}}
helm.sh/chart: {{ include "ta.chartLabel" . }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trade-assurance
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one service's objects. */}}
{{- define "ta.labels" -}}
{{ include "ta.commonLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* Selector labels of one service's pods: stable across upgrades. */}}
{{- define "ta.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* Selector of every pod of the release. Takes the root context. */}}
{{- define "ta.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image reference: by digest when one is given. Takes the root context. */}}
{{- define "ta.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The services one service calls (from call-graph.yaml), space separated. */}}
{{- define "ta.callees" -}}
{{- $graph := include "ta.callGraph" .root | fromYaml -}}
{{- $internal := get $graph "internal" | default dict -}}
{{- get $internal .name | default list | join " " -}}
{{- end -}}

{{/* The environment variable naming a service's address: escrow -> ESCROW_URL. */}}
{{- define "ta.urlEnvName" -}}
{{- printf "%s_URL" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/*
Checks values the schema cannot: the shutdown budget, and the signing key of
every service that calls others.
*/}}
{{- define "ta.validate" -}}
{{- $s := .Values.shutdown -}}
{{- if gt (add $s.readinessDelaySeconds $s.gracePeriodSeconds 5) (int $s.terminationGracePeriodSeconds) -}}
{{- fail (printf "shutdown: readinessDelaySeconds (%v) + gracePeriodSeconds (%v) + 5s for closing the pool and flushing telemetry must not exceed terminationGracePeriodSeconds (%v)" $s.readinessDelaySeconds $s.gracePeriodSeconds $s.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- range $user := list "contract" "dispute" -}}
{{- $svc := get $.Values.services $user -}}
{{- $several := or (gt (int $svc.replicas) 1) (and $svc.autoscaling.enabled (gt (int $svc.autoscaling.maxReplicas) 1)) -}}
{{- if and $several (not (hasPrefix "s3://" $.Values.evidence.store)) -}}
{{- fail (printf "evidence.store must be an s3://bucket[/prefix] with more than one %s replica (or autoscaling): %s would be each pod's own directory, and contract and dispute must share it" $user $.Values.evidence.store) -}}
{{- end -}}
{{- end -}}
{{- $root := . -}}
{{- range $name := splitList " " (include "ta.serviceNames" .) -}}
{{- $svc := get $root.Values.services $name -}}
{{- if and (include "ta.callees" (dict "root" $root "name" $name)) (not $svc.signingKey) -}}
{{- fail (printf "services.%s.signingKey is required: %s calls %s and signs its calls with its own key" $name $name (include "ta.callees" (dict "root" $root "name" $name))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* OTEL_RESOURCE_ATTRIBUTES of one service's pods ($(VAR) is expanded by the kubelet). */}}
{{- define "ta.resourceAttributes" -}}
{{- $attrs := list
  "service.namespace=trade-assurance"
  (printf "service.version=%s" (.root.Values.image.tag | default .root.Chart.AppVersion))
  (printf "k8s.namespace.name=%s" .root.Release.Namespace)
  (printf "k8s.deployment.name=%s" (include "ta.objectName" .))
  "k8s.pod.name=$(K8S_POD_NAME)"
  "k8s.node.name=$(K8S_NODE_NAME)" -}}
{{- range $key, $value := .root.Values.telemetry.otlp.resourceAttributes -}}
{{- $attrs = append $attrs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $attrs -}}
{{- end -}}

{{/* The Secret with tls.crt, tls.key and ca.crt of one service (tls.enabled). */}}
{{- define "ta.tlsSecret" -}}
{{- get .root.Values.tls.secretNames .name | default (printf "%s-tls" (include "ta.objectName" .)) -}}
{{- end -}}
