{{/* Chart name. */}}
{{- define "assay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-assay, or the release name when it already contains the chart name. */}}
{{- define "assay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "assay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "assay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "assay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "assay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: assay
{{- end }}

{{- define "assay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "assay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespaces watched when not cluster-wide: watch.namespaces, else the release namespace. */}}
{{- define "assay.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- join "," .Values.watch.namespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "assay.operatorImage" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "assay.runnerImage" -}}
{{- printf "%s:%s" .Values.jobDefaults.runnerImage.repository (default .Chart.AppVersion .Values.jobDefaults.runnerImage.tag) }}
{{- end }}

{{/*
The rules of the operator's Role/ClusterRole: exactly the API calls in operator/assay_operator/kube.py
and kopf's own for the resources main.py registers; tests/deploy/test_rbac.py derives them from the
code and compares.
*/}}
{{- define "assay.rbacRules" -}}
# kopf watches EvaluationJobs; kube.patch_evaluationjob_status writes its status through the subresource
# (the operator never writes spec or metadata) and kube.get_evaluationjob reads one after a conflict.
- apiGroups: ["assay.dev"]
  resources: ["evaluationjobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["assay.dev"]
  resources: ["evaluationjobs/status"]
  verbs: ["patch"]
# The child Jobs' ownerReferences set blockOwnerDeletion: admission (OwnerReferencesPermissionEnforcement,
# on in OpenShift) then requires update on the owner's finalizers subresource.
- apiGroups: ["assay.dev"]
  resources: ["evaluationjobs/finalizers"]
  verbs: ["update"]
# kopf watches the child Jobs (server-side selector on the label assay.dev/job); kube.create_job /
# patch_job (suspend) / delete_job act on the resolve, ppl and cmp Jobs, kube.get_job after a create conflict.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# kopf watches the job pods (label assay.dev/job): their states and termination messages (pinned inputs,
# metrics, errors).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# kube.post_event: one Event per phase transition; kopf watches the Job controller's FailedCreate Events
# (field selector involvedObject.kind=Job,reason=FailedCreate).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list", "watch"]
# kube.list_workloads: Kueue's Workload of a queued child Job, whose message says why it is not admitted
# (harmless where Kueue is not installed).
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list"]
{{- end }}

{{/*
The allowed spec.runtime.image prefixes as a JSON list: policy.allowedImagePrefixes, or when null the
directory of the runner image's repository (what assay_operator.policy.default_image_prefix derives).
*/}}
{{- define "assay.allowedImagePrefixes" -}}
{{- if kindIs "invalid" .Values.policy.allowedImagePrefixes }}
{{- $repo := .Values.jobDefaults.runnerImage.repository }}
{{- if contains "/" $repo }}
{{- list (printf "%s/" (dir $repo)) | toJson }}
{{- else }}
{{- list (printf "%s:" $repo) | toJson }}
{{- end }}
{{- else }}
{{- .Values.policy.allowedImagePrefixes | toJson }}
{{- end }}
{{- end }}

{{/*
Variables the operator sets in every job pod: assay_operator.policy.RESERVED_ENV (tests/deploy/
test_admission_policy.py keeps the two equal). A job may not set them in spec.runtime.env.
*/}}
{{- define "assay.reservedEnv" -}}
["ASSAY_BATCH_SIZE","ASSAY_CACHE_DIR","ASSAY_CHANNELS_LAST","ASSAY_COMPILE","ASSAY_DATASET_URI","ASSAY_DATASET_VERSION","ASSAY_DECODE_THREADS","ASSAY_DEVICE","ASSAY_EVALUATOR","ASSAY_JOB_NAME","ASSAY_MODEL_URI","ASSAY_MODEL_VERSION","ASSAY_OUTPUT_URI","ASSAY_PIN_MEMORY","ASSAY_PRECISION","ASSAY_PREFETCH","ASSAY_SHARDS_PER_INDEX","ASSAY_TERMINATION_LOG","ASSAY_WORKERS","AWS_ACCESS_KEY_ID","AWS_ENDPOINT_URL","AWS_REGION","AWS_SECRET_ACCESS_KEY","AWS_SESSION_TOKEN","HOME","JOB_COMPLETION_INDEX","PYTHONUNBUFFERED","TMPDIR","TORCH_HOME","XDG_CACHE_HOME"]
{{- end }}
