{{/* Names */}}
{{- define "hpcs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hpcs.fullname" -}}
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

{{- define "hpcs.serviceAccountName" -}}
{{- default (include "hpcs.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "hpcs.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "hpcs.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "hpcs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hpcs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Trust domain, validated: a SPIFFE trust domain is lowercase letters, digits, '.', '-', '_'. */}}
{{- define "hpcs.trustDomain" -}}
{{- $td := required "trustDomain is required" .Values.trustDomain }}
{{- if not (regexMatch "^[a-z0-9._-]+$" $td) }}
{{- fail (printf "trustDomain %q is not a valid SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')" $td) }}
{{- end }}
{{- $td }}
{{- end }}

{{/* SPIFFE IDs of the server side. */}}
{{- define "hpcs.serverSpiffeId" -}}
spiffe://{{ include "hpcs.trustDomain" . }}/hpcs/server
{{- end }}
{{- define "hpcs.serverAgentAlias" -}}
spiffe://{{ include "hpcs.trustDomain" . }}/hpcs/server-agent
{{- end }}

{{/* Paths shared between the containers of the pod. */}}
{{- define "hpcs.serverSocket" -}}/run/spire/server/private/api.sock{{- end }}
{{- define "hpcs.agentSocket" -}}/run/spire/agent/public/api.sock{{- end }}

{{/* OIDC discovery provider: service name, host, issuer URL. */}}
{{- define "hpcs.oidcService" -}}
{{- printf "%s-oidc" (include "hpcs.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "hpcs.oidcHost" -}}
{{- printf "%s.%s.svc" (include "hpcs.oidcService" .) .Release.Namespace }}
{{- end }}
{{- define "hpcs.oidcIssuer" -}}
{{- if .Values.oidc.issuer }}
{{- .Values.oidc.issuer }}
{{- else }}
{{- printf "%s://%s" (ternary "https" "http" .Values.oidc.tls.enabled) (include "hpcs.oidcHost" .) }}
{{- end }}
{{- end }}
{{- define "hpcs.oidcTlsSecret" -}}
{{- default (printf "%s-oidc-tls" (include "hpcs.fullname" .)) .Values.oidc.tls.secretName }}
{{- end }}

{{- define "hpcs.bundleConfigMap" -}}
{{- printf "%s-bundle" (include "hpcs.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* image reference: repository:tag */}}
{{- define "hpcs.image" -}}
{{- $img := index .root.Values.images .name }}
{{- $tag := default .root.Chart.AppVersion $img.tag }}
{{- printf "%s:%s" $img.repository $tag }}
{{- end }}

{{/* Restricted container security context; uid/gid passed in. */}}
{{- define "hpcs.containerSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .uid }}
  runAsGroup: {{ .gid }}
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}
