variable "namespace" {
  type        = string
  description = "Namespace to install Airflow into; it must exist (the k8s-namespaces module creates it, with its quota and network policies)."
}

variable "release_name" {
  type        = string
  description = "Helm release name. The chart derives resource names from it, e.g. the task pods' service account <release>-worker."
  default     = "airflow"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be a lowercase DNS label of at most 32 characters."
  }
}

variable "chart_repository" {
  type        = string
  description = "Helm repository of the official Apache Airflow chart."
  default     = "https://airflow.apache.org"
}

variable "chart_version" {
  type        = string
  description = "Exact version of the official Airflow chart (1.19.0 or newer for Airflow 3). Pinned: a chart upgrade is a reviewed change, never a side effect of a plan."
  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.chart_version))
    error_message = "chart_version must be an exact version such as 1.22.0, not a range."
  }
}

variable "airflow_version" {
  type        = string
  description = "Airflow version inside the image; the chart uses it to pick Airflow 3 components (api-server, dag-processor, JWT secret)."
  validation {
    condition     = can(regex("^3\\.[0-9]+\\.[0-9]+$", var.airflow_version))
    error_message = "airflow_version must be an exact Airflow 3 version such as 3.3.2."
  }
}

variable "image_repository" {
  type        = string
  description = "Repository of the driftloop Airflow image (built from docker/, contains the DAGs, the driftloop package and the Spark jars)."
  validation {
    condition     = length(var.image_repository) > 0 && !can(regex(":", element(split("/", var.image_repository), length(split("/", var.image_repository)) - 1)))
    error_message = "image_repository must be non-empty and carry no tag; give the tag in image_tag."
  }
}

variable "image_tag" {
  type        = string
  description = "Immutable tag of the driftloop Airflow image (a release or commit SHA). \"latest\" is rejected: every pod, including KubernetesExecutor task pods, must run the same code."
  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && lower(var.image_tag) != "latest"
    error_message = "image_tag must be a valid, pinned image tag other than \"latest\"."
  }
}

variable "image_pull_policy" {
  type        = string
  description = "Pull policy of the Airflow image."
  default     = "IfNotPresent"
  validation {
    condition     = contains(["IfNotPresent", "Always"], var.image_pull_policy)
    error_message = "image_pull_policy must be IfNotPresent or Always."
  }
}

variable "metadata_secret_name" {
  type        = string
  description = "Existing Secret (in the namespace) whose key \"connection\" holds the SQLAlchemy URL of the PostgreSQL metadata DB with the psycopg 3 driver (postgresql+psycopg://...; the image has neither psycopg2 nor asyncpg); it serves as the async URL too. Created outside Terraform (External Secrets, Vault, sealed-secrets) so no password ever enters state."
}

variable "fernet_key_secret_name" {
  type        = string
  description = "Existing Secret whose key \"fernet-key\" holds the Fernet key that encrypts Connections and Variables in the metadata DB."
}

variable "api_secret_key_secret_name" {
  type        = string
  description = "Existing Secret whose key \"api-secret-key\" holds the API server's session secret; shared by all replicas."
}

variable "jwt_secret_name" {
  type        = string
  description = "Existing Secret whose key \"jwt-secret\" holds the JWT signing secret shared by the API server and the components that call the Execution API (at least 64 random bytes)."
}

variable "service_account_annotations" {
  type        = map(string)
  description = "Annotations for every Airflow service account (scheduler, API server, dag-processor, triggerer, task pods), e.g. {\"eks.amazonaws.com/role-arn\" = \"arn:aws:iam::123456789012:role/driftloop-airflow\"} for IRSA, or the GKE Workload Identity equivalent."
  default     = {}
}

variable "replicas" {
  type = object({
    scheduler     = optional(number, 1)
    api_server    = optional(number, 1)
    dag_processor = optional(number, 1)
    triggerer     = optional(number, 1)
  })
  description = "Replica counts of the long-running Airflow components. Task pods are started per task by the KubernetesExecutor."
  default     = {}
  validation {
    condition     = alltrue([for n in values(var.replicas) : n >= 1 && n <= 10])
    error_message = "Every replica count must be between 1 and 10."
  }
}

