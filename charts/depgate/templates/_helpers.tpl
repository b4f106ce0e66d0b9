{{/* The prefix of every object's name: the release name when it says depgate, else <release>-depgate. */}}
{{- define "depgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The labels of manifests/ (app.kubernetes.io/name, part-of) and Helm's own. */}}
{{- define "depgate.labels" -}}
app.kubernetes.io/name: depgate
app.kubernetes.io/part-of: depgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The operator pod's selector: the same as manifests/ (a Deployment's selector never changes, so a
kustomize install can be adopted by a release of this chart). */}}
{{- define "depgate.selectorLabels" -}}
app.kubernetes.io/name: depgate
app.kubernetes.io/component: operator
{{- end -}}

{{- define "depgate.serviceAccountName" -}}
{{ include "depgate.fullname" . }}
{{- end -}}

{{/* The operator's image, which is also the image of the init containers it renders. */}}
{{- define "depgate.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount as a subject of a binding. */}}
{{- define "depgate.subject" -}}
- kind: ServiceAccount
  name: {{ include "depgate.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}
