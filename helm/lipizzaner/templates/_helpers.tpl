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

{{- /* The operator image's pods (the operator, the hooks' Jobs): unprivileged, read-only. */ -}}
{{- define "lipizzaner.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "lipizzaner.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "lipizzaner.operatorImage" -}}
{{- include "lipizzaner.image" (dict "image" .Values.image "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- /* A Helm hook's Job running one `lipizzaner-operator` chore (maintenance.py):
       root, name, hook (the helm.sh/hook events), serviceAccount, args. */ -}}
{{- define "lipizzaner.hookJob" -}}
{{- $root := .root -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "lipizzaner.fullname" $root }}-{{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "lipizzaner.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
  annotations:
    helm.sh/hook: {{ .hook }}
    helm.sh/hook-weight: "0"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: 1
  template:
    metadata:
      labels:
        {{- include "lipizzaner.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .name }}
    spec:
      restartPolicy: Never
      serviceAccountName: {{ .serviceAccount }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "lipizzaner.podSecurity" $root | nindent 8 }}
      containers:
        - name: {{ .name }}
          image: {{ include "lipizzaner.operatorImage" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["lipizzaner-operator"]
          args: {{ toJson .args }}
          env:
            - name: LIPIZZANER_WATCH_NAMESPACES
              value: {{ join "," $root.Values.watchNamespaces | quote }}
          resources:
            {{- toYaml $root.Values.resources | nindent 12 }}
          securityContext:
            {{- include "lipizzaner.containerSecurity" $root | nindent 12 }}
      {{- with $root.Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
