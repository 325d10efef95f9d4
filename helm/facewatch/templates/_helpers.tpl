{{/* Names and labels shared by every object of the chart. */}}
{{- define "facewatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "facewatch.fullname" -}}
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

{{- define "facewatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "facewatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "facewatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "facewatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "facewatch.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "facewatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "facewatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret the pods take environment variables from, or "" for none. */}}
{{- define "facewatch.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.create }}
{{- printf "%s-env" (include "facewatch.fullname" .) }}
{{- end }}
{{- end }}

{{- define "facewatch.httpPort" -}}
{{- ((.Values.config.http).port) | default 8790 }}
{{- end }}

{{/* Seconds the worker may drain on SIGTERM (config.shutdown.drain_timeout_s; the worker's default is 20). */}}
{{- define "facewatch.drainSeconds" -}}
{{- ((.Values.config.shutdown).drain_timeout_s) | default 20 | ceil | int }}
{{- end }}

{{/* Pod security shared by worker and ingest: non-root, read-only root, no privileges. */}}
{{- define "facewatch.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "facewatch.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Fail the render when a consumer-group autoscaler could exceed the topic's partitions. */}}
{{- define "facewatch.checkScaling" -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are mutually exclusive: KEDA manages its own HorizontalPodAutoscaler" }}
{{- end }}
{{- $partitions := int .Values.framesTopicPartitions }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.maxReplicas) $partitions) }}
{{- fail (printf "keda.maxReplicas (%d) is more than framesTopicPartitions (%d): replicas beyond the frames topic's partitions get no partitions and sit idle" (int .Values.keda.maxReplicas) $partitions) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) $partitions) }}
{{- fail (printf "autoscaling.maxReplicas (%d) is more than framesTopicPartitions (%d): replicas beyond the frames topic's partitions get no partitions and sit idle" (int .Values.autoscaling.maxReplicas) $partitions) }}
{{- end }}
{{- if and (not .Values.autoscaling.enabled) (not .Values.keda.enabled) (gt (int .Values.worker.replicas) $partitions) }}
{{- fail (printf "worker.replicas (%d) is more than framesTopicPartitions (%d)" (int .Values.worker.replicas) $partitions) }}
{{- end }}
{{- if and .Values.secrets.existingSecret .Values.secrets.create }}
{{- fail "secrets.existingSecret and secrets.create are mutually exclusive" }}
{{- end }}
{{- end }}

{{/* The Kafka ports to allow egress to, as a YAML list: networkPolicy.kafka.ports, else the ports of
config.kafka.bootstrap_servers (host:port,host:port; 9092 where a server names none). */}}
{{- define "facewatch.kafkaPorts" -}}
{{- $ports := list }}
{{- if .Values.networkPolicy.kafka.ports }}
{{- $ports = .Values.networkPolicy.kafka.ports }}
{{- else }}
{{- range $server := splitList "," (((.Values.config.kafka).bootstrap_servers) | default "localhost:9092") }}
{{- $parts := splitList ":" (trim $server) }}
{{- $port := ternary (last $parts) "9092" (gt (len $parts) 1) | int }}
{{- $ports = append $ports $port }}
{{- end }}
{{- end }}
{{- toYaml (uniq $ports) }}
{{- end }}

{{/* The ports of the ingest cameras' rtsp:// and rtsps:// URLs (554 and 322 where a URL names none), as a
YAML list; files (paths) need none. User information ($(VAR) passwords included) is skipped. */}}
{{- define "facewatch.cameraPorts" -}}
{{- $ports := list }}
{{- range $camera := .Values.ingest.cameras }}
{{- if regexMatch "^rtsps?://" $camera.url }}
{{- $default := ternary "322" "554" (hasPrefix "rtsps://" $camera.url) }}
{{- $authority := regexReplaceAll "^rtsps?://" $camera.url "" | splitList "/" | first | splitList "@" | last }}
{{- $hostPort := regexFind ":[0-9]+$" $authority | trimPrefix ":" }}
{{- $ports = append $ports ($hostPort | default $default | int) }}
{{- end }}
{{- end }}
{{- toYaml (uniq $ports) }}
{{- end }}
