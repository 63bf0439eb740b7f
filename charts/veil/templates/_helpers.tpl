{{/* Labels every object of the release carries. */}}
{{- define "veil.labels" -}}
app.kubernetes.io/part-of: veil
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The image, tag defaulting to the chart's appVersion. */}}
{{- define "veil.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The CA's in-cluster DNS name. */}}
{{- define "veil.caHost" -}}
veil-ca.{{ .Release.Namespace }}.svc
{{- end -}}

{{/* RUST_LOG for ztunnel: the log level, with its access log set apart, and the audit stream
always on. */}}
{{- define "veil.rustLog" -}}
{{- $access := dict "all" "info" "denied" "warn" "off" "off" -}}
{{ .Values.logLevel }},veil::access={{ get $access .Values.accessLogLevel }},veil::audit=info
{{- end -}}

{{/* RUST_LOG for the CA and the controller: the log level, and the audit stream always on. */}}
{{- define "veil.rustLogAudited" -}}
{{ .Values.logLevel }},veil::audit=info
{{- end -}}
