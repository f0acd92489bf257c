{{/* Names and labels shared by every object of the chart. */}}

{{- define "certpager.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "certpager.fullname" -}}
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

{{/* "<fullname>-<component>", within the 63-character name limit. */}}
{{- define "certpager.componentName" -}}
{{- printf "%s-%s" (include "certpager.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "certpager.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "certpager.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: certpager
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "certpager.selectorLabels" -}}
app.kubernetes.io/name: {{ include "certpager.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "certpager.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "certpager.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest when a digest is set, else repository:tag (default the appVersion). */}}
{{- define "certpager.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The bridge config as rendered: values, then what the chart owns (listen address, store). */}}
{{- define "certpager.bridgeConfig" -}}
{{- $config := deepCopy .Values.bridge.config -}}
{{- $server := default dict $config.server -}}
{{- $_ := set $server "listen_address" (printf ":%d" (int .Values.bridge.port)) -}}
{{- $_ := set $config "server" $server -}}
{{- $store := default dict $config.store -}}
{{- if eq .Values.bridge.store.type "sqlite" -}}
{{- $_ := set $store "path" "/var/lib/certpager/certpager-bridge.db" -}}
{{- else -}}
{{- $store = merge (deepCopy .Values.bridge.store.postgresql.config) $store -}}
{{- end -}}
{{- $_ := set $config "store" $store -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Pod-level pieces both services share: service account, security context, scheduling. */}}
{{- define "certpager.podSpecCommon" -}}
serviceAccountName: {{ include "certpager.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The container parts both services share: image, security context, probes, mounts of secrets. */}}
{{- define "certpager.probes" -}}
startupProbe:
  httpGet: {path: /-/healthy, port: http}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /-/healthy, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /-/ready, port: http}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 2
{{- end -}}

{{- define "certpager.secretVolumes" -}}
{{- range $i, $name := .values.secretMounts }}
- name: secret-{{ $i }}
  secret:
    secretName: {{ $name }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "certpager.secretVolumeMounts" -}}
{{- range $i, $name := .values.secretMounts }}
- name: secret-{{ $i }}
  mountPath: /etc/certpager/secrets/{{ $name }}
  readOnly: true
{{- end }}
{{- end -}}
