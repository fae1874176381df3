{{/* Names are cut to 63 characters: the limit of a label value and of most names. */}}
{{- define "parley.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "parley.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "parley.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on everything the chart renders. */}}
{{- define "parley.labels" -}}
helm.sh/chart: {{ include "parley.chart" . }}
app.kubernetes.io/name: {{ include "parley.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: parley
parley.dev/region: {{ .Values.region.name }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "parley.operator.fullname" -}}
{{- printf "%s-operator" (include "parley.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the operator's pods: fixed for the life of a release. */}}
{{- define "parley.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parley.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "parley.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "parley.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "parley.operator.image" -}}
{{- $image := .Values.operator.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when the region runs svc_media (region.spec.media.enabled), else empty. */}}
{{- define "parley.mediaEnabled" -}}
{{- with .Values.region.spec.media }}{{ if .enabled }}true{{ end }}{{ end }}
{{- end }}

{{/* "true" when the region runs svc_search (region.spec.search.enabled), else empty. */}}
{{- define "parley.searchEnabled" -}}
{{- with .Values.region.spec.search }}{{ if .enabled }}true{{ end }}{{ end }}
{{- end }}

{{/*
PromQL label matcher that keeps alert and dashboard queries on this region's
series only, however many regions one Prometheus (or Thanos) holds.
*/}}
{{- define "parley.promSelector" -}}
namespace="{{ .Release.Namespace }}",region="{{ .Values.region.name }}"
{{- end }}
