{{/* Names, labels, images and the ferric.toml renderer shared by every template. */}}

{{- define "ferric.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "ferric.fullname" -}}
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

{{- define "ferric.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every resource carries. */}}
{{- define "ferric.labels" -}}
helm.sh/chart: {{ include "ferric.chart" . }}
{{ include "ferric.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferric
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ferric.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferric.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "api"). */}}
{{- define "ferric.componentLabels" -}}
{{ include "ferric.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ferric.componentSelector" -}}
{{ include "ferric.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ferric.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ferric.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: (dict "root" $ "image" .Values.api.image). */}}
{{- define "ferric.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "ferric.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The Secret the chart renders for database and bus URLs. */}}
{{- define "ferric.secretName" -}}
{{- printf "%s-urls" (include "ferric.fullname" .) -}}
{{- end -}}

{{- define "ferric.configName" -}}
{{- printf "%s-config" (include "ferric.fullname" .) -}}
{{- end -}}

{{- define "ferric.apiUrl" -}}
{{- if .Values.api.publicUrl -}}
{{- .Values.api.publicUrl -}}
{{- else -}}
{{- printf "http://%s-api.%s.svc:%d" (include "ferric.fullname" .) .Release.Namespace (int .Values.api.port) -}}
{{- end -}}
{{- end -}}

{{/* A password that is generated once and then kept: the value given, else the one in the
     live Secret (lookup; empty when rendering offline), else a new random one.
     (list $ secretName key given) */}}
{{- define "ferric.keptPassword" -}}
{{- $root := index . 0 -}}{{- $secret := index . 1 -}}{{- $key := index . 2 -}}{{- $given := index . 3 -}}
{{- if $given -}}
{{- $given -}}
{{- else -}}
{{- $live := lookup "v1" "Secret" $root.Release.Namespace $secret -}}
{{- if and $live (index ($live.data | default dict) $key) -}}
{{- index $live.data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 24 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment entries for the database and bus URLs, from the right Secret. */}}
{{- define "ferric.urlEnv" -}}
- name: FERRIC_DATABASE__URL
  valueFrom:
    secretKeyRef:
{{- if and .Values.database.existingSecret (not .Values.bundled.postgresql.enabled) }}
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- else }}
      name: {{ include "ferric.secretName" . }}
      key: database-url
{{- end }}
- name: FERRIC_BUS__URL
  valueFrom:
    secretKeyRef:
{{- if and .Values.bus.existingSecret (not .Values.bundled.rabbitmq.enabled) }}
      name: {{ .Values.bus.existingSecret }}
      key: {{ .Values.bus.existingSecretKey }}
{{- else }}
      name: {{ include "ferric.secretName" . }}
      key: bus-url
{{- end }}
- name: FERRIC_DATABASE__MIGRATE_ON_START
  value: {{ not .Values.migrations.job | quote }}
{{- end -}}

{{/* Does the chart render its own URL Secret? */}}
{{- define "ferric.rendersSecret" -}}
{{- if or .Values.bundled.postgresql.enabled .Values.bundled.rabbitmq.enabled (not .Values.database.existingSecret) (not .Values.bus.existingSecret) -}}
true
{{- end -}}
{{- end -}}

{{/* Pod-level settings every Ferric pod shares. */}}
{{- define "ferric.podCommon" -}}
serviceAccountName: {{ include "ferric.serviceAccountName" . }}
automountServiceAccountToken: false
{{- include "ferric.imagePullSecrets" . }}
{{- end -}}

{{/* Checksum of the configuration, so pods restart when it changes. */}}
{{- define "ferric.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/* ---- ferric.toml ------------------------------------------------------------------
     Hand-rolled rather than toToml: values arrive as float64, and a whole number must be
     written as an integer for the services' integer keys (floats accept integers). */}}
{{- define "ferric.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- if eq (float64 $v) (floor $v) -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if kindIs "slice" $v -}}
[{{- range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "ferric.tomlValue" $e }}{{ end -}}]
{{- else -}}
{{- fail (printf "config: values of kind %s cannot be written to ferric.toml" (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* One table and its sub-tables: (list "conductor" $map). Null values are left out. */}}
{{- define "ferric.tomlTable" -}}
{{- $name := index . 0 -}}{{- $t := index . 1 -}}
[{{ $name }}]
{{- range $k, $v := $t }}
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v)) }}
{{ $k }} = {{ include "ferric.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $t }}
{{- if kindIs "map" $v }}
{{ include "ferric.tomlTable" (list (printf "%s.%s" $name $k) $v) }}
{{- end }}
{{- end }}
{{- end -}}
