{{- define "lipizzaner.fullname" -}}
{{- if contains "lipizzaner" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-lipizzaner" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lipizzaner.labels" -}}
app.kubernetes.io/name: lipizzaner
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- /* Must match render.OPERATOR_LABELS: the cells' NetworkPolicy admits these pods. */ -}}
{{- define "lipizzaner.operatorSelector" -}}
app.kubernetes.io/name: lipizzaner
app.kubernetes.io/component: operator
{{- end -}}

{{- define "lipizzaner.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .appVersion) -}}
{{- end -}}

{{- /* The namespaces the cells' ServiceAccount and the Roles go to. */ -}}
{{- define "lipizzaner.cellNamespaces" -}}
{{- $namespaces := .Values.watchNamespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}
