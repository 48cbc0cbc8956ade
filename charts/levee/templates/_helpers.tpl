{{/* The release's full name: "levee" for a release named levee, else "<release>-levee". */}}
{{- define "levee.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "levee.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "levee.labels" -}}
{{ include "levee.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "levee.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "levee.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the metrics API's serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "levee.tlsSecretName" -}}
{{- printf "%s-tls" (include "levee.fullname" .) -}}
{{- end -}}

{{/* Whether the chart signs a client certificate for KEDA's operator with its own CA. */}}
{{- define "levee.kedaClient" -}}
{{- if and .Values.externalScaler.enabled .Values.externalScaler.clusterTriggerAuthentication -}}true{{- end -}}
{{- end -}}

{{/* The DNS names of the metrics API Service, which the API server's aggregator verifies. */}}
{{- define "levee.serviceNames" -}}
{{- $service := include "levee.fullname" . -}}
{{- list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) | toJson -}}
{{- end -}}

{{- define "levee.checkValues" -}}
{{- if gt (len (compact (list .Values.certManager.enabled .Values.tls.selfSigned .Values.tls.userProvided))) 1 -}}
{{- fail "choose one source for the metrics API certificate: set at most one of certManager.enabled, tls.selfSigned and tls.userProvided" -}}
{{- end -}}
{{- if and .Values.externalScaler.enabled .Values.externalScaler.clusterTriggerAuthentication (or .Values.certManager.enabled .Values.tls.selfSigned .Values.tls.userProvided) -}}
{{- fail "externalScaler.clusterTriggerAuthentication needs the chart's own certificate (its CA signs KEDA's client certificate): set it to false with certManager.enabled, tls.selfSigned or tls.userProvided, and set externalScaler.clientCaSecret to the CA of the client certificate you give KEDA (docs/integration.md#keda)" -}}
{{- end -}}
{{- if and .Values.externalScaler.enabled (not (include "levee.kedaClient" .)) (not .Values.externalScaler.clientCaSecret) (not .Values.externalScaler.allowUnauthenticated) -}}
{{- fail "the external scaler needs a client CA, or anyone who reaches it reads every policy's figures: keep externalScaler.clusterTriggerAuthentication=true (the chart's own certificate), or set externalScaler.clientCaSecret to a Secret in levee's namespace whose ca.crt signed KEDA's client certificate; externalScaler.allowUnauthenticated=true serves any client" -}}
{{- end -}}
{{- if and .Values.externalScaler.allowUnauthenticated (or (include "levee.kedaClient" .) .Values.externalScaler.clientCaSecret) -}}
{{- fail "externalScaler.allowUnauthenticated=true contradicts a client CA (externalScaler.clusterTriggerAuthentication or externalScaler.clientCaSecret): set one or the other" -}}
{{- end -}}
{{- if and .Values.externalScaler.enabled (has (int .Values.metrics.port) (list 6443 9443)) -}}
{{- fail "metrics.port must differ from 9443, the port of levee's external scaler" -}}
{{- end -}}
{{- if eq (int .Values.metrics.port) 6443 -}}
{{- fail "metrics.port must differ from 6443, the port of levee's external metrics API" -}}
{{- end -}}
{{- end -}}