variable "component_resources" {
  type = map(object({
    requests = object({ cpu = string, memory = string })
    limits   = object({ cpu = string, memory = string })
  }))
  description = "Requests and limits per component: keys among scheduler, api_server, dag_processor, triggerer, workers (KubernetesExecutor task pods). Components left out get the namespace LimitRange defaults."
  default = {
    scheduler     = { requests = { cpu = "500m", memory = "1Gi" }, limits = { cpu = "1", memory = "2Gi" } }
    api_server    = { requests = { cpu = "250m", memory = "1Gi" }, limits = { cpu = "1", memory = "2Gi" } }
    dag_processor = { requests = { cpu = "250m", memory = "512Mi" }, limits = { cpu = "1", memory = "1Gi" } }
    triggerer     = { requests = { cpu = "100m", memory = "512Mi" }, limits = { cpu = "500m", memory = "1Gi" } }
    workers       = { requests = { cpu = "500m", memory = "1Gi" }, limits = { cpu = "2", memory = "4Gi" } }
  }
  validation {
    condition     = length(setsubtract(keys(var.component_resources), ["scheduler", "api_server", "dag_processor", "triggerer", "workers"])) == 0
    error_message = "component_resources keys must be among scheduler, api_server, dag_processor, triggerer and workers."
  }
}

variable "remote_base_log_folder" {
  type        = string
  description = "s3:// prefix for task logs (remote logging through the task pods' IAM role). Null keeps logs on the pods only, which KubernetesExecutor deletes after each task."
  default     = null
  validation {
    condition     = var.remote_base_log_folder == null || can(regex("^s3://[a-z0-9.-]{3,63}(/.*)?$", var.remote_base_log_folder))
    error_message = "remote_base_log_folder must be null or an s3:// URI."
  }
}

variable "extra_env" {
  type        = map(string)
  description = "Plain (non-secret) environment variables for every Airflow container, e.g. DRIFTLOOP_PROFILE=kubernetes, DRIFTLOOP_LAKE_URI, MLFLOW_TRACKING_URI. Secrets go through env_value_from, Airflow Connections or a secrets backend, never here."
  default     = {}
  validation {
    # DRIFTLOOP_SPARK_JOB__S3_CREDENTIALS_SECRET holds the *name* of a Secret, not a secret.
    condition = alltrue([
      for k in keys(var.extra_env) :
      !can(regex("(?i)(password|passwd|secret|token|credential|private_key|access_key)", k)) || contains(["DRIFTLOOP_SPARK_JOB__S3_CREDENTIALS_SECRET"], k)
    ])
    error_message = "extra_env must not carry secrets (a key looks like one); reference a Secret through env_value_from instead."
  }
}

variable "env_value_from" {
  type = map(object({
    secret_name = string
    key         = string
  }))
  description = "Environment variables whose values come from keys of existing Secrets in the namespace (the chart's `secret` values: a secretKeyRef in every Airflow container, task pods included), keyed by variable name, e.g. {DRIFTLOOP_REGISTRY_LOCK_DSN = {secret_name = \"driftloop-airflow\", key = \"registry-lock-dsn\"}}. Only the names enter Terraform; the values stay in the Secret."
  default     = {}
  validation {
    condition     = alltrue([for k in keys(var.env_value_from) : can(regex("^[A-Za-z_][A-Za-z0-9_]*$", k))])
    error_message = "env_value_from keys must be environment variable names."
  }
  validation {
    condition = alltrue([
      for ref in values(var.env_value_from) :
      can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", ref.secret_name)) && can(regex("^[-._a-zA-Z0-9]+$", ref.key))
    ])
    error_message = "Every env_value_from entry needs a valid Secret name and key."
  }
}

variable "helm_timeout_seconds" {
  type        = number
  description = "How long Terraform waits for the release (including DB migrations) to become ready before failing and rolling back."
  default     = 900
}
