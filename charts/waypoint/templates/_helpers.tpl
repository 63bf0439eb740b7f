{{/* Labels every object of the release carries. */}}
{{- define "waypoint.labels" -}}
app.kubernetes.io/part-of: veil
app.kubernetes.io/component: waypoint
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* What selects the waypoint's pods. */}}
{{- define "waypoint.selector" -}}
app.kubernetes.io/name: {{ .Values.name }}
app.kubernetes.io/component: waypoint
{{- end -}}
